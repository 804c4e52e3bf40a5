"""The Hub folder loads through remote code in a clean process (tests/clean_process.py) and
reproduces our logits; a model or processor loaded that way saves and pushes again.
"""

import json
import re
import sys

import numpy as np
import pytest
import torch

from clean_process import LOAD_AND_SCORE, RECORDING_HUB, RecordingHub, run_clean, write_inputs
from modeling_clasp import ClaspModel
from tiny import REPO, tiny_config, tiny_model, tiny_processor, tone

TEXTS = ["the cat sat on the mat", "le chat est sur la mat", "der hund", "a red car"]
ALLOWED_IMPORTS = {"torch", "transformers", "numpy", "torchaudio"}
CODE_FILES = {"configuration_clasp.py", "modeling_clasp.py", "feature_extraction_clasp.py", "processing_clasp.py"}
PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}
# What a model and its processor saved into one folder hold, and nothing else.
HUB_FILES = {"config.json", "model.safetensors"} | CODE_FILES | PROCESSOR_FILES


def clips():
    return [tone(1.0, seed=1), tone(0.6, freq=330, seed=2), tone(1.3, freq=150, seed=3)]


def saved_tiny(folder, speech="hubert", **config_kwargs):
    """A tiny random model and processor saved into `folder`, and the logits they give CLIPS × TEXTS."""
    torch.manual_seed(0)
    config = tiny_config(speech, **config_kwargs)
    model, processor = tiny_model(config).eval(), tiny_processor(config, folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with torch.no_grad():
        return model(**processor(text=TEXTS, audio=clips(), sampling_rate=16000)).logits_per_audio.numpy()


@pytest.mark.parametrize("speech", ["hubert", "whisper"])
def test_exported_folder_loads_in_clean_process(speech, tmp_path):
    folder = tmp_path / "hub"
    expected = saved_tiny(folder, speech, fusion="gating" if speech == "whisper" else "concat")
    loaded = run_clean(tmp_path, LOAD_AND_SCORE, folder, write_inputs(tmp_path / "inputs.json", clips(), TEXTS))
    assert loaded["config_class"] == "ClaspConfig"
    assert loaded["model_class"] == "ClaspModel"
    assert loaded["processor_class"] == "ClaspProcessor"
    np.testing.assert_allclose(np.array(loaded["logits"]), expected, atol=1e-5)
    # The pipeline ranks the candidate texts by the same logits as the model, for clip 0.
    ranked_labels = [row["label"] for row in loaded["pipeline"]]
    assert ranked_labels == [TEXTS[i] for i in np.argsort(-expected[0], kind="stable")]


def flat(package_file):
    """A module of this repository as the Hub holds it: its sibling imports made relative, by hand."""
    source = (REPO / package_file).read_text()
    return re.sub(r"^from (configuration_clasp|modeling_clasp|processing_clasp)\.(\w+) import", r"from .\2 import", source, flags=re.M)


def test_each_save_writes_its_own_flat_code(tmp_path):
    """A save writes the module of the saved object's class and the sibling modules it imports
    (as transformers' custom_object_save), generated from our packages."""
    config = tiny_config()
    config.save_pretrained(tmp_path / "config")
    tiny_model(config).save_pretrained(tmp_path / "model")
    tiny_processor(config, tmp_path).save_pretrained(tmp_path / "processor")
    written = {name: {p.name for p in (tmp_path / name).iterdir() if p.suffix == ".py"} for name in ("config", "model", "processor")}
    assert written == {
        "config": {"configuration_clasp.py"},
        "model": {"configuration_clasp.py", "modeling_clasp.py"},
        "processor": {"configuration_clasp.py", "feature_extraction_clasp.py", "processing_clasp.py"},
    }
    for folder, names in written.items():
        for name in names:
            package = "processing_clasp" if name.startswith(("feature", "processing")) else name[:-3]
            written_source = (tmp_path / folder / name).read_text()
            assert written_source == flat(f"{package}/{name}"), (folder, name)
            for line in written_source.splitlines():
                stripped = line.strip()
                if stripped.startswith("from ") and " import " in stripped:
                    module = stripped.split()[1]
                    assert module.startswith(".") or module.split(".")[0] in ALLOWED_IMPORTS | set(sys.stdlib_module_names), line
                elif stripped.startswith("import "):
                    module = stripped.split()[1].split(".")[0]
                    assert module in ALLOWED_IMPORTS | set(sys.stdlib_module_names), line
    assert "from .configuration_clasp import ClaspConfig" in (tmp_path / "model" / "modeling_clasp.py").read_text()
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_clasp.ClaspModel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "model", "processor"]  # no staging left behind


