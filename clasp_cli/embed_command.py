"""`clasp embed`: audio files → CLASP embeddings in one safetensors file.

    clasp embed --model DIR --audio FILES_OR_DIRS... --output OUT.safetensors

The file holds the tensor `embeddings` [N, D] (L2-normalised) and, as safetensors metadata,
`paths` (JSON list, row order), `failed` (JSON list of {path, reason}), `model` (the `clasp index`
identity of the model folder: SHA-256 of its config, processor config and weights; a Hub id as
given) and `settings` (JSON: window_s, hop_s, quantize), so embeddings of another model or
setting can be told apart. A file that cannot be
used is reported on stderr and in `failed`, and the others are embedded: exit 0 when at least
one was, 2 when none was (or with --strict, at the first failure). Long audio is embedded by
overlapping windows (see search_clasp/embedding.py), never truncated.

Under `accelerate launch` with several processes, each embeds a length-balanced share on its own
device into OUT.safetensors.shards/ (kept per shard until the end, so a rerun redoes only the
shards a killed process left unfinished), and the main process writes the same file as one
process would (see search_clasp/shards.py).
"""

import json
import os
import shutil
import sys


def register(subparsers):
    parser = subparsers.add_parser("embed", help="embed audio files into a safetensors file")
    parser.add_argument("--model", required=True, help="a CLASP model folder")
    parser.add_argument("--audio", required=True, nargs="+", help="audio files and/or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="the .safetensors file to write")
    parser.add_argument("--batch-size", type=int, default=16, help="windows embedded at once (default 16)")
    parser.add_argument("--strict", action="store_true", help="stop at the first file that cannot be embedded (exit 2)")
    parser.add_argument("--window-s", type=float, default=30.0, help="longer audio is embedded by windows this long (default 30)")
    parser.add_argument("--hop-s", type=float, default=25.0, help="a new window starts every this many seconds (default 25)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="int8: int8 encoders on the CPU, faster at embeddings within cosine 0.99 of fp32")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch
    from safetensors.torch import save
    from tqdm.auto import tqdm

    from data_clasp.files import write_atomically
    from search_clasp.embedding import ClaspEmbedder
    from search_clasp.index import model_identity, read_entries
    from search_clasp.shards import embed_across_processes, process_state

    state = process_state()
    entries, failed = read_entries(args.audio)
    for failure in failed:
        if args.strict:
            raise ValueError(f"{failure['path']}: {failure['reason']}")
        if state.is_main_process:
            print(f"clasp embed: skipped {failure['path']}: {failure['reason']}", file=sys.stderr)
    output = os.path.abspath(args.output)
    paths, embeddings = [], []
    identity = model_identity(args.model) if os.path.isdir(args.model) else args.model
    settings = {"window_s": args.window_s, "hop_s": args.hop_s, "quantize": args.quantize}
    if state.num_processes > 1:
        merged = embed_across_processes(
            [entry.path for entry in entries], f"{output}.shards", json.dumps([identity, args.window_s, args.hop_s, args.quantize]),
            lambda: ClaspEmbedder.from_pretrained(args.model, batch_size=args.batch_size, window_s=args.window_s,
                                                  hop_s=args.hop_s, device=args.device or ("cpu" if args.quantize else state.device),
                                                  quantize=args.quantize),
            strict=args.strict)
        if merged is None:  # not the main process: it writes the result
            return 0
        for failure in merged.failed:
            print(f"clasp embed: skipped {failure['path']}: {failure['reason']}", file=sys.stderr)
        paths, embeddings, failed = merged.paths, [merged.embeddings], failed + merged.failed
    else:
        embedder = ClaspEmbedder.from_pretrained(args.model, batch_size=args.batch_size, window_s=args.window_s,
                                                 hop_s=args.hop_s, device=args.device, quantize=args.quantize)
        with tqdm(total=len(entries), unit="file", desc="Embedding", disable=None) as bar:
            for chunk in embedder.embed_files([entry.path for entry in entries], strict=args.strict, progress=bar):
                for failure in chunk.failed:
                    tqdm.write(f"clasp embed: skipped {failure['path']}: {failure['reason']}", file=sys.stderr)
                paths += chunk.paths
                embeddings.append(chunk.embeddings)
                failed += chunk.failed
    if not paths:
        print(f"clasp embed: error: none of the {len(failed)} inputs could be embedded; nothing written",
              file=sys.stderr)
        return 2
    write_atomically(output, save({"embeddings": torch.cat(embeddings).contiguous()},
                                  metadata={"paths": json.dumps(paths), "failed": json.dumps(failed), "model": identity,
                                            "settings": json.dumps(settings)}))
    shutil.rmtree(f"{output}.shards", ignore_errors=True)  # the shards of a multi-process run: merged now
    print(f"embedded {len(paths)} file(s) into {output}" + (f"; {len(failed)} failed (listed in its metadata)" if failed else ""),
          file=sys.stderr)
    return 0
