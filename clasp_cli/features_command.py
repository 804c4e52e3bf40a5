"""`clasp features`: run the frozen backbones once over a dataset and cache their outputs."""

import os


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

    from backbones_clasp.checkpoints import load_model_and_processor
    from data_clasp.features import build_feature_cache

    data_dir = os.path.join(args.data, "dataset") if os.path.isdir(os.path.join(args.data, "dataset")) else args.data
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data {args.data}: no such dataset folder")
    data = load_from_disk(data_dir)
    splits = args.splits.split(",") if args.splits else list(data)
    missing = [s for s in splits if s not in data]
    if missing:
        raise ValueError(f"--data {args.data}: no split(s) {missing}; it has {sorted(data)}")
    overrides = {} if args.speech_trainable_layers is None else {"speech_trainable_layers": args.speech_trainable_layers}
    if args.speech_whisper_padding is not None:
        overrides["speech_whisper_padding"] = args.speech_whisper_padding
    model, processor = load_model_and_processor(args.model, **overrides)
    data = drop_clips_too_long(data, splits, processor.feature_extractor)
    model.eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16 if args.bf16 else torch.float32)
    output = args.output or os.path.join(args.data, "features-" + os.path.basename(os.path.normpath(args.model)))
    build_feature_cache(model, processor, data, output, splits=splits, batch_size=args.batch_size,
                        chunk_size=args.chunk_size, model_name=args.model, augment=args.augment,
                        augment_seed=args.augment_seed)
    return 0


def copies(value: str) -> int:
    """--augment's type: a count of 0 or more."""
    import argparse

    if not value.lstrip("-").isdigit() or int(value) < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: the number of augmented copies of each train clip is 0 or more")
    return int(value)


def register(subparsers):
    parser = subparsers.add_parser("features", help="cache the frozen backbones' features of a dataset",
                                   description=__doc__)
    parser.add_argument("--model", default="offline-base", help="a backbone preset or a CLASP folder")
    parser.add_argument("--data", required=True, help="a `clasp data` folder (or a saved DatasetDict)")
    parser.add_argument("--output", help="the cache folder (default: DATA/features-MODEL)")
    parser.add_argument("--splits", help="comma-separated splits (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=256, help="rows per resumable chunk")
    parser.add_argument("--speech-trainable-layers", type=int, default=None, metavar="K",
                        help="cache the hidden state entering the speech encoder's last K layers, for a model "
                             "that trains them (train_accelerate.py --speech_trainable_layers K); default: --model's")
    parser.add_argument("--speech-whisper-padding", choices=("real", "max_length"), default=None,
                        help="Whisper on the clip's real length or on 30 s (zero-padded, as pretrained), for a model "
                             "that runs it so (train_accelerate.py --config_overrides speech_whisper_padding=max_length); "
                             "default: --model's")
    parser.add_argument("--augment", type=copies, default=0, metavar="K",
                        help="K augmented copies of each train clip (noise, room, speed, telephone; seeded by the "
                             "clip, the copy and --augment-seed), one of which the trainer takes per clip and epoch; "
                             "validation and test are left as they are (default 0: none)")
    parser.add_argument("--augment-seed", type=int, default=0, help="seed of the augmented copies (default 0)")
    parser.add_argument("--bf16", action="store_true", help="run the backbones in bfloat16 (on a GPU; on a CPU it works but is slower)")
    parser.set_defaults(func=run)
