"""A checkpoint saved by an earlier version (tests/fixtures/clasp_tiny_v1, see its README.md) loads
with today's code, through our packages and through the Hub's remote code in a clean process, and
gives the outputs that version gave on the same inputs."""

import json
import logging
import shutil
import warnings

import numpy as np
import torch
from safetensors.numpy import load_file

from clean_process import run_clean
from configuration_clasp import ClaspConfig, save_hub_code
from modeling_clasp import ClaspModel
from processing_clasp import ClaspProcessor
from tiny import REPO

FIXTURE = REPO / "tests" / "fixtures" / "clasp_tiny_v1"
SAVED_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json")


def fixture_inputs():
    """(clips, texts, expected {audio_embeds, text_embeds, logits_per_audio}) as the fixture stores them."""
    stored = load_file(FIXTURE / "expected_outputs.safetensors")
    clips = [stored.pop(name) for name in sorted(k for k in stored if k.startswith("clip_"))]
    return clips, json.loads((FIXTURE / "texts.json").read_text()), stored


def assert_outputs_match(outputs, expected):
    for name, array in expected.items():
        np.testing.assert_allclose(np.asarray(outputs[name]), array, atol=1e-5, err_msg=name)


def test_an_earlier_checkpoint_loads_without_warnings_and_gives_its_outputs(caplog):
    clips, texts, expected = fixture_inputs()
    logger = logging.getLogger("transformers")  # transformers' loggers do not propagate to pytest's
    logger.addHandler(caplog.handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = ClaspModel.from_pretrained(FIXTURE).eval()
            processor = ClaspProcessor.from_pretrained(FIXTURE)
    finally:
        logger.removeHandler(caplog.handler)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    with torch.no_grad():
        outputs = model(**processor(text=texts, audio=clips, sampling_rate=16000))
    assert_outputs_match({name: getattr(outputs, name) for name in expected}, expected)


LOAD_AND_EMBED = """
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    folder, data = sys.argv[1], json.load(open(sys.argv[2]))
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    clips = [np.asarray(c, dtype=np.float32) for c in data["clips"]]
    with torch.no_grad():
        out = model(**processor(text=data["texts"], audio=clips, sampling_rate=16000))
    print(json.dumps({name: getattr(out, name).tolist() for name in ("audio_embeds", "text_embeds", "logits_per_audio")}))
"""


def test_an_earlier_checkpoint_loads_through_todays_remote_code_in_a_clean_process(tmp_path):
    """The fixture's weights and settings with the flat code our classes export today (not the
    code of the version that saved them)."""
    clips, texts, expected = fixture_inputs()
    folder = tmp_path / "hub"
    folder.mkdir()
    for name in SAVED_FILES:
        shutil.copyfile(FIXTURE / name, folder / name)
    save_hub_code(folder, ClaspModel)
    save_hub_code(folder, ClaspProcessor)
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"clips": [c.tolist() for c in clips], "texts": texts}))
    assert_outputs_match(run_clean(tmp_path, LOAD_AND_EMBED, folder, inputs), expected)


def test_preprocessing_fields_of_an_earlier_config_are_dropped_on_load(tmp_path):
    """Earlier versions kept preprocessing settings in config.json too, where no model code read
    them (128 mels there, 16 in the processor that was used); the processor's files are their one
    home, so they are neither attributes of the loaded config nor written again by its next save."""
    earlier = json.loads((FIXTURE / "config.json").read_text())
    assert earlier["spectrogram_n_mels"] == 128 and earlier["text_query_prefix"] == "query: "
    config = ClaspConfig.from_pretrained(FIXTURE)
    config.save_pretrained(tmp_path)
    resaved = json.loads((tmp_path / "config.json").read_text())
    for name in ("text_query_prefix", "text_passage_prefix", "text_max_length", "sampling_rate", "spectrogram_n_fft",
                 "spectrogram_hop_length", "spectrogram_n_mels", "spectrogram_top_db"):
        assert name in earlier and not hasattr(config, name) and name not in resaved, name
    assert resaved["fusion"] == "gating" and resaved["speech_pooling"] == "attention"
