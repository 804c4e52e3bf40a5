"""Hard / soft protocols against plain-Python loops, and the report's contract."""

import itertools

import numpy as np
import pytest
import torch

from evaluation.protocols import correct_sets, rank_queries, retrieval_report, sample_wrong_candidates
from evaluation.retrieval_metrics.rank_metrics import TIED_RANK, metrics_from_ranks


def small_integer_pairs(num_rows=40, dim=6, seed=0):
    """Embeddings with small integer entries: every dot product is exact in float32 whatever the
    BLAS blocking, and ties are frequent. Not unit vectors; the protocols only take dot products."""
    rng = np.random.default_rng(seed)
    audio = rng.integers(-2, 3, size=(num_rows, dim)).astype(np.float32)
    text = rng.integers(-2, 3, size=(num_rows, dim)).astype(np.float32)
    return audio, text


def reference_hard_ranks(queries, candidates, gold, correct_set):
    """(wrong above, wrong tied, correct tied) at each query's best correct score, one loop at a time."""
    ranks = []
    for i in range(len(queries)):
        scores = [float(np.dot(queries[i].astype(np.float64), c)) for c in candidates]
        correct = [j for j in range(len(candidates)) if correct_set[j] == correct_set[gold[i]]]
        best = max(scores[j] for j in correct)
        wrong = [j for j in range(len(candidates)) if j not in correct]
        ranks.append((sum(scores[j] > best for j in wrong), sum(scores[j] == best for j in wrong),
                      sum(scores[j] == best for j in correct)))
    return np.array(ranks, dtype=TIED_RANK)


