"""`clasp eval`: the paper's retrieval evaluation (hard and soft protocols, both directions,
per language, cross-lingual) of precomputed embeddings or of a model, as JSON and a table.

    clasp eval --embeddings pairs.safetensors --output report.json [--markdown report.md]

The safetensors file holds `audio_embeds` [N, D] and `text_embeds` [N, D], row i of each a
pair; its header metadata may hold JSON lists of N entries: `groups` and `texts` (rows sharing
either count as correct for each other) and `languages` (for the per-language breakdown).
"""

import argparse
import json
import os
import sys
import tempfile


class InputError(Exception):
    """A problem with the user's files, reported as one line and exit code 2."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="retrieval metrics (HITS@1, MRR, meanR, ...) of a model or of precomputed embeddings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", metavar="FILE.safetensors", help="precomputed audio_embeds / text_embeds")
    source.add_argument("--model", metavar="DIR", help="a saved CLASP model to embed --manifest with")
    parser.add_argument(
        "--manifest", metavar="FILE.jsonl", help="with --model: one JSON object per pair (audio, text, language, ...)"
    )
    parser.add_argument("--data", metavar="DIR", help="with --model: where the manifest's audio paths start")
    parser.add_argument(
        "--asr-baseline", action="store_true", help="with --model: also score the ASR-then-text-retrieval baseline"
    )
    parser.add_argument("--output", metavar="OUT.json", required=True, help="where to write the report (atomically)")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the report as a markdown table")
    parser.add_argument("--soft-k", type=int, default=100, help="soft protocol pool: gold + k-1 random (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the soft protocol's random candidates (default 0)")
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    if args.model is not None:
        return evaluate_model(args)
    for flag, value in (("--manifest", args.manifest), ("--data", args.data), ("--asr-baseline", args.asr_baseline)):
        if value:
            args.parser.error(f"{flag} goes with --model, not --embeddings")  # exits with code 2
    try:
        return evaluate_embeddings(args)
    except InputError as error:
        print(f"clasp eval: error: {error}", file=sys.stderr)
        return 2


def evaluate_model(args) -> int:
    raise NotImplementedError("needs the model; see issue 'clasp eval --model' (embed the manifest, then evaluate)")


def evaluate_embeddings(args) -> int:
    from evaluation.protocols import retrieval_report
    from evaluation.report import format_report, report_to_markdown

    audio_embeds, text_embeds, metadata = load_embeddings(args.embeddings)
    try:
        report = retrieval_report(audio_embeds, text_embeds, soft_k=args.soft_k, seed=args.seed, **metadata)
    except ValueError as error:  # e.g. a soft pool larger than the data allows
        raise InputError(f"{args.embeddings}: {error}") from None
    write_atomically(args.output, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        title = f"Retrieval evaluation of {os.path.basename(args.embeddings)}"
        write_atomically(args.markdown, report_to_markdown(report, title=title))
    print(format_report(report))
    return 0


def load_embeddings(path: str):
    """(audio_embeds, text_embeds, metadata kwargs), L2-normalised, or InputError naming the file."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        # framework="pt": numpy cannot hold the bfloat16 a GPU run may have saved.
        with safe_open(path, framework="pt") as f:
            names, header = set(f.keys()), f.metadata() or {}
            missing = {"audio_embeds", "text_embeds"} - names
            if missing:
                raise InputError(f"{path}: missing tensor(s) {sorted(missing)}; found {sorted(names)}")
            audio_embeds, text_embeds = (f.get_tensor(name).float().numpy() for name in ("audio_embeds", "text_embeds"))
    except SafetensorError as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from None
    if audio_embeds.ndim != 2 or audio_embeds.shape != text_embeds.shape or len(audio_embeds) == 0:
        shapes = f"audio_embeds {tuple(audio_embeds.shape)} and text_embeds {tuple(text_embeds.shape)}"
        raise InputError(f"{path}: {shapes} must both be [N, D], N > 0")
    for name, embeds in (("audio_embeds", audio_embeds), ("text_embeds", text_embeds)):
        if not np.isfinite(embeds).all():
            raise InputError(f"{path}: {name} has non-finite values")
        if not (np.linalg.norm(embeds, axis=1) > 0).all():
            raise InputError(f"{path}: {name} has all-zero rows, which have no direction to compare")

    metadata = {}
    for key in ("groups", "texts", "languages"):
        if key in header:
            try:
                values = json.loads(header[key])
            except json.JSONDecodeError as error:
                raise InputError(f"{path}: metadata {key!r} is not JSON ({error})") from None
            if not isinstance(values, list) or len(values) != len(audio_embeds):
                raise InputError(f"{path}: metadata {key!r} must be a JSON list of {len(audio_embeds)} entries")
            metadata[key] = values
    # Cosine similarity, as the paper ranks by; normalising unit vectors again changes nothing.
    audio_embeds /= np.linalg.norm(audio_embeds, axis=1, keepdims=True)
    text_embeds /= np.linalg.norm(text_embeds, axis=1, keepdims=True)
    return audio_embeds, text_embeds, metadata


def write_atomically(path: str, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a report."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is for sharing
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
