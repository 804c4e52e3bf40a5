"""The feature cache: frozen-backbone features of a speech–text dataset, computed once.

CLASP's backbones are frozen in the paper's setting, so their outputs never change during
training: run them once, keep per row

    speech_frames          [windows, hidden] float16: the speech encoder's frames, averaged in windows
                           of config.speech_frame_stride (what "attention" pooling attends over; with
                           config.speech_trainable_layers = k, the hidden state entering the last k layers)
    speech_frame_weights   [windows]: each window's share of real frames
    speech_embeds          [hidden]: the mean over real frames, L2-normalised ("mean" pooling, the paper)
    spectrogram_embeds     [cnn hidden]: the pooled spectrogram-CNN features, L2-normalised
    text_embeds            [text dim]: the frozen sentence encoder's embedding of the transcript

and train the fusion head on those (train_accelerate.py reads this cache).

Each split is cut into chunks; every chunk goes through `datasets.map` with its own cache file,
named by a fingerprint of (backbone weights, processor settings, dtype, dataset, chunk; augmentation).
A finished chunk is never computed again: a second run is free, and a run killed half-way resumes at the first unfinished chunk.
Under `accelerate launch` the chunks are shared out between processes.

`augment` = K (`clasp features --augment K`) adds K augmented views of each train clip (noise, a
synthetic room, speed, a telephone line: data_clasp.augment) as extra rows; `OneViewPerClip` gives the
trainer one view of each clip per epoch.
"""

import hashlib
import json
import os
import shutil
import time

import numpy as np
import torch

from data_clasp.files import write_atomically
from data_clasp.processes import process_state

MARKER = "clasp_features.json"  # the finished-cache marker (the trainer reads this name)
FEATURE_COLUMNS = ("speech_embeds", "spectrogram_embeds", "text_embeds")
FRAME_COLUMNS = ("speech_frames", "speech_frame_weights")
VIEW_COLUMNS = ("clip", "view", "augmentation")  # of an augmented train split (`clasp features --augment`)


def backbone_fingerprint(model) -> str:
    """SHA-256 over the backbones' configs and weights: the features depend on nothing else.

    With `speech_trainable_layers` = k the last k layers and the final norm are left out: the cached
    frames enter them, so a model whose top layers trained (continued training, a second stage) still
    fits the cache it was trained on. (The cache's pooled `speech_embeds` column went through those
    layers as they were at caching time; training a k > 0 model reads the frames.)"""
    digest = hashlib.sha256()
    trained = {t.data_ptr() for m in model.trainable_speech_modules() for t in m.state_dict().values()}
    for name in ("speech_model", "spectrogram_model", "text_model"):
        digest.update(json.dumps(getattr(model, name).config.to_dict(), sort_keys=True, default=str).encode())
        for key, tensor in getattr(model, name).state_dict().items():
            if tensor.data_ptr() in trained:
                continue
            digest.update(key.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    for key in ("text_pooling", "text_normalize", "speech_layer", "speech_frame_stride"):
        digest.update(f"{key}={getattr(model.config, key)}".encode())
    # ClaspConfig held these two (unread) preprocessing defaults until #18 moved preprocessing to the
    # processor (hashed in processor_fingerprint); their old values keep earlier caches valid.
    digest.update(b"spectrogram_n_mels=128spectrogram_hop_length=320")
    if model.config.speech_trainable_layers:  # another hidden state is cached (absent: caches of 0 stay valid)
        digest.update(f"speech_trainable_layers={model.config.speech_trainable_layers}".encode())
    if model.config.speech_whisper_padding != "real":  # Whisper on 30 s (absent: "real" caches stay valid)
        digest.update(f"speech_whisper_padding={model.config.speech_whisper_padding}".encode())
    return digest.hexdigest()[:16]


def processor_fingerprint(processor) -> str:
    """SHA-256 over everything the processor does to a row before the backbones see it.

    The feature extractor's saved settings (rates, mel filters, STFT sizes, normalisation, image size,
    mean/std: its `to_dict()`, less the class names), the tokenizer itself (its serialisation:
    vocabulary, normaliser, special tokens; and which side it truncates and pads) and the text prompt
    and length limit. Changing any of them changes the cached features, so it must change the cache's
    name. The fast tokenizer's truncation/padding state is left out: each call sets it anew.
    """
    digest = hashlib.sha256()
    settings = {k: v for k, v in processor.feature_extractor.to_dict().items()
                if k not in ("feature_extractor_type", "processor_class", "auto_map")}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialised = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        serialised = sorted(tokenizer.get_vocab().items())
    sides = {k: getattr(tokenizer, k, None) for k in ("truncation_side", "padding_side")}
    digest.update(json.dumps([serialised, sides], sort_keys=True).encode())
    digest.update(f"prefix={processor.text_prefix!r} max_length={processor.text_max_length}".encode())
    return digest.hexdigest()[:16]


def cache_fingerprint(model, processor) -> dict:
    """What a cached feature depends on: {"backbones", "processor", "dtype"}, and "fingerprint" over all three."""
    parts = {"backbones": backbone_fingerprint(model), "processor": processor_fingerprint(processor),
             "dtype": str(model.dtype).removeprefix("torch.")}
    return {"fingerprint": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16], **parts}


