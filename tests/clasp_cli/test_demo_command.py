"""`clasp demo --size tiny`: the main job end to end on the real offline backbones, in a minute.

espeak-ng speech in two languages → cached Whisper-base / EfficientNet-Lite0 / e5 features →
accelerate training → evaluation against the Whisper ASR baseline → Hub export with a card → plots.
"""

import json

import pytest

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


def test_rerun_skips_finished_stages_and_another_configuration_is_refused(tiny_demo, capsys):
    root, argv = tiny_demo
    before = (root / "work" / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2/7 synthetic multilingual speech (espeak-ng): done already" in out
    assert "4/7 training the fusion head (accelerate): done already" in out
    assert (root / "work" / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert main([*argv[:4], "en,de", *argv[5:]]) == 2  # same work folder, other languages
    assert "holds a demo run of another configuration" in capsys.readouterr().err
