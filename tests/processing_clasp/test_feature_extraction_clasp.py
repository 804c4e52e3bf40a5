import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from processing_clasp import ClaspFeatureExtractor
from tiny import tone


@pytest.fixture(scope="module")
def extractor():
    return ClaspFeatureExtractor(image_size=64, spectrogram_n_mels=32)


def test_outputs_and_shapes(extractor):
    out = extractor([tone(1.0), tone(0.5)], sampling_rate=16000)
    assert out["input_values"].shape == (2, 16000)
    assert out["input_values_mask"].sum(dim=1).tolist() == [16000, 8000]
    assert out["pixel_values"].shape == (2, 3, 64, 64)
    assert set(out) == {"input_values", "input_values_mask", "pixel_values"} == set(extractor.model_input_names)
    assert extractor.sampling_rate == 16000


def test_waveform_is_normalised_per_clip(extractor):
    values = extractor(tone(1.0) + 0.2, sampling_rate=16000)["input_values"][0]
    assert abs(values.mean().item()) < 1e-4 and abs(values.std().item() - 1) < 1e-3


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_any_rate_is_resampled(extractor, rate):
    def sine(r):
        return np.sin(2 * np.pi * 440.0 * np.arange(r) / r).astype(np.float32)

    out = extractor(sine(rate), sampling_rate=rate)["input_values"][0]
    reference = extractor(sine(16000), sampling_rate=16000)["input_values"][0]
    assert abs(out.shape[-1] - 16000) <= 1
    n = min(out.shape[-1], 16000) - 200  # the filter's edges aside, the same 440 Hz sine at 16 kHz
    np.testing.assert_allclose(out[100:n].numpy(), reference[100:n].numpy(), atol=0.02)


def test_stereo_of_identical_channels_is_mono(extractor):
    mono = tone(0.7)
    mono_out = extractor([mono], sampling_rate=16000)
    for stereo in (np.stack([mono, mono]), np.stack([mono] * 6)):
        out = extractor([stereo], sampling_rate=16000)
        for key in mono_out:
            torch.testing.assert_close(out[key], mono_out[key])


@pytest.mark.parametrize(
    "dtype,scale,offset",
    [(np.int16, 32768, 0), (np.int32, 2**31, 0), (np.int8, 128, 0), (np.uint8, 128, 128), (np.float64, 1, 0)],
)
def test_sample_types_are_scaled(extractor, dtype, scale, offset, ):
    clip = tone(0.5)
    integer = np.round(clip * (scale - 1) + offset).astype(dtype) if dtype != np.float64 else clip.astype(dtype)
    ours = ClaspFeatureExtractor(do_normalize=False, image_size=32)
    out = ours(integer, sampling_rate=16000)["input_values"][0]
    tolerance = 2.0 / scale if dtype != np.float64 else 1e-7
    np.testing.assert_allclose(out.numpy(), clip, atol=tolerance)


def test_torch_and_list_inputs_match_numpy(extractor):
    clip = tone(0.5)
    expected = extractor(clip, sampling_rate=16000)["input_values"]
    torch.testing.assert_close(extractor(torch.from_numpy(clip), sampling_rate=16000)["input_values"], expected)
    torch.testing.assert_close(extractor(clip.tolist(), sampling_rate=16000)["input_values"], expected)


def test_very_short_clip_is_padded_to_one_frame(extractor):
    out = extractor(np.ones(10, dtype=np.float32) * 0.1, sampling_rate=16000)
    assert out["input_values"].shape[-1] == extractor.min_samples
    assert torch.isfinite(out["pixel_values"]).all()


