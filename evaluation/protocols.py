"""The retrieval protocols of the CLASP paper, in both directions, without the N x N matrix.

Row i of `audio_embeds` and row i of `text_embeds` are a pair: L2-normalised, so a dot product
is the cosine similarity the paper ranks by. Rows that share a *correct set* are all correct
answers for each other, under one of two named rules (CORRECT_SETS):
    same-group (the default): the readings of one sentence group, in any language, and rows
        with identical texts (the connected components of both relations);
    same-text: rows with identical texts only (after collapsing whitespace), the duplicates
        the paper's notebooks counted.
A dataset that reads the same sentence twice must not punish the model for finding the other
reading first.

hard: each query against all N candidates; its rank is where the best-scoring correct
    candidate lands among the wrong ones.
soft: each query against its gold plus k-1 wrong candidates drawn at random (seeded) from
    outside the gold's correct set; the same draw serves both directions. k is lowered to what
    every query can fill on a small collection (the report says so).
ties: never given to the correct candidate. By default each metric is its expected value over
    a uniformly random order of the tied candidates (McSherry & Najork, "Computing Information
    Retrieval Performance Measures Efficiently in the Presence of Tied Scores", ECIR 2008), or
    pessimistic (every tied wrong candidate first) on request; the formulas are in
    evaluation/retrieval_metrics/rank_metrics.py, the one ranking code every caller shares. A
    model that gives every candidate the same score gets HITS@1 = 1/N, as chance would.
breakdowns (by language, source, category, ...): the queries are restricted to the subset,
    the candidates stay the full pool, so a subset's numbers are comparable to the whole.
monolingual: per language, queries AND candidates restricted to that language's rows.
cross-lingual: text queries in another language (translations of row i's text, embedded by
    the caller) against all audio, text -> audio only.
NaN or infinite embeddings are a ValueError naming the rows (NaN would win every comparison).
hubness: "none" ranks by cosine; "csls" ranks by 2 cos(q, c) - r_bank(c), each candidate's mean
    cosine to its k nearest rows of a bank of training embeddings of the query modality taken off
    (evaluation/hubness.py; Conneau et al., ICLR 2018), in every protocol and breakdown.

The scores are computed a block of query rows at a time, the block sized by a memory budget,
and the hard and soft ranks are both read off the same block, so no score is computed twice.
"""

import time

import numpy as np

from evaluation.retrieval_metrics.rank_metrics import TIED_RANK, TIES, metrics_from_ranks, refuse_non_finite, tied_ranks

