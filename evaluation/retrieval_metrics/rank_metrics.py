"""Retrieval metrics computed from the rank of each query's correct candidate.

This is the one definition of the metrics; the `evaluate` module beside it, the protocols and
the CLI all call these functions. It is numpy only on purpose: importing `evaluate` pulls in
transformers (seconds and about 1 GB), which the protocols and the CLI must not pay for a mean.

A rank is 1 + the number of candidates scoring strictly higher than the correct one, as the
paper counts: a tie goes the correct candidate's way, so rank 1 means "nothing beat it".
"""

import numpy as np


def gold_ranks(scores, gold) -> np.ndarray:
    """Rank of candidate gold[i] in score row i. scores: [Q, N], gold: [Q] indices into N."""
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if scores.ndim != 2 or gold.shape != (scores.shape[0],):
        raise ValueError(f"need one row of scores per gold index, got scores {scores.shape} and gold {gold.shape}")
    if ((gold < 0) | (gold >= scores.shape[1])).any():
        raise ValueError(f"gold indices must lie in [0, {scores.shape[1]})")
    if not np.isfinite(scores).all():
        # NaN compares False with everything, so it would silently earn rank 1.
        raise ValueError("scores must be finite")
    gold_scores = np.take_along_axis(scores, gold[:, None], axis=1)
    return 1 + (scores > gold_scores).sum(axis=1)


def metrics_from_ranks(ranks) -> dict:
    """hits@1, recall@5, recall@10, mrr, mean_rank, median_rank of ranks that start at 1."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"need a non-empty 1-D array of ranks, got shape {ranks.shape}")
    if (ranks < 1).any():
        raise ValueError("ranks start at 1")
    # One gold per query, so recall@k is the share of queries whose gold made the top k.
    return {
        "hits@1": float(np.mean(ranks == 1)),
        "recall@5": float(np.mean(ranks <= 5)),
        "recall@10": float(np.mean(ranks <= 10)),
        "mrr": float(np.mean(1.0 / ranks)),
        "mean_rank": float(np.mean(ranks)),
        "median_rank": float(np.median(ranks)),
    }


def threshold_metrics(scores, gold, threshold: float) -> dict:
    """Golden accuracy and macro-F1 when "score >= threshold" is read as "this pair matches".

    Every (query, candidate) cell is a yes/no decision whose truth is "candidate is the gold".
    golden_accuracy: share of gold cells that the threshold accepts.
    macro_f1: mean of the F1 of the "match" class and the F1 of the "no match" class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    is_gold = np.zeros(scores.shape, dtype=bool)
    is_gold[np.arange(len(gold)), gold] = True
    accepted = scores >= threshold
    true_pos = np.sum(accepted & is_gold)
    false_pos = np.sum(accepted & ~is_gold)
    false_neg = np.sum(~accepted & is_gold)
    true_neg = np.sum(~accepted & ~is_gold)

    def f1(hits, misses):  # 2TP / (2TP + FP + FN); 0 when a class never occurs, as sklearn does
        return float(2 * hits / (2 * hits + misses)) if hits + misses else 0.0

    return {
        "golden_accuracy": float(true_pos / len(gold)),
        "macro_f1": (f1(true_pos, false_pos + false_neg) + f1(true_neg, false_pos + false_neg)) / 2,
        "threshold": float(threshold),
    }
