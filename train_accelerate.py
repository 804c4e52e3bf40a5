"""Train CLASP with Accelerate: one process, several GPUs, or several CPU processes.

    accelerate launch train_accelerate.py --train_data FEATURES --model offline-base --output_dir out
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 train_accelerate.py ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train_accelerate.py ...
    (on CPU, `--cpu --num_processes 2` silently runs ONE process: use --multi_gpu with ACCELERATE_USE_CPU=1)

Two modes share one model forward:
  cached features (the paper's setting): `--train_data` is a `clasp features` cache; the frozen
      backbones ran once, only the fusion head trains. Fast. An augmented cache (`clasp features
      --augment K`) gives each epoch one view of every clip, drawn by --seed and the epoch.
  end to end: `--train_data` is a `clasp data` dataset with audio; the backbones run every step
      (frozen or not, see --unfreeze_speech_encoder).
`--speech_trainable_layers K` trains the speech encoder's last K layers with the head, from a cache
of the state entering them (`clasp features --speech-trainable-layers K`); with `--speech_lora_rank
R`, LoRA adapters of rank R on those layers' linear layers train instead (PEFT), merged into the
weights of the exported folder.

Negatives: every process gathers every other process's embeddings (with autograd), and the fusion
head's batch norm uses the statistics of all processes' batches (SyncBatchNorm1d), so each step
contrasts `per_device_train_batch_size × num_processes` pairs exactly like one process with that
batch. With gradient accumulation, negatives come from the current micro-batch only (the
accumulated steps do not see each other's pairs): accumulation grows the batch for the optimizer,
not the number of negatives. `--same_group_negatives drop` leaves the rows that validation counts as
correct for a row (one sentence group, or the same text) out of its negatives, across processes too.

Optimisation as open_clip's trainer does it: AdamW without weight decay on biases, norm weights and
the logit scale; the logit scale clamped into [0, logit_scale_max] after each optimizer step (not in
forward, where its gradient would be 0 above the cap); `--lr_warmup_steps` counts optimizer steps,
whatever the number of processes.

Checkpoints (`--checkpointing_steps`) go to output_dir/checkpoints/step_N, written to a temporary
folder and renamed, so a killed run never leaves a half checkpoint; `--resume_from_checkpoint
latest` continues exactly where it stopped (same batches, same random state). Checkpoints and
the best epoch's weights (output_dir/trained_weights.safetensors) hold only what training
changes: the frozen backbones (~570 MB for offline-base) are the preset's, loaded again on resume.
The best epoch on the validation split is exported to output_dir as a Hub folder at the end: by
default the best mean reciprocal rank (both directions, the hard protocol, rows of one sentence
group counting as correct for each other as in `clasp eval`), since retrieval is what CLASP is
for and the contrastive loss keeps falling after retrieval has stopped improving. Beside it goes
the hubness bank of `clasp eval --hubness csls` (output_dir/hubness_bank.safetensors: the training
pairs embedded by the exported model, csls_k chosen on validation; `--no_hubness_bank` leaves it out).
An epoch whose validation loss or embeddings are not finite (a diverged run) is never the best:
training stops there with a message naming the epoch and what was not finite, exports the best
finite epoch if there was one, and exits with status 1.
"""