def test_hard_ranks_match_loops_with_shared_sets():
    audio, text = small_integer_pairs()
    text[1], audio[4] = text[0], audio[3]  # two correct candidates tie with each other (groups 0 and 1)
    correct_set = correct_sets(len(audio), groups=[i // 3 if i < 12 else i for i in range(len(audio))])
    gold = np.arange(len(audio))
    for queries, candidates in ((audio, text), (text, audio)):
        hard, soft = rank_queries(queries, candidates, gold, correct_set)
        assert soft is None
        expected = reference_hard_ranks(queries, candidates, gold, correct_set)
        np.testing.assert_array_equal(hard, expected)
        assert (expected["tied"] > 0).sum() > 5 and (expected["correct_tied"] > 1).any()  # the data has both kinds


def test_chunked_equals_unchunked():
    audio, text = small_integer_pairs(num_rows=57)
    correct_set = correct_sets(len(audio), groups=[i % 50 for i in range(len(audio))])
    gold = np.arange(len(audio))
    wrong = sample_wrong_candidates(gold, correct_set, k=10, seed=0)
    whole = rank_queries(audio, text, gold, correct_set, wrong, memory_budget_bytes=2**30)
    row_by_row = rank_queries(audio, text, gold, correct_set, wrong, memory_budget_bytes=1)
    for a, b in zip(whole, row_by_row):
        np.testing.assert_array_equal(a, b)


def test_duplicate_texts_count_as_correct():
    audio, text = small_integer_pairs(num_rows=10)
    audio, text = audio.clip(-1, 1), text.clip(-1, 1)  # every other score stays <= 2
    text[3] = text[7] = [2, 0, 0, 0, 0, 0]  # the same sentence, read twice
    audio[3], audio[7] = [1, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]  # the second reading fits it better
    texts = [f"sentence {i}" for i in range(10)]
    texts[7] = "  sentence   3 "  # identical after collapsing whitespace
    alone, _ = rank_queries(text, audio, np.arange(10), correct_sets(10))
    assert alone[3]["above"] == 1  # audio 7 beats audio 3 for text 3 ...
    together, _ = rank_queries(text, audio, np.arange(10), correct_sets(10, texts=texts))
    assert together[3]["above"] == 0  # ... but it reads the same sentence, so it is a correct answer too
    np.testing.assert_array_equal(np.delete(together, 3), np.delete(alone, 3))
    assert retrieval_report(audio, text, texts=texts, soft_k=3)["text_to_audio"] == metrics_from_ranks(together)


def test_correct_sets_join_groups_and_texts():
    # 0~1 by group, 1~2 by text, so 0, 1, 2 form one set; 3 alone.
    ids = correct_sets(4, groups=["a", "a", "b", "c"], texts=["x", "y", "y", "z"])
    assert ids[0] == ids[1] == ids[2] != ids[3]
    np.testing.assert_array_equal(correct_sets(3), [0, 1, 2])


def test_soft_sampling_is_seeded_distinct_and_outside_the_correct_set():
    correct_set = correct_sets(30, groups=[i // 2 for i in range(30)])
    gold = np.arange(30)
    wrong = sample_wrong_candidates(gold, correct_set, k=20, seed=7)
    assert wrong.shape == (30, 19)
    np.testing.assert_array_equal(wrong, sample_wrong_candidates(gold, correct_set, k=20, seed=7))
    assert not np.array_equal(wrong, sample_wrong_candidates(gold, correct_set, k=20, seed=8))
    for i, row in enumerate(wrong):
        assert len(set(row)) == 19
        assert all(correct_set[j] != correct_set[i] for j in row)
    with pytest.raises(ValueError, match="smaller k"):
        sample_wrong_candidates(gold, correct_set, k=30, seed=0)  # only 28 wrong rows exist


def test_soft_ranks_match_loops():
    audio, text = small_integer_pairs()
    gold = np.arange(len(audio))
    wrong = sample_wrong_candidates(gold, correct_sets(len(audio)), k=8, seed=1)
    _, soft = rank_queries(audio, text, gold, correct_sets(len(audio)), wrong)
    for i in range(len(audio)):
        gold_score = audio[i] @ text[i]
        pool = [audio[i] @ text[j] for j in wrong[i]]
        assert soft[i].tolist() == (sum(s > gold_score for s in pool), sum(s == gold_score for s in pool), 1)
    assert (soft["tied"] > 0).any()


def test_report_shape_breakdowns_and_cross_lingual():
    audio, text = small_integer_pairs(num_rows=24)
    languages = ["en"] * 16 + ["de"] * 8
    rows = np.array([2, 5, 5, 11])  # translated queries of rows 2, 5, 5, 11
    translations = text[rows] + 0.5
    report = retrieval_report(
        torch.from_numpy(audio), torch.from_numpy(text), languages=languages,
        cross_lingual={"fa": (translations, rows)}, soft_k=5, seed=3, embed_s=1.5,
    )
    metric_keys = {"hits@1", "recall@5", "recall@10", "mrr", "mean_rank", "median_rank"}
    assert set(report) == {
        "audio_to_text", "text_to_audio", "ties", "correct_set", "hubness", "soft", "by_language", "monolingual",
        "cross_lingual", "timing", "num_queries",
    }
    assert report["ties"] == "expected" and report["correct_set"] == "same-group"
    assert set(report["soft"]) == {"audio_to_text", "text_to_audio", "k", "k_requested"} and report["soft"]["k"] == 5
    assert set(report["by_language"]) == {"en", "de"} and set(report["monolingual"]) == {"en", "de"}
    assert set(report["cross_lingual"]) == {"fa"} and set(report["cross_lingual"]["fa"]) == {"text_to_audio"}
    assert set(report["timing"]) == {"embed_s", "score_and_rank_s"} and report["timing"]["embed_s"] == 1.5
    assert report["num_queries"] == 24
    samples = report["audio_to_text"], report["soft"]["text_to_audio"], report["by_language"]["de"]["text_to_audio"]
    for metrics in samples:
        assert set(metrics) == metric_keys

    # A subset's queries still face the whole pool: its ranks are the full run's ranks, restricted.
    hard, _ = rank_queries(audio, text, np.arange(24), correct_sets(24))
    assert report["by_language"]["de"]["audio_to_text"] == metrics_from_ranks(hard[16:])
    cross, _ = rank_queries(translations, audio, rows, correct_sets(24))
    assert report["cross_lingual"]["fa"]["text_to_audio"] == metrics_from_ranks(cross)
    # Monolingual: the language's queries against the language's rows only.
    german = reference_hard_ranks(audio[16:], text[16:], np.arange(8), np.arange(8))
    assert report["monolingual"]["de"]["audio_to_text"] == metrics_from_ranks(german)
    assert report["monolingual"]["de"] != report["by_language"]["de"]
    # torch in, numpy in: the same numbers.
    assert retrieval_report(audio, text, languages=languages, soft_k=5, seed=3)["soft"] == report["soft"]


def test_extra_breakdowns_are_opt_in():
    audio, text = small_integer_pairs(num_rows=12)
    report = retrieval_report(audio, text, soft_k=4, breakdowns={"source": ["cv"] * 6 + ["fleurs"] * 6})
    assert set(report["by_source"]) == {"cv", "fleurs"}
    assert report["by_language"] == {} and report["cross_lingual"] == {}


def test_report_records_the_correct_set_rule():
    audio, text = small_integer_pairs(num_rows=12)
    groups = [i // 2 for i in range(12)]  # rows 2k and 2k+1: one sentence in two languages
    texts = [f"sentence {i}" for i in range(12)]
    texts[10] = texts[8]  # rows 8 and 10: the same transcript in two groups
    gold = np.arange(12)
    by_hand = {"same-group": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4],  # 8~9, 10~11 by group, 8~10 by text
               "same-text": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 11]}
    for rule, ids in by_hand.items():
        report = retrieval_report(audio, text, groups=groups, texts=texts, correct_set=rule, soft_k=3)
        assert report["correct_set"] == rule
        for direction, (queries, candidates) in (("audio_to_text", (audio, text)), ("text_to_audio", (text, audio))):
            assert report[direction] == metrics_from_ranks(reference_hard_ranks(queries, candidates, gold, ids))
    assert retrieval_report(audio, text, groups=groups, texts=texts, soft_k=3)["correct_set"] == "same-group"
    with pytest.raises(ValueError, match="needs the texts"):
        retrieval_report(audio, text, groups=groups, correct_set="same-text", soft_k=3)
    with pytest.raises(ValueError, match="correct_set must be one of"):
        retrieval_report(audio, text, correct_set="same-sentence", soft_k=3)


def test_collapsed_encoder_scores_chance():
    """Every audio embedding is one vector: text -> audio cannot tell the audio apart."""
    num_rows = 200
    rng = np.random.default_rng(0)
    text = rng.standard_normal((num_rows, 8)).astype(np.float32)
    audio = np.tile(rng.standard_normal((1, 8)).astype(np.float32), (num_rows, 1))
    report = retrieval_report(audio, text, soft_k=10)

    def chance(pool):  # the gold lands on each of the pool's ranks equally often
        return {"hits@1": 1 / pool, "recall@5": min(5 / pool, 1), "recall@10": min(10 / pool, 1),
                "mrr": sum(1 / rank for rank in range(1, pool + 1)) / pool,
                "mean_rank": (pool + 1) / 2, "median_rank": (pool + 1) / 2}

    assert report["text_to_audio"] == pytest.approx(chance(num_rows))
    assert report["soft"]["text_to_audio"] == pytest.approx(chance(10))
    # audio -> text: one query vector, so the texts' scores are one ranking; each gold holds one place of it.
    assert report["audio_to_text"] == pytest.approx(chance(num_rows))
    pessimistic = retrieval_report(audio, text, soft_k=10, ties="pessimistic")
    assert pessimistic["ties"] == "pessimistic"
    assert pessimistic["text_to_audio"] == pytest.approx(
        {"hits@1": 0, "recall@5": 0, "recall@10": 0, "mrr": 1 / num_rows, "mean_rank": num_rows, "median_rank": num_rows})
    with pytest.raises(ValueError, match="ties must be one of"):
        retrieval_report(audio, text, ties="optimistic")


def test_random_coarse_embeddings_score_chance():
    """Independent random embeddings with few distinct values (ties everywhere): chance, not better."""
    num_rows = 300
    rng = np.random.default_rng(1)
    audio, text = (rng.integers(-1, 2, size=(num_rows, 3)).astype(np.float32) for _ in range(2))
    report = retrieval_report(audio, text, soft_k=10)
    # The gold is one more independent draw, so its rank is uniform on 1..N: mean (N+1)/2, sd of
    # the mean about 87 / sqrt(300) = 5; E[1/rank] = H_N / N = 0.021, sd of the mean about 0.004.
    for direction in ("audio_to_text", "text_to_audio"):
        assert report[direction]["mean_rank"] == pytest.approx((num_rows + 1) / 2, abs=25)
        assert report[direction]["mrr"] == pytest.approx(sum(1 / r for r in range(1, num_rows + 1)) / num_rows, abs=0.02)
        assert report[direction]["hits@1"] < 0.03


def test_ties_by_hand():
    query = np.array([[1, 0]], dtype=np.float32)
    # Text 1 scores 2 (wrong, above); texts 0 (the gold), 2 and 3 all score 1.
    texts = np.array([[1, 0], [2, 0], [1, 5], [1, -5]], dtype=np.float32)
    ranks, _ = rank_queries(query, texts, [0], correct_sets(4))
    assert ranks.tolist() == [(1, 2, 1)]
    # The three tied texts in any order: the gold is 2nd, 3rd or 4th, a third of the time each.
    assert metrics_from_ranks(ranks) == pytest.approx(
        {"hits@1": 0, "recall@5": 1, "recall@10": 1, "mrr": (1 / 2 + 1 / 3 + 1 / 4) / 3, "mean_rank": 3, "median_rank": 3})
    assert metrics_from_ranks(ranks, ties="pessimistic") == pytest.approx(
        {"hits@1": 0, "recall@5": 1, "recall@10": 1, "mrr": 1 / 4, "mean_rank": 4, "median_rank": 4})

    # Text 2 reads the same sentence: two correct texts and one wrong one tie.
    ranks, _ = rank_queries(query, texts, [0], correct_sets(4, groups=["a", "b", "a", "c"]))
    assert ranks.tolist() == [(1, 1, 2)]
    # Orders of (correct, correct, wrong): a correct text comes first in 2 of 3 (rank 2), else rank 3.
    assert metrics_from_ranks(ranks) == pytest.approx(
        {"hits@1": 0, "recall@5": 1, "recall@10": 1, "mrr": 2 / 3 * 1 / 2 + 1 / 3 * 1 / 3,
         "mean_rank": 2 / 3 * 2 + 1 / 3 * 3, "median_rank": 7 / 3})
    assert metrics_from_ranks(ranks, ties="pessimistic")["mean_rank"] == 3

    # 2 correct among 12 tied candidates, nothing above: the first correct one is at place j
    # with probability (12 - j) / C(12, 2) = (12 - j) / 66.
    ranks = np.array([(0, 10, 2)], dtype=TIED_RANK)
    first = {j: (12 - j) / 66 for j in range(1, 12)}
    assert sum(first.values()) == pytest.approx(1)
    assert metrics_from_ranks(ranks) == pytest.approx(
        {"hits@1": first[1], "recall@5": sum(first[j] for j in range(1, 6)),
         "recall@10": sum(first[j] for j in range(1, 11)), "mrr": sum(p / j for j, p in first.items()),
         "mean_rank": sum(p * j for j, p in first.items()), "median_rank": 13 / 3})


@pytest.mark.parametrize("above", [0, 1, 4, 9])
def test_expected_metrics_average_every_placement_of_the_ties(above):
    """Against brute force: every placement of the correct candidates among the tied places."""
    for tied in range(7):
        for correct in range(1, 4):
            places = range(correct + tied)
            ranks = [above + 1 + min(chosen) for chosen in itertools.combinations(places, correct)]
            expected = {"hits@1": np.mean([r <= 1 for r in ranks]), "recall@5": np.mean([r <= 5 for r in ranks]),
                        "recall@10": np.mean([r <= 10 for r in ranks]), "mrr": np.mean([1 / r for r in ranks]),
                        "mean_rank": np.mean(ranks), "median_rank": np.mean(ranks)}
            result = metrics_from_ranks(np.array([(above, tied, correct)], dtype=TIED_RANK))
            assert result == pytest.approx(expected), (above, tied, correct)


def test_nan_or_infinite_embeddings_are_refused_by_row():
    audio, text = small_integer_pairs(num_rows=20)
    audio[3, 0], audio[17, 2] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"audio_embeds rows \[3, 17\]: NaN or infinite values"):
        retrieval_report(torch.from_numpy(audio), text, soft_k=5)
    with pytest.raises(ValueError, match=r"text_embeds rows \[3, 17\]: NaN or infinite values"):
        retrieval_report(text, audio, soft_k=5)
    # The ranking every caller shares (the trainer's validation included) refuses them too.
    with pytest.raises(ValueError, match=r"queries rows \[3, 17\]: NaN or infinite values"):
        rank_queries(audio, text, np.arange(20), correct_sets(20))
    with pytest.raises(ValueError, match=r"candidates rows \[3, 17\]: NaN or infinite values"):
        rank_queries(text, audio, np.arange(20), correct_sets(20))
    with pytest.raises(ValueError, match=r"cross_lingual\['fr'\] text_embeds rows \[1\]"):
        retrieval_report(text, text, cross_lingual={"fr": (audio[2:4], np.arange(2))}, soft_k=5)
    # Finite, but so large that the scores would overflow float32 into infinity.
    with pytest.raises(ValueError, match="overflow"):
        rank_queries(text * 1e20, text * 1e20, np.arange(20), correct_sets(20))


def test_soft_pool_is_sized_to_a_small_collection():
    audio, text = small_integer_pairs(num_rows=40)
    groups = [i // 4 for i in range(40)]  # 10 sentences read 4 times: 36 wrong candidates per query
    report = retrieval_report(audio, text, groups=groups, soft_k=100, seed=2)
    assert report["soft"]["k"] == 37 and report["soft"]["k_requested"] == 100
    asked = retrieval_report(audio, text, groups=groups, soft_k=37, seed=2)["soft"]
    assert report["soft"] == {**asked, "k_requested": 100}
    # One group holds every row: no query has a wrong candidate, so there is no soft protocol.
    report = retrieval_report(audio, text, groups=[0] * 40, soft_k=100)
    assert report["soft"]["k"] is None and "no wrong candidate" in report["soft"]["note"]
    assert report["audio_to_text"]["hits@1"] == 1  # every candidate is correct
