"""The retrieval protocols of the CLASP paper, in both directions, without the N x N matrix.

Row i of `audio_embeds` and row i of `text_embeds` are a pair: L2-normalised, so a dot product
is the cosine similarity the paper ranks by. Rows that share a *correct set* (same group label,
or identical text) are all correct answers for each other: a dataset that reads the same
sentence twice must not punish the model for finding the other reading first.

hard: each query against all N candidates. rank = 1 + number of wrong candidates scoring
    strictly above the best-scoring correct one (ties favour the correct candidate).
soft: each query against its gold plus k-1 wrong candidates drawn at random (seeded) from
    outside the gold's correct set; the same draw serves both directions.
breakdowns (by language, source, category, ...): the queries are restricted to the subset,
    the candidates stay the full pool, so a subset's numbers are comparable to the whole.
cross-lingual: text queries in another language (translations of row i's text, embedded by
    the caller) against all audio, text -> audio only.

The scores are computed a block of query rows at a time, the block sized by a memory budget,
and the hard and soft ranks are both read off the same block, so no score is computed twice.
"""

import time

import numpy as np

from evaluation.retrieval_metrics.rank_metrics import metrics_from_ranks

DIRECTIONS = ("audio_to_text", "text_to_audio")
MEMORY_BUDGET_BYTES = 256 * 2**20  # score rows held at once; a block of 256 MiB keeps BLAS busy


def correct_sets(num_rows: int, groups=None, texts=None) -> np.ndarray:
    """Integer id per row; rows with the same id are correct answers for each other.

    Two rows share a set when they share a group label or their texts are identical (after
    collapsing whitespace); the sets are the connected components of that relation.
    """
    ids = np.arange(num_rows)
    labelings = []
    if groups is not None:
        labelings.append(np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1))
    if texts is not None:
        labelings.append(np.unique([" ".join(t.split()) for t in texts], return_inverse=True)[1].reshape(-1))
    for labels in labelings:
        if len(labels) != num_rows:
            raise ValueError(f"need one group label / text per row ({num_rows}), got {len(labels)}")
    # Every row takes the smallest id among the rows it shares a label with, until nothing
    # moves: label propagation, a few vectorised rounds instead of a union-find loop.
    while labelings:
        before = ids.copy()
        for labels in labelings:
            smallest = np.full(labels.max() + 1, num_rows)
            np.minimum.at(smallest, labels, ids)
            ids = smallest[labels]
        if np.array_equal(ids, before):
            break
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def sample_wrong_candidates(gold, correct_set, k: int, seed: int) -> np.ndarray:
    """k-1 distinct candidates per query, uniform over the rows outside the gold's correct set.

    Draws with replacement and redraws the repeats and the correct ones until none are left:
    a few vectorised rounds, symmetric in the candidates, hence a uniform draw without
    replacement. Deterministic given the seed.
    """
    rng = np.random.default_rng(seed)
    gold = np.asarray(gold)
    correct_set = np.asarray(correct_set)
    gold_sets = correct_set[gold]
    num_wrong = len(correct_set) - np.bincount(correct_set)[gold_sets]
    if k < 1 or num_wrong.min(initial=k) < k - 1:
        raise ValueError(
            f"soft protocol with k={k} needs {k - 1} wrong candidates per query, "
            f"but some query has only {num_wrong.min()}; use a smaller k"
        )
    picks = rng.integers(0, len(correct_set), size=(len(gold), k - 1))
    while True:
        order = np.argsort(picks, axis=1, kind="stable")
        in_order = np.take_along_axis(picks, order, axis=1)
        repeated = np.zeros(picks.shape, dtype=bool)
        np.put_along_axis(repeated, order[:, 1:], in_order[:, 1:] == in_order[:, :-1], axis=1)
        redraw = repeated | (correct_set[picks] == gold_sets[:, None])
        if not redraw.any():
            return picks
        picks[redraw] = rng.integers(0, len(correct_set), size=int(redraw.sum()))


def as_numpy(embeds) -> np.ndarray:
    """float32 numpy view of a numpy array or a torch tensor (any device)."""
    if hasattr(embeds, "detach"):  # torch, imported only by the caller
        embeds = embeds.detach().float().cpu().numpy()
    return np.ascontiguousarray(embeds, dtype=np.float32)


