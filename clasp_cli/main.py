"""The `clasp` command line: one sub-command per `clasp_cli/*_command.py` module.

Each such module exposes `register(subparsers)`, which adds its parser and sets `func`
to a callable taking the parsed arguments and returning an exit code. Modules are found
by name so that a new command is one new file; they import their heavy dependencies
inside `func`, so `clasp --help` stays fast.
"""

import argparse
import importlib
import os
import pkgutil
import sys

import clasp_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clasp",
        description="CLASP: multilingual speech embeddings that sit next to the text embedding of what was said.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(clasp_cli.__path__), key=lambda m: m.name):
        if info.name.endswith("_command"):
            importlib.import_module(f"clasp_cli.{info.name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, NotADirectoryError, ValueError, OSError) as error:
        # A bad input gets one clear line, not a traceback; CLASP_DEBUG=1 shows the traceback.
        if os.environ.get("CLASP_DEBUG"):
            raise
        print(f"clasp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:  # an optional extra that is not installed: our messages name the pip command
        if "pip install" not in str(error) or os.environ.get("CLASP_DEBUG"):
            raise
        print(f"clasp {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