def test_channel_layout_is_channels_first_never_guessed(extractor):
    """(channels, samples) whatever the shape: 8 channels of 2 samples, stereo of 2 samples."""
    extractor = ClaspFeatureExtractor(do_normalize=False, min_samples=1, image_size=32)
    eight = np.arange(16, dtype=np.float32).reshape(8, 2) / 100
    stereo = np.array([[0.1, 0.3], [0.5, 0.7]], dtype=np.float32)
    for clip, mono in ((eight, [0.07, 0.08]), (stereo, [0.3, 0.5])):
        np.testing.assert_allclose(extractor([clip], sampling_rate=16000)["input_values"][0].numpy(), mono, atol=1e-7)
    with pytest.raises(ValueError, match=r"audio\[0\]: a 2-D clip is \(channels, samples\); shape \(1000, 2\).*transpose"):
        extractor([np.zeros((1000, 2), np.float32)], sampling_rate=16000)


@pytest.mark.parametrize(
    "bad,message",
    [(np.zeros(0, dtype=np.float32), "empty"), (np.array([0.1, np.nan] * 400, dtype=np.float32), "NaN"),
     (np.array([0.1, np.inf] * 400, dtype=np.float32), "NaN or infinite"), (np.zeros((2, 2, 2)), "shape")],
)
def test_bad_audio_is_named_in_the_error(extractor, bad, message):
    with pytest.raises(ValueError, match=message) as error:
        extractor([tone(0.5), bad], sampling_rate=16000)
    assert "audio[1]" in str(error.value)


def test_whisper_log_mel_matches_whisper_feature_extractor():
    """Our real-length log-mel equals WhisperFeatureExtractor's on the clip's frames (it pads to 30 s)."""
    ours = ClaspFeatureExtractor(speech_features="whisper_log_mel", feature_size=80, do_normalize=False, max_samples=480000)
    reference = WhisperFeatureExtractor(feature_size=80)
    clip = tone(2.0, freq=180)
    mel = ours(clip, sampling_rate=16000)["input_features"][0]
    full = reference(clip, sampling_rate=16000, return_tensors="np")["input_features"][0]
    assert mel.shape == (80, 200)
    # the last frame's window reaches into Whisper's zero padding instead of our reflection
    np.testing.assert_allclose(mel[:, :-1].numpy(), full[:, :199], atol=1e-4)


def test_whisper_refuses_more_than_30_seconds():
    ours = ClaspFeatureExtractor(speech_features="whisper_log_mel", feature_size=80, do_normalize=False, max_samples=480000)
    with pytest.raises(ValueError, match="longer than"):
        ours([tone(31.0)], sampling_rate=16000)


def test_round_trip(tmp_path, extractor):
    extractor.save_pretrained(tmp_path)
    loaded = ClaspFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()


def test_a_processor_saved_by_an_earlier_version_loads_with_the_new_names():
    """The saved settings did not change with the input names (a preprocessor_config.json of the
    version that still said `audio_attention_mask`), so old folders load and give the new names."""
    saved = {"auto_map": {"AutoFeatureExtractor": "feature_extraction_clasp.ClaspFeatureExtractor",
                          "AutoProcessor": "processing_clasp.ClaspProcessor"},
             "do_normalize": False, "feature_extractor_type": "ClaspFeatureExtractor", "feature_size": 8,
             "image_mean": [0.485, 0.456, 0.406], "image_size": 32, "image_std": [0.229, 0.224, 0.225],
             "max_samples": 480000, "min_samples": 400, "padding_side": "right", "padding_value": 0.0,
             "return_attention_mask": True, "sampling_rate": 16000, "spectrogram_hop_length": 320,
             "spectrogram_n_fft": 1024, "spectrogram_n_mels": 16, "spectrogram_top_db": 80.0,
             "speech_features": "whisper_log_mel", "whisper_hop_length": 160, "whisper_n_fft": 400}
    extractor = ClaspFeatureExtractor.from_dict(saved)
    assert extractor.to_dict() == saved
    out = extractor([tone(0.5)], sampling_rate=16000)
    assert list(out) == extractor.model_input_names == ["input_features", "input_features_mask", "pixel_values"]


def whisper_extractor():
    return ClaspFeatureExtractor(speech_features="whisper_log_mel", feature_size=80, do_normalize=False, max_samples=480000,
                                 image_size=32)