import argparse
import copy
import json
import math
import os
import re
import shutil
import signal
import sys
import time

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from data_clasp.features import MARKER, VIEW_COLUMNS, CachedFeatures, OneViewPerClip
from data_clasp.files import write_atomically
from evaluation.hubness import BANK_FILE
from modeling_clasp import gather_with_grad
from modeling_clasp.lora import add_speech_lora, merge_speech_lora

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_data", required=True, help="a `clasp features` cache or a `clasp data` dataset folder")
    parser.add_argument("--extra_train_data", nargs="+", default=[], metavar="PATH",
                        help="more caches (or datasets) of the same kind: all their rows train, except those of groups "
                             "that --train_data holds out for validation or test (e.g. its sentences in other voices)")
    parser.add_argument("--model", default="offline-base", help="a backbone preset (offline-base, paper) or a CLASP folder to continue")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--per_device_train_batch_size", type=int, default=256)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=None, help="default: the train batch size")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--num_train_epochs", type=int, default=50)
    parser.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_warmup_steps", type=int, default=0)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="default: accelerate's config")
    parser.add_argument("--checkpointing_steps", type=int, default=None, help="save the training state every N optimizer steps")
    parser.add_argument("--checkpoints_total_limit", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    parser.add_argument("--with_tracking", action="store_true", help="log to TensorBoard in output_dir/logs")
    parser.add_argument("--fusion", choices=["concat", "gating", "speech_only", "spectrogram_only"], default=None, help="for a preset; default concat")
    parser.add_argument("--loss", choices=["contrastive", "contrastive_fixed", "huber"], default=None,
                        help="default contrastive for a preset, the saved one for a CLASP folder")
    parser.add_argument("--same_group_negatives", choices=["keep", "drop"], default="keep",
                        help="drop: the rows that validation counts as correct for a row (its sentence group in another "
                             "voice, take or language, or the same text) are not its negatives in the loss, the "
                             "validation loss included (false-negative elimination; the huber loss has none); keep: CLIP's rule")
    parser.add_argument("--speech_pooling", choices=["mean", "attention"], default=None,
                        help="for a preset; default mean (the paper)")
    parser.add_argument("--config_overrides", default=None,
                        help='ClaspConfig fields to override, "key=value,key=value" with JSON values, e.g. '
                             '"fusion_dropout=[0.3,0.2],logit_scale_init_value=3.0,speech_frame_stride=2"')
    parser.add_argument("--speech_trainable_layers", type=int, default=None,
                        help="train the speech encoder's last k layers with the head (on a cache built for k)")
    parser.add_argument("--speech_learning_rate", type=float, default=None,
                        help="learning rate of the trained speech-encoder layers (default: --learning_rate)")
    parser.add_argument("--speech_lora_rank", type=int, default=0,
                        help="with --speech_trainable_layers K: train LoRA adapters of this rank on the K layers' linear "
                             "layers instead of the layers themselves (PEFT; merged into the weights on export; 0: the "
                             "whole layers train)")
    parser.add_argument("--speech_lora_alpha", type=float, default=None,
                        help="LoRA's alpha: the adapters' update is scaled by alpha / rank (default 2 x rank)")
    parser.add_argument("--unfreeze_speech_encoder", action="store_true", help="end-to-end mode: train the speech encoder too")
    parser.add_argument("--eval_data", action="append", default=[], metavar="NAME=PATH",
                        help="another validation set (the 'validation' split of a cache or dataset of the same kind, e.g. "
                             "real speech), evaluated every epoch beside --train_data's; its figures are logged as "
                             "NAME_mrr, NAME_loss, ... and NAME_mrr can be --metric_for_best_model (repeatable)")
    parser.add_argument("--hold_out_sources", default=None, metavar="CORPUS[,CORPUS...]",
                        help="leave these text sources out of training and of the validation split that chooses the "
                             "epoch (a row's `source` 'espeak:fortunes-de' is corpus 'fortunes-de', matched by "
                             "'fortunes-de' or 'fortunes'), with every sentence group they share with other sources; "
                             "their validation rows are evaluated every epoch as `heldout_*` (a source never trained on)")
    parser.add_argument("--metric_for_best_model", default="mrr", metavar="{mrr,loss,NAME_mrr}",
                        help="which validation figure chooses the best epoch and drives early stopping: mrr or loss of "
                             "--train_data's validation split, or NAME_mrr of an --eval_data set (default mrr)")
    parser.add_argument("--early_stopping_patience", type=int, default=10, help="epochs without a better validation figure")
    # Two flags, not BooleanOptionalAction: it would spell the second --no-hubness_bank.
    parser.add_argument("--hubness_bank", action="store_true", default=True,
                        help="write output_dir/hubness_bank.safetensors for CSLS (`clasp eval --hubness csls`): the "
                             "training pairs embedded by the exported model, csls_k chosen on validation (the default)")
    parser.add_argument("--no_hubness_bank", dest="hubness_bank", action="store_false",
                        help="write no hubness bank (and remove an earlier run's from output_dir)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num_workers", type=int, default=0)
    # Fault injection for the resume test: SIGKILL this process right after saving checkpoint N,
    # so the kill lands at the same step however fast the machine is.
    parser.add_argument("--kill_after_checkpoint", type=int, default=None, help=argparse.SUPPRESS)
    # ...and for the divergence test: every trained weight NaN once epoch N has ended (as a diverged run's).
    parser.add_argument("--inject_nan_after_epoch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.eval_data = parse_eval_data(args.eval_data)
    if args.hold_out_sources is not None:
        args.hold_out_sources = [name.strip() for name in args.hold_out_sources.split(",") if name.strip()]
        if not args.hold_out_sources:
            parser.error("--hold_out_sources: give at least one corpus name")
        if "heldout" in args.eval_data:
            parser.error("--eval_data heldout=: the name is taken by --hold_out_sources")
    given = [os.path.realpath(path) for path in [args.train_data, *args.extra_train_data]]
    for i, path in enumerate(args.extra_train_data, 1):
        if given[i] in given[:i]:
            raise ValueError(f"--extra_train_data {path}: given already (as --train_data or before); its rows would "
                             f"train twice, each its own negative")
    if args.speech_lora_rank < 0:
        parser.error(f"--speech_lora_rank {args.speech_lora_rank}: give 0 (no LoRA) or a rank of at least 1")
    if args.speech_lora_alpha is not None and not args.speech_lora_rank:
        parser.error("--speech_lora_alpha needs --speech_lora_rank")
    if args.speech_lora_alpha is not None and not args.speech_lora_alpha > 0:
        parser.error(f"--speech_lora_alpha {args.speech_lora_alpha}: give a positive number (the update is scaled by alpha / rank)")
    if args.speech_lora_rank and args.speech_lora_alpha is None:
        args.speech_lora_alpha = 2.0 * args.speech_lora_rank
    if args.speech_lora_rank and args.unfreeze_speech_encoder:
        parser.error("--speech_lora_rank trains adapters on the top layers of a frozen speech encoder; "
                     "--unfreeze_speech_encoder trains the whole encoder: choose one")
    allowed = ["mrr", "loss"] + [f"{name}_mrr" for name in args.eval_data] + ["heldout_mrr"] * bool(args.hold_out_sources)
    if args.metric_for_best_model not in allowed:
        parser.error(f"--metric_for_best_model {args.metric_for_best_model}: choose from {', '.join(allowed)}")
    return args


def parse_eval_data(items) -> dict:
    """["asterisk=features-asterisk/"] -> {"asterisk": "features-asterisk/"}; ValueError naming a bad item."""
    sets = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name == "val" or not path:
            raise ValueError(f"--eval_data {item!r}: give NAME=PATH, NAME in lower-case letters, digits and _ (not 'val')")
        if name in sets:
            raise ValueError(f"--eval_data {item!r}: the name {name!r} is given twice")
        sets[name] = path
    return sets


# ---- data ------------------------------------------------------------------------------------


class AudioPairs(Dataset):
    """(audio, text) rows of a `clasp data` dataset, turned into model inputs in the collate function;
    with `pair_group_ids` (`[rows]`, see `same_group_ids`), each row's id too."""

    def __init__(self, split, pair_group_ids=None):
        self.split = split
        self.group_ids = pair_group_ids

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        row = self.split[index]
        item = {"audio": row["audio"]["array"], "sampling_rate": row["audio"]["sampling_rate"], "text": row["text"]}
        return item if self.group_ids is None else {**item, "pair_group_ids": self.group_ids[index]}


def audio_collate(processor):
    def collate(rows):
        by_rate = {row["sampling_rate"] for row in rows}
        if len(by_rate) != 1:
            raise ValueError(f"a batch mixes sampling rates {sorted(by_rate)}; resample the dataset to one rate")
        batch = dict(processor(text=[r["text"] for r in rows], audio=[r["audio"] for r in rows], sampling_rate=by_rate.pop()))
        if "pair_group_ids" in rows[0]:
            batch["pair_group_ids"] = torch.tensor([r["pair_group_ids"] for r in rows], dtype=torch.int64)
        return batch

    return collate


def load_training_data(path, option="--train_data", required=("train", "validation")):
    """('cached' | 'audio', DatasetDict). Raises FileNotFoundError for a missing folder, ValueError
    when a split of `required` is missing or empty."""
    from datasets import load_from_disk

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{option} {path}: no such folder")
    mode = "cached" if os.path.exists(os.path.join(path, MARKER)) else "audio"
    data = load_from_disk(path if mode == "cached" or not os.path.isdir(os.path.join(path, "dataset")) else os.path.join(path, "dataset"))
    for split in required:
        if split not in data or len(data[split]) == 0:
            raise ValueError(f"{option} {path}: needs a '{split}' split with rows, found "
                             + ", ".join(f"{name} ({len(rows)} rows)" for name, rows in sorted(data.items())))
    return mode, data


def check_same_kind(given: str, mode: str, train_mode: str) -> None:
    """ValueError unless a folder given beside --train_data is of its kind ('cached' or 'audio')."""
    if mode != train_mode:
        raise ValueError(f"{given} is {'a feature cache' if mode == 'cached' else 'a dataset'}, --train_data is not: "
                         f"give both as `clasp features` caches or both as datasets")


def add_extra_training_data(data, mode, paths):
    """`data` with its train split extended by every row of every split of the folders in `paths`
    whose `group` (or, without groups, text) is not in `data`'s validation or test split: more
    training rows (the same sentences in other voices, another corpus) that cannot leak a held-out
    sentence.

    Returns (data, {path: (rows added, rows left out)}). Raises ValueError if a folder is of the
    other kind ('cached' vs 'audio') or lacks a column that the train split has. Augmented caches
    (`clasp features --augment`) keep their views grouped by clip, each folder's clips apart; a row
    without views is a clip of one view."""
    from datasets import concatenate_datasets

    key = "group" if "group" in data["train"].column_names else "text"  # a cache made by hand may have no groups
    held_out = {g for split in ("validation", "test") if split in data for g in data[split][key]}
    columns = [c for c in data["train"].column_names if c not in VIEW_COLUMNS]
    parts, counts = [data["train"]], {}
    for path in paths:
        extra_mode, extra = load_training_data(path, "--extra_train_data", required=())
        check_same_kind(f"--extra_train_data {path}", extra_mode, mode)
        added = 0
        for split in extra.values():
            missing = set(columns) - set(split.column_names)
            if missing:
                raise ValueError(f"--extra_train_data {path}: no column(s) {', '.join(sorted(missing))} "
                                 f"that --train_data's train split has")
            kept = split.filter(lambda group: group not in held_out, input_columns=key)
            parts.append(kept.select_columns(columns + [c for c in VIEW_COLUMNS if c in kept.column_names]))
            added += len(kept)
        counts[path] = (added, sum(map(len, extra.values())) - added)
    if any("view" in part.column_names for part in parts):  # augmented: views grouped by clip, each folder's apart
        first = 0
        for i, part in enumerate(parts):
            augmented = "view" in part.column_names
            clips = np.asarray(part["clip"]) if augmented else np.arange(len(part))
            views = {"clip": first + clips, "view": np.asarray(part["view"]) if augmented else np.zeros(len(part), np.int64),
                     "augmentation": list(part["augmentation"]) if augmented else [""] * len(part)}
            parts[i] = part.select_columns(columns)
            for name, values in views.items():
                parts[i] = parts[i].add_column(name, values)
            first += int(clips.max()) + 1 if len(clips) else 0
    data["train"] = concatenate_datasets(parts)
    return data, counts


def hold_out_sources(data, names):
    """`data` with the rows of the corpora `names` left out of its train and validation splits, and
    with them every row of a sentence group that one of those rows belongs to (the same sentence read
    from another source), so that nothing of a held-out source is trained on or chooses the epoch.

    A corpus matches a name when it equals it or starts with it and a '-' ('fortunes' matches
    'fortunes-de'). Returns (data, the held-out validation rows, {split: rows left out}). Raises
    ValueError if the train split has no `source` column, a name matches no corpus of the train and
    validation splits (the message lists those present), or no validation row is held out."""
    if "source" not in data["train"].column_names:
        raise ValueError("--hold_out_sources: the training data has no `source` column to tell the corpora apart")
    from data_clasp.schema import corpora_matching, corpus_of

    try:
        corpora = corpora_matching(names, {corpus_of(s) for split in ("train", "validation") for s in data[split]["source"]})
    except ValueError as error:
        raise ValueError(f"--hold_out_sources: {error}") from None
    key = "group" if "group" in data["train"].column_names else "text"
    held_groups = {g for split in ("train", "validation")
                   for g, s in zip(data[split][key], data[split]["source"]) if corpus_of(s) in corpora}

    def held(source, group):
        return corpus_of(source) in corpora or group in held_groups

    counts = {}
    heldout = data["validation"].filter(held, input_columns=["source", key])
    for split in ("train", "validation"):
        before = len(data[split])
        data[split] = data[split].filter(lambda source, group: not held(source, group), input_columns=["source", key])
        counts[split] = before - len(data[split])
    if len(heldout) == 0:
        raise ValueError(f"--hold_out_sources {','.join(names)}: no validation rows of {', '.join(sorted(corpora))} "
                         f"to evaluate as a held-out source")
    if len(data["validation"]) == 0:
        raise ValueError(f"--hold_out_sources {','.join(names)}: no validation row of another corpus is left to "
                         f"choose the epoch; hold out fewer corpora")
    return data, heldout, counts


def check_cache_fits(path, model, processor, model_name, option="--train_data"):
    """Refuse a feature cache that other backbones or another processor made (another text prompt,
    mel settings, tokenizer...): the head would be trained and validated on features that the
    exported model, which keeps `--model`'s backbones and processor, never computes. The dtype may
    differ (features cached in bfloat16 on a GPU train a float32 head). A cache whose marker records
    no fingerprints (made by hand, or by an earlier version) is taken as it is, with a warning."""
    from data_clasp.features import backbone_fingerprint, processor_fingerprint

    with open(os.path.join(path, MARKER), encoding="utf-8") as f:
        recorded = json.load(f)
    if not {"backbones", "processor"} <= set(recorded):
        logger.warning(f"{option} {path}: its marker records no fingerprints; not checked against --model {model_name}",
                       main_process_only=True)
        return
    now = {"backbones": backbone_fingerprint(model), "processor": processor_fingerprint(processor)}
    differ = [part for part, value in now.items() if recorded[part] != value]
    if differ:
        k, cached_k = model.config.speech_trainable_layers, recorded.get("speech_trainable_layers", 0)
        layers = (f"; it holds the hidden state entering the speech encoder's last {cached_k} layers, this run trains "
                  f"{k} (--speech_trainable_layers)" if cached_k != k else "")
        padding, cached_padding = model.config.speech_whisper_padding, recorded.get("speech_whisper_padding", "real")
        if cached_padding != padding:  # the cache's Whisper input differs: say so, and how to train on it as it is
            layers += (f"; its Whisper input is speech_whisper_padding={cached_padding}, this run's is {padding} "
                       f"(to train on it as it is: --config_overrides speech_whisper_padding={cached_padding})")
        raise ValueError(f"{option} {path} was cached with other {' and '.join(differ)} than --model {model_name} "
                         f"({', '.join(f'{p} {recorded[p]} there, {now[p]} here' for p in differ)}){layers}: "
                         f"rebuild it with `clasp features --model {model_name}"
                         f"{f' --speech-trainable-layers {k}' if k else ''}"
                         f"{' --speech-whisper-padding max_length' if model.config.speech_whisper_padding != 'real' else ''}"
                         " --data ...`")


# ---- model -----------------------------------------------------------------------------------


def load_model_and_processor(args):
    """A backbone preset (a fresh head) or a CLASP folder to continue, with this run's overrides."""
    from backbones_clasp.checkpoints import load_model_and_processor as load

    overrides = {"fusion": args.fusion, "loss": args.loss, "speech_pooling": args.speech_pooling,
                 "speech_trainable_layers": args.speech_trainable_layers}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(parse_config_overrides(args.config_overrides))
    if args.unfreeze_speech_encoder:
        overrides["freeze_speech_encoder"] = False
    return load(args.model, **overrides)


def parse_config_overrides(text):
    """"a=1,b=[0.3,0.2],c=attention" -> {"a": 1, "b": [0.3, 0.2], "c": "attention"} (JSON values, else strings)."""
    import re

    overrides = {}
    for item in re.split(r",(?=\s*\w+\s*=)", text or ""):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides: {item!r} is not key=value")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


class SyncBatchNorm1d(torch.nn.BatchNorm1d):
    """nn.BatchNorm1d whose training statistics are those of all processes' batches together, so N
    processes × batch B normalise (and update the running statistics) like one process × N·B.

    torch.nn.SyncBatchNorm does this but refuses CPU tensors (gloo), and no maintained package offers
    one that does; this is its computation in a few lines, on every device: each process's row count,
    mean and biased variance `[2·C + 1]` gathered with autograd (`gather_with_grad`), combined as
    torch's batch_norm_gather_stats_with_counts does (Chan et al.'s parallel variance). Input
    `[batch, C]`. Same parameters and buffers as nn.BatchNorm1d: state dicts are interchangeable, and
    outside training (or in one process) it *is* nn.BatchNorm1d.
    """

    def forward(self, input):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not (self.training and distributed and torch.distributed.get_world_size() > 1):
            return super().forward(input)
        x = input.float()
        count = x.new_full((1,), x.shape[0])
        stats, _ = gather_with_grad(torch.cat([count, x.mean(0), x.var(0, unbiased=False)]).unsqueeze(0))
        counts, means, variances = stats[:, :1], stats[:, 1 : 1 + x.shape[1]], stats[:, 1 + x.shape[1] :]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * total / (total - 1), momentum)  # unbiased, as nn.BatchNorm1d keeps it
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(input.dtype)


def synchronise_batch_norm(model):
    """The fusion head's nn.BatchNorm1d layers made SyncBatchNorm1d in place (the same modules,
    parameters and buffers), for training in several processes; the saved model is unchanged."""
    for module in model.fusion.modules():
        if type(module) is torch.nn.BatchNorm1d:
            module.__class__ = SyncBatchNorm1d
    return model


def parameter_groups(model, weight_decay, speech_learning_rate=None):
    """AdamW parameter groups as open_clip's trainer makes them (src/open_clip_train/main.py): no weight
    decay on gains and biases (tensors of fewer than 2 dimensions: biases, norm weights) nor on the
    logit scale; `weight_decay` on the rest. Only parameters that train. With `speech_learning_rate`,
    the speech encoder's trained layers form two more groups at that rate (a pretrained encoder
    fine-tunes at a smaller rate than a fresh head)."""
    def exclude(name, p):
        return p.ndim < 2 or "bn" in name or "ln" in name or "norm" in name or "bias" in name or "logit_scale" in name

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    head = [(n, p) for n, p in named if speech_learning_rate is None or not n.startswith("speech_model.")]
    groups = [
        {"params": [p for name, p in head if exclude(name, p)], "weight_decay": 0.0},
        {"params": [p for name, p in head if not exclude(name, p)], "weight_decay": weight_decay},
    ]
    speech = [(n, p) for n, p in named if speech_learning_rate is not None and n.startswith("speech_model.")]
    if speech:
        groups += [
            {"params": [p for name, p in speech if exclude(name, p)], "weight_decay": 0.0, "lr": speech_learning_rate},
            {"params": [p for name, p in speech if not exclude(name, p)], "weight_decay": weight_decay,
             "lr": speech_learning_rate},
        ]
    return groups


# ---- checkpoints -----------------------------------------------------------------------------


class TrainingProgress:
    """What `accelerator.save_state` does not know: where we are and how validation has gone."""

    def __init__(self):
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches of the current epoch already trained on
        self.best_val_loss = math.inf
        self.best_score = -math.inf  # of --metric_for_best_model, higher is better (minus the loss)
        self.best_epoch = 0
        self.epochs_without_improvement = 0
        self.history = []

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)

    # JSON beside accelerate's files, not `accelerator.register_for_checkpointing`: accelerate reads
    # those back with torch.load(weights_only=False), i.e. it would unpickle whatever the file holds.
    FILE = "training_progress.json"

    def save(self, folder):
        with open(os.path.join(folder, self.FILE), "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f)

    def load(self, folder):
        path = os.path.join(folder, self.FILE)
        if not os.path.exists(path):
            raise ValueError(f"{folder}: not a checkpoint of train_accelerate.py; it lacks {self.FILE}")
        with open(path, encoding="utf-8") as f:
            self.load_state_dict(json.load(f))

    @classmethod
    def migrate(cls, folder):
        """A checkpoint of an earlier version kept this state in accelerate's custom_checkpoint_0.pkl
        (plain numbers and lists, which weights_only=True reads): rewrite it as JSON and remove the
        pickle, which accelerate would otherwise count against the registered objects (none)."""
        old = os.path.join(folder, "custom_checkpoint_0.pkl")
        if os.path.exists(os.path.join(folder, cls.FILE)) or not os.path.exists(old):
            return
        write_atomically(os.path.join(folder, cls.FILE), json.dumps(torch.load(old, map_location="cpu", weights_only=True)))
        os.remove(old)


def atomic_save_state(accelerator, output_dir, step, limit, progress):
    """save_state into a temporary folder, then rename: a kill never leaves a half checkpoint.

    Weights that are no longer finite (a diverging run) are not saved: the rotation would otherwise
    replace the last good checkpoints with NaN ones, and `--resume_from_checkpoint latest` resume them.
    """
    model = accelerator.unwrap_model(accelerator._models[0])
    broken = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if broken:
        accelerator.print(f"[train] step {step}: checkpoint not saved, {len(broken)} trained weight(s) hold NaN/Inf "
                          f"(first: {broken[0]}); the earlier checkpoints are kept")
        return
    checkpoints = os.path.join(output_dir, "checkpoints")
    final = os.path.join(checkpoints, f"step_{step}")
    staging = os.path.join(checkpoints, f".tmp_step_{step}")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(checkpoints, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(staging)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        progress.save(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in list_checkpoints(output_dir)[:-limit] if limit else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def list_checkpoints(output_dir):
    checkpoints = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(checkpoints):
        return []
    steps = [int(name[5:]) for name in os.listdir(checkpoints) if name.startswith("step_") and name[5:].isdigit()]
    return [os.path.join(checkpoints, f"step_{s}") for s in sorted(steps)]


TRAINED_WEIGHTS = "trained_weights.safetensors"


def frozen_prefixes(model) -> tuple:
    """State-dict prefixes of the frozen backbones: what training never changes."""
    frozen = model._frozen_modules()
    return tuple(f"{name}." for name, child in model.named_modules() if any(child is module for module in frozen))


def trained_keys(model) -> set:
    """State-dict names of the weights and buffers training changes (head, pooler, scale, unfrozen
    encoders; batch-norm statistics)."""
    prefixes = frozen_prefixes(model)
    return {k for k in model.state_dict() if not k.startswith(prefixes)}


def trained_state(model) -> dict:
    """The values of `trained_keys`, copied."""
    keys = trained_keys(model)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k in keys}


def leave_frozen_weights_out_of_checkpoints(accelerator, model):
    prefixes = frozen_prefixes(accelerator.unwrap_model(model))

    def drop_frozen(models, weights, output_dir):
        for state in weights:
            for key in [k for k in state if k.removeprefix("module.").startswith(prefixes)]:
                del state[key]

    accelerator.register_save_state_pre_hook(drop_frozen)


def resume(accelerator, model, checkpoint, progress):
    """load_state from a checkpoint without the frozen weights; refuse one that lacks a trained weight
    or holds one of another shape (e.g. another --speech_lora_rank)."""
    from safetensors import safe_open

    with safe_open(os.path.join(checkpoint, "model.safetensors"), framework="pt") as f:
        stored = {key.removeprefix("module."): tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    unwrapped = accelerator.unwrap_model(model)
    keys = trained_keys(unwrapped)
    missing = keys - set(stored)
    if missing:
        raise ValueError(f"{checkpoint}: not a checkpoint of this model; it lacks {sorted(missing)[:5]}")
    state = unwrapped.state_dict()
    other = [f"{key} {list(stored[key])} there, {list(state[key].shape)} here" for key in sorted(keys)
             if stored[key] != tuple(state[key].shape)]
    if other:
        raise ValueError(f"{checkpoint}: not a checkpoint of this model (another --speech_lora_rank?): "
                         f"{'; '.join(other[:3])}")
    if accelerator.is_main_process:
        TrainingProgress.migrate(checkpoint)
        progress.load(checkpoint)
        migrate_optimizer_state(checkpoint, accelerator.unwrap_model(model), progress.step)
    accelerator.wait_for_everyone()
    progress.load(checkpoint)
    accelerator.load_state(checkpoint, strict=False)  # strict=False: the frozen backbones are not in it


def migrate_optimizer_state(checkpoint, model, step):
    """A checkpoint of an earlier version holds one AdamW parameter group (weight decay on every
    trained parameter) and a schedule counted in per-process steps: rewrite its optimizer.bin and
    scheduler.bin as this version's two groups (`parameter_groups`), the schedule at `step`
    optimizer steps. Each file is written whole, then renamed into place."""
    optimizer_file, scheduler_file = os.path.join(checkpoint, "optimizer.bin"), os.path.join(checkpoint, "scheduler.bin")
    optimizer_state = torch.load(optimizer_file, map_location="cpu", weights_only=True)
    if len(optimizer_state["param_groups"]) != 1:
        return
    (old_group,) = optimizer_state["param_groups"]
    old_index = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    state, groups, index = {}, [], 0
    for group in parameter_groups(model, old_group["weight_decay"]):
        indices = list(range(index, index + len(group["params"])))
        state.update({new: optimizer_state["state"][old_index[id(p)]] for new, p in zip(indices, group["params"])
                      if old_index[id(p)] in optimizer_state["state"]})
        groups.append({**old_group, "weight_decay": group["weight_decay"], "params": indices})
        index += len(indices)
    scheduler_state = torch.load(scheduler_file, map_location="cpu", weights_only=True)
    scheduler_state.update(base_lrs=scheduler_state["base_lrs"] * 2, _last_lr=scheduler_state["_last_lr"] * 2,
                           lr_lambdas=[None, None], last_epoch=step, _step_count=step + 1)
    for path, value in ((optimizer_file, {"state": state, "param_groups": groups}), (scheduler_file, scheduler_state)):
        torch.save(value, path + ".tmp")
        os.replace(path + ".tmp", path)


def save_trained_weights(accelerator, model, path):
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(trained_state(accelerator.unwrap_model(model)), path + ".tmp")
        os.replace(path + ".tmp", path)


def export_best(accelerator, model, processor, output_dir):
    """The best epoch's weights into the model, saved as a Hub folder in output_dir (beside
    checkpoints/ and logs/), each file renamed into place whole."""
    if not accelerator.is_main_process:
        return
    from safetensors.torch import load_file

    unwrapped = accelerator.unwrap_model(model)
    best = load_file(os.path.join(output_dir, TRAINED_WEIGHTS))
    missing = trained_keys(unwrapped) - set(best)
    if missing:
        raise ValueError(f"{output_dir}/{TRAINED_WEIGHTS} lacks {sorted(missing)[:5]}")
    unwrapped.load_state_dict(best, strict=False)
    staging = os.path.join(output_dir, ".export")
    shutil.rmtree(staging, ignore_errors=True)
    # LoRA adapters are folded into a copy's weights: the Hub folder is a plain CLASP model (no PEFT to load it).
    (merge_speech_lora(copy.deepcopy(unwrapped)) if unwrapped.has_speech_lora() else unwrapped).save_pretrained(staging)
    processor.save_pretrained(staging)
    for name in os.listdir(staging):
        target = os.path.join(output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)


@torch.no_grad()
def write_hubness_bank(model, train_loader, val_loader, val_correct_set, output_dir, device) -> dict:
    """The bank of CSLS hubness correction (evaluation/hubness.py) beside the exported model: the
    training split's audio and text embeddings by the model's own forward (its exported, best
    weights), and csls_k chosen on the validation split (`choose_csls_k`: the hard protocol's mean
    MRR of both directions, the figure that chose the best epoch). Main process only; the loaders
    unprepared, in order. Returns the summary's "hubness" entry: k, bank rows, validation figures
    without and with CSLS at that k."""
    from evaluation.hubness import choose_csls_k, save_hubness_bank

    def embed(loader):
        audio, text = [], []
        for batch in loader:
            out = model(**{name: value.to(device) for name, value in batch.items()})
            audio.append(out.audio_embeds.float().cpu())
            text.append(out.text_embeds.float().cpu())
        return torch.cat(audio), torch.cat(text)

    model.eval()
    bank = dict(zip(("audio_embeds", "text_embeds"), embed(train_loader)))
    # The validation rows' correct-set ids serve as their group labels: the same rows count as correct.
    k, figures = choose_csls_k(*embed(val_loader), bank, groups=val_correct_set)
    save_hubness_bank(os.path.join(output_dir, BANK_FILE), **bank, csls_k=k, source="train_accelerate.py: the training split")
    return {"csls_k": k, "bank_rows": len(bank["text_embeds"]), "validation": {"none": figures[None], "csls": figures[k]}}


# ---- validation ------------------------------------------------------------------------------


@torch.no_grad()
def validate(accelerator, model, dataloader, correct_set):
    """Validation loss (mean over batches, negatives gathered as in training) and hard-protocol
    retrieval over the whole validation split in both directions, `correct_set` (one id per row,
    see evaluation.protocols.correct_sets) saying which rows count as correct for each other.
    When the loss or any embedding is not finite, the retrieval figures are NaN (nothing is ranked)
    and "not_finite" says what was."""
    from evaluation.protocols import rank_queries
    from evaluation.retrieval_metrics.rank_metrics import metrics_from_ranks

    model.eval()
    losses, audio, text = [], [], []
    for batch in dataloader:
        out = model(**batch, return_loss=True)
        losses.append(accelerator.gather(out.loss.detach().reshape(1)).mean())
        audio.append(accelerator.gather_for_metrics(out.audio_embeds.float()))
        text.append(accelerator.gather_for_metrics(out.text_embeds.float()))
    model.train()
    audio, text = torch.cat(audio).cpu(), torch.cat(text).cpu()
    gold = np.arange(len(audio))
    metrics = {"val_loss": torch.stack(losses).mean().item()}
    # A diverged model's NaN embeddings would rank first (or make the ranking refuse them): report
    # what is not finite instead of ranking, and let the caller stop.
    not_finite = [f"val_loss={metrics['val_loss']}"] if not math.isfinite(metrics["val_loss"]) else []
    for name, embeds in (("audio_embeds", audio), ("text_embeds", text)):
        bad_rows = int((~torch.isfinite(embeds).all(dim=1)).sum())
        if bad_rows:
            not_finite.append(f"{name}: {bad_rows} of {len(embeds)} rows hold NaN/Inf")
    if not_finite:
        nan = float("nan")
        return {**metrics, "val_audio_to_text_mrr": nan, "val_audio_to_text_hits@1": nan, "val_text_to_audio_mrr": nan,
                "val_text_to_audio_hits@1": nan, "val_mrr": nan, "not_finite": "; ".join(not_finite)}
    for direction, (queries, candidates) in {"audio_to_text": (audio, text), "text_to_audio": (text, audio)}.items():
        hard, _ = rank_queries(queries, candidates, gold, correct_set)
        ranks = metrics_from_ranks(hard)
        metrics[f"val_{direction}_mrr"], metrics[f"val_{direction}_hits@1"] = ranks["mrr"], ranks["hits@1"]
    metrics["val_mrr"] = (metrics["val_audio_to_text_mrr"] + metrics["val_text_to_audio_mrr"]) / 2
    return metrics


def validation_correct_set(split):
    """Rows of one sentence group (the same sentence in any language) or of identical text count as correct."""
    from evaluation.protocols import correct_sets

    groups = split["group"] if "group" in split.column_names else None
    texts = split["text"] if "text" in split.column_names else None
    return correct_sets(len(split), groups, texts)


def same_group_ids(split, where: str, correct_set=None) -> np.ndarray:
    """The `pair_group_ids` of --same_group_negatives drop, one a row: the rows that validation counts
    as correct for each other (`validation_correct_set`: one sentence group, or the same text) share
    an id, so the loss takes none of them as another's negative. A function of the split's rows alone,
    hence the same in every process; `correct_set`: the split's `validation_correct_set` when the caller
    has it already. Raises ValueError, naming `where`, for a split with neither a `group` nor a `text`
    column (every row would be a group of its own: nothing dropped)."""
    if not {"group", "text"} & set(split.column_names):
        raise ValueError(f"--same_group_negatives drop: {where} has neither a `group` nor a `text` column "
                         "to tell which rows read the same sentence")
    return validation_correct_set(split) if correct_set is None else correct_set


def plot_history(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_mrr) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("loss"), ax_loss.legend()
    for direction, name in (("text_to_audio", "text → audio"), ("audio_to_text", "audio → text")):
        ax_mrr.plot(epochs, [h[f"val_{direction}_mrr"] for h in history], label=f"MRR, {name}")
        ax_mrr.plot(epochs, [h[f"val_{direction}_hits@1"] for h in history], label=f"HITS@1, {name}", linestyle="--")
    ax_mrr.set_xlabel("epoch"), ax_mrr.set_title("validation retrieval (hard protocol)"), ax_mrr.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


# ---- training --------------------------------------------------------------------------------


def main(argv=None):
    """Parse the options and train. A bad input (ValueError, FileNotFoundError: a cache that does not
    fit, an unknown corpus...) gets one line on stderr and exit status 2, as `clasp` commands do
    (CLASP_DEBUG=1 shows the traceback); an --output_dir this run created and left empty is removed."""
    args = parse_args(argv)
    created = not os.path.exists(args.output_dir)
    try:
        train(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        if os.environ.get("CLASP_DEBUG"):
            raise
        try:
            if created and not os.listdir(args.output_dir):
                os.rmdir(args.output_dir)
        except OSError:  # gone already (another process), or not empty after all
            pass
        print(f"train_accelerate.py: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def train(args):
    """The training run of `main`'s parsed options (module docstring)."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with="tensorboard" if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
        # The shuffle order is a function of (seed, epoch) alone, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Linked to the optimizer, accelerate steps a prepared scheduler num_processes times per
        # optimizer step (its schedules count one process's batches); ours counts optimizer steps.
        step_scheduler_with_optimizer=False,
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    mode, data = load_training_data(args.train_data)
    model, processor = load_model_and_processor(args)
    if args.speech_lora_rank:
        add_speech_lora(model, args.speech_lora_rank, args.speech_lora_alpha)
    if args.extra_train_data:
        data, counts = add_extra_training_data(data, mode, args.extra_train_data)
        for path, (added, left_out) in counts.items():
            if accelerator.is_main_process:
                print(f"[train] --extra_train_data {path}: {added} rows added to train, {left_out} left out "
                      f"(their groups are held out in --train_data)", flush=True)
    heldout_rows = None
    if args.hold_out_sources:
        data, heldout_rows, counts = hold_out_sources(data, args.hold_out_sources)
        if accelerator.is_main_process:
            print(f"[train] --hold_out_sources {','.join(args.hold_out_sources)}: {counts['train']} train and "
                  f"{counts['validation']} validation rows left out; the {len(heldout_rows)} held-out validation "
                  f"rows are evaluated as heldout_*", flush=True)
    drop = args.same_group_negatives == "drop"
    train_ids = same_group_ids(data["train"], f"--train_data {args.train_data}: the train split") if drop else None
    val_correct_set = validation_correct_set(data["validation"])
    val_ids = (same_group_ids(data["validation"], f"--train_data {args.train_data}: the validation split", val_correct_set)
               if drop else None)
    if mode == "cached":
        for option, path in [("--train_data", args.train_data)] + [("--extra_train_data", p) for p in args.extra_train_data]:
            check_cache_fits(path, model, processor, args.model, option)
        # Attention pooling and trainable top layers need the frames; else the cached mean is all the head needs.
        frames = model.config.speech_needs_frames
        # An augmented cache (`clasp features --augment K`): one view of each clip per epoch.
        train_set = (OneViewPerClip(data["train"], frames, args.seed, train_ids) if "view" in data["train"].column_names
                     else CachedFeatures(data["train"], frames, train_ids))
        val_set = CachedFeatures(data["validation"], frames, val_ids)
        collate = train_set.collate
    else:
        train_set, val_set = AudioPairs(data["train"], train_ids), AudioPairs(data["validation"], val_ids)
        collate = audio_collate(processor)
    eval_batch = args.per_device_eval_batch_size or args.per_device_train_batch_size
    generator = torch.Generator().manual_seed(args.seed)
    # drop_last: the head's batch norm needs more than one row, and every process must gather equal batches.
    train_loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True,
                              collate_fn=collate, num_workers=args.num_workers, generator=generator)
    def reading_loader(dataset):
        """A loader that only reads (validation, the hubness bank): in order, with a generator of its own.
        A loader draws its workers' base seed from its generator each pass, by default torch's global one:
        every validation pass (and every --eval_data set) would otherwise move the dropout masks of all
        later training steps."""
        return DataLoader(dataset, batch_size=eval_batch, collate_fn=collate, num_workers=args.num_workers,
                          generator=torch.Generator())

    val_loader = reading_loader(val_set)
    eval_rows = {}  # name -> (validation rows, how messages name them) of each --eval_data set, and the held-out sources
    for name, path in args.eval_data.items():
        eval_mode, eval_data = load_training_data(path, f"--eval_data {name}=", required=("validation",))
        check_same_kind(f"--eval_data {name}={path}", eval_mode, mode)
        if mode == "cached":
            check_cache_fits(path, model, processor, args.model, f"--eval_data {name}=")
        eval_rows[name] = (eval_data["validation"], f"--eval_data {name}={path}")
    if heldout_rows is not None:
        eval_rows["heldout"] = (heldout_rows, f"--hold_out_sources {','.join(args.hold_out_sources)}")
    eval_sets = {}  # name -> (loader, correct set)
    for name, (rows, where) in eval_rows.items():
        correct = validation_correct_set(rows)
        ids = same_group_ids(rows, f"{where}: the validation split", correct) if drop else None
        eval_set = CachedFeatures(rows, frames, ids) if mode == "cached" else AudioPairs(rows, ids)
        eval_sets[name] = (reading_loader(eval_set), correct)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_set)} training rows are fewer than one batch of {args.per_device_train_batch_size}")

    if accelerator.num_processes > 1:
        synchronise_batch_norm(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay, args.speech_learning_rate), lr=args.learning_rate)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = args.lr_warmup_steps  # in optimizer steps: the scheduler is stepped once per optimizer step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, val_loader, scheduler)
    eval_sets = {name: (accelerator.prepare(loader), correct) for name, (loader, correct) in eval_sets.items()}
    unwrapped = accelerator.unwrap_model(model)
    progress = TrainingProgress()
    leave_frozen_weights_out_of_checkpoints(accelerator, model)

    effective_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"mode={mode} processes={accelerator.num_processes} per-device batch={args.per_device_train_batch_size} "
        f"effective batch={effective_batch} negatives per step={args.per_device_train_batch_size * accelerator.num_processes - 1} "
        f"train rows={len(train_set)} steps={max_steps} trainable parameters={sum(p.numel() for p in trainable):,}",
        main_process_only=True,
    )
    if accelerator.is_main_process:
        print(f"[train] mode={mode} processes={accelerator.num_processes} effective batch={effective_batch} "
              f"negatives/step={args.per_device_train_batch_size * accelerator.num_processes - 1} steps={max_steps} "
              f"trainable parameters={sum(p.numel() for p in trainable):,}"
              + (f" speech layers trained={unwrapped.config.speech_trainable_layers}" if unwrapped.config.speech_trainable_layers else "")
              + (f" (LoRA rank {args.speech_lora_rank})" if args.speech_lora_rank else ""), flush=True)
    if args.with_tracking:
        accelerator.init_trackers("clasp", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    batches_done_in_epoch = 0
    if args.resume_from_checkpoint:
        checkpoint = list_checkpoints(args.output_dir)[-1:] if args.resume_from_checkpoint == "latest" else [args.resume_from_checkpoint]
        if checkpoint:
            resume(accelerator, model, checkpoint[0], progress)
            batches_done_in_epoch = progress.batches_in_epoch
            accelerator.print(f"[train] resumed from {checkpoint[0]} at step {progress.step}")
        else:
            accelerator.print("[train] no checkpoint to resume from; starting fresh")

    bar = tqdm(total=max_steps, initial=progress.step, disable=not accelerator.is_local_main_process, desc="train")
    stop, not_finite = False, None
    started = time.perf_counter()
    samples_seen = 0
    model.train()
    while progress.epoch < num_epochs and not stop:
        train_loader.set_epoch(progress.epoch)
        if isinstance(train_set, OneViewPerClip):  # accelerate calls a dataset's set_epoch in one process only
            train_set.set_epoch(progress.epoch)
        batches = accelerator.skip_first_batches(train_loader, batches_done_in_epoch) if batches_done_in_epoch else train_loader
        epoch_losses = []
        if progress.epoch == args.inject_nan_after_epoch:
            with torch.no_grad():
                for p in trainable:
                    p.fill_(math.nan)
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch, return_loss=True).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            epoch_losses.append(loss.detach())
            progress.batches_in_epoch += 1
            samples_seen += args.per_device_train_batch_size * accelerator.num_processes
            if accelerator.sync_gradients:
                if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: no step, no schedule
                    scheduler.step()
                with torch.no_grad():  # as open_clip: clamped after the step, so its gradient is never cut
                    unwrapped.logit_scale.clamp_(0, unwrapped.config.logit_scale_max)
                progress.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if args.with_tracking:
                    accelerator.log({"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, step=progress.step)
                if args.checkpointing_steps and progress.step % args.checkpointing_steps == 0:
                    atomic_save_state(accelerator, args.output_dir, progress.step, args.checkpoints_total_limit, progress)
                    if progress.step == args.kill_after_checkpoint:
                        os.kill(os.getpid(), signal.SIGKILL)
                if progress.step >= max_steps:
                    break
        batches_done_in_epoch = progress.batches_in_epoch = 0
        progress.epoch += 1

        metrics = validate(accelerator, model, val_loader, val_correct_set)
        for name, (loader, correct) in eval_sets.items():  # val_mrr -> asterisk_mrr, val_loss -> asterisk_loss, ...
            extra = validate(accelerator, model, loader, correct)
            metrics.update({f"{name}_{key.removeprefix('val_')}": value for key, value in extra.items() if key != "not_finite"})
        train_loss = accelerator.gather(torch.stack(epoch_losses).mean().reshape(1)).mean().item() if epoch_losses else float("nan")
        record = {"epoch": progress.epoch, "step": progress.step, "lr": scheduler.get_last_lr()[0],
                  "logit_scale": unwrapped.logit_scale.item(), "train_loss": train_loss, **metrics}
        progress.history.append(record)
        accelerator.print(f"[train] epoch {progress.epoch}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if args.with_tracking:
            accelerator.log({k: v for k, v in record.items() if k not in ("epoch", "not_finite")}, step=progress.step)
        if "not_finite" in metrics:  # diverged: never the best epoch, and nothing more to learn
            not_finite = f"epoch {progress.epoch}'s validation is not finite ({metrics['not_finite']})"
            break
        progress.best_val_loss = min(progress.best_val_loss, metrics["val_loss"])
        score = -metrics["val_loss"] if args.metric_for_best_model == "loss" else metrics[
            "val_mrr" if args.metric_for_best_model == "mrr" else args.metric_for_best_model]
        if score > progress.best_score:
            progress.best_score = score
            progress.best_epoch = progress.epoch
            progress.epochs_without_improvement = 0
            save_trained_weights(accelerator, model, os.path.join(args.output_dir, TRAINED_WEIGHTS))
        else:
            progress.epochs_without_improvement += 1
            if progress.epochs_without_improvement >= args.early_stopping_patience:
                accelerator.print(f"[train] early stop: no better validation {args.metric_for_best_model} "
                                  f"for {args.early_stopping_patience} epochs")
                stop = True
        if progress.step >= max_steps:
            stop = True
        if args.checkpointing_steps:  # an epoch boundary is a clean place to resume from
            atomic_save_state(accelerator, args.output_dir, progress.step, args.checkpoints_total_limit, progress)
    bar.close()
    elapsed = time.perf_counter() - started

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        hubness = None
        if progress.best_epoch:  # none when the first epoch already diverged
            export_best(accelerator, model, processor, args.output_dir)
            if args.hubness_bank:
                hubness = write_hubness_bank(
                    unwrapped, reading_loader(getattr(train_set, "originals", train_set)),  # not the views
                    reading_loader(val_set), val_correct_set, args.output_dir, accelerator.device)
            elif os.path.exists(os.path.join(args.output_dir, BANK_FILE)):  # an earlier run's: not this model's
                os.remove(os.path.join(args.output_dir, BANK_FILE))
        plot_history(progress.history, os.path.join(args.output_dir, "training_curves.png"))
        summary = {
            "mode": mode, "num_processes": accelerator.num_processes, "effective_batch": effective_batch,
            "negatives_per_step": args.per_device_train_batch_size * accelerator.num_processes - 1,
            "steps": progress.step, "epochs": progress.epoch, "best_val_loss": progress.best_val_loss,
            "metric_for_best_model": args.metric_for_best_model, "same_group_negatives": args.same_group_negatives,
            "hold_out_sources": args.hold_out_sources, "best_epoch": progress.best_epoch,
            "speech_trainable_layers": unwrapped.config.speech_trainable_layers,
            "speech_lora": ({"rank": args.speech_lora_rank, "alpha": args.speech_lora_alpha,
                             "merged_into_the_exported_weights": True} if args.speech_lora_rank else None),
            "best": next((h for h in progress.history if h["epoch"] == progress.best_epoch), None),
            "train_seconds_this_run": elapsed, "samples_per_second_this_run": samples_seen / max(elapsed, 1e-9),
            "stopped_because": not_finite, "hubness": hubness, "history": progress.history,
        }
        write_atomically(os.path.join(args.output_dir, "training_summary.json"), json.dumps(summary, indent=2))
        if not_finite:
            exported = (f"exported epoch {progress.best_epoch}, the best finite one" if progress.best_epoch
                        else "no epoch was finite, nothing exported")
            print(f"[train] stopped: {not_finite}; {exported} to {args.output_dir}. Lower --learning_rate or "
                  "raise --lr_warmup_steps.", file=sys.stderr, flush=True)
        else:
            print(f"[train] done: {progress.step} steps, best epoch {progress.best_epoch} by validation "
                  f"{args.metric_for_best_model}, best val loss {progress.best_val_loss:.4f}, "
                  f"{samples_seen / max(elapsed, 1e-9):.0f} samples/s; model in {args.output_dir}", flush=True)
    if args.with_tracking:
        accelerator.end_training()
    if not_finite:  # the run failed, whatever was exported: a script must not go on as if it had trained
        accelerator.wait_for_everyone()  # a failing process makes the launcher stop the others: after the export
        raise SystemExit(1)


if __name__ == "__main__":
    main()
