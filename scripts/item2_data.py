"""The data sets of issue #16's item 2 and item 8 measurements (README "Issue #16 item 2"), from the demo's
dataset and feature cache:

    python scripts/item2_data.py manpages-set --output data-manpages/
        a source no model trains on: 60 sentences a language of the opt-in `manpages` corpus (de es fr it ru
        cs pt), spoken once by espeak-ng, half the sentence groups validation, half test (by a hash);
    python scripts/item2_data.py new-sentences --data artifacts/demo-small/data --output new-sentences/
        as many new sentences a language as the demo's train split reads (half its clips), from the same
        corpora in the same interleaving, none of whose sentence groups the demo holds, one voice each (train);
    python scripts/item2_data.py one-voice --features artifacts/demo-small/features --output demo-1voice/
        the cache with one reading (the first) of each (sentence group, language) of its train split;
    python scripts/item2_data.py subset --data artifacts/demo-small/data --features artifacts/demo-small/features \\
        --train 2000 --validation 600 --output padding/
        a seeded sample of clips, as a dataset (padding/data, for `clasp features`) and as the same rows of the cache
        (padding/real-features).
"""

import argparse
import collections
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def save_cache(data, marker_from, output):
    """A DatasetDict saved as a feature cache (with the source cache's marker), atomically."""
    data.save_to_disk(f"{output}.tmp")
    shutil.copy(Path(marker_from, "clasp_features.json"), f"{output}.tmp")
    os.replace(f"{output}.tmp", output)


def manpages_set(args):
    from data_clasp.corpora import load_sentences
    from data_clasp.schema import stable_hash
    from data_clasp.synth import candidates, synthesize

    languages = args.languages.split(",")
    sentences = load_sentences(("manpages",))
    chosen = [s for lang in languages for s in candidates(sentences, lang, seed=0)[:args.per_language]]
    split_of = {s.group: ("validation" if stable_hash("half", s.group) % 2 else "test") for s in chosen}
    synthesize(chosen, languages, None, args.output, seed=0, takes=1, split_of=split_of)


def new_sentences(args):
    from data_clasp.corpora import load_sentences
    from data_clasp.synth import candidates, synthesize

    rows = [json.loads(line) for line in Path(args.data, "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    held = {row["group"] for row in rows}
    need = collections.Counter(row["language"] for row in rows if row["split"] == "train")
    sentences = load_sentences()
    chosen = []
    for lang, clips in need.items():
        queue = [s for s in candidates(sentences, lang, seed=0) if s.group not in held]
        chosen += queue[:clips // 2]  # the demo reads each train sentence twice
        print(f"{lang}: {min(len(queue), clips // 2)} new sentences of {clips // 2} wanted", flush=True)
    synthesize(chosen, list(need), None, args.output, seed=5, takes=1, split_of={s.group: "train" for s in chosen})


def one_voice(args):
    from datasets import load_from_disk

    data = load_from_disk(args.features)
    seen, keep = set(), []
    for i, key in enumerate(zip(data["train"]["group"], data["train"]["language"])):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    data["train"] = data["train"].select(keep)
    save_cache(data, args.features, args.output)
    print({split: len(rows) for split, rows in data.items()})


def subset(args):
    import numpy as np
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(Path(args.data, "dataset")))
    cache = load_from_disk(args.features)
    rng = np.random.default_rng(args.seed)
    pick = {split: sorted(rng.choice(len(data[split]), n, replace=False).tolist())
            for split, n in (("train", args.train), ("validation", args.validation))}
    for split in pick:
        if data[split]["text"] != cache[split]["text"]:
            raise ValueError(f"{args.features}: its {split} rows are not {args.data}'s in order")
    DatasetDict({s: data[s].select(i) for s, i in pick.items()}).save_to_disk(str(Path(args.output, "data", "dataset")))
    save_cache(DatasetDict({s: cache[s].select(i) for s, i in pick.items()}), args.features, str(Path(args.output, "real-features")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("manpages-set")
    p.add_argument("--output", required=True)
    p.add_argument("--languages", default="de,es,fr,it,ru,cs,pt")
    p.add_argument("--per-language", type=int, default=60)
    p.set_defaults(func=manpages_set)
    p = commands.add_parser("new-sentences")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(func=new_sentences)
    p = commands.add_parser("one-voice")
    p.add_argument("--features", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(func=one_voice)
    p = commands.add_parser("subset")
    for name in ("--data", "--features", "--output"):
        p.add_argument(name, required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--validation", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=subset)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
