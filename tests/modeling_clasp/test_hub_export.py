"""The Hub folder loads through remote code in a clean process and reproduces our logits.

The subprocess runs in another directory, without this repository on sys.path, with none of our
packages importable and HF_HUB_OFFLINE=1: only the flat files in the saved folder can make it work.
Nothing here registers our classes with the Auto* factories, which would hide a broken export.
"""

import json
import os
import site
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from configuration_clasp import hub_code_source
from configuration_clasp.configuration_clasp import HUB_CODE_FILES
from tiny import tiny_config, tiny_model, tiny_processor, tone

TEXTS = ["the cat sat on the mat", "le chat est sur la mat", "der hund", "a red car"]
ALLOWED_IMPORTS = {"torch", "transformers", "numpy", "torchaudio"}

# Run with -I -S: no site-packages processing, so no .pth file (an editable install of this
# repository is one) can put our packages on the path; the site-packages folders themselves come
# as the first argument.
CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.path.extend(json.loads(sys.argv.pop(1)))
    import numpy as np, torch
    from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline
    folder = sys.argv[1]
    for name in ("configuration_clasp", "modeling_clasp", "processing_clasp"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable: the test would not prove the export")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    clips = [np.asarray(c, dtype=np.float32) for c in json.load(open(folder + "/clips.json"))]
    texts = json.load(open(folder + "/texts.json"))
    inputs = processor(text=texts, audio=clips, sampling_rate=16000)
    with torch.no_grad():
        logits = model(**inputs).logits_per_audio
    classifier = pipeline("zero-shot-audio-classification", model=folder, trust_remote_code=True)
    ranked = classifier(clips[0], candidate_labels=texts, hypothesis_template="{}")
    print(json.dumps({
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "logits": logits.tolist(),
        "pipeline": ranked,
    }))
    """
)


@pytest.mark.parametrize("speech", ["hubert", "whisper"])
def test_exported_folder_loads_in_clean_process(speech, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(speech, fusion="gating" if speech == "whisper" else "concat")
    model = tiny_model(config).eval()
    processor = tiny_processor(config, tmp_path)
    folder = tmp_path / "hub"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    clips = [tone(1.0, seed=1), tone(0.6, freq=330, seed=2), tone(1.3, freq=150, seed=3)]
    (folder / "clips.json").write_text(json.dumps([c.tolist() for c in clips]))
    (folder / "texts.json").write_text(json.dumps(TEXTS))
    with torch.no_grad():
        expected = model(**processor(text=TEXTS, audio=clips, sampling_rate=16000)).logits_per_audio

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONSAFEPATH="1")
    script = tmp_path / "elsewhere" / "load.py"
    script.parent.mkdir()
    script.write_text(CLEAN_PROCESS)
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(script), json.dumps(site.getsitepackages()), str(folder)],
        cwd=script.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    json_lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert json_lines, result.stdout[-2000:] + result.stderr[-2000:]
    assert "trust_remote_code" not in result.stdout + result.stderr  # nothing asked to be trusted twice
    loaded = json.loads(json_lines[-1])
    assert loaded["config_class"] == "ClaspConfig"
    assert loaded["model_class"] == "ClaspModel"
    assert loaded["processor_class"] == "ClaspProcessor"
    np.testing.assert_allclose(np.array(loaded["logits"]), expected.numpy(), atol=1e-5)
    # The pipeline ranks the candidate texts by the same logits as the model, for clip 0.
    ranked_labels = [row["label"] for row in loaded["pipeline"]]
    assert ranked_labels == [TEXTS[i] for i in expected[0].argsort(descending=True).tolist()]


def test_saved_code_is_the_generated_flat_code(tmp_path):
    """The files a save writes are our packages' modules with sibling imports made relative."""
    config = tiny_config()
    config.save_pretrained(tmp_path)
    for name in HUB_CODE_FILES:
        written = (tmp_path / name).read_text()
        assert written == hub_code_source(name)
        for line in written.splitlines():
            stripped = line.strip()
            if stripped.startswith("from ") and " import " in stripped:
                module = stripped.split()[1]
                assert module.startswith(".") or module.split(".")[0] in ALLOWED_IMPORTS | set(sys.stdlib_module_names), line
            elif stripped.startswith("import "):
                module = stripped.split()[1].split(".")[0]
                assert module in ALLOWED_IMPORTS | set(sys.stdlib_module_names), line
    assert "from .configuration_clasp import ClaspConfig" in (tmp_path / "modeling_clasp.py").read_text()
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_clasp.ClaspModel"