def test_the_hub_files_hold_no_backbone_building(tmp_path):
    """Remote code rebuilds and runs a saved CLASP; presets, backbone folders and
    sentence-transformers parsing live in backbones_clasp.builder, which is not exported."""
    config = tiny_config()
    tiny_model(config).save_pretrained(tmp_path)
    tiny_processor(config, tmp_path).save_pretrained(tmp_path)
    for path in tmp_path.glob("*.py"):
        source = path.read_text()
        for library_only in ("from_pretrained_backbones", "CLASP_BACKBONES_DIR", "expanduser", "modules.json",
                             "sentence_bert_config", "BACKBONE_PRESETS"):
            assert library_only not in source, (path.name, library_only)


def test_a_failed_save_leaves_no_folder_and_no_partial_file(tmp_path, monkeypatch):
    import transformers.modeling_utils

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tiny_model(tiny_config()).save_pretrained(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


RESAVE = """
    import os, numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    source, out = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    model.save_pretrained(out + "/model")
    processor.save_pretrained(out + "/processor")
    model.save_pretrained(out + "/both")
    processor.save_pretrained(out + "/both")
    print(json.dumps({name: sorted(os.listdir(os.path.join(out, name))) for name in os.listdir(out)}))
"""

LOAD_MODEL_AND_PROCESSOR_APART = """
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(sys.argv[2], trust_remote_code=True)
    data = json.load(open(sys.argv[3]))
    inputs = processor(text=data["texts"], audio=[np.asarray(c, dtype=np.float32) for c in data["clips"]], sampling_rate=16000)
    with torch.no_grad():
        print(json.dumps({"logits": model(**inputs).logits_per_audio.tolist()}))
"""


def test_a_remote_code_load_saves_again_and_loads_in_another_clean_process(tmp_path):
    """Loaded with trust_remote_code (each module then lives in its own hashed folder under
    HF_MODULES_CACHE), the model, the processor, and both into one folder save again; the saved
    folders load in another clean process and give identical logits."""
    expected = saved_tiny(tmp_path / "hub")
    inputs = write_inputs(tmp_path / "inputs.json", clips(), TEXTS)
    resaved = run_clean(tmp_path, RESAVE, tmp_path / "hub", tmp_path / "resaved")
    assert resaved == {
        "model": sorted({"config.json", "model.safetensors", "configuration_clasp.py", "modeling_clasp.py"}),
        "processor": sorted(PROCESSOR_FILES | {"configuration_clasp.py", "feature_extraction_clasp.py", "processing_clasp.py"}),
        "both": sorted(HUB_FILES),
    }
    for name in CODE_FILES:  # the same code as the first save
        assert (tmp_path / "resaved" / "both" / name).read_text() == (tmp_path / "hub" / name).read_text(), name
    both = run_clean(tmp_path, LOAD_AND_SCORE, tmp_path / "resaved" / "both", inputs)
    np.testing.assert_allclose(np.array(both["logits"]), expected, atol=1e-6)
    apart = run_clean(tmp_path, LOAD_MODEL_AND_PROCESSOR_APART, tmp_path / "resaved" / "model", tmp_path / "resaved" / "processor", inputs)
    np.testing.assert_allclose(np.array(apart["logits"]), expected, atol=1e-6)


def readme_recipe() -> str:
    section = (REPO / "README.md").read_text().split("## Fine-tune and push", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_fine_tune_and_push_recipe_uploads_exactly_what_loads(tmp_path):
    """The README's recipe, run as written in a clean process (the model id aside) with the Hub
    recorded (RecordingHub): load with remote code, fine-tune, save, push. What it uploads is the
    Hub folder and nothing else, and loads in another clean process with the fine-tuned logits."""
    original = saved_tiny(tmp_path / "hub")
    inputs = write_inputs(tmp_path / "inputs.json", clips(), TEXTS)
    recipe = readme_recipe()
    assert recipe.count('"your-name/clasp-base"') == 2 and "batches" in recipe
    script = "\n".join([
        RECORDING_HUB,
        "hub = RecordingHub(sys.argv[2])",
        "hub.patch(setattr)",
        "import os, numpy as np",
        "data = json.load(open(sys.argv[3]))",
        "clips = [np.asarray(c, dtype=np.float32) for c in data['clips']]",
        "batches = [(clips, data['texts'][:len(clips)])]",
        recipe.replace('"your-name/clasp-base"', "sys.argv[1]"),
        "with torch.no_grad():",
        "    logits = model(**processor(text=data['texts'], audio=clips, sampling_rate=16000)).logits_per_audio",
        "print(json.dumps({'logits': logits.tolist(), 'calls': hub.calls, 'saved': sorted(os.listdir('clasp-finetuned'))}))",
    ])
    pushed = run_clean(tmp_path, script, tmp_path / "hub", tmp_path / "uploaded", inputs)

    assert pushed["saved"] == sorted(HUB_FILES)
    commits = [call for call in pushed["calls"] if call["call"] == "create_commit"]
    assert [c["repo_id"] for c in commits] == ["your-name/clasp-finetuned"] * 2
    assert commits[0]["files"] == sorted({"config.json", "model.safetensors", "configuration_clasp.py", "modeling_clasp.py", "README.md"})
    assert commits[1]["files"] == sorted(PROCESSOR_FILES | {"configuration_clasp.py", "feature_extraction_clasp.py",
                                                            "processing_clasp.py", "README.md"})
    assert sorted(p.name for p in (tmp_path / "uploaded").iterdir()) == sorted(HUB_FILES | {"README.md"})
    fine_tuned = np.array(pushed["logits"])
    assert np.abs(fine_tuned - original).max() > 1e-4  # the step changed the head
    loaded = run_clean(tmp_path, LOAD_AND_SCORE, tmp_path / "uploaded", inputs)
    np.testing.assert_allclose(np.array(loaded["logits"]), fine_tuned, atol=1e-6)


def test_save_pretrained_with_push_to_hub_saves_then_pushes(tmp_path, monkeypatch):
    """transformers' save_pretrained(folder, push_to_hub=True, repo_id=...) saves the folder and
    pushes the same files (with a card) to repo_id, with the Hub recorded."""
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import EntryNotFoundError

    def new_repo_has_no_card(*args, **kwargs):
        raise EntryNotFoundError("README.md")

    monkeypatch.setattr(ModelCard, "load", new_repo_has_no_card)
    hub = RecordingHub(tmp_path / "uploaded")
    hub.patch(monkeypatch.setattr)
    tiny_model(tiny_config()).save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="me/clasp-tiny", private=True)
    model_files = {"config.json", "model.safetensors", "configuration_clasp.py", "modeling_clasp.py"}
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(model_files)
    assert hub.calls[0] == {"call": "create_repo", "repo_id": "me/clasp-tiny", "private": True}
    (commit,) = [call for call in hub.calls if call["call"] == "create_commit"]
    assert commit["repo_id"] == "me/clasp-tiny" and commit["files"] == sorted(model_files | {"README.md"})


def test_a_subclass_saves_the_code_auto_map_names(tmp_path):
    class MyClasp(ClaspModel):  # defined in a test module: not a file the Hub folder could hold
        pass

    MyClasp(tiny_config()).save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").glob("*.py")) == ["configuration_clasp.py", "modeling_clasp.py"]
    assert (tmp_path / "saved" / "modeling_clasp.py").read_text() == flat("modeling_clasp/modeling_clasp.py")
