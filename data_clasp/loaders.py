"""Loaders from the formats CLASP is trained on into the one schema of `schema.py`.

    load_speechbrown  SpeechBrown: metadata JSON records {id, file_path, text, category} + wav folders
    load_manifest     a JSONL or CSV manifest: {"audio": path, "text": ..., "language": ..., ...}
    load_hf           any Hugging Face dataset with an audio column and a text column
                      (Common Voice `sentence`/`locale`, FLEURS `raw_transcription`/`transcription`)

Each returns `(dataset_dict, skipped)`. Every clip is decoded once while loading, and a clip that
does not decode (or a row with no text) is left out and listed in `skipped` as (row name, reason)
instead of failing the whole set: one broken file in 55k should cost one row, not the run.
Manifest mistakes made by a person (bad JSON, missing columns) are errors, with the line number.
"""

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from datasets import Audio, Dataset, DatasetDict, Value

from processing_clasp.feature_extraction_clasp import MAX_FLOAT_PEAK

from .schema import COLUMNS, FEATURES, SAMPLING_RATE, SPLITS, split_of_groups, text_group, translations_list

REQUIRED_MANIFEST_COLUMNS = ("audio", "text", "language")
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}
TEXT_COLUMNS = ("text", "sentence", "raw_transcription", "transcription", "normalized_text")
LANGUAGE_COLUMNS = ("language", "locale", "lang")
ISO_CODE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")

# While loading, audio stays undecoded ({path, bytes}) and two bookkeeping columns ride along.
LOADING_FEATURES = FEATURES.copy()
LOADING_FEATURES["audio"] = Audio(decode=False)
LOADING_FEATURES["name"] = Value("string")  # how a skipped row is reported
LOADING_FEATURES["split"] = Value("string")  # "" when the source has no split of its own


def decode_error(audio: dict):
    """Why this clip can't be used, or None.

    It is decoded as the dataset will decode it (datasets' Audio, resampled to 16 kHz by FFmpeg):
    a clip of a few milliseconds at 96 kHz reads fine with soundfile and comes out of FFmpeg's
    resampler empty, which `clasp features` would only find hours later.
    """
    if not (audio.get("bytes") or audio.get("path")):
        return "no audio"
    try:
        samples = Audio(sampling_rate=SAMPLING_RATE).decode_example(audio).get_all_samples().data.numpy()
    except Exception as error:
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if samples.size == 0:
        return f"no samples at {SAMPLING_RATE} Hz"
    # A NaN would pass every step until the model, and poison a whole batch of features there.
    if not np.isfinite(samples).all():
        return "NaN or infinite samples"
    peak = float(np.abs(samples).max())
    return f"samples reach {peak:.3g}, 120 dB past full scale: not audio in [-1, 1]" if peak > MAX_FLOAT_PEAK else None