def rank_queries(
    queries, candidates, gold, correct_set, wrong_candidates=None, memory_budget_bytes=MEMORY_BUDGET_BYTES
):
    """Hard ranks [Q] of each query's correct set among all candidates, and soft ranks [Q] of
    its gold among `wrong_candidates` [Q, k-1] (None when not given).

    queries [Q, D], candidates [N, D]: numpy or torch. gold [Q]: index of each query's own
    partner among the candidates. correct_set [N]: the ids of `correct_sets`.
    numpy on purpose: on CPU its BLAS matmul and its compare-and-count were faster than
    torch's here (1.7x and 8x on 2 cores), and the whole protocol is seconds for N = 11k.
    """
    queries, candidates = as_numpy(queries), as_numpy(candidates)
    gold, correct_set = np.asarray(gold), np.asarray(correct_set)
    gold_sets = correct_set[gold]
    # Only queries whose correct set holds more than their gold need the set-wise maximum.
    shared = np.bincount(correct_set)[gold_sets] > 1

    # Bytes per score: the float32 score, the "beats the best" mask, and for queries with a
    # shared set a masked float32 copy and its mask.
    rows_per_block = max(1, memory_budget_bytes // (candidates.shape[0] * 10))
    hard = np.empty(len(queries), dtype=np.int64)
    soft = None if wrong_candidates is None else np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), rows_per_block):
        block = slice(start, start + rows_per_block)
        scores = queries[block] @ candidates.T
        gold_scores = scores[np.arange(len(scores)), gold[block], None]
        best_correct = gold_scores.copy()
        rows = np.flatnonzero(shared[block])
        if len(rows):
            same_set = correct_set[None, :] == gold_sets[block][rows, None]
            best_correct[rows] = np.where(same_set, scores[rows], -np.inf).max(axis=1, keepdims=True)
        # Nothing correct can exceed the best correct score, so everything above it is wrong.
        hard[block] = 1 + np.count_nonzero(scores > best_correct, axis=1)
        if soft is not None:
            sampled_scores = np.take_along_axis(scores, wrong_candidates[block], axis=1)
            soft[block] = 1 + np.count_nonzero(sampled_scores > gold_scores, axis=1)
    return hard, soft


def metrics_by_label(ranks_by_direction: dict, labels) -> dict:
    """{label: {direction: metrics}} with each subset's queries against the full pool."""
    labels = np.asarray(labels)
    for ranks in ranks_by_direction.values():
        if len(labels) != len(ranks):
            raise ValueError(f"need one label per query ({len(ranks)}), got {len(labels)}")
    return {
        str(label): {direction: metrics_from_ranks(ranks[labels == label])
                     for direction, ranks in ranks_by_direction.items()}
        for label in np.unique(labels)
    }


def retrieval_report(
    audio_embeds,
    text_embeds,
    *,
    groups=None,
    texts=None,
    languages=None,
    breakdowns=None,
    cross_lingual=None,
    soft_k: int = 100,
    seed: int = 0,
    embed_s: float = 0.0,
    memory_budget_bytes: int = MEMORY_BUDGET_BYTES,
) -> dict:
    """Everything the paper reports, as one dict that the printers and other tools read.

    groups / texts: per-row labels; rows sharing either are correct for each other.
    languages: per-row language code -> "by_language". breakdowns: {name: per-row labels} ->
    an extra "by_<name>" each. cross_lingual: {code: (text_embeds [M, D], rows [M])}, where
    rows[m] is the pair whose text query m translates. embed_s: the caller's embedding time
    (0.0 when the embeddings came precomputed).
    """
    num_rows = len(audio_embeds)
    if len(text_embeds) != num_rows:
        raise ValueError(f"audio_embeds has {num_rows} rows but text_embeds has {len(text_embeds)}")
    correct_set = correct_sets(num_rows, groups, texts)
    gold = np.arange(num_rows)

    started = time.perf_counter()
    wrong = sample_wrong_candidates(gold, correct_set, soft_k, seed)
    hard, soft = {}, {}
    hard["audio_to_text"], soft["audio_to_text"] = rank_queries(
        audio_embeds, text_embeds, gold, correct_set, wrong, memory_budget_bytes
    )
    hard["text_to_audio"], soft["text_to_audio"] = rank_queries(
        text_embeds, audio_embeds, gold, correct_set, wrong, memory_budget_bytes
    )
    cross_ranks = {
        code: rank_queries(queries, audio_embeds, rows, correct_set, None, memory_budget_bytes)[0]
        for code, (queries, rows) in (cross_lingual or {}).items()
    }
    score_and_rank_s = time.perf_counter() - started

    report = {direction: metrics_from_ranks(hard[direction]) for direction in DIRECTIONS}
    report["soft"] = {direction: metrics_from_ranks(soft[direction]) for direction in DIRECTIONS}
    report["soft"]["k"] = soft_k
    report["by_language"] = {} if languages is None else metrics_by_label(hard, languages)
    for name, labels in (breakdowns or {}).items():
        report[f"by_{name}"] = metrics_by_label(hard, labels)
    report["cross_lingual"] = {code: {"text_to_audio": metrics_from_ranks(r)} for code, r in cross_ranks.items()}
    report["timing"] = {"embed_s": float(embed_s), "score_and_rank_s": score_and_rank_s}
    report["num_queries"] = num_rows
    return report
