import json

import numpy as np
import pytest
from datasets import Audio, Dataset, DatasetDict

from data_clasp.loaders import load_hf, load_manifest, load_speechbrown
from data_clasp.schema import FEATURES, SPLITS, normalise_text, split_of_groups, translations_dict


def assert_schema(dataset):
    assert isinstance(dataset, DatasetDict) and tuple(dataset) == SPLITS
    for split in dataset.values():
        assert split.features == FEATURES


def assert_no_leak(dataset):
    """No group, and no text or translation of it, in two splits."""
    seen_groups, seen_texts = {}, {}
    for name, split in dataset.items():
        for row in split:
            assert seen_groups.setdefault(row["group"], name) == name
            for text in [row["text"], *translations_dict(row).values()]:
                assert seen_texts.setdefault(normalise_text(text), name) == name


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_manifest_any_rate_decodes_at_16k(tmp_path, tone):
    clips = [tone(tmp_path / "a.wav", 1.0, 8_000), tone(tmp_path / "b.flac", 0.5, 22_050),
             tone(tmp_path / "c.wav", 2.0, 44_100, channels=2)]
    rows = [{"audio": p.name, "text": f"sentence number {i}", "language": "en", "split": s,
             "translations": {"fr": f"phrase numéro {i}"}}
            for i, (p, s) in enumerate(zip(clips, ("train", "dev", "test")))]
    dataset, skipped = load_manifest(write_jsonl(tmp_path / "manifest.jsonl", rows))
    assert skipped == []
    assert_schema(dataset)
    lengths = {}
    for split in SPLITS:
        (row,) = dataset[split]
        audio = row["audio"]
        assert audio["sampling_rate"] == 16_000 and np.asarray(audio["array"]).ndim == 1
        lengths[split] = len(audio["array"])
        assert row["source"] == "manifest" and row["category"] == "" and translations_dict(row)["fr"].startswith("phrase")
    assert lengths == {"train": 16_000, "validation": 8_000, "test": 32_000}


def test_manifest_csv_and_split_by_group(tmp_path, tone):
    tone(tmp_path / "x.wav", 0.5, 11_025)
    lines = ["audio,text,language,translations"]
    for i in range(30):  # ten texts said three times each: their rows must stay together
        lines.append(f'x.wav,Sentence {i % 10}!,en,"{{""de"": ""Satz {i % 10}""}}"')
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    dataset, skipped = load_manifest(tmp_path / "m.csv")
    assert skipped == [] and sum(map(len, dataset.values())) == 30
    assert all(len(dataset[s]) > 0 for s in SPLITS)
    assert_no_leak(dataset)


def test_manifest_bad_json_names_the_line(tmp_path):
    rows = [{"audio": "a.wav", "text": "one two three", "language": "en"}, "", '{"audio": "b.wav", "text": ']
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"m\.jsonl:3: not valid JSON"):
        load_manifest(path)


