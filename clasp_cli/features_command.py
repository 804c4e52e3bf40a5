"""`clasp features`: run the frozen backbones once over a dataset and cache their outputs."""

import os


def load_model_and_processor(model: str, **config_overrides):
    """A backbone preset (offline-base, paper: an untrained head) or a saved CLASP folder →
    (ClaspModel, ClaspProcessor). `config_overrides` (fusion, loss, freezing...) go to the config."""
    from modeling_clasp import ClaspModel
    from modeling_clasp.modeling_clasp import BACKBONE_PRESETS, resolve_backbones
    from processing_clasp import ClaspProcessor

    if model in BACKBONE_PRESETS:
        return (ClaspModel.from_pretrained_backbones(preset=model, **config_overrides),
                ClaspProcessor.from_pretrained_backbones(**resolve_backbones(None, None, None, model)))
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


def drop_clips_too_long(data, splits, feature_extractor):
    """`data` without the rows whose clip the speech encoder cannot take (Whisper: 30 s), each named on stderr.

    `clasp data` keeps only clips that decode, are finite and non-empty, but a length limit belongs to
    the model; build_feature_cache would stop at the first such clip. Lengths come from file
    headers, without decoding, and a dataset with nothing to drop is passed on unchanged (its
    fingerprint, and so a cache already built from it, stays valid).
    """
    import io
    import math
    import sys

    import soundfile
    from datasets import Audio

    if feature_extractor.max_samples is None:
        return data
    rate = feature_extractor.sampling_rate
    for split in splits:
        too_long = {}
        cells = data[split].cast_column("audio", Audio(decode=False)).select_columns(["audio"])
        for index, audio in enumerate(row["audio"] for row in cells):
            try:
                info = soundfile.info(io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio["path"])
                samples = math.ceil(info.frames * rate / info.samplerate)  # its length once resampled
            except Exception:  # a format only FFmpeg reads: the feature extractor will judge it
                continue
            if samples > feature_extractor.max_samples:
                too_long[index] = f"{split}[{index}] ({audio.get('path') or 'bytes'}): {samples / rate:.1f} s"
        if too_long:
            for name in too_long.values():
                print(f"clasp features: skipped {name} is longer than the speech encoder's "
                      f"{feature_extractor.max_samples / rate:.0f} s", file=sys.stderr)
            data[split] = data[split].select([i for i in range(len(data[split])) if i not in too_long])
    return data


def run(args) -> int:
    import torch
    from datasets import load_from_disk

    from data_clasp.features import build_feature_cache

    data_dir = os.path.join(args.data, "dataset") if os.path.isdir(os.path.join(args.data, "dataset")) else args.data
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data {args.data}: no such dataset folder")
    data = load_from_disk(data_dir)
    splits = args.splits.split(",") if args.splits else list(data)
    missing = [s for s in splits if s not in data]
    if missing:
        raise ValueError(f"--data {args.data}: no split(s) {missing}; it has {sorted(data)}")
    model, processor = load_model_and_processor(args.model)
    data = drop_clips_too_long(data, splits, processor.feature_extractor)
    model.eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16 if args.bf16 else torch.float32)
    output = args.output or os.path.join(args.data, "features-" + os.path.basename(os.path.normpath(args.model)))
    build_feature_cache(model, processor, data, output, splits=splits, batch_size=args.batch_size,
                        chunk_size=args.chunk_size, model_name=args.model)
    return 0


def register(subparsers):
    parser = subparsers.add_parser("features", help="cache the frozen backbones' features of a dataset",
                                   description=__doc__)
    parser.add_argument("--model", default="offline-base", help="a backbone preset or a CLASP folder")
    parser.add_argument("--data", required=True, help="a `clasp data` folder (or a saved DatasetDict)")
    parser.add_argument("--output", help="the cache folder (default: DATA/features-MODEL)")
    parser.add_argument("--splits", help="comma-separated splits (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=256, help="rows per resumable chunk")
    parser.add_argument("--bf16", action="store_true", help="run the backbones in bfloat16 (on a GPU; on a CPU it works but is slower)")
    parser.set_defaults(func=run)