def save_dataset(dataset: DatasetDict, folder) -> None:
    """`save_to_disk` into FOLDER.partial, then rename: FOLDER only ever holds a whole dataset.

    A killed save_to_disk leaves some of its files; a reader of FOLDER must never see that.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / "dataset_dict.json").is_file():
        raise ValueError(f"{folder} exists and holds something else than a saved dataset: choose another folder")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # from a run killed while saving
    # An empty split gets one empty shard: saved with none (datasets' default), load_from_disk fails on it.
    dataset.save_to_disk(str(partial), num_shards={name: 1 for name, split in dataset.items() if len(split) == 0})
    shutil.rmtree(folder, ignore_errors=True)  # a kill here leaves no dataset (rerun to make it), never half of one
    os.replace(partial, folder)


def _with_errors(batch):
    errors = []
    for audio, text in zip(batch["audio"], batch["text"]):
        errors.append("empty text" if not (text or "").strip() else decode_error(audio))
    return {"error": errors}


def finish(parts: dict, check_audio: bool = True):
    """Loading columns -> (DatasetDict in the schema, skipped rows).

    `parts` maps a split name to a Dataset in LOADING_FEATURES. Rows carry their own `split` when
    the source had one; otherwise everything is pooled and cut 80/10/10 by group.
    """
    skipped, kept = [], []
    for dataset in parts.values():
        if check_audio:
            dataset = dataset.map(_with_errors, batched=True, batch_size=64, desc="decoding audio")
            bad = dataset.filter(lambda e: e is not None, input_columns="error")
            skipped += list(zip(bad["name"], bad["error"]))
            dataset = dataset.filter(lambda e: e is None, input_columns="error").remove_columns("error")
        kept.append(dataset)
    from datasets import concatenate_datasets

    pooled = concatenate_datasets(kept) if kept else Dataset.from_dict({}, features=LOADING_FEATURES)
    given = set(pooled["split"])
    if given == {""} or not given:
        split_of = split_of_groups(pooled["group"])
        splits = [split_of[g] for g in pooled["group"]]
    elif "" in given:
        raise ValueError("some rows name a split and others don't; name one for every row or for none")
    else:
        splits = pooled["split"]
    result = DatasetDict()
    for name in SPLITS:
        indices = [i for i, s in enumerate(splits) if s == name]
        result[name] = (pooled.select(indices).select_columns(list(COLUMNS))
                        .cast_column("audio", Audio(sampling_rate=SAMPLING_RATE)))
    return result, skipped


def _rows_dataset(rows) -> Dataset:
    columns = {c: [row.get(c, "") for row in rows] for c in LOADING_FEATURES}
    columns["audio"] = [{"path": str(row["audio"]), "bytes": None} for row in rows]
    columns["translations"] = [translations_list(row.get("translations")) for row in rows]
    return Dataset.from_dict(columns, features=LOADING_FEATURES)


def _split_name(value, where):
    if value in ("", None):
        return ""
    if str(value).lower() not in SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {value!r}; use one of train, validation, test")
    return SPLIT_ALIASES[str(value).lower()]


# --------------------------------------------------------------------------------------- SpeechBrown


def load_speechbrown(metadata, audio_root=None, language="en", source="speechbrown", check_audio=True):
    """SpeechBrown: a JSON list (or dict, or JSONL) of {id, file_path, text, category} + wav folders.

    `file_path` is tried relative to `audio_root`, then to the metadata's folder, then by file name
    anywhere under `audio_root`: the published metadata keeps the authors' own folder layout, which
    rarely matches how the zip parts were unpacked.
    """
    metadata = Path(metadata)
    audio_root = Path(audio_root) if audio_root else metadata.parent
    raw = metadata.read_text(encoding="utf-8")
    try:
        records = json.loads(raw)
    except json.JSONDecodeError:
        records = [_json_line(line, metadata, n) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if isinstance(records, dict):
        records = [{"id": key, **value} for key, value in records.items()]
    by_name = None
    rows = []
    for n, record in enumerate(records):
        missing = [k for k in ("file_path", "text") if k not in record]
        if missing:
            raise ValueError(f"{metadata}: record {n} ({record.get('id', '?')}) lacks {', '.join(missing)}")
        path = next((p for p in (audio_root / record["file_path"], metadata.parent / record["file_path"]) if p.exists()), None)
        if path is None:
            if by_name is None:
                by_name = {f: Path(d) / f for d, _, files in os.walk(audio_root) for f in files}
            path = by_name.get(Path(record["file_path"]).name, audio_root / record["file_path"])
        rows.append({"audio": path, "text": record["text"], "language": language, "source": source,
                     "category": record.get("category") or "", "group": text_group(record["text"]),
                     "name": str(record.get("id", record["file_path"]))})
    return finish({"all": _rows_dataset(rows)}, check_audio)


# ------------------------------------------------------------------------------------------ manifest


def _json_line(line, path, number):
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
    return value


def read_manifest(path) -> list:
    """The rows of a JSONL or CSV manifest, checked, with audio paths made absolute."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; header has {reader.fieldnames}")
            numbered = []
            for row in reader:
                if row.get("translations"):
                    try:
                        row["translations"] = json.loads(row["translations"])
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{reader.line_num}: translations is not JSON ({error.msg})") from None
                numbered.append((reader.line_num, row))
    else:
        with open(path, encoding="utf-8") as f:
            numbered = [(n, _json_line(line, path, n)) for n, line in enumerate(f, 1) if line.strip()]
    rows = []
    for number, row in numbered:
        missing = [c for c in REQUIRED_MANIFEST_COLUMNS if row.get(c) is None]
        if missing:
            raise ValueError(f"{path}:{number}: missing column(s) {', '.join(missing)}; row has {sorted(row)}")
        audio = Path(row["audio"]).expanduser()
        rows.append({
            "audio": audio if audio.is_absolute() else path.parent / audio,
            "text": row["text"],
            "language": row["language"],
            "source": row.get("source") or path.stem,
            "category": row.get("category") or "",
            "translations": row.get("translations") or {},
            "group": row.get("group") or text_group(row["text"]),
            "split": _split_name(row.get("split"), f"{path}:{number}"),
            "name": f"{path.name}:{number} ({row['audio']})",
        })
    return rows


