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
    return ClaspModel.from_pretrained(model, **config_overrides), ClaspProcessor.from_pretrained(model)


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
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda", dtype=torch.bfloat16 if args.bf16 else torch.float32)
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
    parser.add_argument("--bf16", action="store_true", help="on a GPU, run the backbones in bfloat16")
    parser.set_defaults(func=run)
