"""`speech_whisper_padding="max_length"`: Whisper on the 30-s zero-padded log-mel, as pretrained, pooled
over the frames of the real audio only (issue #16 item 8). The tiny Whisper (tests/tiny.py) has
max_source_positions=1500, so 30 s (3000 mel frames) fit as in Whisper-base; 8 mel bins keep it fast.
References come from transformers' WhisperFeatureExtractor and stock WhisperEncoder.forward."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor

from tiny import WORDS, features_command, tiny_config, tiny_feature_extractor, tiny_model, tiny_processor, tiny_speech_setup, tone

RATE = 16000
CLIPS = [tone(3.0), tone(1.234, freq=300.0, seed=1)]


def models(**kwargs):
    """A tiny Whisper CLASP per setting, with the same weights."""
    torch.manual_seed(0)
    real = tiny_model(tiny_config("whisper", **kwargs)).eval()
    padded = tiny_model(tiny_config("whisper", speech_whisper_padding="max_length", **kwargs)).eval()
    padded.load_state_dict(real.state_dict())
    return real, padded


def library_reference(model, clips):
    """Stock transformers: WhisperFeatureExtractor(padding="max_length") → WhisperEncoder.forward,
    and the number of encoder frames of real audio (half the mel frames that start in it, rounded up)."""
    extractor = WhisperFeatureExtractor(feature_size=model.config.speech_config.num_mel_bins)
    inputs = extractor(clips, sampling_rate=RATE, padding="max_length", return_tensors="pt", return_attention_mask=True)
    with torch.no_grad():
        hidden = model.speech_model(input_features=inputs.input_features).last_hidden_state
    real = [(int(mel) + 1) // 2 for mel in inputs.attention_mask.sum(-1)]
    return inputs, hidden, real


def test_padded_frames_are_the_stock_whisper_encoders_over_the_real_audio():
    _, padded = models(speech_frame_stride=1)
    extractor = tiny_feature_extractor(padded.config)
    ours = extractor(CLIPS, sampling_rate=RATE)
    inputs, hidden, real = library_reference(padded, CLIPS)
    assert real == [150, 62]
    torch.testing.assert_close(ours["input_features"], inputs.input_features, atol=0, rtol=0)
    torch.testing.assert_close(ours["input_features_mask"], inputs.attention_mask.long(), atol=0, rtol=0)
    with torch.no_grad():
        frames, weights = padded.get_speech_frames(ours["input_features"], ours["input_features_mask"])
    assert frames.shape == (2, 1500, 32)
    assert weights.sum(-1).tolist() == real
    for i, n in enumerate(real):
        torch.testing.assert_close(frames[i, :n], hidden[i, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 4])
def test_the_padded_embedding_is_the_mean_of_the_real_frames_only(stride):
    _, padded = models(speech_frame_stride=stride)
    ours = tiny_feature_extractor(padded.config)(CLIPS, sampling_rate=RATE)
    _, hidden, real = library_reference(padded, CLIPS)
    with torch.no_grad():
        embeds = padded.get_speech_embeds(ours["input_features"], ours["input_features_mask"])
    expected = F.normalize(torch.stack([hidden[i, :n].mean(0) for i, n in enumerate(real)]), dim=-1)
    torch.testing.assert_close(embeds, expected, atol=1e-5, rtol=1e-5)
    whole = F.normalize(hidden.mean(1), dim=-1)  # the padding's frames pooled too: another vector
    assert (embeds - whole).abs().max() > 1e-3


def test_a_clip_does_not_depend_on_its_batch_mates_when_padded():
    _, padded = models(speech_pooling="attention")
    extractor = tiny_feature_extractor(padded.config)
    with torch.no_grad():
        alone = padded.get_audio_features(**extractor(CLIPS[1:], sampling_rate=RATE)).pooler_output
        batch = extractor([tone(7.5, seed=3), CLIPS[1]], sampling_rate=RATE)
        together = padded.get_audio_features(**batch).pooler_output
    assert batch["input_features"].shape[-1] == 3000
    torch.testing.assert_close(together[1], alone[0], atol=1e-5, rtol=1e-5)


def test_real_stays_todays_real_length_output_and_differs_from_padded():
    real, padded = models()
    torch.manual_seed(0)
    default = tiny_model(tiny_config("whisper")).eval()  # no setting: today's model
    assert default.config.speech_whisper_padding == "real"
    inputs = tiny_feature_extractor(real.config)(CLIPS, sampling_rate=RATE)
    assert inputs["input_features"].shape[-1] == 300  # the longest clip's real length, not 30 s
    with torch.no_grad():
        ours = real.get_speech_embeds(inputs["input_features"], inputs["input_features_mask"])
        today = default.get_speech_embeds(inputs["input_features"], inputs["input_features_mask"])
        padded_inputs = tiny_feature_extractor(padded.config)(CLIPS, sampling_rate=RATE)
        other = padded.get_speech_embeds(padded_inputs["input_features"], padded_inputs["input_features_mask"])
    torch.testing.assert_close(ours, today, atol=0, rtol=0)
    assert (ours - other).abs().max() > 1e-3


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="speech_whisper_padding must be 'real' or 'max_length', got 'longest'"):
        tiny_config("whisper", speech_whisper_padding="longest")
    with pytest.raises(ValueError, match="for Whisper|Whisper's input.*'hubert'"):
        tiny_config("hubert", speech_whisper_padding="max_length")
    with pytest.raises(ValueError, match="needs speech_trainable_layers=0, got 1"):
        tiny_config("whisper", speech_whisper_padding="max_length", speech_trainable_layers=1)
    with pytest.raises(ValueError, match="whisper_padding must be 'real' or 'max_length', got 'true'"):
        tiny_feature_extractor(tiny_config("whisper")).__class__(speech_features="whisper_log_mel", whisper_padding="true")
    _, padded = models()
    real_length = tiny_feature_extractor(tiny_config("whisper"))(CLIPS, sampling_rate=RATE)
    with pytest.raises(ValueError, match="runs on 3000 mel frames .* got input_features of 300"):
        padded.get_speech_embeds(real_length["input_features"], real_length["input_features_mask"])
    with pytest.raises(ValueError, match="longer than this encoder's 30 s"):
        tiny_feature_extractor(padded.config)([tone(30.5)], sampling_rate=RATE)


def test_save_and_load_keep_the_setting_and_an_override_moves_the_processor_too(tmp_path):
    from backbones_clasp.checkpoints import load_model_and_processor

    _, padded = models()
    padded.save_pretrained(tmp_path / "padded")
    tiny_processor(padded.config, tmp_path).save_pretrained(tmp_path / "padded")
    model, processor = load_model_and_processor(str(tmp_path / "padded"))
    assert model.config.speech_whisper_padding == "max_length"
    assert processor.feature_extractor.whisper_padding == "max_length"
    assert json.loads((tmp_path / "padded" / "processor_config.json").read_text())["feature_extractor"]["whisper_padding"] == "max_length"
    with torch.no_grad():
        before = padded.get_audio_features(**processor(audio=CLIPS, sampling_rate=RATE)).pooler_output
        after = model.get_audio_features(**processor(audio=CLIPS, sampling_rate=RATE)).pooler_output
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    # A folder of today's ("real") model, loaded with the override, pads in the processor too.
    real = tiny_model(tiny_config("whisper"))
    real.save_pretrained(tmp_path / "real")
    tiny_processor(real.config, tmp_path).save_pretrained(tmp_path / "real")
    model, processor = load_model_and_processor(str(tmp_path / "real"), speech_whisper_padding="max_length")
    assert processor.feature_extractor.whisper_padding == "max_length"
    assert processor(audio=CLIPS, sampling_rate=RATE)["input_features"].shape[-1] == 3000
    # So does the trainer's `--config_overrides speech_whisper_padding=max_length` (what it exports).
    from argparse import Namespace

    import train_accelerate

    args = Namespace(model=str(tmp_path / "real"), fusion=None, loss=None, speech_pooling=None, speech_trainable_layers=None,
                     config_overrides="speech_whisper_padding=max_length", unfreeze_speech_encoder=False)
    model, processor = train_accelerate.load_model_and_processor(args)
    assert (model.config.speech_whisper_padding, processor.feature_extractor.whisper_padding) == ("max_length", "max_length")


def test_a_features_cache_of_one_setting_is_refused_for_the_other(tmp_path):
    """`clasp features --speech-whisper-padding max_length` caches the padded features; the trainer's
    check refuses that cache for a "real" model and a "real" cache for a padded model."""
    from backbones_clasp.checkpoints import load_model_and_processor
    from clasp_cli.main import main
    from train_accelerate import check_cache_fits

    setup = tiny_speech_setup(tmp_path, WORDS[:4], [1.0, 2.5, 1.5, 0.8], [16000] * 4, n_train=2)
    command = features_command(setup, tmp_path)
    assert main(command + ["--output", str(tmp_path / "padded"), "--speech-whisper-padding", "max_length"]) == 0
    assert main(command + ["--output", str(tmp_path / "real")]) == 0
    folder = str(tmp_path / "model")
    real = load_model_and_processor(folder)
    padded = load_model_and_processor(folder, speech_whisper_padding="max_length")
    check_cache_fits(str(tmp_path / "real"), *real, folder)
    check_cache_fits(str(tmp_path / "padded"), *padded, folder)
    with pytest.raises(ValueError, match="cached with other backbones and processor .* --speech-whisper-padding max_length"):
        check_cache_fits(str(tmp_path / "real"), *padded, folder)
    # A padded cache refused for a real-length run says how to train on it as it is.
    with pytest.raises(ValueError, match="cached with other backbones and processor .*its Whisper input is "
                       "speech_whisper_padding=max_length, this run's is real .*--config_overrides "
                       "speech_whisper_padding=max_length"):
        check_cache_fits(str(tmp_path / "padded"), *real, folder)
    # Caches and folders made before the setting existed stay valid: "real" is not among the saved settings.
    assert "whisper_padding" not in real[1].feature_extractor.to_dict()
    assert padded[1].feature_extractor.to_dict()["whisper_padding"] == "max_length"


def test_a_padded_model_runs_quantized_int8():
    """`--quantize int8` runs Whisper's layers in ONNX Runtime, which needs a mask tensor: padded, an all-zero one."""
    pytest.importorskip("onnxruntime")
    from search_clasp.quantization import quantize_model

    _, padded = models()
    inputs = tiny_feature_extractor(padded.config)(CLIPS, sampling_rate=RATE)
    assert inputs["input_features"].shape[-1] == 3000
    with torch.no_grad():
        fp32 = padded.get_speech_embeds(inputs["input_features"], inputs["input_features_mask"])
        quantize_model(padded, "int8")
        int8 = padded.get_speech_embeds(inputs["input_features"], inputs["input_features_mask"])
    assert torch.isfinite(int8).all() and (fp32 * int8).sum(-1).min() > 0.99
