import json

import numpy as np
import pytest
import soundfile

from clasp_cli.main import main
from tiny import save_tiny_clasp, tone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_clasp(tmp_path_factory.mktemp("tiny-clasp"))


def write_clips(folder, count, first=0):
    folder.mkdir(exist_ok=True)
    for i in range(first, first + count):
        soundfile.write(folder / f"clip{i}.wav", tone(0.6 + 0.2 * i, freq=120 + 45 * i, seed=i), 16000)
    return folder


def test_build_add_and_refusals(model_dir, tmp_path, capsys):
    audio = write_clips(tmp_path / "audio", 4)
    (audio / "broken.wav").write_bytes(b"RIFF....not really")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"audio": "audio/clip0.wav", "text": "the red car", "language": "en"}) + "\n")
    index = str(tmp_path / "index")
    base = ["index", "--model", str(model_dir), "--output", index]

    assert main([*base, "--audio", str(manifest), str(audio), "--chunk-files", "2"]) == 0
    err = capsys.readouterr().err
    assert "broken.wav" in err and "4 file(s); added 4, already there 0, failed 1" in err

    assert main([*base, "--audio", str(audio)]) == 2
    assert "already exists: pass --add" in capsys.readouterr().err

    write_clips(audio, 2, first=4)
    assert main([*base, "--audio", str(audio), "--add"]) == 0
    assert "6 file(s); added 2, already there 4, failed 1" in capsys.readouterr().err

    other = save_tiny_clasp(tmp_path / "other-model")
    assert main(["index", "--model", str(other), "--output", index, "--audio", str(audio), "--add"]) == 2
    err = capsys.readouterr().err
    assert "clasp index: error: model mismatch" in err and str(model_dir) in err and str(other) in err


def test_nothing_to_index_leaves_nothing_behind(model_dir, tmp_path, capsys):
    (tmp_path / "bad.wav").write_bytes(np.random.default_rng(1).bytes(100))
    assert main(["index", "--model", str(model_dir), "--output", str(tmp_path / "index"), "--audio", str(tmp_path / "bad.wav")]) == 2
    assert "no audio could be embedded" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav"]
