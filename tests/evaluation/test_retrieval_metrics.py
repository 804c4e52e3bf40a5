"""The `evaluate` module against plain-Python definitions, and loading it offline."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def reference_metrics(score_rows, gold):
    """The paper's definitions, one loop at a time."""
    ranks = []
    for row, g in zip(score_rows, gold):
        ranks.append(1 + sum(1 for score in row if score > row[g]))
    ordered = sorted(ranks)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {
        "hits@1": sum(r == 1 for r in ranks) / len(ranks),
        "recall@5": sum(r <= 5 for r in ranks) / len(ranks),
        "recall@10": sum(r <= 10 for r in ranks) / len(ranks),
        "mrr": sum(1 / r for r in ranks) / len(ranks),
        "mean_rank": sum(ranks) / len(ranks),
        "median_rank": median,
    }, ranks


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
def test_matches_plain_python_with_ties(metric, seed):
    rows, gold = random_scores(37, 23, seed)
    expected, _ = reference_metrics(rows, gold)
    result = metric.compute(predictions=rows, references=gold)
    assert result.keys() == expected.keys()
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key


def test_threshold_metrics_match_plain_python(metric):
    rows, gold = random_scores(19, 11, seed=3)
    expected = reference_threshold_metrics(rows, gold, 0.5)
    result = metric.compute(predictions=rows, references=gold, threshold=0.5)
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key


def test_ranks_config_agrees_with_scores():
    import evaluate

    rows, gold = random_scores(29, 13, seed=4)
    expected, ranks = reference_metrics(rows, gold)
    result = evaluate.load(str(REPO / "evaluation" / "retrieval_metrics"), "ranks").compute(predictions=ranks)
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key


def test_near_ties_survive_arrow(metric):
    # 1 + 1e-12 rounds to 1.0 in float32; stored as float64 it still beats the gold.
    result = metric.compute(predictions=[[1.0, 1.0 + 1e-12]], references=[0])
    assert result["mean_rank"] == 2


def test_rejects_nan_and_ragged_rows(metric):
    with pytest.raises(ValueError, match="finite"):
        metric.compute(predictions=[[0.1, float("nan")]], references=[0])
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