def test_padding_as_transformers(extractor):
    """padding True / "longest" / "max_length" / False, with max_length in samples at 16 kHz."""
    clips = [tone(1.0), tone(0.5)]
    longest = extractor(clips, sampling_rate=16000)
    for padding in (True, "longest"):
        torch.testing.assert_close(extractor(clips, sampling_rate=16000, padding=padding)["input_values"], longest["input_values"])
    padded = extractor(clips, sampling_rate=16000, padding="max_length", max_length=20000)
    assert padded["input_values"].shape == (2, 20000)
    assert padded["input_values_mask"].sum(dim=1).tolist() == [16000, 8000]
    torch.testing.assert_close(padded["input_values"][:, :16000], longest["input_values"])
    assert not padded["input_values"][:, 16000:].any()
    same_length = extractor([tone(0.5), tone(0.5, freq=300)], sampling_rate=16000, padding=False)
    assert same_length["input_values"].shape == (2, 8000)
    with pytest.raises(ValueError, match="padding=False: the clips differ in length"):
        extractor(clips, sampling_rate=16000, padding=False)
    with pytest.raises(ValueError, match="max_length is defined"):
        extractor(clips, sampling_rate=16000, padding="max_length")
    with pytest.raises(ValueError, match="padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got 'shortest'"):
        extractor(clips, sampling_rate=16000, padding="shortest")
    with pytest.raises(ValueError, match=r"audio\[0\]: 16000 samples, longer than max_length=12000; pass truncation=True"):
        extractor(clips, sampling_rate=16000, padding="max_length", max_length=12000)


def test_whisper_pads_to_max_length_in_frames():
    out = whisper_extractor()([tone(1.0), tone(0.5)], sampling_rate=16000, padding="max_length", max_length=32000)
    assert out["input_features"].shape == (2, 80, 200)  # 32,000 samples = 200 frames of 160
    assert out["input_features_mask"].sum(dim=1).tolist() == [100, 50]


def test_truncation_cuts_the_clip_before_both_branches(extractor):
    clip = tone(1.0)
    cut = extractor([clip], sampling_rate=16000, truncation=True, max_length=8000)
    reference = extractor([clip[:8000]], sampling_rate=16000)
    for key in reference:
        torch.testing.assert_close(cut[key], reference[key])
    with pytest.raises(ValueError, match="truncation=True needs max_length"):
        extractor([clip], sampling_rate=16000, truncation=True)
    with pytest.raises(ValueError, match="max_length must be a number of samples of at least min_samples=400"):
        extractor([clip], sampling_rate=16000, truncation=True, max_length=100)
    # Whisper refuses more than 30 s, unless it is asked to cut there.
    long = np.tile(tone(1.0), 31)
    out = whisper_extractor()([long], sampling_rate=16000, truncation=True, max_length=480000)
    assert out["input_features"].shape == (1, 80, 3000)


def test_return_attention_mask_and_tensor_types(extractor):
    clip = tone(0.5)
    assert "input_values_mask" not in extractor([clip], sampling_rate=16000, return_attention_mask=False)
    assert "input_values_mask" in extractor([clip], sampling_rate=16000, return_attention_mask=True)
    as_torch = extractor([clip], sampling_rate=16000, return_tensors="pt")
    as_numpy = extractor([clip], sampling_rate=16000, return_tensors="np")
    assert as_torch.keys() == as_numpy.keys()
    for key in as_torch:
        assert isinstance(as_torch[key], torch.Tensor) and isinstance(as_numpy[key], np.ndarray), key
        np.testing.assert_array_equal(as_numpy[key], as_torch[key].numpy())
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or 'np', got 'tf'"):
        extractor([clip], sampling_rate=16000, return_tensors="tf")
    with pytest.raises(TypeError, match="pad_to_multiple_of"):
        extractor([clip], sampling_rate=16000, pad_to_multiple_of=8)
