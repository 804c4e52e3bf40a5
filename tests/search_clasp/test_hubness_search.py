"""CSLS re-ranking in the index: a hub loses its place, the re-ranking is exact, and the CLI options."""

import json

import numpy as np
import pytest

import search_clasp.index
from clasp_cli.main import main
from evaluation.hubness import load_hubness_bank, save_hubness_bank
from search_clasp import ClaspIndex, build_index


def hand_index(folder, items, bank_text, k=2):
    """An index of the given item vectors, with a hubness bank of `bank_text` and csls k."""
    index = ClaspIndex.create(folder / "index", "identity", folder, items.shape[1])
    index.add([f"/clips/{i}.wav" for i in range(len(items))], [1.0] * len(items), items)
    save_hubness_bank(folder / "bank.safetensors", np.zeros_like(bank_text) + 1, bank_text, csls_k=k)
    index.set_hubness_bank(folder / "bank.safetensors")
    index.write_faiss()
    index.write_hubness()
    return index


def test_a_hub_loses_the_first_place(tmp_path):
    # Orthonormal u, e_1, e_2, f_1, f_2, e'_1, e'_2: item 0 is the hub u, items 1-2 are 0.6 e_i + 0.8 f_i;
    # the text query 0.6 u + 0.8 e_1 scores the hub 0.6 and item 1 0.48. The bank texts 0.6 u + 0.8 e'_m
    # give the hub r = 0.6 and the others 0, so CSLS scores item 1 2 * 0.48 = 0.96 and the hub 0.6.
    eye = np.eye(7, dtype=np.float32)
    items = np.stack([eye[0], 0.6 * eye[1] + 0.8 * eye[3], 0.6 * eye[2] + 0.8 * eye[4]])
    index = hand_index(tmp_path, items, 0.6 * eye[0] + 0.8 * eye[5:7])
    query = 0.6 * eye[0] + 0.8 * eye[1]
    plain = index.search(query[None], k=2)[0]
    corrected = index.search(query[None], k=2, hubness="csls")[0]
    assert [h["path"] for h in plain] == ["/clips/0.wav", "/clips/1.wav"]
    assert [h["path"] for h in corrected] == ["/clips/1.wav", "/clips/0.wav"]
    assert [h["csls_score"] for h in corrected] == pytest.approx([0.96, 0.6], abs=1e-3)  # float16 bank
    assert [h["score"] for h in corrected] == pytest.approx([0.48, 0.6], abs=1e-6)  # the cosine stays
    assert [h["rank"] for h in corrected] == [1, 2]


def test_reranking_equals_an_exhaustive_csls_search(tmp_path, monkeypatch):
    """A depth of 2 forces the doubling: the top k must still be those of scoring every item."""
    monkeypatch.setattr(search_clasp.index, "RERANK_DEPTH", 2)
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    items, bank, queries = unit(rng.normal(size=(60, 4))), unit(rng.normal(size=(30, 4))), unit(rng.normal(size=(8, 4)))
    index = hand_index(tmp_path, items, bank, k=3)
    # The exhaustive reference in float64, from the bank as stored (float16).
    bank16 = load_hubness_bank(tmp_path / "index" / "hubness_bank.safetensors")[0]["text_embeds"].astype(np.float64)
    penalty = np.sort(items @ bank16.T, axis=1)[:, -3:].mean(axis=1)
    for query, hits in zip(queries, index.search(queries, k=5, hubness="csls")):
        expected = np.argsort(-(2 * items @ query - penalty))[:5]
        assert [h["path"] for h in hits] == [f"/clips/{i}.wav" for i in expected]


def test_penalties_follow_added_items_and_a_plain_index_refuses_csls(tmp_path):
    eye = np.eye(4, dtype=np.float32)
    index = hand_index(tmp_path, eye[:2], eye[2:], k=1)
    index.add(["/clips/new.wav"], [1.0], eye[3:])
    index.write_faiss()
    index.write_hubness()
    assert index.db.execute("SELECT COUNT(*) FROM hubness").fetchone()[0] == 3
    assert index.search(eye[3:], k=1, hubness="csls")[0][0]["path"] == "/clips/new.wav"
    with pytest.raises(ValueError, match="another hubness bank"):
        index.set_hubness_bank(tmp_path / "bank.safetensors", csls_k=2)
    plain = ClaspIndex.create(tmp_path / "plain", "identity", tmp_path, 4)
    plain.add(["/a.wav"], [1.0], eye[:1])
    plain.write_faiss()
    with pytest.raises(ValueError, match="no hubness penalties"):
        plain.search(eye[:1], k=1, hubness="csls")


def test_index_and_search_commands(model_dir, audio_dir, tmp_path, capsys):
    from configuration_clasp import ClaspConfig

    dim = ClaspConfig.from_pretrained(model_dir).projection_dim
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(2, 8, dim)).astype(np.float32)
    save_hubness_bank(tmp_path / "bank.safetensors", *bank, csls_k=4)
    assert main(["index", "--model", str(model_dir), "--audio", str(audio_dir), "--output", str(tmp_path / "index"),
                 "--hubness-bank", str(tmp_path / "bank.safetensors"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "index"), "--query", "the red car", "-k", "6", "--json",
                 "--hubness", "csls", "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 6 and all("csls_score" in hit for hit in hits)
    assert [h["csls_score"] for h in hits] == sorted((h["csls_score"] for h in hits), reverse=True)
    assert main(["search", "--index", str(tmp_path / "index"), "--audio", str(next(audio_dir.iterdir())),
                 "--hubness", "csls"]) == 2
    assert "--hubness corrects text queries" in capsys.readouterr().err
    assert main(["index", "--model", str(model_dir), "--audio", str(audio_dir), "--output", str(tmp_path / "other"),
                 "--hubness-bank", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such hubness bank file" in capsys.readouterr().err and not (tmp_path / "other.partial").exists()
