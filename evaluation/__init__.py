from evaluation.protocols import (
    DIRECTIONS,
    correct_sets,
    metrics_by_label,
    rank_queries,
    retrieval_report,
    sample_wrong_candidates,
)
from evaluation.report import format_report, model_index_results, report_rows, report_to_markdown
from evaluation.retrieval_metrics.rank_metrics import gold_ranks, metrics_from_ranks, threshold_metrics

__all__ = [
    "DIRECTIONS",
    "correct_sets",
    "format_report",
    "gold_ranks",
    "metrics_by_label",
    "metrics_from_ranks",
    "model_index_results",
    "rank_queries",
    "report_rows",
    "report_to_markdown",
    "retrieval_report",
    "sample_wrong_candidates",
    "threshold_metrics",
]
