import json
import shutil

import numpy as np
import pytest
from datasets import load_from_disk

from clasp_cli.main import main as clasp
from data_clasp import synth
from data_clasp.corpora import Sentence, merge_groups
from data_clasp.schema import FEATURES, SPLITS, normalise_text, translations_dict
from data_clasp.synth import SynthesisStopped, synthesize

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")


def clip_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "clips").rglob("*.wav"))}


def run(sentences, folder, **kwargs):
    kwargs = {"languages": ["en", "fr", "de"], "per_language": 4, "seed": 7, "progress_bar": False, **kwargs}
    return synthesize(sentences, output=folder, **kwargs)


def test_synthesised_dataset(sentences, tmp_path):
    dataset = run(sentences, tmp_path, workers=2)
    assert tuple(dataset) == SPLITS and all(split.features == FEATURES for split in dataset.values())
    assert all(len(dataset[s]) > 0 for s in SPLITS)
    reloaded = load_from_disk(str(tmp_path / "dataset"))
    rows = [row for split in reloaded.values() for row in split]
    assert len(rows) == 12
    assert {r["language"]: 0 for r in rows}.keys() == {"en", "fr", "de"}
    seen = {}
    for split, part in reloaded.items():
        for row in part:
            audio = np.asarray(row["audio"]["array"])
            assert row["audio"]["sampling_rate"] == 16_000
            assert 0.3 <= len(audio) / 16_000 <= 20 and np.sqrt(np.mean(audio**2)) > 0.003
            assert row["source"].startswith("espeak:")
            for text in [row["text"], *translations_dict(row).values()]:
                assert seen.setdefault(normalise_text(text), split) == split  # no text in two splits
            assert seen.setdefault(row["group"], split) == split
    for row in rows:  # the "tiny" sentences are parallel, the "other" ones stand alone
        expected = {"en", "fr", "de"} - {row["language"]} if row["source"] == "espeak:tiny" else set()
        assert set(translations_dict(row)) == expected
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 12 and all(m["split"] in SPLITS and "+" in m["voice"] for m in manifest)
    assert len({m["voice"] for m in manifest}) > 3  # voices vary from clip to clip
    # What `clasp eval --data` reads: every row of the split, named by its clip file.
    from evaluation.pairs import dataset_pairs

    pairs = dataset_pairs(tmp_path, "test")
    assert [p["text"] for p in pairs] == reloaded["test"]["text"]
    assert all(p["name"].startswith(f"test[{i}] (") and p["name"].endswith(".wav)") for i, p in enumerate(pairs))
    samples, rate = pairs[0]["read"]()
    assert rate == 16_000 and samples.shape[-1] > 0.3 * rate


def test_interrupted_run_resumes_to_the_same_result(sentences, tmp_path):
    whole = run(sentences, tmp_path / "whole", workers=1)
    with pytest.raises(SynthesisStopped):
        run(sentences, tmp_path / "resumed", workers=2, stop_after=5)
    done = (tmp_path / "resumed" / "progress.jsonl").read_text().splitlines()
    assert len(done) == 5 and not (tmp_path / "resumed" / "manifest.jsonl").exists()
    with open(tmp_path / "resumed" / "progress.jsonl", "a") as log:
        log.write('{"id": "cut short by the ki')  # a kill in the middle of a line
    (tmp_path / "resumed" / "clips" / "en").mkdir(parents=True, exist_ok=True)
    (tmp_path / "resumed" / "clips" / "en" / "x.wav.tmp123").write_bytes(b"half a clip")
    resumed = run(sentences, tmp_path / "resumed", workers=2)
    assert (tmp_path / "resumed" / "manifest.jsonl").read_text() == (tmp_path / "whole" / "manifest.jsonl").read_text()
    assert clip_bytes(tmp_path / "resumed") == clip_bytes(tmp_path / "whole")
    assert {s: resumed[s]["text"] for s in SPLITS} == {s: whole[s]["text"] for s in SPLITS}
    # A rerun of a finished run makes nothing new.
    lines = len((tmp_path / "resumed" / "progress.jsonl").read_text().splitlines())
    run(sentences, tmp_path / "resumed", workers=2)
    assert len((tmp_path / "resumed" / "progress.jsonl").read_text().splitlines()) == lines


def test_too_long_clips_are_replaced_by_the_next_sentence(sentences, tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "MAX_SECONDS", 6.0)  # the paper's 20 s, scaled to a short test
    long = Sentence("de", " ".join(["Das ist ein sehr langer Satz"] * 7) + ".", "tiny", "long", "u-long")
    german = merge_groups([s for s in sentences if s.language == "de"] + [long])
    # A seed under which the long sentence is among the first four, so it has to be replaced.
    seed = next(s for s in range(100) if long.text in [c.text for c in synth.candidates(german, "de", s)[:4]])
    dataset = run(german, tmp_path, languages=["de"], per_language=4, seed=seed, workers=1)
    records = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records if r["status"] == "too long"] == [long.text]
    texts = [row["text"] for split in dataset.values() for row in split]
    assert len(texts) == 4 and long.text not in texts


def test_unspeakable_language_is_refused(sentences, tmp_path):
    with pytest.raises(ValueError, match="ja: espeak-ng reads only kana"):
        run(sentences, tmp_path, languages=["en", "ja"])


def test_chinese_is_spoken_as_pinyin():
    pytest.importorskip("pypinyin")
    assert synth.spoken_form("zh", "你好，世界。") == "ni3 hao3 , shi4 jie4 ."


def test_cli_synth_offline(tmp_path, fake_wheel, capsys):
    fake_wheel(tmp_path / "cache" / "wheels")
    code = clasp(["data", "synth", "--languages", "fr,de", "--per-language", "2", "--seed", "1", "--workers", "1",
                  "--sources", "django", "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out")])
    assert code == 0
    dataset = load_from_disk(str(tmp_path / "out" / "dataset"))
    rows = [row for split in dataset.values() for row in split]
    assert sorted(r["language"] for r in rows) == ["de", "de", "fr", "fr"]
    assert {r["source"] for r in rows} == {"espeak:django"}
