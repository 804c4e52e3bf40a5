"""Messy archives through every batch command: `clasp embed`, `index`, `eval`, `data import`, `features`, `search`.

One folder holds every kind of audio a real archive has. Each kind either works, with the
embedding it should have (resampled, downmixed, padded, windowed: checked against the array it
stands for), or is skipped with a reason that names the file, and the batch goes on. Then bad
texts, bad models and bad manifests.
"""

import contextlib
import io
import json
import os
import shutil
import struct
import warnings
import wave

import numpy as np
import pytest
import soundfile
import torch
from safetensors import safe_open
from torchcodec.decoders import AudioDecoder
from torchcodec.encoders import AudioEncoder

from clasp_cli.main import main
from tiny import save_tiny_clasp

RATE = 16000
LONG_S = 100  # minutes-long: four overlapping 30 s windows for the tiny Whisper


def voiced(seconds, rate=RATE, freq=220.0):
    """A deterministic voiced-sounding clip (harmonics, no noise): the same sound at any rate."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 5))).astype(np.float32)


def write_pcm(path, samples, width, rate=RATE):
    """A PCM WAV written by the standard library from integer samples: no libsndfile conversion involved."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(samples.tobytes())


def make_archive(folder):
    """{file: the array and rate it must embed as} for kinds that work, {file: reason} for those that must not."""
    folder.mkdir()
    clip = voiced(1.0)
    works = {}

    def write(name, samples, rate=RATE, **kwargs):
        soundfile.write(folder / name, samples, rate, **kwargs)  # soundfile's layout: [samples, channels]
        works[name] = (samples.T, rate)  # the embedder's: [channels, samples]

    write("mono.wav", clip, subtype="FLOAT")
    write("stereo.wav", np.stack([clip, clip], axis=1), subtype="FLOAT")
    write("six-channels.wav", np.stack([clip] * 6, axis=1), subtype="FLOAT")
    write("float64.wav", clip.astype(np.float64), subtype="DOUBLE")
    for name, dtype, width in (("int16.wav", np.int16, 2), ("int32.wav", np.int32, 4)):
        samples = np.round(clip * np.iinfo(dtype).max).astype(dtype)
        write_pcm(folder / name, samples, width)
        works[name] = (samples, RATE)
    unsigned = np.round(clip * 127 + 128).astype(np.uint8)  # WAV's 8 bits are offset binary
    write_pcm(folder / "uint8.wav", unsigned, 1)
    works["uint8.wav"] = (unsigned, RATE)
    signed8 = np.round(clip * 127).astype(np.int8)  # FLAC keeps signed 8 bits; int16 with an empty low byte
    soundfile.write(folder / "int8.flac", signed8.astype(np.int16) << 8, RATE, subtype="PCM_S8")
    works["int8.flac"] = (signed8, RATE)
    for rate in (8000, 22050, 44100, 48000, 96000):
        write(f"{rate // 1000}k.wav", voiced(1.0, rate), rate, subtype="FLOAT")
    write("silence.wav", np.zeros(RATE // 2, np.float32), subtype="FLOAT")
    clipped = np.round(np.clip(clip * 8, -1, 1) * 32767).astype(np.int16)  # a square-topped, clipped recording
    write_pcm(folder / "clipped.wav", clipped, 2)
    works["clipped.wav"] = (clipped, RATE)
    write("beyond-full-scale.wav", clip * 4, subtype="FLOAT")  # float samples past ±1 are taken as they are
    write("6ms.wav", clip[:100], subtype="FLOAT")  # shorter than one encoder frame (25 ms): padded
    write("one-sample-96k.wav", clip[:1], 96000, subtype="FLOAT")
    write("long.wav", voiced(LONG_S, freq=150), subtype="PCM_16")
    works["long.wav"] = (soundfile.read(folder / "long.wav", dtype="float32")[0], RATE)
    # Compressed: embedded as decoded, by libsndfile (Vorbis, MP3) or, for what it cannot read, FFmpeg (AAC).
    write("vorbis.ogg", clip, format="OGG", subtype="VORBIS")
    write("mpeg.mp3", clip, format="MP3")
    for name in ("vorbis.ogg", "mpeg.mp3"):
        works[name] = (soundfile.read(folder / name, dtype="float32")[0], RATE)
    AudioEncoder(torch.from_numpy(clip)[None], sample_rate=RATE).to_file(str(folder / "aac.m4a"))
    decoded = AudioDecoder(str(folder / "aac.m4a")).get_all_samples()
    works["aac.m4a"] = (decoded.data.numpy(), decoded.sample_rate)
    # A WAV cut inside its data (a copy that stopped): the samples that are there.
    whole = (folder / "int16.wav").read_bytes()
    (folder / "truncated-data.wav").write_bytes(whole[: 44 + 2 * 5000 + 1])
    works["truncated-data.wav"] = (works["int16.wav"][0][:5000], RATE)

    fails = {"missing.wav": "no such file", "empty-dir": "no audio files"}
    (folder / "empty-dir").mkdir()
    (folder / "empty.wav").write_bytes(b"")
    fails["empty.wav"] = "empty file"
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        soundfile.write(folder / name, np.where(np.arange(RATE) % 100 == 7, bad, clip).astype(np.float32),
                        RATE, subtype="FLOAT")
        fails[name] = "NaN or infinite"
    soundfile.write(folder / "too-loud.wav", clip * 1e7, RATE, subtype="FLOAT")  # no float convention puts audio there
    fails["too-loud.wav"] = "past full scale"
    (folder / "truncated-header.wav").write_bytes(whole[:30])
    (folder / "random-bytes.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "text.wav").write_text("this is a text file, not audio\n" * 20)
    codec = bytearray(whole)
    codec[20:22] = struct.pack("<H", 0x1234)  # a format tag no decoder knows
    (folder / "unknown-codec.wav").write_bytes(bytes(codec))
    fails.update({name: "cannot decode" for name in ("truncated-header.wav", "random-bytes.wav", "text.wav", "unknown-codec.wav")})
    return works, fails


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_tiny_clasp(tmp_path_factory.mktemp("tiny-clasp"))  # Whisper: at most 30 s at a time


@pytest.fixture(scope="module")
def embedder(model_dir):
    from search_clasp import ClaspEmbedder

    return ClaspEmbedder.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archive") / "audio"
    works, fails = make_archive(folder)
    return folder, works, fails


@pytest.fixture(scope="module")
def manifest(archive):
    """A manifest naming every file of the archive (and the missing one), with a transcript each."""
    folder, works, fails = archive
    words = "the cat sat on mat red blue green house car dog".split()
    rows = [{"audio": f"{folder.name}/{name}", "text": f"{words[i % len(words)]} {words[(3 * i + 1) % len(words)]}", "language": "en"}
            for i, name in enumerate([*works, *fails])]
    path = folder.parent / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def embedded(model_dir, archive, tmp_path_factory):
    """`clasp embed` over every file: (exit code, stderr, {path: embedding}, {path: reason})."""
    folder, works, fails = archive
    output = tmp_path_factory.mktemp("embed") / "out.safetensors"
    inputs = [str(folder / name) for name in [*works, *fails]]
    err = io.StringIO()  # a module fixture cannot use capsys
    with contextlib.redirect_stderr(err):
        code = main(["embed", "--model", str(model_dir), "--audio", *inputs, "--output", str(output), "--batch-size", "4"])
    with safe_open(output, "pt") as f:
        paths, failed = json.loads(f.metadata()["paths"]), json.loads(f.metadata()["failed"])
        rows = dict(zip(paths, f.get_tensor("embeddings")))
    return code, err.getvalue(), rows, {item["path"]: item["reason"] for item in failed}


# ---- audio ---------------------------------------------------------------------------------------


def test_embed_keeps_every_usable_kind_and_names_every_other(archive, embedded):
    folder, works, fails = archive
    code, stderr, rows, failed = embedded
    assert code == 0, stderr[-3000:]
    assert list(rows) == [str(folder / name) for name in works]  # in the order given
    assert set(failed) == {str(folder / name) for name in fails}
    for name, reason in fails.items():
        assert reason in failed[str(folder / name)], (name, failed[str(folder / name)])
        assert f"{folder / name}: {reason}" in stderr or (str(folder / name) in stderr and reason in stderr)
    for path, embedding in rows.items():
        assert torch.isfinite(embedding).all() and embedding.norm().item() == pytest.approx(1.0, abs=1e-5), path


def test_each_usable_kind_embeds_as_the_array_it_stands_for(archive, embedded, embedder):
    """Int types scaled by their range, any rate resampled, channels averaged, short clips padded, long ones windowed."""
    folder, works, _ = archive
    rows = embedded[2]
    mono = rows[str(folder / "mono.wav")]
    for name, (samples, rate) in works.items():
        expected = embedder.embed_audio(samples, rate)
        torch.testing.assert_close(rows[str(folder / name)], expected, atol=1e-5, rtol=1e-4, msg=name)
    for name in ("stereo.wav", "six-channels.wav", "float64.wav"):  # identical channels = mono
        torch.testing.assert_close(rows[str(folder / name)], mono, atol=1e-5, rtol=1e-4, msg=name)
    for name in ("8k.wav", "22k.wav", "44k.wav", "48k.wav", "96k.wav"):  # the same sound at 16 kHz
        assert float(rows[str(folder / name)] @ mono) > 0.999, name
        wrong_rate = embedder.embed_audio(works[name][0], RATE)  # as if the header's rate were ignored
        assert not torch.allclose(rows[str(folder / name)], wrong_rate, atol=1e-3), name
    # Padding a 6 ms clip with silence to one frame is what the extractor does, not a refusal.
    padded = np.pad(works["6ms.wav"][0], (0, embedder.feature_extractor.min_samples - 100))
    torch.testing.assert_close(rows[str(folder / "6ms.wav")], embedder.embed_audio(padded, RATE), atol=1e-5, rtol=1e-4)
    # The long clip counts whole, not its first 30 s.
    first_window = embedder.embed_audio(works["long.wav"][0][: 30 * RATE], RATE)
    assert not torch.allclose(rows[str(folder / "long.wav")], first_window, atol=1e-3)


def test_index_holds_what_embed_gave_and_reports_the_rest(model_dir, archive, embedded, tmp_path, capsys):
    from search_clasp import ClaspIndex

    folder, works, fails = archive
    code = main(["index", "--model", str(model_dir), "--audio", str(folder), str(folder / "missing.wav"),
                 "--output", str(tmp_path / "index"), "--chunk-files", "5"])
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    # empty-dir sits inside the folder: walked, not an input of its own, so it is not a failure here.
    reported = {name for name in fails if name != "empty-dir"}
    assert f"{len(works)} file(s); added {len(works)}, already there 0, failed {len(reported)}" in stderr
    for name in reported:
        assert f"skipped {folder / name}: " in stderr and fails[name] in stderr.split(f"skipped {folder / name}: ")[1].splitlines()[0]
    index = ClaspIndex(tmp_path / "index")
    stored = dict(zip((p for (p,) in index.db.execute("SELECT path FROM items ORDER BY position")), index.embeddings()))
    assert set(stored) == {str(folder / name) for name in works}
    for path, embedding in embedded[2].items():
        np.testing.assert_allclose(stored[path], embedding.numpy(), atol=1e-5)
    durations = dict(index.db.execute("SELECT path, duration FROM items"))
    assert durations[str(folder / "long.wav")] == pytest.approx(LONG_S)


def test_eval_skips_and_names_bad_clips(model_dir, archive, manifest, tmp_path, capsys):
    folder, works, fails = archive
    code = main(["eval", "--model", str(model_dir), "--manifest", str(manifest), "--output", str(tmp_path / "r.json"),
                 "--soft-k", "3", "--batch-size", "4"])
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    failed = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in report["failed"]}
    # The paper's protocol embeds a clip whole: past the encoder's 30 s it is named and left out, not cut.
    assert failed.pop("long.wav").startswith(f"{LONG_S}.0 s is longer than this encoder's 30 s")
    assert set(failed) == set(fails)
    assert "is a directory" in failed["empty-dir"]
    for name, reason in fails.items():
        if name != "empty-dir":
            assert reason in failed[name], (name, failed[name])
        assert str(folder / name) in stderr
    assert report["num_queries"] == len(works) - 1


@pytest.fixture(scope="module")
def imported(manifest, tmp_path_factory):
    """`clasp data import` of the archive's manifest: (exit code, stderr, the dataset folder)."""
    output = tmp_path_factory.mktemp("imported") / "data"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["data", "import", "--manifest", str(manifest), "--output", str(output)])
    return code, err.getvalue(), output


def test_data_import_skips_and_names_bad_clips(archive, imported):
    from datasets import load_from_disk

    folder, works, fails = archive
    code, stderr, output = imported
    assert code == 0, stderr[-3000:]
    skipped = {line.split("(audio/", 1)[1].split(")", 1)[0] for line in stderr.splitlines() if line.startswith("skipped ")}
    # Rows are checked as the dataset will decode them, by FFmpeg at 16 kHz, which is stricter than
    # libsndfile with two files: it resamples 1 sample at 96 kHz to nothing, and refuses a WAV cut inside a sample.
    assert skipped == set(fails) | {"one-sample-96k.wav", "truncated-data.wav"}
    assert "one-sample-96k.wav): no samples at 16000 Hz" in stderr and "truncated-data.wav): RuntimeError" in stderr
    assert "nan.wav): NaN or infinite samples" in stderr and "inf.wav): NaN or infinite samples" in stderr
    dataset = load_from_disk(str(output))
    rows = [row for split in dataset.values() for row in split]
    assert len(rows) == len(works) - 2  # long.wav is kept: a length limit is the model's business, not the data's
    for row in rows:
        audio = np.asarray(row["audio"]["array"])
        assert row["audio"]["sampling_rate"] == RATE and audio.ndim == 1 and np.isfinite(audio).all() and len(audio) > 0
    assert not output.with_name("data.partial").exists()


def test_features_skips_clips_the_encoder_cannot_take(model_dir, imported, tmp_path, capsys):
    from datasets import load_from_disk

    _, _, data_dir = imported
    total = sum(len(split) for split in load_from_disk(str(data_dir)).values())
    code = main(["features", "--model", str(model_dir), "--data", str(data_dir), "--output", str(tmp_path / "features"),
                 "--batch-size", "4", "--chunk-size", "8"])
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    assert f"long.wav): {LONG_S}.0 s is longer than the speech encoder's 30 s" in stderr
    features = load_from_disk(str(tmp_path / "features"))
    assert sum(len(split) for split in features.values()) == total - 1
    for split in features.values():
        assert np.isfinite(np.array(split["speech_embeds"])).all() and np.isfinite(np.array(split["spectrogram_embeds"])).all()


# ---- text ----------------------------------------------------------------------------------------

TEXTS = {
    "mixed scripts": "the cat 猫 кот le chat القط",
    "emoji": "the red car 🚗🐱👍🏽",
    "control characters": "\x00the\x07 cat\tsat\x1b on\x7f the mat\r\n",
    "10k characters": "the cat sat on the mat " * 435,
}


@pytest.fixture(scope="module")
def index_dir(model_dir, archive, tmp_path_factory):
    folder, works, _ = archive
    output = tmp_path_factory.mktemp("text-index") / "index"
    assert main(["index", "--model", str(model_dir), "--audio", *(str(folder / name) for name in list(works)[:4]),
                 "--output", str(output)]) == 0
    return output


@pytest.mark.parametrize("kind", TEXTS)
def test_search_takes_any_text(index_dir, capsys, kind):
    with warnings.catch_warnings(record=True) as caught:  # printed on stderr outside pytest
        warnings.simplefilter("always")
        code = main(["search", "--index", str(index_dir), "--query", TEXTS[kind], "-k", "3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    hits = json.loads(out)
    assert [hit["rank"] for hit in hits] == [1, 2, 3] and all(np.isfinite(hit["score"]) for hit in hits)
    truncated = [str(w.message) for w in caught if "truncated to the sentence encoder's limit of 64" in str(w.message)]
    assert len(truncated) == (kind == "10k characters"), [str(w.message) for w in caught]


def test_search_by_example_names_a_bad_file_and_its_reason(index_dir, archive, capsys):
    folder, _, fails = archive
    for name, reason in {**fails, "empty-dir": "is a directory"}.items():
        assert main(["search", "--index", str(index_dir), "--audio", str(folder / name)]) == 2
        assert f"clasp search: error: {folder / name}: " in (err := capsys.readouterr().err) and reason in err, (name, err)


@pytest.mark.parametrize("query", ["", "  \t\n"])
def test_search_refuses_an_empty_query(index_dir, capsys, query):
    assert main(["search", "--index", str(index_dir), "--query", query]) == 2
    assert "clasp search: error: the query is empty" in capsys.readouterr().err


# ---- models and files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_models(model_dir, tmp_path_factory):
    """{kind: (model folder, what the error must say)}."""
    root = tmp_path_factory.mktemp("broken-models")
    other = shutil.copytree(model_dir, root / "other-config")
    config = json.loads((other / "config.json").read_text())
    config["fusion_head_dims"] = [22, 18]  # another head than the weights were trained with
    (other / "config.json").write_text(json.dumps(config))
    truncated = shutil.copytree(model_dir, root / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return {
        "other-config": (other, "fusion.head.0.weight: (20, 32) in the weights, (22, 32) for config.json"),
        "truncated": (truncated, f"{truncated / 'model.safetensors'}: not a readable safetensors file, truncated"),
    }


@pytest.mark.parametrize("kind", ["other-config", "truncated"])
@pytest.mark.parametrize("command", ["embed", "index", "eval", "features"])
def test_a_broken_model_is_refused_naming_what_is_wrong(broken_models, archive, manifest, imported, tmp_path, capsys,
                                                         command, kind):
    model, message = broken_models[kind]
    folder = archive[0]
    output = tmp_path / "out"
    arguments = {
        "embed": ["--audio", str(folder / "mono.wav"), "--output", str(output)],
        "index": ["--audio", str(folder / "mono.wav"), "--output", str(output)],
        "eval": ["--manifest", str(manifest), "--output", str(output)],
        "features": ["--data", str(imported[2]), "--output", str(output)],
    }[command]
    assert main([command, "--model", str(model), *arguments]) == 2
    err = capsys.readouterr().err
    assert f"clasp {command}: error: " in err and message in err and str(model) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing started, not even a .partial index


def test_a_bad_manifest_line_is_named_by_every_command(model_dir, tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "the cat", "language": "en"}\n\n{"audio": "b.wav", "te\n')
    (tmp_path / "cols.jsonl").write_text('{"audio": "a.wav", "text": "the cat", "language": "en"}\n{"text": "no audio"}\n')
    for command in (["index", "--model", str(model_dir), "--output", str(tmp_path / "i"), "--audio"],
                    ["embed", "--model", str(model_dir), "--output", str(tmp_path / "e"), "--audio"],
                    ["data", "import", "--output", str(tmp_path / "d"), "--manifest"],
                    ["eval", "--model", str(model_dir), "--output", str(tmp_path / "r"), "--manifest"]):
        assert main([*command, str(tmp_path / "m.jsonl")]) == 2
        assert f"{tmp_path / 'm.jsonl'}:3" in capsys.readouterr().err, command
        assert main([*command, str(tmp_path / "cols.jsonl")]) == 2
        assert f"{tmp_path / 'cols.jsonl'}:2" in capsys.readouterr().err, command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cols.jsonl", "m.jsonl"]


def test_a_full_disk_leaves_no_embeddings_file(model_dir, archive, tmp_path, capsys):
    """A real ENOSPC: the temporary output is a link to /dev/full."""
    output = tmp_path / "out.safetensors"
    (tmp_path / f"out.safetensors.tmp{os.getpid()}").symlink_to("/dev/full")
    assert main(["embed", "--model", str(model_dir), "--audio", str(archive[0] / "mono.wav"), "--output", str(output)]) == 2
    assert f"clasp embed: error: {output}: could not be written ([Errno 28] No space left on device)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
