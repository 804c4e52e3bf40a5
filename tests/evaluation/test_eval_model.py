"""`clasp eval --model`: a saved CLASP folder, a manifest or dataset of pairs -> the report."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from clasp_cli.main import main
from evaluation.asr_baseline import edit_distance, error_rates, error_units
from evaluation.embed import embed_audio, embed_pairs
from evaluation.model_report import model_report
from evaluation.pairs import manifest_pairs, usable_clips
from modeling_clasp import ClaspModel
from processing_clasp import ClaspProcessor
from tiny import REPO, tiny_config, tiny_model, tiny_processor, tone

# Distinct words of the tiny tokenizer's vocabulary, so no two texts embed alike.
TEXTS = ["the cat sat", "a dog sat on mat", "red house", "le chat est sur la", "der hund ist", "el perro", "blue car"]
LANGUAGES = ["en", "en", "en", "fr", "de", "es", "en"]


@pytest.fixture(scope="module")
def clasp_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clasp")
    config = tiny_config()
    torch.manual_seed(0)
    tiny_model(config).save_pretrained(folder)
    tiny_processor(config, folder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(clasp_dir):
    return ClaspModel.from_pretrained(clasp_dir).eval(), ClaspProcessor.from_pretrained(clasp_dir)


def write_manifest(folder: Path, rows) -> Path:
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Seven readable clips of distinct lengths (one at 8 kHz stereo), one missing, one broken."""
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "clips").mkdir()
    rows = []
    for i, (text, language) in enumerate(zip(TEXTS, LANGUAGES)):
        clip = tone(0.3 + 0.1 * i, freq=150 + 40 * i, seed=i)
        if i == 2:
            soundfile.write(folder / "clips" / f"{i}.wav", np.stack([clip[::2]] * 2, axis=1), 8000)
        else:
            soundfile.write(folder / "clips" / f"{i}.wav", clip, 16000)
        row = {"audio": f"clips/{i}.wav", "text": text, "language": language, "source": "ab"[i % 2]}
        if i < 3:
            row["translations"] = {"fr": f"le chat {i}", "de": "der hund"} if i < 2 else {"fr": "la"}
        rows.append(row)
    (folder / "clips" / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    rows.insert(3, {"audio": "clips/missing.wav", "text": "green", "language": "en"})
    rows.append({"audio": str(folder / "clips" / "broken.wav"), "text": "car", "language": "en"})
    return write_manifest(folder, rows)


def test_manifest_to_report_through_the_cli(clasp_dir, manifest, tmp_path):
    output, markdown = tmp_path / "report.json", tmp_path / "report.md"
    completed = subprocess.run(
        [sys.executable, "-m", "clasp_cli.main", "eval", "--model", str(clasp_dir), "--manifest", str(manifest),
         "--output", str(output), "--markdown", str(markdown), "--soft-k", "3", "--batch-size", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["num_queries"] == len(TEXTS)
    assert {f["path"].rsplit("/", 1)[-1] for f in report["failed"]} == {"missing.wav", "broken.wav"}
    assert "missing.wav: no such file" in completed.stderr and "broken.wav" in completed.stderr
    assert set(report["by_language"]) == {"en", "fr", "de", "es"} and set(report["by_source"]) == {"a", "b"}
    assert "by_category" not in report  # no row has one
    assert set(report["cross_lingual"]) == {"fr", "de"}
    assert report["cross_lingual"]["de"]["text_to_audio"]["hits@1"] >= 0
    assert report["timing"]["audio_embed_s_per_clip"] > 0 and report["timing"]["embed_s"] > 0
    assert "asr_baseline" not in report
    assert "text (fr) → audio" in markdown.read_text() and "s/clip" in completed.stdout


def test_small_collection_gets_a_soft_pool_it_can_fill(clasp_dir, loaded, tmp_path, capsys):
    """40 clips and the default --soft-k 100: the hard protocol, and a soft one sized to the pool."""
    (tmp_path / "clips").mkdir()
    rows = []
    for i in range(40):
        soundfile.write(tmp_path / "clips" / f"{i}.wav", tone(0.2, freq=120 + 15 * i, seed=i), 16000)
        # Two readings of each sentence (one group), in English and in French.
        rows.append({"audio": f"clips/{i}.wav", "text": f"{TEXTS[i % 7]} {i}", "language": "en" if i % 2 else "fr",
                     "group": f"sentence {i // 2}"})
    manifest = write_manifest(tmp_path, rows)
    output, markdown = tmp_path / "report.json", tmp_path / "report.md"
    assert main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(output),
                 "--markdown", str(markdown), "--batch-size", "8"]) == 0
    report = json.loads(output.read_text())
    assert report["num_queries"] == 40 and report["correct_set"] == "same-group"
    assert report["soft"]["k"] == 39 and report["soft"]["k_requested"] == 100  # 38 rows outside each group
    assert "k=100 was asked for" in capsys.readouterr().out and "k=100 was asked for" in markdown.read_text()
    assert set(report["monolingual"]) == {"en", "fr"}
    # same-text: the other reading is no longer correct, so one more wrong candidate fits the pool.
    model, processor = loaded
    same_text = model_report(model, processor, manifest_pairs(manifest), batch_size=8, correct_set="same-text")
    assert same_text["correct_set"] == "same-text" and same_text["soft"]["k"] == 40


def test_hubness_correction_of_a_model(clasp_dir, loaded, manifest, tmp_path):
    """--hubness csls with --model: the CLASP ranks are those of retrieval_report with the bank."""
    from evaluation.hubness import load_hubness_bank, save_hubness_bank
    from evaluation.protocols import retrieval_report

    model, processor = loaded
    generator = torch.Generator().manual_seed(5)
    bank_embeds = torch.nn.functional.normalize(torch.randn(2, 12, model.config.projection_dim, generator=generator), dim=-1)
    bank = tmp_path / "bank.safetensors"
    save_hubness_bank(bank, *bank_embeds, csls_k=2)
    output = tmp_path / "report.json"
    assert main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(output), "--soft-k", "3",
                 "--hubness", "csls", "--hubness-bank", str(bank)]) == 0
    report = json.loads(output.read_text())
    assert report["hubness"] == {"method": "csls", "k": 2, "bank_rows": 12}
    pairs = manifest_pairs(manifest)
    lengths, _, kept = usable_clips(pairs, processor.feature_extractor)
    embedded = embed_pairs(model, processor, [pairs[i] for i in kept], lengths, batch_size=3)
    expected = retrieval_report(embedded["audio_embeds"], embedded["text_embeds"], soft_k=2, hubness="csls",
                                hubness_bank=load_hubness_bank(bank)[0], csls_k=2)  # float16 on disk
    for direction in ("audio_to_text", "text_to_audio"):
        assert report[direction] == pytest.approx(expected[direction], abs=1e-6)

    # --also-csls: the cosine report, with the CSLS one of the same embeddings inside it.
    assert main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(output), "--soft-k", "3",
                 "--also-csls", "--hubness-bank", str(bank)]) == 0
    both = json.loads(output.read_text())
    cosine = retrieval_report(embedded["audio_embeds"], embedded["text_embeds"], soft_k=2)
    assert both["hubness"]["method"] == "none" and both["csls"]["hubness"] == {"method": "csls", "k": 2, "bank_rows": 12}
    for direction in ("audio_to_text", "text_to_audio"):
        assert both[direction] == pytest.approx(cosine[direction], abs=1e-6)
        assert both["csls"][direction] == pytest.approx(expected[direction], abs=1e-6)
    assert both["csls"]["monolingual"].keys() == both["monolingual"].keys()


