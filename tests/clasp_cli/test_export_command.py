import json
import re
import subprocess
import sys

import numpy as np
import torch
from huggingface_hub import ModelCard

from clean_process import LOAD_AND_SCORE, RecordingHub, run_clean, write_inputs
from modeling_clasp import ClaspModel
from processing_clasp import ClaspProcessor
from tiny import REPO, save_tiny_clasp, tiny_config, tiny_model, tiny_processor, tone

TEXTS = ["the cat sat on the mat", "der hund ist", "el perro"]
# What a CLASP Hub folder holds besides its card.
HUB_FILES = {"config.json", "model.safetensors", "configuration_clasp.py", "modeling_clasp.py", "feature_extraction_clasp.py",
             "processing_clasp.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}


def metrics(value):
    return {"hits@1": value, "recall@5": 1.0, "recall@10": 1.0, "mrr": value, "mean_rank": 1.5, "median_rank": 1.0}


def report():
    both = {"audio_to_text": metrics(0.8), "text_to_audio": metrics(0.7)}
    return {**both, "ties": "expected", "correct_set": "same-text", "soft": {**both, "k": 100, "k_requested": 100},
            "by_language": {"en": both}, "monolingual": {"en": both}, "cross_lingual": {},
            "timing": {"embed_s": 1.0, "score_and_rank_s": 0.1}, "num_queries": 10}


def clasp(*args):
    return subprocess.run([sys.executable, "-m", "clasp_cli.main", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    result = clasp("--help")
    assert result.returncode == 0 and "export" in result.stdout


def test_export_writes_a_hub_folder_with_a_model_card(tmp_path):
    config = tiny_config()
    model = tiny_model(config).eval()
    source = tmp_path / "trained"
    model.save_pretrained(source)
    tiny_processor(config, tmp_path).save_pretrained(source)
    (tmp_path / "eval.json").write_text(json.dumps(report()))

    result = clasp("export", "--model", str(source), "--output", str(tmp_path / "hub"), "--repo", "me/clasp-tiny",
                   "--language", "en,fr", "--dataset", "synthetic-speech", "--eval-results", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr[-3000:]

    hub = tmp_path / "hub"
    for name in ("config.json", "model.safetensors", "modeling_clasp.py", "configuration_clasp.py",
                 "feature_extraction_clasp.py", "processing_clasp.py", "processor_config.json", "README.md"):
        assert (hub / name).exists(), name
    card = ModelCard.load(hub / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-audio-classification"
    assert card.data.language == ["en", "fr"]
    values = {(r.metric_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("audio_to_text", "hits@1")] == 0.8 and values[("text_to_audio", "mrr")] == 0.7
    assert {r.metric_args["correct_set"] for r in card.data.eval_results} == {"same-text"}
    assert "correct set: same-text" in card.text and "ties: expected" in card.text
    assert 'AutoModel.from_pretrained("me/clasp-tiny", trust_remote_code=True)' in card.text
    reloaded = ClaspModel.from_pretrained(hub)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]  # no staging left behind


def trained_folder(tmp_path, text_prefix="query: "):
    """A tiny random CLASP folder whose processor puts e5's prompt before each text."""
    config = tiny_config()
    torch.manual_seed(3)
    source = tmp_path / "trained"
    tiny_model(config).eval().save_pretrained(source)
    processor = tiny_processor(config, tmp_path)
    processor.text_prefix = text_prefix
    processor.save_pretrained(source)
    return source


def widget_file(tmp_path, labels):
    import soundfile

    soundfile.write(tmp_path / "hello.wav", tone(0.8, freq=300, seed=5), 16000)
    (tmp_path / "widget.jsonl").write_text(json.dumps({"audio": "hello.wav", "candidate_labels": labels,
                                                       "example_title": "a tone"}) + "\n")
    return tmp_path / "widget.jsonl"


PIPELINE_SCORES = """
    import soundfile
    from transformers import pipeline
    folder, labels, template = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    samples, rate = soundfile.read(sys.argv[4], dtype="float32")
    assert rate == 16000
    classifier = pipeline("zero-shot-audio-classification", model=folder, trust_remote_code=True)
    print(json.dumps({"ranked": classifier(samples, candidate_labels=labels, hypothesis_template=template)}))
"""


def test_widget_scores_are_the_zero_shot_pipelines(tmp_path):
    """The card's widget shows, for its clip and labels, what the card's own pipeline snippet
    (with its hypothesis_template) gives in a clean process."""
    source = trained_folder(tmp_path)
    labels = ["the cat sat", "der hund ist", "el perro"]
    result = clasp("export", "--model", str(source), "--output", str(tmp_path / "hub"), "--repo", "me/clasp-tiny",
                   "--widget", str(widget_file(tmp_path, labels)))
    assert result.returncode == 0, result.stderr[-3000:]

    hub = tmp_path / "hub"
    card = ModelCard.load(hub / "README.md")
    (entry,) = card.data.widget
    assert entry["src"] == "https://huggingface.co/me/clasp-tiny/resolve/main/samples/01-hello.wav"
    assert (hub / "samples" / "01-hello.wav").read_bytes() == (tmp_path / "hello.wav").read_bytes()
    assert entry["candidate_labels"] == "the cat sat, der hund ist, el perro"
    (template,) = re.findall(r'hypothesis_template="([^"]*)"', card.text)
    assert template == "query: {}"
    ranked = run_clean(tmp_path, PIPELINE_SCORES, hub, json.dumps(labels), template, hub / "samples" / "01-hello.wav")["ranked"]
    assert [o["label"] for o in entry["output"]] == [r["label"] for r in ranked]
    for shown, expected in zip(entry["output"], ranked):
        assert abs(shown["score"] - expected["score"]) <= 1e-4, (shown, expected)  # the card rounds to 4 places


def test_export_push_to_hub_uploads_exactly_what_loads(tmp_path, monkeypatch, capsys):
    """`clasp export --push-to-hub` with huggingface_hub's commit recorded (no network): the repo
    and branch are made, and one commit uploads the Hub folder, which loads in a clean process."""
    from clasp_cli.main import main

    source = trained_folder(tmp_path)
    (source / "checkpoints").mkdir()  # what a training run leaves beside the model must not travel
    (source / "checkpoints" / "step_1.safetensors").write_bytes(b"")
    hub = RecordingHub(tmp_path / "uploaded")
    hub.patch(monkeypatch.setattr)
    code = main(["export", "--model", str(source), "--output", str(tmp_path / "hub"), "--push-to-hub", "me/clasp-tiny",
                 "--private", "--revision", "v1", "--widget", str(widget_file(tmp_path, ["the cat sat", "el perro"]))])
    assert code == 0, capsys.readouterr().err

    assert hub.calls[:2] == [{"call": "create_repo", "repo_id": "me/clasp-tiny", "private": True},
                             {"call": "create_branch", "repo_id": "me/clasp-tiny", "branch": "v1"}]
    (commit,) = hub.calls[2:]
    assert commit["repo_id"] == "me/clasp-tiny" and commit["revision"] == "v1"
    assert commit["files"] == sorted(HUB_FILES | {"README.md", "samples/01-hello.wav"})
    (entry,) = ModelCard.load(tmp_path / "uploaded" / "README.md").data.widget
    assert entry["src"] == "https://huggingface.co/me/clasp-tiny/resolve/v1/samples/01-hello.wav"
    assert 'AutoModel.from_pretrained("me/clasp-tiny", trust_remote_code=True)' in (tmp_path / "uploaded" / "README.md").read_text()

    model, processor = ClaspModel.from_pretrained(source).eval(), ClaspProcessor.from_pretrained(source)
    clips = [tone(0.7, seed=1), tone(0.9, freq=180, seed=2)]
    with torch.no_grad():
        expected = model(**processor(text=TEXTS, audio=clips, sampling_rate=16000)).logits_per_audio.numpy()
    loaded = run_clean(tmp_path, LOAD_AND_SCORE, tmp_path / "uploaded", write_inputs(tmp_path / "inputs.json", clips, TEXTS))
    np.testing.assert_allclose(np.array(loaded["logits"]), expected, atol=1e-5)


def test_push_options_need_push_to_hub(tmp_path):
    result = clasp("export", "--model", str(tmp_path), "--output", str(tmp_path / "hub"), "--revision", "v1")
    assert result.returncode == 2 and "--private and --revision only apply with --push-to-hub" in result.stderr
    assert not (tmp_path / "hub").exists()


def test_a_malformed_repo_id_is_refused_before_anything_is_written(tmp_path):
    save_tiny_clasp(tmp_path / "model")
    result = clasp("export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "hub"), "--push-to-hub", "bad//id")
    assert result.returncode == 2 and "--push-to-hub bad//id:" in result.stderr
    assert not (tmp_path / "hub").exists()


def test_export_of_a_missing_folder_fails_cleanly(tmp_path):
    result = clasp("export", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "hub"))
    assert result.returncode != 0 and not (tmp_path / "hub").exists()


def test_the_model_card_says_which_speech_layers_trained(tmp_path):
    """The card's speech-encoder row: frozen (the paper), its last k layers trained
    (`speech_trainable_layers`), or fine-tuned whole (`freeze_speech_encoder=False`)."""
    from clasp_cli.export_command import build_model_card

    rows = {}
    for name, kwargs in {"frozen": {}, "top": {"speech_trainable_layers": 1}, "whole": {"freeze_speech_encoder": False}}.items():
        config = tiny_config("hubert", **kwargs)
        card = str(build_model_card(ClaspModel(config), tiny_processor(config, tmp_path), "me/clasp", ["en"], "mit", []))
        rows[name] = next(line for line in card.splitlines() if line.startswith("| speech encoder"))
    assert "hubert (frozen;" in rows["frozen"]
    assert "hubert (frozen but its last 1 of 2 layers, trained with the head;" in rows["top"]
    assert "hubert (fine-tuned;" in rows["whole"]


def test_several_reports_each_go_into_model_index_under_their_name_and_into_the_card(tmp_path):
    """--eval-results test.json --eval-results 'Asterisk real speech (test)=asterisk.json': model-index
    holds both datasets' rows with their own figures; each report is copied and has its card section."""
    config = tiny_config()
    source = tmp_path / "trained"
    tiny_model(config).eval().save_pretrained(source)
    tiny_processor(config, tmp_path).save_pretrained(source)
    synthetic, real = report(), {**report(), "split": "validation"}  # a report of an earlier version has no split
    real["audio_to_text"] = metrics(0.25)
    real["text_to_audio"] = metrics(0.35)
    real["correct_set"] = "same-group"
    (tmp_path / "test.json").write_text(json.dumps(synthetic))
    (tmp_path / "asterisk.json").write_text(json.dumps(real))
    result = clasp("export", "--model", str(source), "--output", str(tmp_path / "hub"), "--eval-results",
                   str(tmp_path / "test.json"), "--dataset-name", "synthetic (test)", "--eval-results",
                   f"Asterisk real speech (test)={tmp_path / 'asterisk.json'}")
    assert result.returncode == 0, result.stderr[-3000:]
    card = ModelCard.load(tmp_path / "hub" / "README.md")
    values = {(r.dataset_name, r.metric_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert len(values) == len(card.data.eval_results) == 12  # 2 datasets x 2 directions x 3 metrics
    assert values[("synthetic (test)", "text_to_audio", "hits@1")] == 0.7
    assert values[("Asterisk real speech (test)", "text_to_audio", "hits@1")] == 0.35
    assert values[("Asterisk real speech (test)", "audio_to_text", "hits@1")] == 0.25
    assert {r.metric_args["correct_set"] for r in card.data.eval_results if r.dataset_name.startswith("Asterisk")} == {"same-group"}
    assert {(r.dataset_name, r.dataset_split) for r in card.data.eval_results} == {
        ("synthetic (test)", "test"), ("Asterisk real speech (test)", "validation")}
    assert "### synthetic (test)" in card.text and "### Asterisk real speech (test)" in card.text
    assert json.loads((tmp_path / "hub" / "eval_results.json").read_text())["text_to_audio"]["hits@1"] == 0.7
    assert json.loads((tmp_path / "hub" / "eval_results_2.json").read_text())["text_to_audio"]["hits@1"] == 0.35


def test_a_bad_report_is_named_before_anything_is_written(tmp_path):
    config = tiny_config()
    source = tmp_path / "trained"
    tiny_model(config).eval().save_pretrained(source)
    tiny_processor(config, tmp_path).save_pretrained(source)
    (tmp_path / "good.json").write_text(json.dumps(report()))
    (tmp_path / "not-json.json").write_text("{oops")
    (tmp_path / "other.json").write_text(json.dumps({"hits@1": 0.5}))
    for item, message in ((f"real={tmp_path / 'missing.json'}", "no file"), (str(tmp_path / "not-json.json"), "not a JSON report"),
                          (str(tmp_path / "other.json"), "not a `clasp eval` report"),
                          (f"good={tmp_path / 'good.json'}", "given twice"),
                          (f"={tmp_path / 'good.json'}", "give a name before '='")):
        extra = ["--eval-results", f"good={tmp_path / 'good.json'}"] if "twice" in message else []
        result = clasp("export", "--model", str(source), "--output", str(tmp_path / "hub"), *extra, "--eval-results", item)
        assert result.returncode == 2 and message in result.stderr and item in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "hub").exists()
