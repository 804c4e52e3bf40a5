"""The report's readers: terminal table, markdown, model-index entries."""

import re

import numpy as np
import pytest

from evaluation.protocols import retrieval_report
from evaluation.report import format_report, model_index_results, report_to_markdown


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((30, 8)).astype(np.float32)
    text = audio + rng.standard_normal((30, 8)).astype(np.float32)
    report = retrieval_report(
        audio, text, languages=["en"] * 20 + ["fr"] * 10, cross_lingual={"de": (text[:5], np.arange(5))}, soft_k=10
    )
    report["asr_baseline"] = {"audio_to_text": report["audio_to_text"], "text_to_audio": report["text_to_audio"]}
    return report


def test_table_has_one_line_per_result(report):
    lines = format_report(report).splitlines()
    # header, rule, 2 hard, 2 soft, 2 x 2 languages, 2 x 2 monolingual, 1 cross-lingual, 2 ASR,
    # the tie rule, the correct set, footer
    assert len(lines) == 2 + 2 + 2 + 4 + 4 + 1 + 2 + 2 + 1
    text = "\n".join(lines)
    assert "HITS@1" in lines[0] and "language=fr" in text and "text (de) → audio" in text
    assert re.search(r"^monolingual +audio → text +language=en ", text, re.MULTILINE)
    assert lines[-3].startswith("ties: expected") and lines[-2].startswith("correct set: same-group")
    assert lines[-1].startswith("30 pairs")


def test_markdown_is_a_table(report):
    markdown = report_to_markdown(report, title="SpeechBrown test")
    assert markdown.startswith("# SpeechBrown test")
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 + 2 + 4 + 4 + 1 + 2
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert f"| {report['audio_to_text']['hits@1']:.3f} |" in table[2]
    assert "- ties: expected" in markdown and "- correct set: same-group" in markdown


def test_a_soft_pool_smaller_than_asked_is_said(report):
    small = retrieval_report(np.eye(6, dtype=np.float32), np.eye(6, dtype=np.float32), groups=[0, 0, 1, 2, 3, 4],
                             correct_set="same-group", ties="pessimistic")
    assert small["soft"]["k"] == 5 and small["soft"]["k_requested"] == 100
    for text in (format_report(small), report_to_markdown(small)):
        assert "soft k=5" in text and "k=100 was asked for" in text and "ties: pessimistic" in text
    nothing = retrieval_report(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), groups=[0, 0, 0])
    for text in (format_report(nothing), report_to_markdown(nothing)):
        assert "soft k=" not in text and "soft protocol left out" in text


def test_a_report_without_its_rules_is_refused(report):
    old = {key: value for key, value in report.items() if key not in ("ties", "correct_set")}
    for reader in (format_report, report_to_markdown, lambda r: model_index_results(r, dataset_name="x")):
        with pytest.raises(ValueError, match="evaluate again"):
            reader(old)


def test_model_index_entries_go_into_a_model_card(report):
    from huggingface_hub import ModelCardData

    results = model_index_results(report, dataset_name="SpeechBrown", dataset_type="llm-lab/SpeechBrown")
    assert [(r.metric_config, r.metric_type) for r in results] == [
        (direction, key) for direction in ("audio_to_text", "text_to_audio") for key in ("hits@1", "mrr", "mean_rank")
    ]
    card = ModelCardData(model_name="clasp-test", eval_results=results).to_dict()
    (entry,) = card["model-index"][0]["results"]
    assert entry["dataset"]["name"] == "SpeechBrown" and len(entry["metrics"]) == 6
    assert entry["metrics"][0]["value"] == report["audio_to_text"]["hits@1"]
    assert entry["metrics"][0]["args"] == {"correct_set": "same-group", "ties": "expected"}
    assert entry["metrics"][0]["name"] == "HITS@1 (audio → text, same-group)"
