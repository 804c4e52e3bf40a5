"""`clasp eval`: the paper's retrieval evaluation (hard and soft protocols, both directions,
per language, cross-lingual) of a model or of precomputed embeddings, as JSON and a table.

    clasp eval --model DIR --manifest pairs.jsonl --output report.json [--asr-baseline]
    clasp eval --model DIR --data DATASET_DIR [--split test] --output report.json
    clasp eval --embeddings pairs.safetensors --output report.json [--markdown report.md]

A manifest has one JSON object per line: {"audio": path, "text": ..., "language": code} and
optionally "source", "category", "group" and "translations" ({code: text}, which become
cross-lingual text queries). Relative audio paths start at the manifest's folder. A clip that
cannot be read is reported (stderr and "failed" in the report) and left out.

--correct-set says which candidates count as correct for a query (same-group: the readings of its
sentence group in any language, the default; same-text: identical texts only), --ties how tied
scores count (expected: the mean over random orders of the tied candidates, the default;
pessimistic). Both are recorded in the report. On a small collection the soft protocol's k is
lowered to what every query can fill (report["soft"]["k"], with "k_requested").

--hubness csls ranks by CSLS (Conneau et al., ICLR 2018): 2 cos(q, c) less each candidate's mean
cosine to its k nearest rows of --hubness-bank, a safetensors file of training-pair embeddings
(`audio_embeds`, `text_embeds` [B, D]; scripts/hubness_sweep.py writes one with the k chosen on
validation in its header, which --csls-k overrides); with --model, the default bank is the
model folder's hubness_bank.safetensors. It discounts "hub" candidates that sit near many
queries; recorded in the report as report["hubness"]. The ASR baseline stays uncorrected.
--also-csls (with --model) keeps the report by cosine and adds the CSLS ranking of the same
embeddings as report["csls"] (a whole report of its own): on and off from one encoding.

--asr-baseline adds the cascade the paper compares with: Whisper transcribes each clip (language
forced from the row), the same model's text encoder embeds the transcripts, and the transcripts
stand in for the audio in the same protocol; with its WER and seconds per clip.

The safetensors file of --embeddings holds `audio_embeds` [N, D] and `text_embeds` [N, D], row i
of each a pair; its header metadata may hold JSON lists of N entries: `groups` and `texts` (rows
sharing either count as correct for each other) and `languages` (for the per-language breakdown).
"""

import argparse
import json
import os
import sys

from data_clasp.files import write_atomically


class InputError(Exception):
    """A problem with the user's files, reported as one line and exit code 2."""


