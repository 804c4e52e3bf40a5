"""Hubness correction (CSLS) on and off, k chosen on validation, then the test split once.

    OMP_NUM_THREADS=1 python scripts/hubness_sweep.py --model artifacts/demo-small/model \
        --features artifacts/demo-small/features --output /tmp/csls [--ks 1 5 10 20 50]

Embeds every split of a `clasp features` cache with the model's own forward on the cached
features (as train_accelerate's validation does), takes the training split as the hubness bank,
and ranks validation with the hard protocol (fair ties, same-group correct set) for each k and
without correction. The k with the best validation MRR (mean of both directions, the trainer's
selection rule) is chosen, or none if no k beats cosine; only then is the test split scored, for
"none" and the chosen k. Writes OUTPUT/hubness_sweep.json and OUTPUT/hubness_bank.safetensors
(the training bank with the chosen k, for `clasp eval --hubness csls --hubness-bank ...`).
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_clasp.features import CachedFeatures  # noqa: E402
from data_clasp.files import write_atomically  # noqa: E402
from evaluation.hubness import CSLS_KS, choose_csls_k, retrieval_figures, save_hubness_bank  # noqa: E402
from evaluation.protocols import DIRECTIONS  # noqa: E402


@torch.no_grad()
def embed_split(model, split, batch_size=512):
    """(audio_embeds, text_embeds) [N, D] of a cached split: the model's forward on its features."""
    rows = CachedFeatures(split, frames=model.config.speech_needs_frames)
    audio, text = [], []
    for start in range(0, len(rows), batch_size):
        batch = rows.collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        out = model(**batch)
        audio.append(out.audio_embeds.float())
        text.append(out.text_embeds.float())
    return torch.cat(audio).numpy(), torch.cat(text).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", required=True, help="a `clasp features` cache (train / validation / test)")
    parser.add_argument("--output", required=True, help="folder for hubness_sweep.json and hubness_bank.safetensors")
    parser.add_argument("--ks", type=int, nargs="+", default=list(CSLS_KS))
    args = parser.parse_args(argv)
    from datasets import load_from_disk

    from modeling_clasp import ClaspModel

    torch.set_num_threads(1)
    started = time.perf_counter()
    model = ClaspModel.from_pretrained(args.model).eval()
    data = load_from_disk(args.features)
    if "view" in data["train"].column_names:  # `clasp features --augment`: the bank holds the clips as recorded
        data["train"] = data["train"].filter(lambda view: view == 0, input_columns="view")
    embeds = {name: embed_split(model, data[name]) for name in ("train", "validation", "test")}
    bank = {"audio_embeds": embeds["train"][0], "text_embeds": embeds["train"][1]}
    print(f"embedded {', '.join(f'{n} {len(e[0])}' for n, e in embeds.items())} rows in {time.perf_counter() - started:.0f} s")

    def line(split_name, k, result):
        cells = "  ".join(f"{result[d]['hits@1']:.3f} {result[d]['mrr']:.3f} {result[d]['mean_rank']:6.1f}" for d in DIRECTIONS)
        print(f"{split_name:<10} {'none' if k is None else f'csls k={k}':<11} {cells}")

    print(f"{'split':<10} {'hubness':<11} audio->text HITS@1 MRR meanR   text->audio HITS@1 MRR meanR")
    labels = {name: {"groups": data[name]["group"], "texts": data[name]["text"]} for name in ("validation", "test")}
    best_k, validation = choose_csls_k(*embeds["validation"], bank, ks=args.ks, **labels["validation"])
    for k, result in validation.items():
        line("validation", k, result)
    chosen = best_k if validation[best_k]["mean_mrr"] > validation[None]["mean_mrr"] else None  # a tie keeps cosine
    print(f"chosen on validation (mean MRR of both directions): {'none' if chosen is None else f'csls k={chosen}'}")
    test = {k: retrieval_figures(*embeds["test"], bank=bank, k=k, **labels["test"]) for k in dict.fromkeys([None, chosen])}
    for k, result in test.items():
        line("test", k, result)

    os.makedirs(args.output, exist_ok=True)
    save_hubness_bank(os.path.join(args.output, "hubness_bank.safetensors"), *embeds["train"],
                      csls_k=best_k, source=f"{os.path.abspath(args.features)} train split")
    result = {"model": os.path.abspath(args.model), "features": os.path.abspath(args.features),
              "bank_rows": len(bank["text_embeds"]), "chosen_k": chosen,
              "validation": {str(k): r for k, r in validation.items()}, "test": {str(k): r for k, r in test.items()},
              "seconds": time.perf_counter() - started}
    path = os.path.join(args.output, "hubness_sweep.json")
    write_atomically(path, json.dumps(result, indent=2))
    print(f"wrote {path} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