def test_batches_by_length_and_restores_the_order(loaded, manifest):
    model, processor = loaded
    pairs = manifest_pairs(manifest)
    lengths, failed, kept = usable_clips(pairs, processor.feature_extractor)
    pairs = [pairs[i] for i in kept]
    batched, _ = embed_audio(model, processor, pairs, lengths, batch_size=3)
    one_by_one = torch.cat([embed_audio(model, processor, [p], [n], batch_size=1)[0] for p, n in zip(pairs, lengths)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-4, rtol=1e-4)
    assert lengths == sorted(lengths) and lengths[2] == lengths[1] + 1600  # the 8 kHz clip came out at 16 kHz


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"audio": "a.wav", "text": "the", "language": "en"}', "{not json"], "pairs.jsonl:2: not valid JSON"),
        (['{"audio": "a.wav", "text": "the"}'], "pairs.jsonl:1: missing column(s) language"),
        (["", '["a.wav"]'], "pairs.jsonl:2: expected a JSON object"),
    ],
    ids=["json", "missing-key", "not-an-object"],
)
def test_bad_manifest_line_is_named(tmp_path, capsys, lines, message):
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["eval", "--model", str(tmp_path / "no-model"), "--manifest", str(tmp_path / "pairs.jsonl"),
                 "--output", str(tmp_path / "r.json")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_nothing_readable_exits_2(clasp_dir, tmp_path, capsys):
    manifest = write_manifest(tmp_path, [{"audio": "gone.wav", "text": "the", "language": "en"}])
    code = main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(tmp_path / "r.json")])
    error = capsys.readouterr().err
    assert code == 2 and "none of the 1 clips" in error and "gone.wav" in error


