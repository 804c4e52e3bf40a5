"""Loading a CLASP model with its processor, from a backbone preset or a saved folder, and refusing
a folder whose weights do not fit its config.json (the command line, the trainer, the search index,
the benchmarks and the scripts all load models through here)."""

import json
import os


def weight_files(model_dir) -> list[str]:
    """The safetensors files transformers loads from `model_dir`: model.safetensors, or the shards
    model.safetensors.index.json names. Other *.safetensors beside them (a hubness bank, a user's
    embeddings) are not weights. ValueError naming the folder and the file when one is missing."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    index = os.path.join(model_dir, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index}: not a safetensors index with a weight_map ({error!r})") from None
    else:
        names = [SAFE_WEIGHTS_NAME]
    paths = [os.path.join(model_dir, name) for name in names]
    missing = [name for name, path in zip(names, paths) if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"{model_dir}: no weights file {', '.join(missing)}")
    return paths


def load_model_and_processor(model: str, **config_overrides):
    """A backbone preset (offline-base, paper: an untrained head) or a saved CLASP folder →
    (ClaspModel, ClaspProcessor). `config_overrides` (fusion, loss, freezing...) go to the config; the
    processor follows its `speech_whisper_padding`."""
    from backbones_clasp.builder import BACKBONE_PRESETS, build_clasp
    from modeling_clasp import ClaspModel
    from processing_clasp import ClaspProcessor

    if model in BACKBONE_PRESETS:
        return build_clasp(preset=model, **config_overrides)
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise FileNotFoundError(f"--model {model}: neither a preset ({', '.join(BACKBONE_PRESETS)}) nor a CLASP folder")
    if not config_overrides:  # overrides (a new head, another pooling) start some weights afresh on purpose
        check_checkpoint(model)
    # Our own classes read the folder, and its tokenizer is a standard one: no remote code to trust.
    loaded = ClaspModel.from_pretrained(model, **config_overrides)
    # The processor pads Whisper's input as the model (maybe overridden) runs it.
    padding = {"whisper_padding": loaded.config.speech_whisper_padding} if loaded.config.speech_is_whisper else {}
    return loaded, ClaspProcessor.from_pretrained(model, trust_remote_code=False, **padding)


def check_checkpoint(model_dir):
    """Refuse a CLASP folder whose weights do not fit its config.json, naming what differs.

    transformers would start a missing weight at random with only a log line, report a size
    mismatch as a RuntimeError pointing at that log, and a cut-short file as a bare SafetensorError.
    The expected names and shapes come from a model built on the meta device (no memory, no time).
    """
    import torch
    from safetensors import SafetensorError, safe_open

    from configuration_clasp import ClaspConfig
    from modeling_clasp import ClaspModel

    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in ClaspModel(ClaspConfig.from_pretrained(model_dir)).state_dict().items()}
    stored = {}
    for path in weight_files(model_dir):
        try:
            with safe_open(path, framework="pt") as f:
                stored.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
        except SafetensorError as error:
            raise ValueError(f"{path}: not a readable safetensors file, truncated or damaged ({error})") from None
    problems = [f"{name}: {stored[name]} in the weights, {shape} for config.json"
                for name, shape in expected.items() if name in stored and stored[name] != shape]
    problems += [f"{name}: in config.json's model, not in the weights" for name in expected if name not in stored]
    problems += [f"{name}: in the weights, not in config.json's model" for name in stored if name not in expected]
    if problems:
        raise ValueError(f"{model_dir}: the weights do not match config.json (another model's checkpoint?); "
                         f"{len(problems)} difference(s): " + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
