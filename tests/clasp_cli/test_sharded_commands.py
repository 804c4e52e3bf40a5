"""`accelerate launch` with two real gloo processes on the CPU: `clasp embed` and `clasp index` give what one process gives."""

import json
import os
import sqlite3

import numpy as np
import pytest
import soundfile
import torch

from clasp_cli.main import main
from tiny import launch, save_tiny_clasp, tone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_clasp(tmp_path_factory.mktemp("tiny-clasp"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Clips of different lengths (one longer than a window), and one file that cannot be read."""
    folder = tmp_path_factory.mktemp("audio")
    clips = [folder / f"clip{i}.wav" for i in range(7)]
    for i, clip in enumerate(clips):
        soundfile.write(clip, tone(0.5 + 0.4 * i, rate=(16000, 22050)[i % 2], freq=110 + 60 * i, seed=i), (16000, 22050)[i % 2])
    soundfile.write(folder / "long.wav", tone(40, freq=170), 16000)
    (folder / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    return [str(clips[0]), str(folder / "long.wav"), *map(str, clips[1:4]), str(folder / "noise.wav"), *map(str, clips[4:])]


def read_embeddings(path):
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return f.get_tensor("embeddings"), json.loads(f.metadata()["paths"]), json.loads(f.metadata()["failed"])


def test_two_processes_embed_what_one_process_embeds_and_a_rerun_keeps_finished_shards(model_dir, inputs, tmp_path):
    from search_clasp.embedding import EmbeddedChunk
    from search_clasp.index import model_identity
    from search_clasp.shards import audio_seconds, embed_shard, shard_file, split_by_duration

    arguments = ["embed", "--model", str(model_dir), "--audio", *inputs, "--batch-size", "3"]
    assert main([*arguments, "--output", str(tmp_path / "one.safetensors")]) == 0
    expected, expected_paths, expected_failed = read_embeddings(tmp_path / "one.safetensors")
    assert len(expected_paths) == 8 and [f["path"] for f in expected_failed] == [inputs[5]]

    result = launch(*arguments, "--output", str(tmp_path / "two.safetensors"))
    assert result.stderr.count("embedded 8 file(s)") == 1  # written once, by the main process
    embeddings, paths, failed = read_embeddings(tmp_path / "two.safetensors")
    assert paths == expected_paths and failed == expected_failed
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-6)
    assert not (tmp_path / "two.safetensors.shards").exists()

    # A run whose second process was killed: shard 0 is finished (planted here with recognisable
    # rows), shard 1 is a leftover of other inputs. The rerun keeps shard 0 and embeds shard 1.
    output = tmp_path / "resumed.safetensors"
    shards = split_by_duration([audio_seconds(path) for path in inputs], 2)
    assert all(shards), shards
    fingerprint = json.dumps([model_identity(model_dir), 30.0, 25.0, None])  # identity, window, hop, --quantize

    class Planted:
        def embed_files(self, files, **kwargs):
            rows = torch.zeros(len(files), expected.shape[1])
            rows[:, 0] = 1.0
            yield EmbeddedChunk(list(files), [1.0] * len(files), rows, [])

    first = [inputs[i] for i in shards[0]]
    embed_shard(first, shard_file(f"{output}.shards", 0, 2), fingerprint, Planted)
    embed_shard(first, shard_file(f"{output}.shards", 1, 2), fingerprint, Planted)  # not shard 1's inputs
    launch(*arguments, "--output", str(output))
    embeddings, paths, failed = read_embeddings(output)
    assert paths == expected_paths and failed == expected_failed
    for row, path in enumerate(paths):
        if path in first:
            assert embeddings[row, 0] == 1.0 and embeddings[row, 1:].abs().max() == 0  # kept, not embedded again
        else:
            torch.testing.assert_close(embeddings[row], expected[row], rtol=0, atol=1e-6)
    assert not output.with_name(output.name + ".shards").exists()


def test_two_processes_build_the_index_one_process_builds(model_dir, inputs, tmp_path):
    texts = {path: f"clip {i}" for i, path in enumerate(inputs) if i % 2}
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio": path, **({"text": texts[path], "language": "en"} if path in texts else {})}) + "\n"
                                for path in inputs))
    arguments = ["index", "--model", str(model_dir), "--audio", str(manifest), "--chunk-files", "3"]
    assert main([*arguments, "--output", str(tmp_path / "one")]) == 0
    launch(*arguments, "--output", str(tmp_path / "two"))

    def rows(index_dir):
        with sqlite3.connect(index_dir / "metadata.sqlite") as db:
            return db.execute("SELECT position, path, duration, text, language, embedding FROM items ORDER BY position").fetchall()

    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [row[:5] for row in two] == [row[:5] for row in one] and len(one) == 8
    for a, b in zip(one, two):
        np.testing.assert_allclose(np.frombuffer(b[5], "<f4"), np.frombuffer(a[5], "<f4"), rtol=0, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))  # no shards left behind
    assert not (tmp_path / "two.partial").exists()

    from search_clasp.index import ClaspIndex

    query = np.frombuffer(one[3][5], "<f4")[None]
    hits_two, hits_one = ClaspIndex(tmp_path / "two").search(query, k=8)[0], ClaspIndex(tmp_path / "one").search(query, k=8)[0]
    assert [{**hit, "score": None} for hit in hits_two] == [{**hit, "score": None} for hit in hits_one]
    np.testing.assert_allclose([hit["score"] for hit in hits_two], [hit["score"] for hit in hits_one], rtol=0, atol=1e-5)
