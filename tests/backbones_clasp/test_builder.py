"""build_clasp: a new CLASP and its processor from backbone folders, each setting read once from the
part's own files."""

import json
import os
import shutil

import pytest
import torch
from torch import nn
from transformers import BertModel, EfficientNetModel, HubertModel

from backbones_clasp import build_clasp, resolve_backbones
from tiny import WORDS, tiny_bert_config, tiny_efficientnet_config, tiny_hubert_config, tiny_tokenizer, tone

TEXTS = ["the cat sat on the mat", "le chat est sur la mat der hund ist el perro the red blue green house car"]
TINY_HEAD = dict(fusion_branch_dims=[16, 12, 16], fusion_head_dims=[20, 18])


def audio_parts(tmp_path) -> dict:
    """A tiny HuBERT and EfficientNet saved as pretrained folders."""
    parts = {"speech": tmp_path / "speech", "spectrogram": tmp_path / "cnn"}
    HubertModel(tiny_hubert_config()).save_pretrained(parts["speech"])
    cnn = EfficientNetModel(tiny_efficientnet_config())
    for module in cnn.modules():  # as tiny_model: a random CNN's output would underflow to zero
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    cnn.save_pretrained(parts["spectrogram"])
    return {name: str(path) for name, path in parts.items()}


def test_a_model_built_from_backbones_is_ready_for_inference(tmp_path):
    """build_clasp returns the model in eval mode, as from_pretrained does: one clip goes through the
    fusion head's batch norm, and a clip's embedding does not depend on its batch-mates (equal
    lengths here, so no padding is involved). A plain transformers text folder (no modules.json)
    is cut at its positions."""
    parts = audio_parts(tmp_path)
    BertModel(tiny_bert_config(len(WORDS) + 5)).save_pretrained(tmp_path / "text")
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path / "text")

    model, processor = build_clasp(**parts, text=str(tmp_path / "text"), **TINY_HEAD)
    assert not any(module.training for module in model.modules())
    assert processor.text_max_length == 64 and processor.text_prefix == ""
    same_length = [tone(0.8, seed=1), tone(0.8, freq=330, seed=2), tone(0.8, freq=150, seed=3)]
    with torch.no_grad():
        alone = model(**processor(audio=same_length[:1], sampling_rate=16000)).audio_embeds
        batch = model(**processor(audio=same_length, sampling_rate=16000)).audio_embeds
    assert alone.shape == (1, model.config.projection_dim)
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=0)


def save_sentence_transformer(folder, tmp_path, style):
    """A tiny sentence-transformers model saved by sentence-transformers itself. "e5": mean pooling,
    Normalize, a "query: " prompt, the limit (10) in the tokenizer (sentence-transformers 6's layout).
    "cls": cls pooling alone, limit 8. "labse": cls pooling, Dense+tanh, Normalize, the Transformer in
    0_Transformer/ with its limit (12) in sentence_bert_config.json (the layout of LaBSE on the Hub)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    BertModel(tiny_bert_config(len(WORDS) + 5)).save_pretrained(tmp_path / "bert")
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path / "bert")
    transformer = Transformer(str(tmp_path / "bert"), max_seq_length={"e5": 10, "cls": 8, "labse": None}[style])
    if style == "e5":
        modules, prompts = [transformer, Pooling(24, pooling_mode="mean"), Normalize()], {"query": "query: "}
    elif style == "cls":
        modules, prompts = [transformer, Pooling(24, pooling_mode="cls")], None
    else:
        modules, prompts = [transformer, Pooling(24, pooling_mode="cls"), Dense(24, 24, activation_function=nn.Tanh()),
                            Normalize()], None
    sentence_transformers.SentenceTransformer(modules=modules, prompts=prompts, device="cpu").save(str(folder))
    if style == "labse":
        os.makedirs(folder / "0_Transformer")
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "sentence_bert_config.json"):
            shutil.move(folder / name, folder / "0_Transformer" / name)
        (folder / "0_Transformer" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
        modules_json = json.loads((folder / "modules.json").read_text())
        modules_json[0]["path"] = "0_Transformer"
        (folder / "modules.json").write_text(json.dumps(modules_json))
    return sentence_transformers.SentenceTransformer(str(folder), device="cpu")


@pytest.mark.parametrize("style", ["e5", "cls", "labse"])
def test_text_embeds_prompt_and_limit_are_the_sentence_transformers_models(style, tmp_path):
    """The model's text embeddings, the processor's prompt and its token limit are those
    sentence-transformers itself uses for the folder (the model's and the processor's reading of
    the folder used to be two copies that disagreed on the limit)."""
    reference = save_sentence_transformer(tmp_path / "text", tmp_path, style)
    model, processor = build_clasp(**audio_parts(tmp_path), text=str(tmp_path / "text"), **TINY_HEAD)
    assert processor.text_max_length == reference.max_seq_length == {"e5": 10, "cls": 8, "labse": 12}[style]
    assert processor.text_prefix == {"e5": "query: ", "cls": "", "labse": ""}[style]
    assert model.config.text_pooling == {"e5": "mean", "cls": "cls", "labse": "pooler"}[style]
    expected = reference.encode(TEXTS, prompt_name="query" if style == "e5" else None, convert_to_tensor=True)
    with pytest.warns(UserWarning, match="text\\[1\\]: .* truncated"):  # the second text is over the limit
        inputs = processor(text=TEXTS)
    with torch.no_grad():
        text_embeds = model.get_text_features(**inputs).pooler_output
    torch.testing.assert_close(text_embeds, expected, atol=1e-5, rtol=0)


def test_an_unknown_preset_and_a_missing_offline_folder_are_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown backbone preset 'large'"):
        resolve_backbones(None, None, None, "large")
    monkeypatch.setenv("CLASP_BACKBONES_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere' / 'whisper-base'} is missing"):
        build_clasp()


@pytest.mark.parametrize("part", ["speech", "spectrogram", "text"])
def test_a_local_folder_that_does_not_exist_is_named_as_a_folder(tmp_path, part):
    """A path (absolute, ./ or ~/) that is not there is no Hub id: say so, not "Repo id must be in the form"."""
    missing = str(tmp_path / "typo")
    with pytest.raises(FileNotFoundError, match=f"{part} backbone {missing}: no such folder"):
        resolve_backbones(**{part: missing}, **{p: None for p in ("speech", "spectrogram", "text") if p != part},
                          preset="paper")


def test_a_hub_model_with_its_transformer_in_a_subfolder_is_refused(monkeypatch):
    """AutoModel.from_pretrained("org/name") reads the repo's root, not 0_Transformer/: say so rather
    than build from whatever the root holds."""
    from backbones_clasp import builder

    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]
    monkeypatch.setattr(builder, "read_json", lambda path, name: modules if name == "modules.json" else None)
    with pytest.raises(ValueError, match="org/old-layout: its Transformer is in 0_Transformer/"):
        builder.read_sentence_transformer("org/old-layout")