def load_manifest(path, check_audio=True):
    """A JSONL/CSV manifest -> (DatasetDict, skipped). Rows keep their `split` if they all have one."""
    return finish({"all": _rows_dataset(read_manifest(path))}, check_audio)


# ------------------------------------------------------------------------------- Hugging Face datasets


def _pick(columns, candidates, what, given):
    if given:
        if given not in columns:
            raise ValueError(f"no column {given!r}; columns are {columns}")
        return given
    found = next((c for c in candidates if c in columns), None)
    if found is None and what:
        raise ValueError(f"no {what} column found among {columns}; name it with {what}_column=")
    return found


def load_hf(data, *, audio_column=None, text_column=None, language=None, language_column=None,
            group_column=None, category_column=None, source=None, check_audio=True):
    """Any `datasets` Dataset or DatasetDict with audio and text -> (DatasetDict, skipped).

    Column names are guessed (Common Voice: sentence, locale; FLEURS: raw_transcription, language)
    unless given. FLEURS's `language` column holds names ("English"), not codes: pass `language=`.
    A FLEURS-style `id` shared by translations becomes the group, so a sentence and its
    translations stay in one split. Columns already in our schema (source, category,
    translations, group) are kept, so a saved CLASP dataset loads unchanged. A DatasetDict with
    train/validation/test keeps its splits; anything else is pooled and split by group.
    """
    parts = dict(data) if isinstance(data, DatasetDict) else {"": data}
    keep_splits = {_split_name(name, "split") for name in parts if name.lower() in SPLIT_ALIASES} == set(SPLITS)
    converted = {}
    for split, dataset in parts.items():
        if keep_splits and split.lower() not in SPLIT_ALIASES:
            continue  # Common Voice's "other" and "invalidated" are not part of train/validation/test
        columns = dataset.column_names
        audio_col = _pick(columns, [c for c, f in dataset.features.items() if isinstance(f, Audio)], "audio", audio_column)
        text_col = _pick(columns, TEXT_COLUMNS, "text", text_column)
        language_col = None if language else _pick(columns, LANGUAGE_COLUMNS, "language", language_column)
        if language_col:
            values = set(dataset.unique(language_col))
            if not all(isinstance(v, str) and ISO_CODE.match(v) for v in values):
                raise ValueError(f"column {language_col!r} holds {sorted(map(str, values))[:3]}, not ISO codes; pass language=")
        group_col = group_column
        if group_col is None and "group" in columns:
            group_col = "group"  # already in our schema
        elif group_col is None and "raw_transcription" in columns and "id" in columns:
            group_col = "id"  # FLEURS: one id per sentence, shared by its translations
        category_col = category_column or ("category" if "category" in columns else None)
        name_of = source or getattr(dataset.info, "dataset_name", None) or "hf"
        split_name = _split_name(split, "split") if keep_splits else ""

        def convert(batch, indices, audio_col=audio_col, text_col=text_col, language_col=language_col, group_col=group_col,
                    category_col=category_col, name_of=name_of, split=split, split_name=split_name):
            n = len(indices)
            texts = [t or "" for t in batch[text_col]]
            if group_col == "group":
                groups = batch["group"]
            elif group_col:
                groups = [f"{name_of}:{g}" for g in batch[group_col]]
            else:
                groups = [text_group(t) for t in texts]
            return {
                "audio": batch[audio_col],
                "text": texts,
                "language": batch[language_col] if language_col else [language] * n,
                "source": batch["source"] if "source" in batch and not source else [name_of] * n,
                "category": [c or "" for c in batch[category_col]] if category_col else [""] * n,
                "translations": [translations_list(t) for t in batch["translations"]] if "translations" in batch else [[]] * n,
                "group": groups,
                "name": [(a or {}).get("path") or f"{split or 'data'}[{i}]" for a, i in zip(batch[audio_col], indices)],
                "split": [split_name] * n,
            }

        dataset = dataset.cast_column(audio_col, Audio(decode=False))
        converted[split] = dataset.map(convert, batched=True, with_indices=True, remove_columns=columns,
                                       features=LOADING_FEATURES, desc="to CLASP schema")
    return finish(converted, check_audio)