def test_dataset_split_from_clasp_data(clasp_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    from data_clasp.schema import FEATURES

    for i in range(4):
        soundfile.write(tmp_path / f"{i}.wav", tone(0.4 + 0.1 * i, seed=i), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    rows = {"audio": [str(tmp_path / f"{i}.wav") for i in range(4)] + [str(tmp_path / "bad.wav")],
            "text": TEXTS[:5], "language": LANGUAGES[:5], "source": ["synth"] * 5, "category": ["x", "y", "x", "y", "x"],
            "translations": [[{"language": "fr", "text": "le chat"}], [], [], [], []], "group": list("abcde")}
    test = Dataset.from_dict(rows, features=FEATURES)
    DatasetDict(train=test.select([0]), validation=test.select([1]), test=test).save_to_disk(tmp_path / "data" / "dataset")

    output = tmp_path / "report.json"
    code = main(["eval", "--model", str(clasp_dir), "--data", str(tmp_path / "data"), "--output", str(output),
                 "--soft-k", "2"])
    assert code == 0
    report = json.loads(output.read_text())
    assert report["num_queries"] == 4 and [f["path"] for f in report["failed"]] == ["test[4] (bad.wav)"]
    assert set(report["by_category"]) == {"x", "y"} and set(report["cross_lingual"]) == {"fr"}
    assert report["split"] == "test"  # recorded, for clasp export's model-index
    assert main(["eval", "--model", str(clasp_dir), "--data", str(tmp_path / "data"), "--split", "dev",
                 "--output", str(output)]) == 2


def test_asr_baseline_with_a_fake_transcriber(loaded, manifest):
    model, processor = loaded
    pairs = manifest_pairs(manifest)
    by_length = {}  # the fake "recognises" each clip by its length at 16 kHz
    for pair in pairs:
        try:
            by_length[len(processor.feature_extractor.prepare_clip(*pair["read"]()))] = pair["text"]
        except ValueError:
            pass
    calls = []

    def transcriber(waveforms, language):
        calls.append((language, len(waveforms)))
        texts = [by_length[len(w)] for w in waveforms]
        return [{"der hund ist": "Der Hund, ist!", "blue car": "blue bus"}.get(t, t) for t in texts]

    report = model_report(model, processor, pairs, batch_size=2, soft_k=3, transcriber=transcriber)
    baseline = report["asr_baseline"]
    assert {"audio_to_text", "text_to_audio", "soft", "by_language", "by_source", "cross_lingual"} <= set(baseline)
    assert set(baseline["cross_lingual"]) == {"fr", "de"} and baseline["num_queries"] == len(TEXTS)
    wrong = {"der hund ist": "Der Hund, ist!", "blue car": "blue bus"}
    assert baseline["transcripts"] == [wrong.get(t, t) for t in TEXTS]  # in the pairs' order
    # Case and punctuation don't count; "blue car" -> "blue bus" is 1 of the 12 English words.
    assert baseline["wer"]["by_language"] == {"de": 0.0, "en": 1 / 12, "es": 0.0, "fr": 0.0}
    assert baseline["wer"]["all"] == pytest.approx(1 / 22)
    assert baseline["seconds_per_clip"] > 0
    assert sorted(language for language, _ in calls) == ["de", "en", "en", "es", "fr"]  # one language per batch
    assert baseline["audio_to_text"]["hits@1"] >= 6 / 7  # a right transcript finds its own text


def test_asr_transcript_cache_resumes_and_is_reused(loaded, manifest, tmp_path):
    """A killed evaluation resumes from the transcripts on file; another model reuses them all;
    another transcriber (identity) or a cut-off line never serves a transcript."""
    model, processor = loaded
    pairs = manifest_pairs(manifest)
    lengths, _, kept = usable_clips(pairs, processor.feature_extractor)
    pairs = [pairs[i] for i in kept]
    transcribed = []

    class Transcriber:
        identity = "fake-whisper|greedy"

        def __call__(self, waveforms, language):
            transcribed.extend(len(w) for w in waveforms)
            if len(transcribed) > 4 and self.fail:
                raise KeyboardInterrupt  # killed half-way
            return [f"clip of {len(w)} samples" for w in waveforms]

    from evaluation.asr_baseline import transcribe_pairs

    cache = tmp_path / "asr.jsonl"
    first = Transcriber()
    first.fail = True
    with pytest.raises(KeyboardInterrupt):
        transcribe_pairs(pairs, lengths, first, processor.feature_extractor, batch_size=2, cache_path=cache)
    done_before = len(cache.read_text().splitlines())
    assert 0 < done_before < len(pairs)
    with open(cache, "a") as f:
        f.write('{"key": "cut off')  # a kill in the middle of a line
    transcribed.clear()
    second = Transcriber()
    second.fail = False
    texts, seconds = transcribe_pairs(pairs, lengths, second, processor.feature_extractor, batch_size=2, cache_path=cache)
    assert len(transcribed) == len(pairs) - done_before  # only the clips not on file
    assert texts == [f"clip of {n} samples" for n in lengths] and seconds > 0
    transcribed.clear()
    again, _ = transcribe_pairs(pairs, lengths, second, processor.feature_extractor, batch_size=2, cache_path=cache)
    assert transcribed == [] and again == texts
    other = Transcriber()
    other.fail, other.identity = False, "fake-whisper|beams=5"
    transcribe_pairs(pairs, lengths, other, processor.feature_extractor, batch_size=2, cache_path=cache)
    assert len(transcribed) == len(pairs)


def test_clip_longer_than_whisper_takes_is_skipped():
    processor = tiny_processor(tiny_config("whisper"), None)
    pairs = [{"name": "long.wav", "read": lambda: (tone(31, rate=8000), 8000)},
             {"name": "short.wav", "read": lambda: (tone(1), 16000)}]
    lengths, failed, kept = usable_clips(pairs, processor.feature_extractor)
    assert kept == [1] and lengths == [16000]
    assert failed[0]["path"] == "long.wav" and failed[0]["reason"].startswith("31.0 s is longer than")


@pytest.mark.parametrize(
    "reference, hypothesis, language, edits, units",
    [
        ("The cat sat on the mat.", "the cat sat on mat", "en", 1, 6),  # one deletion
        ("a b c d", "a x c", "en", 2, 4),  # a substitution and a deletion
        ("Hello, world!", "hello world", "en", 0, 2),
        ("well-known", "well known", "en", 0, 2),  # punctuation is a word boundary
        ("", "extra words", "en", 2, 0),
        ("我爱北京。", "我爱南京", "zh", 1, 4),  # characters, not words
        ("今日は良い天気", "今日は天気", "ja-JP", 2, 7),
    ],
)
def test_word_error_rate_by_hand(reference, hypothesis, language, edits, units):
    ref, hyp = error_units(reference, language), error_units(hypothesis, language)
    assert edit_distance(ref, hyp) == edits and len(ref) == units
    rates = error_rates([reference], [hypothesis], [language])
    assert rates["all"] == edits / max(units, 1)
    assert rates["character_level"] == ([language] if language[:2] in ("zh", "ja") else [])


def test_error_rate_is_per_corpus_not_mean_per_sentence():
    rates = error_rates(["a b c d", "e", "我们"], ["a b c d", "f", "你们"], ["en", "en", "zh"])
    assert rates["by_language"] == {"en": 1 / 5, "zh": 1 / 2}
    assert rates["all"] == 2 / 7


LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@pytest.mark.skipif(not (LIBRIVOX / "transcription").is_file(), reason="apt-get install pocketsphinx-testdata")
def test_asr_baseline_with_whisper_base(clasp_dir, backbones, tmp_path):
    rows = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, clip_id = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip()).groups()
        if clip_id.endswith(("0880", "0930")):  # the two shortest clips (3 s each): CPU time is scarce
            rows.append({"audio": str(LIBRIVOX / f"{clip_id}.wav"), "text": text, "language": "en"})
    manifest = write_manifest(tmp_path, rows)
    output = tmp_path / "report.json"
    code = main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(output),
                 "--soft-k", "2", "--asr-baseline", "--asr-model", str(backbones["whisper-base"])])
    assert code == 0
    baseline = json.loads(output.read_text())["asr_baseline"]
    assert baseline["wer"]["all"] <= 0.2, baseline["transcripts"]  # "ill-disposed" == "ill disposed"
    assert baseline["seconds_per_clip"] > 0 and len(baseline["transcripts"]) == 2
    assert baseline["decoding"] == {"num_beams": 1}  # greedy unless --asr-num-beams says otherwise