DIRECTIONS = ("audio_to_text", "text_to_audio")
HUBNESS = ("none", "csls")
CORRECT_SETS = ("same-group", "same-text")
# Score rows held at once. The matmul runs as fast on 64 MiB blocks as on larger ones, and the
# compare-and-count passes faster (the block stays nearer the cache): N = 11,411, d = 768, 4,096
# queries, one thread, shared CPU: 2.7 s at 64 MiB, 3.0 s at 128 MiB and at 32 MiB, 4.8 s at 256 MiB.
MEMORY_BUDGET_BYTES = 64 * 2**20


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
    queries, candidates, gold, correct_set, wrong_candidates=None, memory_budget_bytes=MEMORY_BUDGET_BYTES,
    candidate_penalty=None,
):
    """Hard ranks of each query's correct set among all candidates, and soft ranks of its gold
    among itself and `wrong_candidates` [Q, k-1] (None when not given): TIED_RANK arrays [Q]
    (wrong candidates above, tied, correct candidates tied) for `metrics_from_ranks`.

    queries [Q, D], candidates [N, D]: numpy or torch. gold [Q]: index of each query's own
    partner among the candidates. correct_set [N]: the ids of `correct_sets`. candidate_penalty
    [N] (None: 0): the score is 2 q.c - candidate_penalty[c], CSLS with `hubness.csls_penalty`. ValueError naming
    the rows when queries or candidates hold NaN or infinite values, or when their norms are so
    large that a score could overflow float32.
    numpy on purpose: on CPU its BLAS matmul and its compare-and-count were faster than
    torch's here (1.7x and 8x on 2 cores), and the whole protocol is seconds for N = 11k.
    """
    queries, candidates = as_numpy(queries), as_numpy(candidates)
    refuse_non_finite(queries, "queries")
    refuse_non_finite(candidates, "candidates")
    # |q . c| <= |q| |c|: below that bound no score (nor a partial sum of one) can overflow.
    largest_norm = [float(np.sqrt(np.einsum("ij,ij->i", e, e).max(initial=0.0))) for e in (queries, candidates)]
    if largest_norm[0] * largest_norm[1] >= np.finfo(np.float32).max:
        raise ValueError("queries x candidates: scores would overflow float32; normalise the embeddings")
    gold, correct_set = np.asarray(gold), np.asarray(correct_set)
    if candidate_penalty is not None:
        candidate_penalty = as_numpy(candidate_penalty)
        if candidate_penalty.shape != (len(candidates),):
            raise ValueError(f"need one penalty per candidate ({len(candidates)}), got shape {candidate_penalty.shape}")
        refuse_non_finite(candidate_penalty[:, None], "candidate_penalty")
    gold_sets = correct_set[gold]
    # The rows of every correct set, grouped: set s is members[set_start[s] : set_start[s] + set_size[s]].
    members = np.argsort(correct_set, kind="stable")
    set_size = np.bincount(correct_set)
    set_start = np.cumsum(set_size) - set_size

    # Bytes per query row: its float32 scores and one comparison mask, and the flat index, score
    # and mask arrays of its correct set.
    rows_per_block = max(1, memory_budget_bytes // (candidates.shape[0] * 5 + set_size.max() * 32))
    hard = np.empty(len(queries), dtype=TIED_RANK)
    soft = None if wrong_candidates is None else np.empty(len(queries), dtype=TIED_RANK)
    for start in range(0, len(queries), rows_per_block):
        block = slice(start, start + rows_per_block)
        scores = queries[block] @ candidates.T
        if candidate_penalty is not None:
            scores = 2 * scores - candidate_penalty
        # The scores of each query's correct candidates, one segment per query (at `offsets`).
        sizes = set_size[gold_sets[block]]
        offsets = np.cumsum(sizes) - sizes
        flat = np.arange(offsets[-1] + sizes[-1]) + np.repeat(set_start[gold_sets[block]] - offsets, sizes)
        correct_scores = scores[np.repeat(np.arange(len(scores)), sizes), members[flat]]
        best_correct = np.maximum.reduceat(correct_scores, offsets)
        correct_tied = np.add.reduceat(correct_scores == np.repeat(best_correct, sizes), offsets, dtype=np.int64)
        hard[block] = tied_ranks(scores, best_correct, correct_tied)
        if soft is not None:
            pool = np.column_stack([gold[block], wrong_candidates[block]])  # the gold first, then k-1 wrong
            soft[block] = tied_ranks(np.take_along_axis(scores, pool, axis=1), scores[np.arange(len(scores)), gold[block]])
    return hard, soft


def metrics_by_label(ranks_by_direction: dict, labels, ties: str = "expected") -> dict:
    """{label: {direction: metrics}} with each subset's queries against the full pool."""
    labels = np.asarray(labels)
    for ranks in ranks_by_direction.values():
        if len(labels) != len(ranks):
            raise ValueError(f"need one label per query ({len(ranks)}), got {len(labels)}")
    return {
        str(label): {direction: metrics_from_ranks(ranks[labels == label], ties)
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
    correct_set: str = "same-group",
    ties: str = "expected",
    soft_k: int = 100,
    seed: int = 0,
    embed_s: float = 0.0,
    memory_budget_bytes: int = MEMORY_BUDGET_BYTES,
    hubness: str = "none",
    hubness_bank: dict | None = None,
    csls_k: int = 10,
) -> dict:
    """Everything the paper reports, as one dict that the printers and other tools read.

    audio_embeds, text_embeds [N, D] (numpy or torch): row i of each a pair. groups / texts:
    per-row labels. correct_set: which rows count as correct for each other (CORRECT_SETS, see
    the module docstring); ties: "expected" or "pessimistic" (see rank_metrics). languages:
    per-row language code -> "by_language" (the language's queries against the full pool) and
    "monolingual" (its queries against its own rows only). breakdowns: {name: per-row labels}
    -> an extra "by_<name>" each (queries restricted, full pool). cross_lingual: {code:
    (text_embeds [M, D], rows [M])}, where rows[m] is the pair whose text query m translates.
    soft_k: the soft pool's size, lowered to what every query can fill ("soft": {"k",
    "k_requested"}), and the soft protocol left out ("k": None and a "note") when some query has
    no wrong candidate at all. embed_s: the caller's embedding time (0.0 when precomputed).
    hubness: "none" or "csls" (see the module docstring), with hubness_bank {"audio_embeds":
    [B, D], "text_embeds": [B, D]} (training pairs, L2-normalised; `hubness.load_hubness_bank`)
    and csls_k neighbours; recorded as report["hubness"] = {"method", "k", "bank_rows"}.
    ValueError for rows of different lengths, NaN or infinite values (naming the rows), an
    unknown rule, soft_k < 2, correct_set="same-text" without texts, or "csls" without a bank.
    """
    if correct_set not in CORRECT_SETS:
        raise ValueError(f"correct_set must be one of {CORRECT_SETS}, got {correct_set!r}")
    if correct_set == "same-text" and texts is None:
        raise ValueError("correct_set='same-text' needs the texts of the pairs")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if soft_k < 2:
        raise ValueError(f"soft_k must be at least 2 (the gold and a wrong candidate), got {soft_k}")
    if hubness not in HUBNESS:
        raise ValueError(f"hubness must be one of {HUBNESS}, got {hubness!r}")
    if hubness == "csls" and hubness_bank is None:
        raise ValueError("hubness='csls' needs a hubness_bank of training audio_embeds and text_embeds")
    from evaluation.hubness import csls_penalty  # it imports this module

    audio_embeds, text_embeds = as_numpy(audio_embeds), as_numpy(text_embeds)
    num_rows = len(audio_embeds)
    if len(text_embeds) != num_rows:
        raise ValueError(f"audio_embeds has {num_rows} rows but text_embeds has {len(text_embeds)}")
    refuse_non_finite(audio_embeds, "audio_embeds")
    refuse_non_finite(text_embeds, "text_embeds")
    for code, (queries, _) in (cross_lingual or {}).items():
        refuse_non_finite(as_numpy(queries), f"cross_lingual[{code!r}] text_embeds")
    set_ids = correct_sets(num_rows, groups if correct_set == "same-group" else None, texts)
    gold = np.arange(num_rows)
    # The largest soft pool every query can fill: its gold and all the rows outside its set.
    soft_k_possible = min(soft_k, num_rows - np.bincount(set_ids).max() + 1)

    started = time.perf_counter()
    # Each direction's candidates discounted by their closeness to the bank of the query modality.
    penalty = {"audio_to_text": None, "text_to_audio": None}
    if hubness == "csls":
        penalty = {"audio_to_text": csls_penalty(text_embeds, hubness_bank["audio_embeds"], csls_k),
                   "text_to_audio": csls_penalty(audio_embeds, hubness_bank["text_embeds"], csls_k)}
    wrong = sample_wrong_candidates(gold, set_ids, soft_k_possible, seed) if soft_k_possible >= 2 else None
    directions = {"audio_to_text": (audio_embeds, text_embeds), "text_to_audio": (text_embeds, audio_embeds)}
    hard, soft = {}, {}
    for direction, (queries, candidates) in directions.items():
        hard[direction], soft[direction] = rank_queries(queries, candidates, gold, set_ids, wrong, memory_budget_bytes,
                                                        penalty[direction])
    monolingual = {}
    languages = None if languages is None else np.asarray(languages)
    for language in [] if languages is None else np.unique(languages):
        rows = np.flatnonzero(languages == language)
        own_sets = np.unique(set_ids[rows], return_inverse=True)[1].reshape(-1)
        monolingual[str(language)] = {
            direction: rank_queries(queries[rows], candidates[rows], np.arange(len(rows)), own_sets, None,
                                    memory_budget_bytes,
                                    None if penalty[direction] is None else penalty[direction][rows])[0]
            for direction, (queries, candidates) in directions.items()
        }
    cross_ranks = {
        code: rank_queries(queries, audio_embeds, rows, set_ids, None, memory_budget_bytes, penalty["text_to_audio"])[0]
        for code, (queries, rows) in (cross_lingual or {}).items()
    }
    score_and_rank_s = time.perf_counter() - started

    report = {direction: metrics_from_ranks(hard[direction], ties) for direction in DIRECTIONS}
    report["ties"], report["correct_set"] = ties, correct_set
    report["hubness"] = {"method": hubness, "k": csls_k if hubness == "csls" else None,
                         "bank_rows": len(hubness_bank["text_embeds"]) if hubness == "csls" else 0}
    if wrong is None:
        report["soft"] = {"k": None, "k_requested": soft_k,
                          "note": "left out: some query has no wrong candidate (every row is correct for it)"}
    else:
        report["soft"] = {direction: metrics_from_ranks(soft[direction], ties) for direction in DIRECTIONS}
        report["soft"].update(k=int(soft_k_possible), k_requested=soft_k)
    report["by_language"] = {} if languages is None else metrics_by_label(hard, languages, ties)
    report["monolingual"] = {
        language: {direction: metrics_from_ranks(ranks, ties) for direction, ranks in by_direction.items()}
        for language, by_direction in monolingual.items()
    }
    for name, labels in (breakdowns or {}).items():
        report[f"by_{name}"] = metrics_by_label(hard, labels, ties)
    report["cross_lingual"] = {code: {"text_to_audio": metrics_from_ranks(r, ties)} for code, r in cross_ranks.items()}
    report["timing"] = {"embed_s": float(embed_s), "score_and_rank_s": score_and_rank_s}
    report["num_queries"] = num_rows
    return report