def register(subparsers) -> None:
    from evaluation.protocols import CORRECT_SETS, HUBNESS
    from evaluation.retrieval_metrics.rank_metrics import TIES

    parser = subparsers.add_parser(
        "eval",
        help="retrieval metrics (HITS@1, MRR, meanR, ...) of a model or of precomputed embeddings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", metavar="FILE.safetensors", help="precomputed audio_embeds / text_embeds")
    source.add_argument("--model", metavar="DIR", help="a saved CLASP model to embed --manifest or --data with")
    pairs = parser.add_mutually_exclusive_group()
    pairs.add_argument("--manifest", metavar="FILE.jsonl", help="with --model: one JSON object per pair (audio, text, language, ...)")
    pairs.add_argument("--data", metavar="DIR", help="with --model: a dataset from `clasp data` (DIR/dataset)")
    parser.add_argument("--split", default="test", help="with --data: which split (default test)")
    parser.add_argument("--sources", metavar="CORPUS[,CORPUS...]", default=None,
                        help="with --model: evaluate only the pairs of these text corpora (a row's `source` "
                             "'espeak:fortunes-de' is corpus 'fortunes-de', picked by 'fortunes-de' or 'fortunes'), "
                             "among themselves: e.g. a source that `train_accelerate.py --hold_out_sources` never trained on")
    parser.add_argument(
        "--asr-baseline", action="store_true", help="with --model: also score the ASR-then-text-retrieval baseline"
    )
    parser.add_argument(
        "--asr-model", metavar="DIR", help="Whisper folder for the ASR baseline; implies --asr-baseline (default: the offline whisper-base)"
    )
    parser.add_argument("--asr-num-beams", type=int, default=1,
                        help="beam width of the ASR baseline's decoding (default 1: greedy; openai's whisper uses 5)")
    parser.add_argument("--asr-cache", metavar="FILE.jsonl",
                        help="keep the ASR baseline's transcripts here, one line a clip: a killed evaluation resumes, "
                             "and another model evaluated on the same clips reuses them")
    parser.add_argument("--batch-size", type=int, default=16, help="clips / texts per batch (default 16)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="int8: with --model: int8 encoders on the CPU, faster at embeddings within cosine 0.99 of fp32")
    parser.add_argument("--output", metavar="OUT.json", required=True, help="where to write the report (atomically)")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the report as a markdown table")
    parser.add_argument("--correct-set", choices=CORRECT_SETS, default="same-group",
                        help="which candidates count as correct: same-group = any reading of the query's sentence "
                             "group in any language, or an identical text (default); same-text = identical texts only, "
                             "the duplicates the paper counted")
    parser.add_argument("--ties", choices=TIES, default="expected",
                        help="tied scores: expected = the mean over random orders of the tied candidates (default); "
                             "pessimistic = every tied wrong candidate ranks first")
    parser.add_argument("--soft-k", type=int, default=100,
                        help="soft protocol pool: gold + k-1 random (default 100; lowered to what a small collection allows)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the soft protocol's random candidates (default 0)")
    parser.add_argument("--hubness", choices=HUBNESS, default="none",
                        help="none = rank by cosine (default); csls = hubness-corrected scores, needs --hubness-bank")
    parser.add_argument("--hubness-bank", metavar="FILE.safetensors",
                        help="with --hubness csls: training audio_embeds / text_embeds (see scripts/hubness_sweep.py; "
                             "default with --model: MODEL/hubness_bank.safetensors)")
    parser.add_argument("--csls-k", type=int, default=None,
                        help="with --hubness csls: neighbours in the bank (default: the bank's csls_k, else 10)")
    parser.add_argument("--also-csls", action="store_true",
                        help="with --model: rank by cosine, and add the CSLS ranking of the same embeddings as "
                             "report['csls'] (bank and k as --hubness csls takes them)")
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    if args.also_csls and (args.model is None or args.hubness == "csls"):
        args.parser.error("--also-csls goes with --model and a cosine report (not --embeddings, not --hubness csls)")
    csls = args.hubness == "csls" or args.also_csls
    if csls and args.hubness_bank is None:
        if args.model is None:
            args.parser.error("--hubness csls needs --hubness-bank FILE.safetensors")
        from evaluation.hubness import BANK_FILE

        args.hubness_bank = os.path.join(args.model, BANK_FILE)
    if not csls and (args.hubness_bank or args.csls_k is not None):
        args.parser.error("--hubness-bank and --csls-k go with --hubness csls or --also-csls")
    hubness = hubness_options(args)  # a bad bank is refused before a model loads
    if args.model is not None:
        return evaluate_model(args, hubness)
    model_only = (("--manifest", args.manifest), ("--data", args.data), ("--asr-baseline", args.asr_baseline),
                  ("--asr-model", args.asr_model), ("--asr-cache", args.asr_cache), ("--quantize", args.quantize),
                  ("--sources", args.sources))
    for flag, value in model_only:
        if value:
            args.parser.error(f"{flag} goes with --model, not --embeddings")  # exits with code 2
    try:
        return evaluate_embeddings(args, hubness)
    except InputError as error:
        print(f"clasp eval: error: {error}", file=sys.stderr)
        return 2


def evaluate_model(args, hubness: dict) -> int:
    import torch

    from backbones_clasp.checkpoints import load_model_and_processor
    from evaluation.model_report import model_report
    from evaluation.pairs import dataset_pairs, manifest_pairs, pairs_of_sources
    from evaluation.report import format_report, report_to_markdown
    from search_clasp.quantization import check_quantize, quantize_model

    if (args.manifest is None) == (args.data is None):
        args.parser.error("--model needs the pairs to embed: --manifest FILE.jsonl or --data DIR")
    if args.batch_size < 1:
        args.parser.error("--batch-size must be at least 1")
    # Read the pairs first: a mistake in the manifest should not wait for a model to load.
    pairs = manifest_pairs(args.manifest) if args.manifest else dataset_pairs(args.data, args.split)
    if args.sources is not None:
        pairs = pairs_of_sources(pairs, args.sources, args.manifest or f"{args.data} (split {args.split})")
    if not pairs:
        raise ValueError(f"{args.manifest or args.data}: no pairs to evaluate")
    device = "cuda" if torch.cuda.is_available() and not args.quantize else "cpu"
    check_quantize(args.quantize)  # before a model loads
    model, processor = load_model_and_processor(args.model)  # weights that do not fit the config are refused
    refuse_a_bank_of_another_dimension(args, hubness, model.config.projection_dim)  # before hours of embedding
    model = quantize_model(model, args.quantize).to(device).eval()
    transcriber = None
    if args.asr_baseline or args.asr_model:
        from evaluation.asr_baseline import WhisperTranscriber

        transcriber = WhisperTranscriber(args.asr_model or default_whisper_dir(), device=device, batch_size=args.batch_size,
                                         num_beams=args.asr_num_beams)

    if args.also_csls:
        hubness = {"also_csls": hubness}
    report = model_report(model, processor, pairs, batch_size=args.batch_size, correct_set=args.correct_set,
                          ties=args.ties, soft_k=args.soft_k, seed=args.seed, transcriber=transcriber,
                          asr_cache=args.asr_cache if transcriber else None, **hubness)
    report["quantize"] = args.quantize  # None: fp32
    report["sources"] = args.sources  # None: every pair
    report["split"] = args.split if args.data else None  # a --manifest has none; `clasp export` puts it in model-index
    write_atomically(args.output, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.markdown:
        title = f"Retrieval evaluation of {os.path.basename(os.path.normpath(args.model))}"
        if args.sources is not None:
            title += f" (corpora {args.sources} only)"
        write_atomically(args.markdown, report_to_markdown(report, title=title))
    if args.sources is not None:
        print(f"Only the pairs of corpora {args.sources} ({report['num_queries']} queries), among themselves.")
    print(format_report(report))
    if "csls" in report:
        print(f"CLASP with CSLS (k={report['csls']['hubness']['k']}): " + ", ".join(
            f"{direction} HITS@1 {report['csls'][direction]['hits@1']:.3f} MRR {report['csls'][direction]['mrr']:.3f} "
            f"meanR {report['csls'][direction]['mean_rank']:.1f}" for direction in ("audio_to_text", "text_to_audio")))
    print(f"CLASP audio encoding: {report['timing']['audio_embed_s_per_clip']:.3f} s/clip; "
          f"{len(report['failed'])} clip(s) skipped")
    if "asr_baseline" in report:
        baseline = report["asr_baseline"]
        print(f"ASR baseline: WER {baseline['wer']['all']:.3f}, transcription {baseline['seconds_per_clip']:.3f} s/clip")
    return 0


def default_whisper_dir() -> str:
    from backbones_clasp import default_backbones_dir

    return os.path.join(default_backbones_dir(), "whisper-base")


def evaluate_embeddings(args, hubness: dict) -> int:
    from evaluation.protocols import retrieval_report
    from evaluation.report import format_report, report_to_markdown

    audio_embeds, text_embeds, metadata = load_embeddings(args.embeddings)
    refuse_a_bank_of_another_dimension(args, hubness, audio_embeds.shape[1])
    try:
        report = retrieval_report(audio_embeds, text_embeds, correct_set=args.correct_set, ties=args.ties,
                                  soft_k=args.soft_k, seed=args.seed, **metadata, **hubness)
    except ValueError as error:  # e.g. --correct-set same-text without texts in the metadata
        raise InputError(f"{args.embeddings}: {error}") from None
    write_atomically(args.output, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        title = f"Retrieval evaluation of {os.path.basename(args.embeddings)}"
        write_atomically(args.markdown, report_to_markdown(report, title=title))
    print(format_report(report))
    return 0


def hubness_options(args) -> dict:
    """retrieval_report's hubness keywords from --hubness (or --also-csls), --hubness-bank and --csls-k;
    ValueError naming the bank file when it cannot be used (`clasp` prints it as one line, exit code 2)."""
    if args.hubness == "none" and not args.also_csls:
        return {}
    from evaluation.hubness import load_hubness_bank

    bank, bank_k = load_hubness_bank(args.hubness_bank)
    k = args.csls_k if args.csls_k is not None else bank_k or 10
    if not 1 <= k <= len(bank["text_embeds"]):
        raise ValueError(f"--csls-k {k}: must lie in [1, {len(bank['text_embeds'])}], the rows of {args.hubness_bank}")
    return {"hubness": "csls", "hubness_bank": bank, "csls_k": k}


def refuse_a_bank_of_another_dimension(args, hubness: dict, dim: int) -> None:
    """ValueError naming --hubness-bank when its rows are not in the evaluated embeddings' space."""
    if hubness.get("hubness") == "csls" and hubness["hubness_bank"]["text_embeds"].shape[1] != dim:
        raise ValueError(f"{args.hubness_bank}: the hubness bank's rows have "
                         f"{hubness['hubness_bank']['text_embeds'].shape[1]} dimensions, the embeddings {dim}")


def load_embeddings(path: str):
    """(audio_embeds, text_embeds, metadata kwargs), L2-normalised, or InputError naming the file."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    from evaluation.retrieval_metrics.rank_metrics import refuse_non_finite

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
        try:
            refuse_non_finite(embeds, name)
        except ValueError as error:
            raise InputError(f"{path}: {error}") from None
        # Norms in float64: a float32 norm of a row with values near 1e20 overflows to inf (the row
        # would become zeros and tie with everything), and one of a row near 1e-25 underflows to 0.
        norms = np.linalg.norm(embeds.astype(np.float64), axis=1)
        if not (norms > 0).all():
            raise InputError(f"{path}: {name} rows {np.flatnonzero(~(norms > 0)).tolist()[:10]} are all zeros, "
                             "which have no direction to compare")
        embeds[:] = (embeds.astype(np.float64) / norms[:, None]).astype(np.float32)  # cosine, as the paper ranks by

    metadata = {}
    for key in ("groups", "texts", "languages"):
        if key in header:
            try:
                values = json.loads(header[key])
            except json.JSONDecodeError as error:
                raise InputError(f"{path}: metadata {key!r} is not JSON ({error})") from None
            if not isinstance(values, list) or len(values) != len(audio_embeds):
                raise InputError(f"{path}: metadata {key!r} must be a JSON list of {len(audio_embeds)} entries")
            odd = [i for i, value in enumerate(values) if not isinstance(value, str)]
            if odd:  # numpy would turn 1 and "1" into one label, and None into a crash
                raise InputError(f"{path}: metadata {key!r} must hold strings; entries {odd[:10]} do not")
            metadata[key] = values
    return audio_embeds, text_embeds, metadata

