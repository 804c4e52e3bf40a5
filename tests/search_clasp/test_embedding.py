import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from search_clasp import ClaspEmbedder, window_bounds
from tiny import save_tiny_clasp, tone


def test_windows_cover_the_whole_clip_and_overlap():
    assert window_bounds(10, 30, 25) == [(0, 10)]
    assert window_bounds(30, 30, 25) == [(0, 30)]
    assert window_bounds(70, 30, 25) == [(0, 30), (25, 55), (50, 70)]
    assert window_bounds(55, 30, 25) == [(0, 30), (25, 55)]


def test_window_shrinks_to_what_the_encoder_takes(model_dir):
    embedder = ClaspEmbedder.from_pretrained(model_dir, window_s=60, hop_s=50, device="cpu")
    assert embedder.window == 30 * 16000  # Whisper's 30 s
    assert embedder.hop == 25 * 16000  # same overlap ratio


def manual_windowed_embedding(embedder, waveform, window_s=30, hop_s=25):
    rate = 16000
    embeds, weights = [], []
    for start in range(0, waveform.shape[0], hop_s * rate):
        end = min(start + window_s * rate, waveform.shape[0])
        inputs = embedder.processor(audio=[waveform[start:end]], sampling_rate=rate)
        with torch.no_grad():
            embeds.append(embedder.model.get_audio_features(**inputs).pooler_output[0])
        weights.append(end - start)
        if end == waveform.shape[0]:
            break
    assert len(embeds) == 3  # 70 s: [0, 30], [25, 55], [50, 70]
    return F.normalize(sum(w * e for w, e in zip(weights, embeds)), dim=0)


def test_long_audio_is_the_duration_weighted_mean_of_its_windows(embedder, tmp_path):
    waveform = torch.from_numpy(tone(70, freq=180, seed=3))
    with pytest.raises(ValueError, match="longer than"):  # the processor alone refuses it: it is not truncated
        embedder.processor(audio=[waveform], sampling_rate=16000)
    expected = manual_windowed_embedding(embedder, waveform)

    soundfile.write(tmp_path / "long.wav", waveform.numpy(), 16000)
    (chunk,) = embedder.embed_files([tmp_path / "long.wav"])
    torch.testing.assert_close(chunk.embeddings[0], expected, atol=1e-5, rtol=1e-5)
    assert chunk.durations == [70.0]
    assert chunk.embeddings[0].norm().item() == pytest.approx(1.0, abs=1e-5)
    # Not what the first 30 s alone gives: the rest of the recording counts.
    first = embedder.embed_audio(waveform[: 30 * 16000], 16000)
    assert not torch.allclose(first, expected, atol=1e-3)


def test_long_audio_is_windowed_for_encoders_without_a_limit(tmp_path):
    embedder = ClaspEmbedder.from_pretrained(save_tiny_clasp(tmp_path / "hubert", "hubert"), window_s=2, hop_s=1.5, device="cpu")
    waveform = torch.from_numpy(tone(5, seed=1))
    parts = [(0, 32000), (24000, 56000), (48000, 80000)]
    embeds = torch.stack([embedder.embed_audio(waveform[a:b], 16000) for a, b in parts])
    expected = F.normalize((torch.tensor([32000.0, 32000, 32000])[:, None] * embeds).sum(0), dim=0)
    torch.testing.assert_close(embedder.embed_audio(waveform, 16000), expected, atol=1e-5, rtol=1e-5)


def test_batching_by_length_does_not_change_embeddings(embedder, audio_dir):
    paths = sorted(audio_dir.glob("*.wav"))
    batched = torch.cat([chunk.embeddings for chunk in embedder.embed_files(paths, files_per_chunk=4)])
    one_by_one = torch.cat([chunk.embeddings for chunk in embedder.embed_files(paths, files_per_chunk=1)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    assert batched.shape == (len(paths), embedder.model.config.projection_dim)


def test_bad_files_are_reported_and_the_rest_embedded(embedder, audio_dir, tmp_path):
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    soundfile.write(tmp_path / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    good = sorted(audio_dir.glob("*.wav"))[:2]
    paths = [good[0], tmp_path / "missing.wav", tmp_path / "noise.wav", good[1], tmp_path / "nan.wav"]
    chunks = list(embedder.embed_files(paths, files_per_chunk=2))
    assert [p for c in chunks for p in c.paths] == [str(good[0]), str(good[1])]
    failed = {f["path"]: f["reason"] for c in chunks for f in c.failed}
    assert failed[str(tmp_path / "missing.wav")] == "no such file"
    assert "cannot decode" in failed[str(tmp_path / "noise.wav")]
    assert "NaN" in failed[str(tmp_path / "nan.wav")]
    with pytest.raises(ValueError, match="missing.wav: no such file"):
        list(embedder.embed_files(paths, strict=True))
