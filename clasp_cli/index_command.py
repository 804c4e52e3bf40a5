"""`clasp index`: a searchable index of audio files (FAISS + SQLite metadata, see search_clasp/index.py).

    clasp index --model DIR --audio DIR_OR_MANIFEST... --output INDEX_DIR [--add] [--kind flat|ivf|hnsw] [--on-disk]

A manifest is JSONL: {"audio": path, "text"?: transcript, "language"?: code} a line; its text and
language are shown with search results. The build is resumable: rerun the same command after an
interruption and it continues where it stopped. `--add` appends files the index does not hold yet.
`--hubness-bank FILE.safetensors` (from scripts/hubness_sweep.py) stores each file's CSLS penalty
for `clasp search --hubness csls`; the bank is copied into the index.
`accelerate launch [--num_processes N] -m clasp_cli.main index ...` embeds in N processes, each on
its own device, and builds the same index (see search_clasp/shards.py).
"""

import sys


def register(subparsers):
    parser = subparsers.add_parser("index", help="build (or extend) a search index of audio files")
    parser.add_argument("--model", required=True, help="a CLASP model folder")
    parser.add_argument("--audio", required=True, nargs="+", help="audio folders, files, or JSONL manifests")
    parser.add_argument("--output", required=True, help="the index folder")
    parser.add_argument("--add", action="store_true", help="add files to an existing index (those it holds are skipped)")
    parser.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default=None,
                        help="flat: exact, fine up to ~1M files (default); ivf / hnsw: approximate, for more")
    parser.add_argument("--nlist", type=int, default=None, help="ivf: number of clusters (default ~4·√N)")
    parser.add_argument("--on-disk", action="store_const", const=True, default=None,
                        help="ivf: keep the lists in a file searched by memory-mapping, for indexes larger than RAM")
    parser.add_argument("--m", type=int, default=None, help="hnsw: neighbours per node (default 32)")
    parser.add_argument("--window-s", type=float, default=None, help="long audio: window length in seconds (default 30)")
    parser.add_argument("--hop-s", type=float, default=None, help="long audio: seconds between window starts (default 25)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows embedded at once (default 16)")
    parser.add_argument("--chunk-files", type=int, default=64, help="files embedded and committed together (default 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="int8: int8 encoders on the CPU, faster at embeddings within cosine 0.99 of fp32 "
                             "(an index keeps the setting it was built with: --add embeds the same way)")
    parser.add_argument("--hubness-bank", metavar="FILE.safetensors", default=None,
                        help="training audio_embeds / text_embeds: store each file's hubness penalty for "
                             "`clasp search --hubness csls` (see evaluation/hubness.py)")
    parser.add_argument("--csls-k", type=int, default=None,
                        help="with --hubness-bank: neighbours in the bank (default: the bank's csls_k, else 10)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from search_clasp.build import build_index

    if args.csls_k is not None and args.hubness_bank is None:
        raise ValueError("--csls-k goes with --hubness-bank")
    summary = build_index(args.output, args.model, args.audio, add=args.add, kind=args.kind, nlist=args.nlist, m=args.m,
                          window_s=args.window_s, hop_s=args.hop_s, on_disk=args.on_disk, batch_size=args.batch_size,
                          files_per_chunk=args.chunk_files, device=args.device, quantize=args.quantize,
                          hubness_bank=args.hubness_bank, csls_k=args.csls_k)
    if summary is None:  # a process of a multi-process launch other than the main one, which reports
        return 0
    for failure in summary.failed:
        print(f"clasp index: skipped {failure['path']}: {failure['reason']}", file=sys.stderr)
    print(f"{summary.index_dir}: {summary.total} file(s); added {summary.added}, already there {summary.skipped}, "
          f"failed {len(summary.failed)}", file=sys.stderr)
    return 0
