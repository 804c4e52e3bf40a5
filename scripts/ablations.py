"""The ablation table: one change at a time against the paper's setting, judged on validation only.

    .venv/bin/python scripts/ablations.py --features artifacts/demo-large/features --output artifacts/ablations

Each row trains the fusion head with train_accelerate.py on the same feature cache (same seed,
same epochs, best epoch chosen by validation MRR) and reports the best epoch's validation figures
(hard protocol over the validation split, sentence groups counting as correct). The test split is
never read here: a configuration chosen from this table is evaluated on test once, by `clasp eval`.
A row whose run finished is read back, not retrained, so the script resumes after a kill; a run
killed half-way resumes from its last checkpoint.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from data_clasp.files import write_atomically

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, train_accelerate.py arguments on top of the common ones). The first row is the paper's
# setting (mean-pooled speech encoder, concat fusion, learnable temperature); each other row
# changes one thing.
ABLATIONS = [
    ("paper: mean pooling, concat", []),
    ("gating fusion", ["--fusion", "gating"]),
    ("speech encoder only", ["--fusion", "speech_only"]),
    ("spectrogram CNN only", ["--fusion", "spectrogram_only"]),
    ("paper's fixed temperature (cos x 0.07)", ["--loss", "contrastive_fixed"]),
    ("attention pooling", ["--speech_pooling", "attention"]),
    ("attention pooling, gating", ["--speech_pooling", "attention", "--fusion", "gating"]),
    ("attention pooling, more dropout (0.3, 0.2)", ["--speech_pooling", "attention",
                                                   "--config_overrides", "fusion_dropout=[0.3,0.2]"]),
    # The head memorises its training set (train loss ~0.1, validation ~2.8): regularisation.
    ("more dropout (0.3, 0.2)", ["--config_overrides", "fusion_dropout=[0.3,0.2]"]),
    ("weight decay 0.1 (from 0.01)", ["--weight_decay", "0.1"]),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def run_one(name, extra, features, output, epochs, patience, batch, seed) -> dict:
    folder = os.path.join(output, slug(name))
    summary_path = os.path.join(folder, "training_summary.json")
    if not os.path.exists(summary_path):
        command = [sys.executable, os.path.join(REPO, "train_accelerate.py"), "--train_data", features,
                   "--model", "offline-base", "--output_dir", folder, "--per_device_train_batch_size", str(batch),
                   "--learning_rate", "1e-3", "--num_train_epochs", str(epochs), "--early_stopping_patience", str(patience),
                   "--checkpointing_steps", "200", "--resume_from_checkpoint", "latest", "--seed", str(seed), *extra]
        print(f"\n[ablations] {name}\n$ {' '.join(command)}", flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    best = summary["best"]
    return {"name": name, "arguments": " ".join(extra) or "(defaults)", "best_epoch": summary["best_epoch"],
            "epochs": summary["epochs"], "val_mrr": best["val_mrr"],
            "val_text_to_audio_hits@1": best["val_text_to_audio_hits@1"], "val_text_to_audio_mrr": best["val_text_to_audio_mrr"],
            "val_audio_to_text_hits@1": best["val_audio_to_text_hits@1"], "val_audio_to_text_mrr": best["val_audio_to_text_mrr"],
            "train_loss": best["train_loss"], "val_loss": best["val_loss"],
            "samples_per_second": summary["samples_per_second_this_run"], "finished": True}


def unfinished_row(name, extra, output):
    """A row whose run was stopped before early stopping or its last epoch: its best epoch so far,
    read from its latest checkpoint (None when it has none)."""
    sys.path.insert(0, REPO)
    from train_accelerate import TrainingProgress, list_checkpoints

    folder = os.path.join(output, slug(name))
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        return None
    progress = TrainingProgress()
    TrainingProgress.migrate(checkpoints[-1])  # a checkpoint of an earlier version
    progress.load(checkpoints[-1])
    best = next((h for h in progress.history if h["epoch"] == progress.best_epoch), None)
    if best is None:
        return None
    return {"name": f"{name} (unfinished: stopped after epoch {progress.epoch})", "arguments": " ".join(extra) or "(defaults)",
            "best_epoch": progress.best_epoch, "epochs": progress.epoch, "val_mrr": best["val_mrr"],
            **{k: best[k] for k in ("val_text_to_audio_hits@1", "val_text_to_audio_mrr", "val_audio_to_text_hits@1",
                                    "val_audio_to_text_mrr", "train_loss", "val_loss")},
            "samples_per_second": None, "finished": False}


def markdown(rows, features, command) -> str:
    lines = [f"Validation split of `{features}`, hard protocol, best epoch by validation MRR. Command: `{command}`", "",
             "| configuration | t→a HITS@1 | t→a MRR | a→t HITS@1 | a→t MRR | best epoch | train / val loss | samples/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['val_text_to_audio_hits@1']:.3f} | {r['val_text_to_audio_mrr']:.3f} | "
                     f"{r['val_audio_to_text_hits@1']:.3f} | {r['val_audio_to_text_mrr']:.3f} | {r['best_epoch']} of "
                     f"{r['epochs']} | {r['train_loss']:.2f} / {r['val_loss']:.2f} | "
                     + (f"{r['samples_per_second']:,.0f} |" if r["samples_per_second"] else "– |"))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="a `clasp features` cache (with train and validation splits)")
    parser.add_argument("--output", required=True, help="one training folder per row, and ablations.json / .md")
    parser.add_argument("--only", help="comma-separated row numbers (1-based) to run, e.g. 1,6")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true",
                        help="train nothing: tabulate the finished rows, and the unfinished ones from their latest checkpoint")
    args = parser.parse_args()
    chosen = [ABLATIONS[int(i) - 1] for i in args.only.split(",")] if args.only else ABLATIONS
    os.makedirs(args.output, exist_ok=True)
    started = time.perf_counter()
    if args.report:
        rows = []
        for name, extra in chosen:
            if os.path.exists(os.path.join(args.output, slug(name), "training_summary.json")):
                rows.append(run_one(name, extra, args.features, args.output, args.epochs, args.patience, args.batch, args.seed))
            elif (row := unfinished_row(name, extra, args.output)) is not None:
                rows.append(row)
    else:
        rows = [run_one(name, extra, args.features, args.output, args.epochs, args.patience, args.batch, args.seed)
                for name, extra in chosen]
    command = "python scripts/ablations.py " + " ".join(sys.argv[1:])
    write_atomically(os.path.join(args.output, "ablations.json"), json.dumps(rows, indent=2) + "\n")
    table = markdown(rows, args.features, command)
    write_atomically(os.path.join(args.output, "ablations.md"), table)
    print("\n" + table + f"\n[ablations] {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