def test_sources_evaluates_one_corpus_among_itself(clasp_dir, tmp_path, capsys):
    """--sources: only the pairs of the named corpora are embedded and ranked, among themselves;
    a name that picks no corpus is an error naming the corpora there."""
    (tmp_path / "clips").mkdir()
    sources = ["espeak:fortunes-de", "espeak:fortunes-es", "espeak:django", "piper:django", "espeak:fortunesx"]
    rows = []
    for i in range(10):
        soundfile.write(tmp_path / "clips" / f"{i}.wav", tone(0.2, freq=120 + 15 * i, seed=i), 16000)
        rows.append({"audio": f"clips/{i}.wav", "text": f"{TEXTS[i % 7]} {i}", "language": "en", "source": sources[i % 5]})
    manifest = write_manifest(tmp_path, rows)
    output = tmp_path / "report.json"
    assert main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(output),
                 "--sources", "fortunes"]) == 0
    report = json.loads(output.read_text())
    # fortunes-de and fortunes-es (rows 0, 1, 5, 6), not "fortunesx": a name picks its own corpus or name-*.
    assert report["num_queries"] == 4 and report["sources"] == "fortunes" and report["split"] is None  # a manifest has none
    assert main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(output),
                 "--sources", "django,fortunes-es"]) == 0
    assert json.loads(output.read_text())["num_queries"] == 6
    assert "Only the pairs of corpora django,fortunes-es (6 queries)" in capsys.readouterr().out
    assert main(["eval", "--model", str(clasp_dir), "--manifest", str(manifest), "--output", str(tmp_path / "no.json"),
                 "--sources", "lee"]) != 0
    error = capsys.readouterr().err
    assert "lee: no such corpus here" in error and "fortunes-de" in error and not (tmp_path / "no.json").exists()