def test_manifest_missing_column_is_a_clear_error(tmp_path):
    rows = [{"audio": "a.wav", "text": "fine", "language": "en"}, {"audio": "b.wav", "text": "no language"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"m\.jsonl:2: missing column\(s\) language"):
        load_manifest(path)
    (tmp_path / "m.csv").write_text("path,text\na.wav,hello\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) audio, language"):
        load_manifest(tmp_path / "m.csv")


def test_undecodable_rows_are_skipped_and_named(tmp_path, tone):
    tone(tmp_path / "good.wav", 0.5, 16_000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    rows = [{"audio": "good.wav", "text": "this one is fine", "language": "en"},
            {"audio": "broken.wav", "text": "this one is broken", "language": "en"},
            {"audio": "missing.wav", "text": "this one is gone", "language": "en"},
            {"audio": "good.wav", "text": "", "language": "en"}]
    dataset, skipped = load_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    assert sum(map(len, dataset.values())) == 1
    reasons = dict(skipped)
    assert set(reasons) == {"m.jsonl:2 (broken.wav)", "m.jsonl:3 (missing.wav)", "m.jsonl:4 (good.wav)"}
    assert reasons["m.jsonl:4 (good.wav)"] == "empty text"


def test_speechbrown_layout(tmp_path, tone):
    records = []
    for i in range(12):
        rate = (16_000, 22_050, 24_000)[i % 3]
        tone(tmp_path / "audio" / f"dataset_part{i % 2 + 1}" / f"{i}.wav", 0.3, rate)
        # The published file_path uses the authors' folders; only the file name matches here.
        records.append({"id": f"brown_{i}", "file_path": f"/home/authors/speechbrown/{i}.wav",
                        "text": f"A sentence from the Brown corpus, number {i}.", "category": ("news", "humor")[i % 2]})
    (tmp_path / "audio" / "dataset_part1" / "0.wav").write_bytes(b"truncated")
    (tmp_path / "global_metadata.json").write_text(json.dumps(records))
    dataset, skipped = load_speechbrown(tmp_path / "global_metadata.json", tmp_path / "audio")
    assert_schema(dataset)
    assert [name for name, _ in skipped] == ["brown_0"]
    rows = [row for split in dataset.values() for row in split]
    assert len(rows) == 11 and {r["language"] for r in rows} == {"en"} and {r["source"] for r in rows} == {"speechbrown"}
    assert {r["category"] for r in rows} == {"news", "humor"}
    assert all(r["audio"]["sampling_rate"] == 16_000 for r in rows[:3])
    assert_no_leak(dataset)


def common_voice_like(tmp_path, tone, split, n):
    paths = [str(tone(tmp_path / split / f"{i}.wav", 0.4, 48_000)) for i in range(n)]
    return Dataset.from_dict({"client_id": ["x"] * n, "path": paths, "audio": paths,
                              "sentence": [f"{split} sentence {i}" for i in range(n)], "locale": ["fr"] * n}
                             ).cast_column("audio", Audio())


def test_hf_common_voice_keeps_its_splits(tmp_path, tone):
    data = DatasetDict({s: common_voice_like(tmp_path, tone, s, 2) for s in ("train", "validation", "test", "other")})
    dataset, skipped = load_hf(data, source="commonvoice")
    assert_schema(dataset)
    assert skipped == []
    assert [len(dataset[s]) for s in SPLITS] == [2, 2, 2]  # "other" is not one of ours
    row = dataset["test"][0]
    assert row["text"] == "test sentence 0" and row["language"] == "fr" and row["source"] == "commonvoice"
    assert row["audio"]["sampling_rate"] == 16_000 and len(row["audio"]["array"]) == 6_400


def test_hf_fleurs_needs_a_language_code_and_groups_by_id(tmp_path, tone):
    n = 9
    paths = [str(tone(tmp_path / f"{i}.wav", 0.3, 16_000)) for i in range(n)]
    fleurs = Dataset.from_dict({
        "id": [i // 3 for i in range(n)],  # three recordings of each sentence
        "audio": paths, "transcription": [f"sentence {i // 3}" for i in range(n)],
        "raw_transcription": [f"Sentence {i // 3}." for i in range(n)], "language": ["English"] * n,
    }).cast_column("audio", Audio())
    with pytest.raises(ValueError, match="not ISO codes; pass language="):
        load_hf(fleurs)
    dataset, skipped = load_hf(fleurs, language="en", source="fleurs")
    rows = [row for split in dataset.values() for row in split]
    assert skipped == [] and len(rows) == n and rows[0]["text"].startswith("Sentence")
    assert {r["group"] for r in rows} == {"fleurs:0", "fleurs:1", "fleurs:2"}
    assert_no_leak(dataset)


def test_hf_bytes_audio_with_a_broken_row(tmp_path, tone):
    good = tone(tmp_path / "a.wav", 0.5, 8_000).read_bytes()
    data = Dataset.from_dict({"audio": [{"bytes": good, "path": "a.wav"}, {"bytes": b"garbage", "path": "b.wav"}],
                              "text": ["fine words here", "broken words here"]}).cast_column("audio", Audio())
    dataset, skipped = load_hf(data, language="de")
    assert [name for name, _ in skipped] == ["b.wav"]
    assert sum(map(len, dataset.values())) == 1


def test_split_of_groups_is_80_10_10_and_never_empty():
    assert sorted(split_of_groups(["a", "b", "c"]).values()) == ["test", "train", "validation"]
    counts = {}
    for split in split_of_groups([f"g{i}" for i in range(1000)]).values():
        counts[split] = counts.get(split, 0) + 1
    assert counts == {"train": 800, "validation": 100, "test": 100}


def test_hf_keeps_a_clasp_dataset_unchanged(tmp_path, tone):
    tone(tmp_path / "a.wav", 0.4, 16_000)
    rows = [{"audio": "a.wav", "text": f"Sentence {i}.", "language": "en", "source": "mine", "category": "c",
             "group": f"g{i // 2}", "translations": {"de": f"Satz {i}."}} for i in range(8)]
    ours, _ = load_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    again, skipped = load_hf(ours)
    assert skipped == []
    for split in SPLITS:
        assert again[split].remove_columns("audio").to_list() == ours[split].remove_columns("audio").to_list()


def test_corpus_of_a_source_and_the_corpora_a_name_picks():
    from data_clasp.schema import corpora_matching, corpus_of

    assert corpus_of("espeak:fortunes-de") == "fortunes-de" and corpus_of("kokoro:kjv") == "kjv"
    assert corpus_of("speechbrown") == "speechbrown"  # no engine: the source is its corpus
    present = {"fortunes-de", "fortunes-br", "fortunesx", "django", "kjv"}
    assert corpora_matching(["fortunes"], present) == {"fortunes-de", "fortunes-br"}
    assert corpora_matching(["kjv", "fortunes-br"], present) == {"kjv", "fortunes-br"}
    # `clasp data synth --sources bible` reads the corpora kjv and sparv: the name picks them.
    assert corpora_matching(["bible"], present | {"sparv"}) == {"kjv", "sparv"}
    with pytest.raises(ValueError, match="^lee: no such corpus here; the corpora are django, fortunes-br"):
        corpora_matching(["lee", "kjv"], present)
