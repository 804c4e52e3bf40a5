"""`--quantize int8`: int8 encoders on the CPU for clasp embed / index / eval (search_clasp/quantization.py).

The bound: on a tiny random model each attention and MLP block adds a small update (weights drawn
with std 0.02) to a residual stream that LayerNorm keeps at unit scale, so the int8 rounding of
those updates moves the embedding less than on the real Whisper-base (cosine 0.9989 at worst
there, bench/bench_quantize.py): cosine >= 0.999 here, and the embeddings must still differ from
fp32 (else nothing was quantized).
"""

import json

import pytest
import torch
from safetensors import safe_open

from clasp_cli.main import main
from search_clasp import ClaspEmbedder, ClaspIndex
from search_clasp.quantization import quantize_model

TINY_BOUND = 0.999


def cosines(a, b):
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b))


def check_close_but_quantized(int8, fp32):
    assert cosines(int8, fp32).min() >= TINY_BOUND
    assert (torch.as_tensor(int8) - torch.as_tensor(fp32)).abs().max() > 1e-6


def test_int8_encoders_give_embeddings_close_to_fp32(model_dir, audio_dir, embedder):
    quantized = ClaspEmbedder.from_pretrained(model_dir, quantize="int8", batch_size=4)
    assert quantized.device.type == "cpu"
    kinds = {}
    for part in ("speech_model", "text_model"):
        for name, layer in getattr(quantized.model, part).named_modules():
            if type(layer).__name__ == "Linear":  # the feed-forward down-projections (Whisper's fc2) stay fp32
                down_projection = layer.in_features > layer.out_features
                assert isinstance(layer, torch.nn.Linear if down_projection else torch.ao.nn.quantized.dynamic.Linear), name
                kinds.setdefault(part, set()).add((down_projection, name.rsplit(".", 1)[-1]))
    assert {(True, "fc2"), (False, "fc1"), (False, "q_proj")} <= kinds["speech_model"]
    assert {(True, "dense"), (False, "query")} <= kinds["text_model"]
    assert all(type(layer) is torch.nn.Linear for layer in quantized.model.fusion.modules() if "Linear" in type(layer).__name__)
    clips = sorted(audio_dir.glob("*.wav"))
    check_close_but_quantized(torch.cat([c.embeddings for c in quantized.embed_files(clips)]),
                              torch.cat([c.embeddings for c in embedder.embed_files(clips)]))
    texts = ["the cat sat", "a dog sat on mat", "red house"]
    check_close_but_quantized(quantized.embed_texts(texts), embedder.embed_texts(texts))


def test_a_bad_value_or_a_gpu_is_refused(model_dir, audio_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="--quantize must be one of int8, got 'int4'"):
        quantize_model(torch.nn.Module(), "int4")
    with pytest.raises(ValueError, match="--quantize int8 runs on the CPU, not on --device cuda"):
        ClaspEmbedder.from_pretrained(model_dir, quantize="int8", device="cuda")
    for command in ("embed", "index", "eval"):
        with pytest.raises(SystemExit) as refused:
            main([command, "--model", str(model_dir), "--audio", str(audio_dir), "--output", str(tmp_path / "out"),
                  "--quantize", "int4"])
        assert refused.value.code == 2
        assert "--quantize: invalid choice: 'int4'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_embed_index_and_eval_run_int8(model_dir, audio_dir, tmp_path, monkeypatch):
    def embed(*extra):
        output = tmp_path / f"embeddings{len(extra)}.safetensors"
        assert main(["embed", "--model", str(model_dir), "--audio", str(audio_dir), "--output", str(output),
                     "--device", "cpu", *extra]) == 0
        with safe_open(output, "pt") as f:
            return f.get_tensor("embeddings"), json.loads(f.metadata()["paths"])

    (int8, int8_paths), (fp32, fp32_paths) = embed("--quantize", "int8"), embed()
    assert int8_paths == fp32_paths
    check_close_but_quantized(int8, fp32)

    assert main(["index", "--model", str(model_dir), "--audio", str(audio_dir), "--output", str(tmp_path / "index"),
                 "--quantize", "int8"]) == 0
    index = ClaspIndex(tmp_path / "index")
    rows = index.db.execute("SELECT path FROM items ORDER BY position").fetchall()
    assert [path for (path,) in rows] == fp32_paths
    check_close_but_quantized(index.embeddings(), fp32)

    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps({"audio": path, "text": text, "language": "en"}) + "\n"
                                for path, text in zip(fp32_paths, ["the cat sat", "red house", "le chat est sur la",
                                                                   "der hund ist", "el perro", "blue car"])))
    quantized = []
    monkeypatch.setattr("search_clasp.quantization.quantize_model",
                        lambda model, quantize, device=None: quantized.append(quantize) or quantize_model(model, quantize, device))
    reports = {}
    for name, extra in (("int8", ["--quantize", "int8"]), ("fp32", [])):
        output = tmp_path / f"{name}.json"
        assert main(["eval", "--model", str(model_dir), "--manifest", str(manifest), "--output", str(output),
                     "--soft-k", "3", *extra]) == 0
        reports[name] = json.loads(output.read_text())
    assert reports["int8"]["num_queries"] == reports["fp32"]["num_queries"] == 6
    assert quantized == ["int8", None]
