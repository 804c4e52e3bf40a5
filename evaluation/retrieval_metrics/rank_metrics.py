"""Retrieval metrics computed from where each query's correct candidates rank, ties included.

This is the one definition of ranks and metrics; `evaluation.protocols`, the `evaluate` module
beside it, the trainer's validation and the CLI all call these functions. It is numpy only on
purpose: importing `evaluate` pulls in transformers (seconds and about 1 GB), which the protocols
and the CLI must not pay for a mean.

A query's outcome is three counts (the TIED_RANK fields), taken at the best score any of its
correct candidates reaches:
    above          wrong candidates scoring strictly above it
    tied           wrong candidates scoring exactly the same
    correct_tied   correct candidates scoring exactly that (at least 1)
Ties are counted as McSherry & Najork, "Computing Information Retrieval Performance Measures
Efficiently in the Presence of Tied Scores" (ECIR 2008) count them:
    ties="expected" (the default): every metric is its mean over all orderings of the tied
        candidates, i.e. what a uniformly random tie-break gives on average. With g = above,
        t = tied, m = correct_tied: E[rank] = g + (m + t + 1) / (m + 1);
        P(rank <= k) = 1 - C(t, k - g) / C(m + t, k - g) for 0 < k - g <= t (1 when k - g > t,
        0 when k <= g);
        E[1 / rank] summed over the place of the first correct candidate among the tied ones.
    ties="pessimistic": every tied wrong candidate ranks above: rank = g + t + 1.
A tie never goes the correct candidate's way, so a model that scores every candidate alike gets
hits@1 = 1/N among N candidates (expected) or 0 (pessimistic), as chance would. median_rank is the
median of the queries' expected (or pessimistic) ranks. Scores must be finite: NaN compares False
with everything, so a NaN gold score would rank first; it is a ValueError naming the rows.
"""

import numpy as np

TIES = ("expected", "pessimistic")
TIED_RANK = np.dtype([("above", np.int64), ("tied", np.int64), ("correct_tied", np.int64)])
RECALL_AT = (1, 5, 10)  # hits@1 = recall@1: one relevant answer per query


def refuse_non_finite(values, name: str) -> None:
    """ValueError "NAME rows [3, 17]: NaN or infinite values" when rows of `values` [R, ...] are not finite."""
    values = np.asarray(values)
    bad = np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(axis=1))
    if len(bad):
        shown = ", ".join(map(str, bad[:10])) + (f", ... ({len(bad)} rows)" if len(bad) > 10 else "")
        raise ValueError(f"{name} rows [{shown}]: NaN or infinite values")


def tied_ranks(scores, best_correct, correct_tied=1) -> np.ndarray:
    """TIED_RANK [Q] of score rows [Q, N] that hold every candidate, the correct ones included.

    best_correct [Q]: each row's best correct score; correct_tied [Q] (or one int): how many
    correct candidates reach it. Nothing correct scores above best_correct, so every candidate
    above it is wrong, and the tied wrong ones are those at it less the correct ones.
    """
    best_correct = np.asarray(best_correct).reshape(-1, 1)
    ranks = np.empty(len(scores), dtype=TIED_RANK)
    ranks["above"] = np.count_nonzero(scores > best_correct, axis=1)
    ranks["tied"] = np.count_nonzero(scores == best_correct, axis=1) - correct_tied
    ranks["correct_tied"] = correct_tied
    return ranks


def gold_ranks(scores, gold) -> np.ndarray:
    """TIED_RANK [Q] of candidate gold[i] in score row i (the only correct one). scores: [Q, N],
    gold: [Q] indices into N. ValueError for other shapes, gold out of range or non-finite rows."""
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if scores.ndim != 2 or gold.shape != (scores.shape[0],):
        raise ValueError(f"need one row of scores per gold index, got scores {scores.shape} and gold {gold.shape}")
    if ((gold < 0) | (gold >= scores.shape[1])).any():
        raise ValueError(f"gold indices must lie in [0, {scores.shape[1]})")
    refuse_non_finite(scores, "scores")
    return tied_ranks(scores, np.take_along_axis(scores, gold[:, None], axis=1))


def metrics_from_ranks(ranks, ties: str = "expected") -> dict:
    """hits@1, recall@5, recall@10, mrr, mean_rank, median_rank (floats) of the queries' ranks.

    ranks [Q]: TIED_RANK counts (from `gold_ranks` or `evaluation.protocols.rank_queries`), or
    plain integer ranks starting at 1 (nothing tied). ties: "expected" or "pessimistic" (see the
    module docstring). ValueError for an empty or malformed array or an unknown rule.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"need a non-empty 1-D array of ranks, got shape {ranks.shape}")
    if ranks.dtype != TIED_RANK:
        if (ranks < 1).any():
            raise ValueError("ranks start at 1")
        untied = np.zeros(len(ranks), dtype=TIED_RANK)
        untied["above"], untied["correct_tied"] = ranks - 1, 1
        ranks = untied
    above, tied, correct = ranks["above"], ranks["tied"], ranks["correct_tied"]
    if ties == "pessimistic":  # the tied wrong candidates all go first: no tie is left
        above, tied = above + tied, np.zeros_like(tied)
    rank = above + (correct + tied + 1) / (correct + 1)
    recall = {k: float(np.mean(recall_at(k, above, tied, correct))) for k in RECALL_AT}
    return {
        "hits@1": recall[1],
        "recall@5": recall[5],
        "recall@10": recall[10],
        "mrr": float(np.mean(expected_reciprocal_rank(above, tied, correct))),
        "mean_rank": float(np.mean(rank)),
        "median_rank": float(np.median(rank)),
    }


def recall_at(k: int, above, tied, correct) -> np.ndarray:
    """P(rank <= k) per query under a uniformly random order of its tied candidates [Q]."""
    reach = k - above  # tied places inside the top k
    place = np.arange(k)
    # P(the first `reach` tied places all hold wrong candidates) = C(t, reach) / C(m + t, reach)
    # = prod over place < reach of (t - place) / (m + t - place); 0 once reach exceeds t.
    factors = np.maximum(tied[:, None] - place, 0) / np.maximum(tied[:, None] + correct[:, None] - place, 1)
    all_wrong = np.where(place < reach[:, None], factors, 1.0).prod(axis=1)
    return np.where(reach > 0, 1.0 - all_wrong, 0.0)


def expected_reciprocal_rank(above, tied, correct) -> np.ndarray:
    """E[1 / rank] per query under a uniformly random order of its tied candidates [Q].

    Summed exactly over j, the number of tied wrong candidates placed before the first correct
    one: P(j) = C(t, j) / C(m + t, j) * m / (m + t - j), rank = g + j + 1. Only queries with ties
    need the sum, and queries with the same (g, t, m) share it, so a collapsed model (every query
    alike) costs one sum of N terms.
    """
    result = 1.0 / (above + 1)
    has_ties = tied > 0
    counts, which = np.unique(np.stack([above, tied, correct], axis=1)[has_ties], axis=0, return_inverse=True)
    values = np.empty(len(counts))
    for n, (g, t, m) in enumerate(counts):
        j = np.arange(t + 1)
        none_before = np.concatenate(([1.0], np.cumprod((t - j[:-1]) / (m + t - j[:-1]))))
        values[n] = np.sum(none_before * m / (m + t - j) / (g + j + 1))
    result[has_ties] = values[which.reshape(-1)]
    return result


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
