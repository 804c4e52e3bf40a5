"""The `evaluate` module against plain-Python definitions, and loading it offline."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def reference_metrics(score_rows, gold, ties="expected"):
    """The definitions, one loop at a time. With one gold per row, a random order of the gold and
    the t wrong candidates tied with it puts the gold on each of ranks g+1 .. g+t+1 (g = wrong
    candidates above) equally often; the pessimistic rule takes the last of them."""
    placements = []
    for row, g in zip(score_rows, gold):
        above = sum(1 for score in row if score > row[g])
        tied = sum(1 for score in row if score == row[g]) - 1
        ranks = list(range(above + 1, above + tied + 2))
        placements.append(ranks if ties == "expected" else ranks[-1:])
    expected_ranks = sorted(sum(ranks) / len(ranks) for ranks in placements)
    middle = len(expected_ranks) // 2
    median = (expected_ranks[middle] if len(expected_ranks) % 2
              else (expected_ranks[middle - 1] + expected_ranks[middle]) / 2)

    def mean(value):  # over the queries, of the mean over each query's placements
        return sum(sum(map(value, ranks)) / len(ranks) for ranks in placements) / len(placements)

    return {
        "hits@1": mean(lambda r: r == 1),
        "recall@5": mean(lambda r: r <= 5),
        "recall@10": mean(lambda r: r <= 10),
        "mrr": mean(lambda r: 1 / r),
        "mean_rank": mean(lambda r: r),
        "median_rank": median,
    }


def reference_threshold_metrics(score_rows, gold, threshold):
    tp = fp = fn = tn = 0
    for row, g in zip(score_rows, gold):
        for j, score in enumerate(row):
            accepted, is_gold = score >= threshold, j == g
            tp += accepted and is_gold
            fp += accepted and not is_gold
            fn += not accepted and is_gold
            tn += not accepted and not is_gold
    f1_match = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    f1_no_match = 2 * tn / (2 * tn + fp + fn) if tn + fp + fn else 0.0
    return {"golden_accuracy": tp / len(gold), "macro_f1": (f1_match + f1_no_match) / 2, "threshold": threshold}


def random_scores(num_queries, num_candidates, seed):
    """Scores on a coarse grid, so that ties with the gold are common."""
    rng = random.Random(seed)
    rows = [[rng.randint(0, 6) / 6 for _ in range(num_candidates)] for _ in range(num_queries)]
    return rows, [rng.randrange(num_candidates) for _ in range(num_queries)]


@pytest.fixture(scope="module")
def metric():
    import evaluate

    return evaluate.load(str(REPO / "evaluation" / "retrieval_metrics"))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_matches_plain_python_with_ties(metric, seed, ties):
    rows, gold = random_scores(37, 23, seed)
    expected = reference_metrics(rows, gold, ties)
    result = metric.compute(predictions=rows, references=gold, ties=ties)
    assert result.keys() == expected.keys()
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key


def test_constant_scores_are_chance_not_perfect(metric):
    # A collapsed model scores every candidate alike: the gold is as likely on any of the 50 ranks.
    result = metric.compute(predictions=[[0.5] * 50] * 8, references=list(range(8)))
    assert result["hits@1"] == pytest.approx(1 / 50) and result["mean_rank"] == pytest.approx(25.5)
    assert metric.compute(predictions=[[0.5] * 50] * 8, references=list(range(8)), ties="pessimistic")["hits@1"] == 0


def test_module_and_protocol_share_one_ranking(metric):
    """The same scores through the `evaluate` module and through evaluation.protocols."""
    import numpy as np

    from evaluation.protocols import correct_sets, rank_queries
    from evaluation.retrieval_metrics.rank_metrics import metrics_from_ranks

    rng = np.random.default_rng(5)
    queries = rng.integers(-1, 2, size=(30, 3)).astype(np.float32)  # few distinct scores: many ties
    candidates = rng.integers(-1, 2, size=(30, 3)).astype(np.float32)
    gold = rng.permutation(30)
    ranks, _ = rank_queries(queries, candidates, gold, correct_sets(30))
    from_module = metric.compute(predictions=(queries @ candidates.T).tolist(), references=gold.tolist())
    assert from_module == pytest.approx(metrics_from_ranks(ranks))
    assert (ranks["tied"] > 0).mean() > 0.5


def test_threshold_metrics_match_plain_python(metric):
    rows, gold = random_scores(19, 11, seed=3)
    expected = reference_threshold_metrics(rows, gold, 0.5)
    result = metric.compute(predictions=rows, references=gold, threshold=0.5)
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key


def test_ranks_config_agrees_with_scores():
    import evaluate

    rows, gold = random_scores(29, 13, seed=4)
    ranks = [sum(score >= row[g] for score in row) for row, g in zip(rows, gold)]  # pessimistic: free of ties
    expected = reference_metrics(rows, gold, ties="pessimistic")
    result = evaluate.load(str(REPO / "evaluation" / "retrieval_metrics"), "ranks").compute(predictions=ranks)
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key


def test_near_ties_survive_arrow(metric):
    # 1 + 1e-12 rounds to 1.0 in float32; stored as float64 it still beats the gold.
    result = metric.compute(predictions=[[1.0, 1.0 + 1e-12]], references=[0])
    assert result["mean_rank"] == 2


def test_rejects_nan_and_ragged_rows(metric):
    rows = [[0.1, 0.2], [0.1, float("nan")], [0.3, 0.2], [float("inf"), 0.0]]
    with pytest.raises(ValueError, match=r"scores rows \[1, 3\]: NaN or infinite values"):
        metric.compute(predictions=rows, references=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="same number"):
        metric.compute(predictions=[[0.1, 0.2], [0.3]], references=[0, 0])


def test_loads_offline_from_another_directory(tmp_path):
    """A fresh process, no network, another cwd, an absolute path; and the relative path from the repo."""
    script = (
        "import evaluate, os, sys\n"
        "repo = sys.argv[1]\n"
        "for path in (os.path.join(repo, 'evaluation', 'retrieval_metrics'), 'evaluation/retrieval_metrics'):\n"
        "    result = evaluate.load(path).compute(predictions=[[0.2, 0.9], [0.1, 0.4]], references=[1, 0])\n"
        "    assert result['hits@1'] == 0.5 and result['mean_rank'] == 1.5, result\n"
        "    os.chdir(repo)  # the second, relative, path is the documented one-liner\n"
        "print('ok')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    completed = subprocess.run(
        [sys.executable, "-c", script, str(REPO)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr[-2000:]
