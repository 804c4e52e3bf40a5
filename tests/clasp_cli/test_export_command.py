import json
import subprocess
import sys

import torch
from huggingface_hub import ModelCard

from modeling_clasp import ClaspModel
from tiny import REPO, tiny_config, tiny_model, tiny_processor


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


def test_widget_examples_carry_this_models_scores(tmp_path):
    import soundfile

    from processing_clasp import ClaspProcessor
    from tiny import tone

    config = tiny_config()
    torch.manual_seed(3)
    source = tmp_path / "trained"
    tiny_model(config).eval().save_pretrained(source)
    tiny_processor(config, tmp_path).save_pretrained(source)
    soundfile.write(tmp_path / "hello.wav", tone(0.8, rate=22050), 22050)
    labels = ["the cat sat", "der hund ist", "el perro"]
    (tmp_path / "widget.jsonl").write_text(json.dumps({"audio": "hello.wav", "candidate_labels": labels,
                                                       "example_title": "a tone"}) + "\n")
    result = clasp("export", "--model", str(source), "--output", str(tmp_path / "hub"), "--repo", "me/clasp-tiny",
                   "--widget", str(tmp_path / "widget.jsonl"))
    assert result.returncode == 0, result.stderr[-3000:]

    hub = tmp_path / "hub"
    (entry,) = ModelCard.load(hub / "README.md").data.widget
    assert entry["src"] == "https://huggingface.co/me/clasp-tiny/resolve/main/samples/01-hello.wav"
    assert (hub / "samples" / "01-hello.wav").read_bytes() == (tmp_path / "hello.wav").read_bytes()
    assert entry["candidate_labels"] == "the cat sat, der hund ist, el perro"
    # The scores are this model's: softmax of its logits over the labels (with the encoder's prompt).
    model, processor = ClaspModel.from_pretrained(hub).eval(), ClaspProcessor.from_pretrained(hub)
    samples, rate = soundfile.read(tmp_path / "hello.wav", dtype="float32")
    with torch.no_grad():
        logits = model(**processor(text=[processor.text_prefix + label for label in labels], audio=[samples],
                                   sampling_rate=rate)).logits_per_audio[0]
    expected = dict(zip(labels, logits.softmax(dim=-1).tolist()))
    assert [o["label"] for o in entry["output"]] == sorted(labels, key=lambda label: -expected[label])
    for output in entry["output"]:
        assert abs(output["score"] - expected[output["label"]]) < 1e-3


def test_export_of_a_missing_folder_fails_cleanly(tmp_path):
    result = clasp("export", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "hub"))
    assert result.returncode != 0 and not (tmp_path / "hub").exists()
