import json

import numpy as np
import pytest
import soundfile
import torch
from safetensors import safe_open

from clasp_cli.main import main
from tiny import save_tiny_clasp, tiny_config, tone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_clasp(tmp_path_factory.mktemp("tiny-clasp"))


def read_output(path):
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
        return f.get_tensor("embeddings"), json.loads(metadata["paths"]), json.loads(metadata["failed"])


def bad_inputs(folder):
    """Every kind of input that cannot be embedded, each with the reason it should be reported for."""
    folder.mkdir()
    soundfile.write(folder / "ok.wav", tone(0.5), 16000)
    wav = (folder / "ok.wav").read_bytes()
    (folder / "ok.wav").unlink()
    (folder / "empty-dir").mkdir()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "text.wav").write_text("this is a text file, not audio\n" * 20)
    (folder / "truncated.wav").write_bytes(wav[:30])  # cut inside the header
    soundfile.write(folder / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    return {
        folder / "missing.wav": "no such file",
        folder / "empty-dir": "no audio files",
        folder / "empty.wav": "empty file",
        folder / "noise.wav": "cannot decode",
        folder / "text.wav": "cannot decode",
        folder / "truncated.wav": "cannot decode",
        folder / "nan.wav": "NaN",
    }


def test_bad_inputs_are_reported_and_the_rest_embedded(model_dir, tmp_path, capsys):
    good = [tmp_path / "a.wav", tmp_path / "b.flac", tmp_path / "long.wav"]
    soundfile.write(good[0], tone(1.0, rate=22050), 22050)
    soundfile.write(good[1], np.stack([tone(2.0, freq=300), tone(2.0, freq=300)], axis=1), 16000)
    soundfile.write(good[2], tone(65, freq=150), 16000)  # longer than the encoder's 30 s: embedded by windows
    bad = bad_inputs(tmp_path / "bad")
    inputs = [good[0], *bad, good[1], good[2]]

    code = main(["embed", "--model", str(model_dir), "--audio", *map(str, inputs), "--output", str(tmp_path / "out.safetensors"),
                 "--batch-size", "2"])
    assert code == 0
    stderr = capsys.readouterr().err
    embeddings, paths, failed = read_output(tmp_path / "out.safetensors")
    assert paths == [str(p) for p in good]
    assert embeddings.shape == (3, tiny_config().projection_dim) and torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    reasons = {f["path"]: f["reason"] for f in failed}
    assert set(reasons) == {str(p) for p in bad}
    for path, reason in bad.items():
        assert reason in reasons[str(path)], (path, reasons[str(path)])
        assert str(path) in stderr
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_nothing_embedded_is_exit_2_and_strict_stops_at_the_first_failure(model_dir, tmp_path, capsys):
    bad = bad_inputs(tmp_path / "bad")
    output = tmp_path / "out.safetensors"
    assert main(["embed", "--model", str(model_dir), "--audio", *map(str, bad), "--output", str(output)]) == 2
    assert "none of the 7 inputs could be embedded" in capsys.readouterr().err
    assert not output.exists()

    soundfile.write(tmp_path / "good.wav", tone(1.0), 16000)
    arguments = ["embed", "--model", str(model_dir), "--output", str(output), "--audio", str(tmp_path / "good.wav")]
    assert main([*arguments, str(tmp_path / "bad" / "noise.wav"), "--strict"]) == 2
    assert "noise.wav: cannot decode" in capsys.readouterr().err
    assert not output.exists()
    assert main(arguments + ["--strict"]) == 0
    assert read_output(output)[1] == [str(tmp_path / "good.wav")]


def test_the_file_records_which_model_and_settings_embedded_it(model_dir, tmp_path):
    import hashlib

    soundfile.write(tmp_path / "a.wav", tone(1.0), 16000)
    assert main(["embed", "--model", str(model_dir), "--audio", str(tmp_path / "a.wav"), "--output",
                 str(tmp_path / "out.safetensors"), "--window-s", "20", "--hop-s", "15"]) == 0
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        metadata = f.metadata()
    digest = hashlib.sha256()  # each file's name and bytes: config, processor config, then the weights
    for name in ("config.json", "processor_config.json", "model.safetensors"):
        digest.update(name.encode() + b"\0" + (model_dir / name).read_bytes())
    assert metadata["model"] == digest.hexdigest()
    assert json.loads(metadata["settings"]) == {"window_s": 20.0, "hop_s": 15.0, "quantize": None}
