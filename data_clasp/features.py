"""The feature cache: frozen-backbone features of a speech–text dataset, computed once.

CLASP's backbones are frozen in the paper's setting, so their outputs never change during
training: run them once, keep `speech_embeds`, `spectrogram_embeds` and `text_embeds` per row,
and train the fusion head on those (train_accelerate.py reads this cache).

Each split is cut into chunks; every chunk goes through `datasets.map` with its own cache file,
named by a fingerprint of (backbone weights, dataset, chunk). A finished chunk is never computed
again: a second run is free, and a run killed half-way resumes at the first unfinished chunk.
Under `accelerate launch` the chunks are shared out between processes.
"""

import hashlib
import json
import os
import shutil
import time

import numpy as np
import torch

MARKER = "clasp_features.json"  # train_accelerate.FEATURE_CACHE_MARKER
FEATURE_COLUMNS = ("speech_embeds", "spectrogram_embeds", "text_embeds")


def backbone_fingerprint(model) -> str:
    """SHA-256 over the backbones' configs and weights: the features depend on nothing else."""
    digest = hashlib.sha256()
    for name in ("speech_model", "spectrogram_model", "text_model"):
        digest.update(json.dumps(getattr(model, name).config.to_dict(), sort_keys=True, default=str).encode())
        for key, tensor in getattr(model, name).state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    for key in ("text_pooling", "text_normalize", "speech_layer", "spectrogram_n_mels", "spectrogram_hop_length"):
        digest.update(f"{key}={getattr(model.config, key)}".encode())
    return digest.hexdigest()[:16]


def encode_rows(model, processor, batch_size: int):
    """A `datasets.map` function: features of a batch of rows, shortest clips batched together."""

    @torch.no_grad()
    def encode(rows):
        clips = [audio["array"] for audio in rows["audio"]]
        rates = [audio["sampling_rate"] for audio in rows["audio"]]
        order = np.argsort([len(c) for c in clips])  # length bucketing: little padding per model batch
        speech, spectrogram = [None] * len(clips), [None] * len(clips)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if len({rates[i] for i in chunk}) > 1:
                raise ValueError("a dataset with mixed sampling rates: cast its audio column to one rate first")
            inputs = processor.feature_extractor([clips[i] for i in chunk], sampling_rate=rates[chunk[0]])
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            speech_out = model.get_speech_embeds(inputs["input_values"], inputs["audio_attention_mask"]).cpu()
            spectrogram_out = model.get_spectrogram_embeds(inputs["input_features"].to(model.dtype)).cpu()
            for j, i in enumerate(chunk):
                speech[i], spectrogram[i] = speech_out[j].numpy(), spectrogram_out[j].numpy()
        text_inputs = {k: v.to(model.device) for k, v in processor.tokenize(rows["text"]).items()}
        text = model.get_text_features(**text_inputs).cpu().numpy()
        return {"speech_embeds": speech, "spectrogram_embeds": spectrogram, "text_embeds": list(text)}

    return encode


def build_feature_cache(model, processor, data, output_dir, splits=None, batch_size=16, chunk_size=256,
                        model_name="", progress=True):
    """Write the cache for `data` (a DatasetDict with `audio` and `text`) into `output_dir`.

    Returns the cache folder. `model` is a ClaspModel whose backbones produce the features.
    """
    from accelerate import PartialState
    from datasets import DatasetDict, concatenate_datasets, disable_progress_bars, enable_progress_bars
    from tqdm.auto import tqdm

    state = PartialState()
    splits = splits or list(data)
    model_fp = backbone_fingerprint(model)
    chunks_dir = os.path.join(output_dir, "chunks")
    os.makedirs(chunks_dir, exist_ok=True)
    marker = os.path.join(output_dir, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("backbones") == model_fp and done.get("data") == {s: data[s]._fingerprint for s in splits}:
            if state.is_main_process:
                print(f"[features] {output_dir} is up to date (backbones {model_fp})")
            return output_dir

    encode = encode_rows(model, processor, batch_size)
    jobs = [(split, start) for split in splits for start in range(0, len(data[split]), chunk_size)]
    mine = jobs[state.process_index :: state.num_processes]
    started = time.perf_counter()
    disable_progress_bars()  # one bar for the whole cache instead of one per chunk
    try:
        for split, start in tqdm(mine, desc="features (chunks)", disable=not (progress and state.is_local_main_process)):
            rows = data[split].select(range(start, min(start + chunk_size, len(data[split]))))
            fingerprint = hashlib.sha256(f"{model_fp}/{rows._fingerprint}".encode()).hexdigest()[:16]
            rows.map(encode, batched=True, batch_size=4 * batch_size, remove_columns=rows.column_names,
                     cache_file_name=os.path.join(chunks_dir, f"{split}-{start:08d}-{fingerprint}.arrow"),
                     new_fingerprint=fingerprint, load_from_cache_file=True)
    finally:
        enable_progress_bars()
    state.wait_for_everyone()
    if not state.is_main_process:
        return output_dir

    # Every process has finished its chunks: assemble the cache (features + the rows' metadata).
    assembled = {}
    for split in splits:
        parts = []
        for start in range(0, len(data[split]), chunk_size):
            rows = data[split].select(range(start, min(start + chunk_size, len(data[split]))))
            fingerprint = hashlib.sha256(f"{model_fp}/{rows._fingerprint}".encode()).hexdigest()[:16]
            parts.append(rows.map(encode, batched=True, batch_size=4 * batch_size, remove_columns=rows.column_names,
                                  cache_file_name=os.path.join(chunks_dir, f"{split}-{start:08d}-{fingerprint}.arrow"),
                                  new_fingerprint=fingerprint, load_from_cache_file=True))
        features = concatenate_datasets(parts)
        metadata = data[split].remove_columns([c for c in ("audio",) if c in data[split].column_names])
        assembled[split] = concatenate_datasets([metadata, features], axis=1)
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
        "backbones": model_fp, "model": model_name, "data": {s: data[s]._fingerprint for s in splits},
        "rows": {s: len(data[s]) for s in splits}, "seconds": time.perf_counter() - started,
        "dims": {c: len(assembled[splits[0]][0][c]) for c in FEATURE_COLUMNS},
    }
    with open(marker + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(marker + ".tmp", marker)
    print(f"[features] wrote {output_dir}: " + ", ".join(f"{s} {n} rows" for s, n in info["rows"].items())
          + f" in {info['seconds']:.0f} s")
    return output_dir


__all__ = ["build_feature_cache", "backbone_fingerprint", "MARKER", "FEATURE_COLUMNS"]
