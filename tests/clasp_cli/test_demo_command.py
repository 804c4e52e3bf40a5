"""`clasp demo --size tiny`: the main job end to end on the real offline backbones, in a minute.

espeak-ng speech in two languages → cached Whisper-base / EfficientNet-Lite0 / e5 features →
accelerate training → evaluation against the Whisper ASR baseline → Hub export with a card → plots.
"""

import json

import pytest
from huggingface_hub import ModelCard

from clasp_cli.demo_command import check_work_dir, summary_table, write_widget_examples
from clasp_cli.main import main


@pytest.fixture(scope="module")
def tiny_demo(backbones, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--size", "tiny", "--languages", "en,fr", "--work-dir", str(root / "work"), "--output", str(root / "out")]
    with pytest.MonkeyPatch.context() as patch:  # the stages are subprocesses: they read the variable
        patch.setenv("CLASP_BACKBONES_DIR", str(backbones["whisper-base"].parent))
        assert main(argv) == 0
        yield root, argv


def test_tiny_demo_produces_a_hub_folder_report_and_plots(tiny_demo):
    root, _ = tiny_demo
    report = json.loads((root / "work" / "eval_results.json").read_text())
    assert report["num_queries"] >= 2 and set(report["by_language"]) <= {"en", "fr"}
    for side in (report, report["asr_baseline"]):
        assert 1 <= side["text_to_audio"]["mean_rank"] <= report["num_queries"]
    assert len(report["asr_baseline"]["transcripts"]) == report["num_queries"]
    out = root / "out"
    for name in ("config.json", "model.safetensors", "modeling_clasp.py", "processor_config.json", "README.md",
                 "eval_results.json", "training_curves.png", "similarity_heatmap.png", "embedding_map.png"):
        assert (out / name).is_file(), name
    assert "model-index" in (out / "README.md").read_text()
    # Real read speech (Debian's Asterisk prompts, installed by `make`): both systems, per language.
    real = json.loads((out / "asterisk_eval.json").read_text())
    assert set(real["monolingual"]) == set(real["asr_baseline"]["monolingual"]) == {"en", "es", "fr", "it", "ru"}
    assert real["correct_set"] == "same-group" and 1 <= real["text_to_audio"]["mean_rank"] <= real["num_queries"]
    # ... and its rows are in the card's model-index beside the synthetic test split's.
    index = ModelCard.load(out / "README.md").data.eval_results
    by_dataset = {}
    for row in index:
        by_dataset.setdefault(row.dataset_name, {})[(row.metric_config, row.metric_type)] = row.metric_value
    assert len(by_dataset) == 2, sorted(by_dataset)
    (asterisk_name,) = [name for name in by_dataset if name.startswith("Asterisk real speech")]
    assert by_dataset[asterisk_name][("text_to_audio", "hits@1")] == real["text_to_audio"]["hits@1"]
    assert by_dataset[asterisk_name][("audio_to_text", "mean_rank")] == real["audio_to_text"]["mean_rank"]
    # CLASP with and without the hubness correction, from the bank training wrote (shipped in the Hub folder).
    for side in (report, real):
        assert side["hubness"]["method"] == "none" and side["csls"]["hubness"]["method"] == "csls"
    k = json.loads((root / "work" / "model" / "training_summary.json").read_text())["hubness"]["csls_k"]
    assert report["csls"]["hubness"]["k"] == real["csls"]["hubness"]["k"] == k
    assert (out / "hubness_bank.safetensors").is_file()
    table = summary_table(report, None, real)
    rows = [f"CLASP + CSLS (k={k}) | {direction}" for direction in ("audio_to_text", "text_to_audio")]
    rows += [f"CLASP (Asterisk, real speech) + CSLS (k={k}), {code} | text_to_audio" for code in ("en", "es", "fr", "it", "ru")]
    for row in rows:
        assert f"| {row} |" in table, row
    # The search stage: every English test clip indexed, searched with the French sentences.
    rows = [json.loads(line) for line in (root / "work" / "data" / "manifest.jsonl").read_text().splitlines()]
    english = [r for r in rows if r["split"] == "test" and r["language"] == "en"]
    search = json.loads((out / "search_en_fr.json").read_text())
    assert search["indexed_clips"] == len(english) >= 1
    assert search["queries"] == len({r["group"] for r in english if "fr" in r["translations"]})
    if search["queries"]:
        assert 0 <= search["top1"] <= search["hits@10"] <= 1
    # The card's widget: the examples the demo picked from the test split, each scored over its labels.
    examples = [json.loads(line) for line in (root / "work" / "widget.jsonl").read_text().splitlines()]
    widget = ModelCard.load(out / "README.md").data.widget or []
    assert len(widget) == len(examples)
    for entry, example in zip(widget, examples):
        assert sorted(o["label"] for o in entry["output"]) == sorted(example["candidate_labels"])


def test_rerun_skips_finished_stages_and_another_configuration_is_refused(tiny_demo, capsys):
    root, argv = tiny_demo
    before = (root / "work" / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2/9 synthetic multilingual speech (espeak-ng): done already" in out
    assert "4/9 training the fusion head (accelerate): done already" in out
    assert "7/9 real read speech: CLASP vs Whisper-ASR on the Asterisk test half (never trained on): done already" in out
    assert "9/9 search: the English test speech indexed, searched with French sentences: done already" in out
    assert (root / "work" / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert main([*argv[:4], "en,de", *argv[5:]]) == 2  # same work folder, other languages
    assert "holds a demo run of another configuration" in capsys.readouterr().err


def test_a_new_training_setting_reuses_the_data_once_the_old_model_is_deleted(tmp_path):
    data, first, second = {"per_language": 5}, {"epochs": 3}, {"epochs": 4}
    model = tmp_path / "model"
    model.mkdir()
    check_work_dir(str(tmp_path), {"data": data, "training": first}, [str(model)])
    check_work_dir(str(tmp_path), {"data": data, "training": first}, [str(model)])  # the same: fine
    with pytest.raises(ValueError, match="delete .*model"):
        check_work_dir(str(tmp_path), {"data": data, "training": second}, [str(model)])
    model.rmdir()
    check_work_dir(str(tmp_path), {"data": data, "training": second}, [str(model)])
    assert json.loads((tmp_path / "demo_config.json").read_text())["training"] == second
    with pytest.raises(ValueError, match="another configuration"):
        check_work_dir(str(tmp_path), {"data": {"per_language": 6}, "training": second}, [str(model)])


def test_widget_labels_are_distinct_and_hold_the_answer_once(tmp_path):
    """Two sentence groups can share a translation ("Site d'administration de Django" for two
    English strings): the card's candidate labels must still be distinct, the answer among them once."""
    rows = [
        {"audio": "a.wav", "language": "en", "group": 1, "translations": {"fr": "Un objet JSON"}},
        {"audio": "b.wav", "language": "en", "group": 2, "translations": {"fr": "Site d'administration"}},
        {"audio": "c.wav", "language": "es", "group": 3, "translations": {"fr": "Site d'administration"}},
        {"audio": "d.wav", "language": "de", "group": 4, "translations": {"fr": "Un objet JSON"}},
        {"audio": "e.wav", "language": "de", "group": 5, "translations": {"fr": "Enregistrer"}},
    ]
    path = tmp_path / "widget.jsonl"
    write_widget_examples(rows, str(path), count=3, distractors=2)
    examples = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["example_title"] for e in examples] == ["en speech, fr labels", "es speech, fr labels", "de speech, fr labels"]
    for example, answer in zip(examples, ["Un objet JSON", "Site d'administration", "Un objet JSON"]):
        labels = example["candidate_labels"]
        assert len(labels) == len(set(labels)) and labels.count(answer) == 1
