"""The speech–text pairs a model is evaluated on: from a JSONL manifest or a data_clasp dataset.

Each pair is a dict with the dataset schema's columns (text, language, source, category, group,
translations as {language: text}) plus `name` (how a broken clip is reported) and `read` (a
callable returning (samples, sampling rate)). Audio is read when it is needed, not held: 11k
clips of a few seconds are gigabytes of float32, and decoding a clip again costs milliseconds
next to encoding it.
"""

import sys
from functools import partial
from pathlib import Path


def manifest_pairs(path) -> list[dict]:
    """One pair per line of a JSONL (or CSV) manifest; relative audio paths start at its folder.

    A line that is not JSON, or lacks audio/text/language, is an error naming the line: a
    person wrote the manifest and should fix it. A clip that cannot be read is reported later.
    """
    from data_clasp.audio import load_audio
    from data_clasp.loaders import read_manifest
    from data_clasp.schema import translations_list

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    pairs = []
    for row in read_manifest(path):
        translations = {t["language"]: t["text"] for t in translations_list(row["translations"])}
        pairs.append({**row, "translations": translations, "name": str(row["audio"]),
                      "read": partial(load_audio, row["audio"])})
    return pairs


def pairs_of_sources(pairs, sources: str, where) -> list[dict]:
    """The pairs whose text corpus (`data_clasp.schema.corpus_of` of their `source`) is picked by the
    comma-separated names of `sources` (`corpora_matching`). Raises ValueError naming `where` when a
    name picks no corpus of `pairs` (the message lists them)."""
    from data_clasp.schema import corpora_matching, corpus_of

    names = [name.strip() for name in sources.split(",") if name.strip()]
    if not names:
        raise ValueError("--sources: give at least one corpus name")
    present = {corpus_of(pair.get("source") or "") for pair in pairs} - {""}
    try:
        picked = corpora_matching(names, present)
    except ValueError as error:
        raise ValueError(f"{where}: --sources {error}") from None
    return [pair for pair in pairs if corpus_of(pair.get("source") or "") in picked]


def dataset_pairs(directory, split: str = "test") -> list[dict]:
    """The pairs of one split of a data_clasp dataset (DIR/dataset, or DIR itself if saved there)."""
    import pyarrow.compute
    from datasets import Audio, load_from_disk

    directory = Path(directory)
    folder = directory / "dataset" if (directory / "dataset").is_dir() else directory
    if not (folder / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{directory}: no saved dataset here or in {directory / 'dataset'}")
    splits = load_from_disk(str(folder))
    if split not in splits:
        raise ValueError(f"{folder}: no split {split!r}; it has {', '.join(splits)}")
    # Undecoded cells ({bytes, path}), fetched one row at a time: the column would be all the audio.
    rows = splits[split].cast_column("audio", Audio(decode=False))
    decoder = Audio(sampling_rate=splits[split].features["audio"].sampling_rate)
    # The file names straight from Arrow's struct column, without touching the bytes. (Iterating a
    # flatten()ed "audio.path" column drops that key from the rows in datasets 5.)
    paths = pyarrow.compute.struct_field(splits[split].data.column("audio"), "path").to_pylist()
    pairs = []
    for index, (row, path) in enumerate(zip(splits[split].remove_columns("audio"), paths)):
        pairs.append({**row, "translations": {t["language"]: t["text"] for t in row["translations"]},
                      "name": f"{split}[{index}] ({path})" if path else f"{split}[{index}]",
                      "read": partial(read_dataset_clip, rows, index, decoder)})
    return pairs


def read_dataset_clip(rows, index, decoder):
    """(samples `[channels, samples]`, sampling rate) of one row, as `load_audio` returns a file's."""
    samples = decoder.decode_example(rows[index]["audio"]).get_all_samples()
    return samples.data.numpy(), int(samples.sample_rate)


def prepared_clip(pair, feature_extractor):
    """The pair's clip as the feature extractor's 16 kHz mono waveform (ValueError if unusable)."""
    samples, rate = pair["read"]()
    return feature_extractor.prepare_clip(samples, rate, name=pair["name"])


def usable_clips(pairs, feature_extractor):
    """(lengths in samples of the clips that can be encoded, failures as [{path, reason}], kept indices).

    Every clip is read once up front, so a broken file costs its own row and nothing else, and
    the lengths let the encoder batch clips of similar length together.
    """
    from tqdm.auto import tqdm

    lengths, failed, kept = [], [], []
    for index, pair in enumerate(tqdm(pairs, desc="reading audio", unit="clip")):
        try:
            lengths.append(len(prepared_clip(pair, feature_extractor)))
            kept.append(index)
        except Exception as error:  # any broken clip (decoder, format, length) must cost one row only
            reason = getattr(error, "reason", None) or str(error).removeprefix(f"{pair['name']}: ") or type(error).__name__
            failed.append({"path": pair["name"], "reason": reason.strip().splitlines()[0]})
            tqdm.write(f"skipped {failed[-1]['path']}: {failed[-1]['reason']}", file=sys.stderr)
    return lengths, failed, kept