def encode_rows(model, processor, batch_size: int, augment: int = 0, augment_seed: int = 0):
    """A `datasets.map` function: features of a batch of rows, shortest clips batched together.

    With `augment` = K > 0 each row becomes K + 1 rows, its clip's views 0..K (data_clasp.augment,
    0 the clip itself), with the columns `view` and `augmentation` (what was applied; "" for view 0).
    """

    from data_clasp.augment import augmented_views
    from modeling_clasp.modeling_clasp import masked_mean

    limit = processor.feature_extractor.max_samples  # Whisper's 30 s, at the extractor's rate

    @torch.no_grad()
    def encode(rows):
        clips = [audio["array"] for audio in rows["audio"]]
        rates = [audio["sampling_rate"] for audio in rows["audio"]]
        source, views, applied = list(range(len(clips))), [0] * len(clips), [""] * len(clips)
        if augment:  # row-major: row 0's views 0..K, then row 1's...
            source, views, applied, expanded = [], [], [], []
            for i, (clip, rate, text) in enumerate(zip(clips, rates, rows["text"])):
                for view, (wave, description) in enumerate([(clip, "")] + augmented_views(clip, rate, text, augment, augment_seed)):
                    if limit is not None and len(wave) > limit * rate // processor.feature_extractor.sampling_rate:
                        # a slowed-down view of a clip near the encoder's limit: cut there, as the encoder would refuse it
                        wave, description = wave[: limit * rate // processor.feature_extractor.sampling_rate], description + ",cut"
                    source.append(i), views.append(view), applied.append(description), expanded.append(wave)
            clips, rates = expanded, [rates[i] for i in source]
        order = np.argsort([len(c) for c in clips])  # length bucketing: little padding per model batch
        n = len(clips)
        speech, spectrogram, frames, weights = [None] * n, [None] * n, [None] * n, [None] * n
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if len({rates[i] for i in chunk}) > 1:
                raise ValueError("a dataset with mixed sampling rates: cast its audio column to one rate first")
            inputs = processor.feature_extractor([clips[i] for i in chunk], sampling_rate=rates[chunk[0]])
            # Floating inputs in the model's dtype (bfloat16 with `clasp features --bf16`), masks as they are.
            inputs = {k: v.to(model.device, model.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
            name = processor.feature_extractor.speech_input_name  # input_values, or Whisper's input_features
            speech_frames, frame_weights = model.get_speech_frames(inputs[name], inputs[f"{name}_mask"])
            # "mean" pooling: the model's own (through its pretrained top layers, if some train); else the mean.
            speech_out = (model.pool_speech(speech_frames, frame_weights) if model.speech_pooler is None else
                          torch.nn.functional.normalize(masked_mean(speech_frames, frame_weights).float(), dim=-1)).cpu()
            spectrogram_out = model.get_spectrogram_embeds(inputs["pixel_values"]).float().cpu()
            speech_frames, frame_weights = speech_frames.cpu(), frame_weights.float().cpu()
            for j, i in enumerate(chunk):
                speech[i], spectrogram[i] = speech_out[j].numpy(), spectrogram_out[j].numpy()
                real = int((frame_weights[j] > 0).sum())  # padding windows are trailing
                frames[i] = speech_frames[j, :real].to(torch.float16).numpy()
                weights[i] = frame_weights[j, :real].numpy()
        text_inputs = {k: v.to(model.device) for k, v in processor.tokenize(rows["text"]).items()}
        text = model.get_text_features(**text_inputs).pooler_output.float().cpu().numpy()
        features = {"speech_embeds": speech, "spectrogram_embeds": spectrogram, "text_embeds": [text[i] for i in source],
                    "speech_frames": frames, "speech_frame_weights": weights}
        return {**features, "view": views, "augmentation": applied} if augment else features

    return encode


def build_feature_cache(model, processor, data, output_dir, splits=None, batch_size=16, chunk_size=256,
                        model_name="", progress=True, augment=0, augment_seed=0):
    """Write the cache for `data` (a DatasetDict with `audio` and `text`) into `output_dir`.

    Returns the cache folder. `model` is a ClaspModel whose backbones produce the features.
    `augment` = K > 0: the train split's rows are each followed by K augmented views of their clip
    (data_clasp.augment, seeded by the clip, the view and `augment_seed`), with its metadata and the
    columns `view` (0 the clip itself), `augmentation` (what was applied) and `clip` (the row's index
    in `data["train"]`); other splits are not augmented. An empty split is left out of the cache.
    Raises ValueError for a negative `augment`, for `augment` > 0 when `splits` leave out train, and
    when every split is empty.
    """
    from datasets import DatasetDict, concatenate_datasets, disable_progress_bars, enable_progress_bars
    from tqdm.auto import tqdm

    from data_clasp.augment import settings_fingerprint

    if augment < 0:
        raise ValueError(f"augment={augment}: the number of augmented copies of a clip is 0 (none) or more")
    state = process_state()
    splits = splits or list(data)
    if augment and "train" not in splits:
        raise ValueError(f"augment={augment}: only the train split is augmented, and the splits {splits} leave it out")
    # An empty split has no features (`clasp data synth --from-manifest --splits train` leaves two empty).
    splits = [split for split in splits if len(data[split])]
    if not splits:
        raise ValueError("no rows to cache: every split is empty")
    fingerprints = cache_fingerprint(model, processor)
    model_fp = fingerprints["fingerprint"]
    copies = {split: augment if split == "train" else 0 for split in splits}
    # A split's chunks are named by the features' fingerprint, and an augmented split's also by how it was
    # augmented; the marker's fingerprint covers both (unchanged without augmentation: older caches stay valid).
    split_fp = {split: model_fp if not copies[split] else hashlib.sha256(
        f"{model_fp}/augment={augment}/seed={augment_seed}/{settings_fingerprint()}".encode()).hexdigest()[:16]
        for split in splits}
    if copies.get("train"):
        fingerprints["fingerprint"] = split_fp["train"]
    encoders = {split: encode_rows(model, processor, batch_size, copies[split], augment_seed) for split in splits}
    chunks_dir = os.path.join(output_dir, "chunks")
    os.makedirs(chunks_dir, exist_ok=True)
    if state.is_main_process:  # datasets' temporary files of chunks a killed run left unfinished
        for name in os.listdir(chunks_dir):
            if name.startswith("tmp"):
                os.remove(os.path.join(chunks_dir, name))
    state.wait_for_everyone()
    marker = os.path.join(output_dir, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("fingerprint") == fingerprints["fingerprint"] and done.get("data") == {s: data[s]._fingerprint for s in splits}:
            if state.is_main_process:
                print(f"[features] {output_dir} is up to date (fingerprint {fingerprints['fingerprint']})")
            return output_dir

    def chunk(split, start):
        """The features of one chunk: computed into its own cache file, or read back from it when done."""
        rows = data[split].select(range(start, min(start + chunk_size, len(data[split]))))
        fingerprint = hashlib.sha256(f"{split_fp[split]}/{rows._fingerprint}".encode()).hexdigest()[:16]
        return rows.map(encoders[split], batched=True, batch_size=4 * batch_size, remove_columns=rows.column_names,
                        cache_file_name=os.path.join(chunks_dir, f"{split}-{start:08d}-{fingerprint}.arrow"),
                        new_fingerprint=fingerprint, load_from_cache_file=True)

    jobs = [(split, start) for split in splits for start in range(0, len(data[split]), chunk_size)]
    mine = jobs[state.process_index :: state.num_processes]
    started = time.perf_counter()
    disable_progress_bars()  # one bar for the whole cache instead of one per chunk
    try:
        for split, start in tqdm(mine, desc="features (chunks)", disable=not (progress and state.is_local_main_process)):
            chunk(split, start)
    finally:
        enable_progress_bars()
    state.wait_for_everyone()
    if not state.is_main_process:
        return output_dir

    # Every process has finished its chunks: assemble the cache (features + the rows' metadata).
    assembled = {}
    for split in splits:
        features = concatenate_datasets([chunk(split, start) for start in range(0, len(data[split]), chunk_size)])
        metadata = data[split].remove_columns([c for c in ("audio",) if c in data[split].column_names])
        if copies[split]:  # each row's metadata for each of its views
            clip = np.repeat(np.arange(len(metadata)), copies[split] + 1)
            metadata = metadata.select(clip).flatten_indices().add_column("clip", clip)
        assembled[split] = concatenate_datasets([metadata, features], axis=1)
    if os.path.exists(marker):  # an outdated cache: while its files are swapped it must not look finished
        os.remove(marker)
    staging = output_dir.rstrip("/") + ".assembling"
    shutil.rmtree(staging, ignore_errors=True)
    DatasetDict(assembled).save_to_disk(staging)
    for name in os.listdir(staging):  # the DatasetDict files beside the chunks, each renamed into place
        target = os.path.join(output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    shutil.rmtree(staging)
    info = {
        **fingerprints, "model": model_name, "data": {s: data[s]._fingerprint for s in splits},
        "speech_trainable_layers": model.config.speech_trainable_layers,
        "speech_whisper_padding": model.config.speech_whisper_padding,
        "rows": {s: len(assembled[s]) for s in splits}, "seconds": time.perf_counter() - started,
        "dims": {c: len(assembled[splits[0]][0][c]) for c in FEATURE_COLUMNS},
    }
    if copies.get("train"):
        info.update(augment=augment, augment_seed=augment_seed)
    write_atomically(marker, json.dumps(info, indent=2))
    print(f"[features] wrote {output_dir}: " + ", ".join(f"{s} {n} rows" for s, n in info["rows"].items())
          + f" in {info['seconds']:.0f} s")
    return output_dir


class CachedFeatures(torch.utils.data.Dataset):
    """One split of a feature cache as model inputs, held in memory.

    Rows are dicts of `text_embeds`, `spectrogram_embeds` and either `speech_embeds` (the mean:
    `frames=False`) or `speech_frames` + `speech_frame_weights` (`frames=True`, for attention
    pooling; `collate` pads them per batch, padding windows weigh 0), and `pair_group_ids` when given
    (`[rows]` integers, one sentence-group id a row: modeling_clasp.clasp_loss). The frames of all rows sit
    in one float16 tensor, read column by column from Arrow: ~50 KB a 4 s clip for Whisper-base.
    """

    def __init__(self, split, frames: bool = False, pair_group_ids=None):
        self.frames = frames
        columns = [c for c in FEATURE_COLUMNS if not (frames and c == "speech_embeds")]
        loaded = split.with_format("numpy", columns=columns)
        self.columns = {name: torch.from_numpy(np.stack(loaded[name]).astype(np.float32)) for name in columns}
        if pair_group_ids is not None:  # for the loss's false-negative elimination (modeling_clasp.clasp_loss)
            if len(pair_group_ids) != len(split):
                raise ValueError(f"pair_group_ids: {len(pair_group_ids)} ids for a split of {len(split)} rows")
            self.columns["pair_group_ids"] = torch.as_tensor(np.asarray(pair_group_ids), dtype=torch.int64)
        if frames:
            missing = [c for c in FRAME_COLUMNS if c not in split.column_names]
            if missing:
                raise ValueError(f"the feature cache has no {missing}: rebuild it with this version of `clasp features`")
            self.flat_frames, self.flat_weights, self.offsets = self._flat_frames(split)

    @staticmethod
    def _flat_frames(split):
        """All rows' frames as one [windows, hidden] float16 tensor, their weights, and row offsets."""
        frames, weights = [], []
        table = split.with_format("arrow", columns=list(FRAME_COLUMNS))[:]  # whole columns, no per-row objects
        for chunk in table.column("speech_frames").chunks:
            hidden = chunk.flatten()
            if len(hidden) == 0:
                continue
            dim = len(hidden[0])
            frames.append(torch.from_numpy(hidden.flatten().to_numpy(zero_copy_only=False).astype(np.float16)).view(-1, dim))
        lengths = []
        for chunk in table.column("speech_frame_weights").chunks:
            weights.append(torch.from_numpy(chunk.flatten().to_numpy(zero_copy_only=False).astype(np.float32)))
            lengths.append(torch.from_numpy(chunk.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)))
        lengths = torch.cat(lengths)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        return torch.cat(frames), torch.cat(weights), offsets

    def __len__(self):
        return len(self.columns["text_embeds"])

    def __getitem__(self, index):
        row = {name: column[index] for name, column in self.columns.items()}
        if self.frames:
            start, end = self.offsets[index], self.offsets[index + 1]
            row["speech_frames"], row["speech_frame_weights"] = self.flat_frames[start:end], self.flat_weights[start:end]
        return row

    def collate(self, rows):
        batch = {name: torch.stack([row[name] for row in rows]) for name in self.columns}
        if self.frames:
            batch["speech_frames"] = torch.nn.utils.rnn.pad_sequence([r["speech_frames"] for r in rows], batch_first=True)
            batch["speech_frame_weights"] = torch.nn.utils.rnn.pad_sequence([r["speech_frame_weights"] for r in rows],
                                                                            batch_first=True)
        return batch


class OneViewPerClip(torch.utils.data.Dataset):
    """The train split of an augmented cache (`clasp features --augment K`) as one row per clip.

    Each epoch takes one of every clip's K + 1 views (the clip itself and its augmented copies),
    drawn uniformly by a generator seeded by (`seed`, epoch) alone: every process and a resumed run
    draw the same. One view per clip keeps an epoch as long as the clips, and keeps a sentence out of
    its own negatives (the contrastive loss takes every other row of a batch as one). Call
    `set_epoch(epoch)` before each epoch. `originals` holds the views 0 (the clips as recorded), in order.
    Rows and `collate` as CachedFeatures'; `split` needs the cache's `clip` and `view` columns.
    """

    def __init__(self, split, frames: bool = False, seed: int = 0, pair_group_ids=None):
        missing = [c for c in VIEW_COLUMNS[:2] if c not in split.column_names]
        if missing:
            raise ValueError(f"the feature cache's split has no {missing}: it was not built with `clasp features --augment`")
        self.rows, self.seed = CachedFeatures(split, frames, pair_group_ids), seed
        self.collate = self.rows.collate
        clips, views = np.asarray(split["clip"]), np.asarray(split["view"])
        self.order = np.argsort(clips, kind="stable")  # rows grouped by clip
        _, self.starts, self.counts = np.unique(clips[self.order], return_index=True, return_counts=True)
        self.originals = torch.utils.data.Subset(self.rows, np.flatnonzero(views == 0).tolist())
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        drawn = np.random.default_rng([self.seed, epoch]).integers(self.counts)  # a view of each clip
        self.index = self.order[self.starts + drawn]

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, index):
        return self.rows[int(self.index[index])]


__all__ = ["build_feature_cache", "backbone_fingerprint", "processor_fingerprint", "cache_fingerprint", "CachedFeatures",
           "OneViewPerClip", "MARKER", "FEATURE_COLUMNS", "FRAME_COLUMNS", "VIEW_COLUMNS"]
