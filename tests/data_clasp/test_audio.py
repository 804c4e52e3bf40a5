"""The channel layout is decided once, when a file is decoded: every reader returns
[channels, samples], and the feature extractor averages exactly those channels, for any channel
count and any length down to one sample (no guess from the array's shape)."""

import numpy as np
import pytest
import soundfile

from data_clasp.audio import load_audio, read_ffmpeg, read_soundfile
from processing_clasp import ClaspFeatureExtractor

EXTRACTOR = ClaspFeatureExtractor(do_normalize=False, min_samples=1, image_size=32, spectrogram_n_mels=16)


@pytest.mark.parametrize("reader", [load_audio, read_soundfile, read_ffmpeg])
@pytest.mark.parametrize("channels", range(1, 9))
@pytest.mark.parametrize("length", [1, 2, 3, 7, 9, 100])
def test_every_reader_gives_channels_first_and_the_extractor_averages_them(tmp_path, reader, channels, length):
    rng = np.random.default_rng(100 * channels + length)
    written = rng.uniform(-0.9, 0.9, size=(length, channels)).astype(np.float32)  # soundfile's [samples, channels]
    path = tmp_path / "clip.wav"
    soundfile.write(path, written, 16000, subtype="FLOAT")
    samples, rate = reader(str(path))
    assert rate == 16000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, written.T)
    mono = EXTRACTOR.prepare_clip(samples, rate, name=str(path))
    np.testing.assert_allclose(mono.numpy(), written.mean(axis=1), rtol=0, atol=1e-7)
