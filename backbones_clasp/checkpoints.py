"""Loading a CLASP model with its processor, from a backbone preset or a saved folder, and refusing
a folder whose weights do not fit its config.json (the command line, the trainer, the search index,
the benchmarks and the scripts all load models through here)."""

import os


def load_model_and_processor(model: str, **config_overrides):
    """A backbone preset (offline-base, paper: an untrained head) or a saved CLASP folder →
    (ClaspModel, ClaspProcessor). `config_overrides` (fusion, loss, freezing...) go to the config."""
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
    return (ClaspModel.from_pretrained(model, **config_overrides),
            ClaspProcessor.from_pretrained(model, trust_remote_code=False))


def check_checkpoint(model_dir):
    """Refuse a CLASP folder whose weights do not fit its config.json, naming what differs.

    transformers would start a missing weight at random with only a log line, report a size
    mismatch as a RuntimeError pointing at that log, and a cut-short file as a bare SafetensorError.
    The expected names and shapes come from a model built on the meta device (no memory, no time).
    """
    import glob

    import torch
    from safetensors import SafetensorError, safe_open

    from configuration_clasp import ClaspConfig
    from evaluation.hubness import BANK_FILE
    from modeling_clasp import ClaspModel

    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in ClaspModel(ClaspConfig.from_pretrained(model_dir)).state_dict().items()}
    stored = {}
    weight_files = sorted(path for path in glob.glob(os.path.join(glob.escape(os.fspath(model_dir)), "*.safetensors"))
                          if os.path.basename(path) != BANK_FILE)  # the optional hubness bank is no weight
    if not weight_files:
        raise ValueError(f"{model_dir}: no *.safetensors weights")
    for path in weight_files:
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
