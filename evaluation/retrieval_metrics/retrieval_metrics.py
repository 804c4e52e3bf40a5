"""Retrieval metrics of the CLASP paper as an `evaluate` module.

    metric = evaluate.load("evaluation/retrieval_metrics")            # a local path, no network
    metric.compute(predictions=score_rows, references=gold_index)
    evaluate.load("evaluation/retrieval_metrics", "ranks").compute(predictions=ranks)

The definitions live in rank_metrics.py next to this file; `evaluate` copies that file along
(it follows the relative import), and the rest of the project imports it without `evaluate`.
"""

import datasets
import evaluate

from .rank_metrics import gold_ranks, metrics_from_ranks, threshold_metrics

_DESCRIPTION = """\
Ranking metrics for cross-modal retrieval with one correct candidate per query: hits@1,
recall@5, recall@10, mean reciprocal rank, mean rank and median rank of the correct candidate.
Ties never favour it: by default each metric is its expected value over a uniformly random
order of the tied candidates (McSherry & Najork, ECIR 2008), or pessimistic (every tied
candidate ranks above it) with ties="pessimistic". Optionally golden accuracy and macro-F1 of
the decision "score >= threshold" over all query-candidate pairs.
"""

_KWARGS_DESCRIPTION = """
Args (config "default"):
    predictions: list of score rows, one per query; row i scores query i against every
        candidate (all rows the same length). Higher means more similar.
    references: list of int, the index of query i's correct candidate in its row.
    threshold: optional float; adds golden_accuracy, macro_f1 and threshold to the result.
    ties: "expected" (default) or "pessimistic", how tied scores count.
Args (config "ranks"):
    predictions: list of int ranks (1 = best), already free of ties, so that huge candidate
        pools never travel through Arrow (evaluation.protocols ranks those itself, ties included).
Returns:
    hits@1, recall@5, recall@10, mrr, mean_rank, median_rank (floats).
Raises:
    ValueError "scores rows [i, ...]: NaN or infinite values" naming the rows of predictions that
    hold them (NaN compares False with everything, so it would otherwise win).
Examples:
    >>> metric = evaluate.load("evaluation/retrieval_metrics")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.8, 0.3]], references=[0, 1])["hits@1"]
    0.5
"""

_CITATION = """\
@inproceedings{abootorabi2025clasp,
  title     = {CLASP: Contrastive Language-Speech Pretraining for Multilingual Multimodal Information Retrieval},
  author    = {Abootorabi, Mohammad Mahdi and Asgari, Ehsaneddin},
  booktitle = {Advances in Information Retrieval (ECIR 2025)},
  year      = {2025},
  note      = {arXiv:2412.13071}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetrics(evaluate.Metric):
    def _info(self):
        if self.config_name == "ranks":
            features = datasets.Features({"predictions": datasets.Value("int64")})
        else:
            # float64: Arrow would round float32 scores and turn near-ties into ties.
            features = datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=["https://arxiv.org/abs/2412.13071"],
        )

    def _compute(self, predictions, references=None, threshold=None, ties="expected"):
        if self.config_name == "ranks":
            return metrics_from_ranks(predictions, ties)
        if len({len(row) for row in predictions}) > 1:
            raise ValueError("every query must be scored against the same number of candidates")
        result = metrics_from_ranks(gold_ranks(predictions, references), ties)
        if threshold is not None:
            result.update(threshold_metrics(predictions, references, threshold))
        return result
