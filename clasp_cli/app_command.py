"""`clasp app`: a local web page to search an index by text and to zero-shot classify clips (Gradio).

    clasp app --index INDEX_DIR [--port 7860] [--host 127.0.0.1]

Needs gradio (`pip install gradio`). It listens on 127.0.0.1 unless --host says otherwise.
"""

import os


def register(subparsers):
    parser = subparsers.add_parser("app", help="a local web page for searching an index (Gradio)")
    parser.add_argument("--index", required=True, help="an index folder made by `clasp index`")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--model", default=None, help="the model folder (default: the one stored in the index)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=run)


def run(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the app needs gradio: pip install gradio") from None
    from search_clasp.app import build_app, launch_options
    from search_clasp.search import ClaspSearch

    search = ClaspSearch(args.index, args.model, device=args.device)
    build_app(search).launch(server_name=args.host, server_port=args.port, **launch_options(search))
    return 0
