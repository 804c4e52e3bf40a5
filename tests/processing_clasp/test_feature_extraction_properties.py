"""Property tests: any finite clip (any length ≥ 1 sample, rate, channel count, sample type) gives
finite features of the documented shapes; a clip that cannot be audio is refused by name."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from processing_clasp import ClaspFeatureExtractor

WAVEFORM = ClaspFeatureExtractor(image_size=32, spectrogram_n_mels=16)
WHISPER = ClaspFeatureExtractor(speech_features="whisper_log_mel", feature_size=8, do_normalize=False,
                                max_samples=30 * 16000, image_size=32, spectrogram_n_mels=16)
# Floats past ±1 are taken as they are; past 1e6 (120 dB over full scale) they are refused (last test).
# 1e5 leaves room for resampling, whose ringing can overshoot a lone loud sample by a fifth.
MAX_FLOAT = 1e5


@st.composite
def clips(draw):
    """(clip, rate): 1-D, or 2-D as (channels, samples) (the documented layout), of any sample type."""
    # Rates in steps of 100 Hz, plus the 44.1 kHz family: torchaudio's resampling kernel grows with
    # rate / gcd(rate, 16000), and an arbitrary integer rate (4001 Hz) would take minutes to build.
    rate = draw(st.one_of(st.sampled_from([11025, 22050, 44100, 88200]), st.integers(40, 960).map(lambda r: 100 * r)))
    length = draw(st.integers(1, 4000))
    channels = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32]))
    shape = (length,) if channels == 1 and draw(st.booleans()) else (channels, length)
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(-MAX_FLOAT, MAX_FLOAT, allow_nan=False, allow_infinity=False, width=32)
        clip = draw(arrays(dtype, shape, elements=elements))
    else:
        clip = draw(arrays(dtype, shape))
    return clip, rate


def samples_at_16k(clip, rate):
    """The documented length: the last axis is time, resampled to 16 kHz, padded to one encoder frame."""
    return max(math.ceil(clip.shape[-1] * 16000 / rate), WAVEFORM.min_samples)


@settings(max_examples=25, deadline=None, database=None)  # a failure prints its example; no replay database
@given(clips(), clips())
def test_any_finite_clip_gives_finite_features_of_the_documented_shapes(first, second):
    lengths = [samples_at_16k(*first), samples_at_16k(*second)]
    # Each clip at its own rate (a batch of files has several): to mono float32 at 16 kHz, then the batch.
    waveforms = [WAVEFORM.prepare_clip(clip, rate) for clip, rate in (first, second)]
    assert [w.shape[0] for w in waveforms] == lengths and all(torch.isfinite(w).all() for w in waveforms)
    for extractor in (WAVEFORM, WHISPER):
        out = extractor(waveforms, sampling_rate=16000)
        values, mask, pictures = out[extractor.speech_input_name], out[f"{extractor.speech_input_name}_mask"], out["pixel_values"]
        for tensor in (values, pictures):
            assert torch.isfinite(tensor).all()
        assert pictures.shape == (2, 3, 32, 32)
        if extractor is WAVEFORM:
            assert values.shape == (2, max(lengths)) and mask.sum(dim=1).tolist() == lengths
        else:  # Whisper: one log-mel frame per hop of real audio
            frames = [n // extractor.whisper_hop_length for n in lengths]
            assert values.shape == (2, 8, max(frames)) and mask.sum(dim=1).tolist() == frames


@pytest.mark.parametrize("peak", [1e7, 3e38])
def test_float_samples_far_past_full_scale_are_refused_by_name(peak):
    clip = np.zeros(1000, np.float32)
    clip[10] = peak
    with pytest.raises(ValueError, match=r"audio\[0\]: samples reach .* not audio in \[-1, 1\]"):
        WAVEFORM([clip], sampling_rate=16000)
