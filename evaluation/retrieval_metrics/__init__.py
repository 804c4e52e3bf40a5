# The `evaluate` module (retrieval_metrics.py) is loaded with evaluate.load, not imported here:
# importing `evaluate` costs seconds. The numpy definitions it wraps are re-exported.
from evaluation.retrieval_metrics.rank_metrics import TIED_RANK, TIES, gold_ranks, metrics_from_ranks, threshold_metrics

__all__ = ["TIED_RANK", "TIES", "gold_ranks", "metrics_from_ranks", "threshold_metrics"]
