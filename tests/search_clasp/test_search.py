import json
import re
import shutil

import pytest
import torch

from search_clasp import ClaspEmbedder, ClaspSearch
from search_clasp.search import load_text_model
from search_fixtures import write_tones
from tiny import oracle_index

TRANSCRIPTS = ["the red car", "le chat est sur la", "der hund ist", "el perro", "a blue house"]
LANGUAGES = ["en", "fr", "de", "es", "en"]


@pytest.fixture(scope="module")
def search(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    clips = write_tones(root / "audio", len(TRANSCRIPTS))
    return ClaspSearch(oracle_index(root / "index", model_dir, clips, TRANSCRIPTS, LANGUAGES), device="cpu"), clips


@pytest.mark.parametrize("query, expected", [("DER Hund ist", 2), ("el perro", 3), ("the red car", 0)])
def test_a_text_query_finds_the_clip_whose_transcript_it_says(search, query, expected):
    search, clips = search
    hits = search.text(query, k=5)
    assert hits[0]["path"] == str(clips[expected])
    assert hits[0]["text"] == TRANSCRIPTS[expected] and hits[0]["language"] == LANGUAGES[expected]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and hits[1]["score"] < hits[0]["score"] - 1e-4
    assert set(search.last_timing) == {"embed_s", "search_s"}


def test_query_by_example_and_empty_queries(search, model_dir):
    search, clips = search
    assert len(search.audio(clips[1], k=2)) == 2
    with pytest.raises(ValueError, match="empty"):
        search.text("   ")


def test_zero_shot_classification_gives_a_distribution_over_the_labels(search):
    search, clips = search
    scores = search.classify(clips[0], [" red car", "blue house ", "", "el perro"])
    assert list(scores) == ["red car", "blue house", "el perro"]
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5) and all(0 < s < 1 for s in scores.values())
    with pytest.raises(ValueError, match="at least one label"):
        search.classify(clips[0], [" ", ""])


def test_a_text_only_search_builds_no_audio_backbone_and_embeds_text_as_the_full_model(search, monkeypatch):
    search, clips = search

    def refuse(*args, **kwargs):
        raise AssertionError("the whole model was loaded for a text query")

    monkeypatch.setattr(ClaspEmbedder, "from_pretrained", refuse)
    text_only = ClaspSearch(search.index.directory, device="cpu", text_only=True)
    model = text_only.embedder.model
    assert model.speech_model is None and model.spectrogram_model is None
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    queries = ["the red car", "DER Hund ist", "le chat est sur la table et le chien"]
    torch.testing.assert_close(text_only.embedder.embed_texts(queries), search.embedder.embed_texts(queries), rtol=0, atol=1e-6)
    assert [h["path"] for h in text_only.text("el perro", k=5)] == [h["path"] for h in search.text("el perro", k=5)]
    with pytest.raises(ValueError, match="text queries only"):
        text_only.audio(clips[0])


def test_text_only_loading_refuses_weights_of_another_config_naming_the_folder(model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 1
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"(?s){re.escape(str(tmp_path / 'model'))}: the weights cannot be loaded.*intermediate"):
        load_text_model(tmp_path / "model")
