import pytest
import torch

from processing_clasp import ClaspProcessor
from tiny import tiny_config, tiny_model, tiny_processor, tone


def test_text_and_audio_together(tmp_path):
    processor = tiny_processor(tiny_config(), tmp_path)
    out = processor(text=["the cat", "der hund ist"], audio=[tone(0.5), tone(0.3)], sampling_rate=16000)
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask", "input_values", "input_values_mask", "pixel_values"}
    assert set(out) == set(processor.model_input_names)
    assert out["input_values_mask"].sum(dim=1).tolist() == [8000, 4800]  # the audio's mask, not the tokenizer's
    assert out["input_ids"].shape[0] == 2 and out["input_values"].shape[0] == 2


def test_unknown_arguments_are_refused_not_ignored(tmp_path):
    processor = tiny_processor(tiny_config(), tmp_path)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['foo'\]"):
        processor(text=["the cat"], foo=1)
    assert processor(text=["the cat sat"], max_length=3, truncation=True)["input_ids"].shape == (1, 3)  # the tokenizer's own


def test_text_prefix_is_prepended(tmp_path):
    processor = tiny_processor(tiny_config(), tmp_path)
    processor.text_prefix = "the "
    with_prefix = processor(text="cat")["input_ids"]
    plain = processor.tokenizer(["the cat"], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(with_prefix, plain)


def test_round_trip(tmp_path):
    processor = tiny_processor(tiny_config(), tmp_path)
    processor.text_prefix = "query: "
    processor.save_pretrained(tmp_path / "saved")
    loaded = ClaspProcessor.from_pretrained(tmp_path / "saved")
    assert loaded.text_prefix == "query: "
    assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    a = processor(text=["the red car"], audio=tone(0.4), sampling_rate=16000)
    b = loaded(text=["the red car"], audio=tone(0.4), sampling_rate=16000)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_loads_from_a_model_folder_without_asking_to_trust_remote_code(tmp_path, capfd):
    """A CLASP folder's config.json has an auto_map; loading our own class must not prompt for it."""
    config = tiny_config()
    tiny_model(config).save_pretrained(tmp_path)
    tiny_processor(config, tmp_path).save_pretrained(tmp_path)
    capfd.readouterr()
    loaded = ClaspProcessor.from_pretrained(tmp_path)
    out, err = capfd.readouterr()
    assert "trust_remote_code" not in out + err and "custom code" not in out + err
    assert loaded(text=["the red car"])["input_ids"].shape[0] == 1


BAD_TEXTS = ["", "   \t\n", "the cat 猫 кот le chat القط", "the red car 🚗🐱👍🏽", "\x00the\x07 cat\tsat\x1b on\x7f\r\n",
             "the cat sat on the mat " * 435]  # the last: 10k characters


def test_any_text_embeds_and_a_long_one_is_truncated_with_a_warning(tmp_path):
    config = tiny_config()
    processor, model = tiny_processor(config, tmp_path), tiny_model(config).eval()
    limit = processor.text_max_length
    with pytest.warns(UserWarning, match=rf"text\[5\]: 2\d\d\d tokens, truncated to the sentence encoder's limit of {limit}") as caught:
        tokens = processor(text=BAD_TEXTS)
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1  # only the long one
    assert tokens["input_ids"].shape == (len(BAD_TEXTS), limit)
    with torch.no_grad():
        embeds = model.get_text_features(**tokens).pooler_output
    assert torch.isfinite(embeds).all() and torch.allclose(embeds.norm(dim=-1), torch.ones(len(BAD_TEXTS)), atol=1e-5)
    # Control characters are dropped by the tokenizer, not turned into tokens.
    torch.testing.assert_close(processor(text=[BAD_TEXTS[4]])["input_ids"], processor(text=["the cat sat on"])["input_ids"])
    with pytest.raises(TypeError, match=r"text\[1\]: expected a string, got NoneType"):
        processor(text=["the cat", None])


def test_from_pretrained_applies_overrides_as_transformers(tmp_path):
    processor = tiny_processor(tiny_config(), tmp_path)
    processor.text_prefix = "query: "
    processor.save_pretrained(tmp_path / "saved")
    loaded = ClaspProcessor.from_pretrained(tmp_path / "saved", text_max_length=6, text_prefix="", do_normalize=False,
                                            image_size=48, trust_remote_code=True)
    assert loaded.text_max_length == 6 and loaded.text_prefix == ""
    assert loaded.feature_extractor.do_normalize is False and loaded.feature_extractor.image_size == 48
    with pytest.warns(UserWarning, match="truncated"):
        assert loaded(text=["the cat sat on the mat"])["input_ids"].shape == (1, 6)
    torch.testing.assert_close(loaded(text=["the cat"])["input_ids"], processor.tokenizer(["the cat"], return_tensors="pt")["input_ids"])
    assert loaded(audio=tone(0.5), sampling_rate=16000)["pixel_values"].shape[-1] == 48
    # what is not overridden stays as saved
    again = ClaspProcessor.from_pretrained(tmp_path / "saved")
    assert again.text_prefix == "query: " and again.text_max_length == processor.text_max_length
    assert again.feature_extractor.to_dict() == processor.feature_extractor.to_dict()


def test_from_pretrained_refuses_unknown_or_bad_kwargs(tmp_path):
    tiny_processor(tiny_config(), tmp_path).save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match=r"unknown keyword arguments \['text_max_lenght'\]"):
        ClaspProcessor.from_pretrained(tmp_path / "saved", text_max_lenght=64)
    with pytest.raises(ValueError, match="text_max_length must be a positive number of tokens, got 0"):
        ClaspProcessor.from_pretrained(tmp_path / "saved", text_max_length=0)


def test_return_tensors_np_gives_numpy_for_text_and_audio(tmp_path):
    import numpy as np

    out = tiny_processor(tiny_config(), tmp_path)(text=["the cat"], audio=[tone(0.5)], sampling_rate=16000, return_tensors="np")
    assert all(isinstance(value, np.ndarray) for value in out.values()), {k: type(v) for k, v in out.items()}
