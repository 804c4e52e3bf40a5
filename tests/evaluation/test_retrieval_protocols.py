"""Hard / soft protocols against plain-Python loops, and the report's contract."""

import numpy as np
import pytest
import torch

from evaluation.protocols import correct_sets, rank_queries, retrieval_report, sample_wrong_candidates
from evaluation.retrieval_metrics.rank_metrics import metrics_from_ranks


def small_integer_pairs(num_rows=40, dim=6, seed=0):
    """Embeddings with small integer entries: every dot product is exact in float32 whatever the
    BLAS blocking, and ties are frequent. Not unit vectors; the protocols only take dot products."""
    rng = np.random.default_rng(seed)
    audio = rng.integers(-2, 3, size=(num_rows, dim)).astype(np.float32)
    text = rng.integers(-2, 3, size=(num_rows, dim)).astype(np.float32)
    return audio, text


def reference_hard_ranks(queries, candidates, gold, correct_set):
    ranks = []
    for i in range(len(queries)):
        scores = [float(np.dot(queries[i].astype(np.float64), c)) for c in candidates]
        correct = [j for j in range(len(candidates)) if correct_set[j] == correct_set[gold[i]]]
        best = max(scores[j] for j in correct)
        ranks.append(1 + sum(1 for j in range(len(candidates)) if j not in correct and scores[j] > best))
    return np.array(ranks)


def test_hard_ranks_match_loops_with_shared_sets():
    audio, text = small_integer_pairs()
    correct_set = correct_sets(len(audio), groups=[i // 3 if i < 12 else i for i in range(len(audio))])
    gold = np.arange(len(audio))
    for queries, candidates in ((audio, text), (text, audio)):
        hard, soft = rank_queries(queries, candidates, gold, correct_set)
        assert soft is None
        np.testing.assert_array_equal(hard, reference_hard_ranks(queries, candidates, gold, correct_set))


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
    assert alone[3] == 2  # audio 7 beats audio 3 for text 3 ...
    together, _ = rank_queries(text, audio, np.arange(10), correct_sets(10, texts=texts))
    assert together[3] == 1  # ... but it reads the same sentence, so it is a correct answer too
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
        assert soft[i] == 1 + sum(1 for j in wrong[i] if audio[i] @ text[j] > gold_score)


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
        "audio_to_text", "text_to_audio", "soft", "by_language", "cross_lingual", "timing", "num_queries"
    }
    assert set(report["soft"]) == {"audio_to_text", "text_to_audio", "k"} and report["soft"]["k"] == 5
    assert set(report["by_language"]) == {"en", "de"}
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
    # torch in, numpy in: the same numbers.
    assert retrieval_report(audio, text, languages=languages, soft_k=5, seed=3)["soft"] == report["soft"]


def test_extra_breakdowns_are_opt_in():
    audio, text = small_integer_pairs(num_rows=12)
    report = retrieval_report(audio, text, soft_k=4, breakdowns={"source": ["cv"] * 6 + ["fleurs"] * 6})
    assert set(report["by_source"]) == {"cv", "fleurs"}
    assert report["by_language"] == {} and report["cross_lingual"] == {}
