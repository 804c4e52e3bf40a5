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
from search_clasp.quantization import OnnxRuntimeEncoderLayer, OnnxRuntimeImageModel, quantize_model
from tiny import tiny_config, tiny_model

TINY_BOUND = 0.999


def cosines(a, b):
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b))


def check_close_but_quantized(int8, fp32):
    assert cosines(int8, fp32).min() >= TINY_BOUND
    assert (torch.as_tensor(int8) - torch.as_tensor(fp32)).abs().max() > 1e-6


def linear_kinds(part) -> set:
    """(is a down-projection, layer name) of `part`'s linear layers; a down-projection must be fp32,
    every other linear layer torch's dynamic int8."""
    kinds = set()
    for name, layer in part.named_modules():
        if type(layer).__name__ == "Linear":
            down_projection = layer.in_features > layer.out_features
            assert isinstance(layer, torch.nn.Linear if down_projection else torch.ao.nn.quantized.dynamic.Linear), name
            kinds.add((down_projection, name.rsplit(".", 1)[-1]))
    return kinds


def test_int8_encoders_give_embeddings_close_to_fp32(model_dir, audio_dir, embedder):
    quantized = ClaspEmbedder.from_pretrained(model_dir, quantize="int8", batch_size=4)
    assert quantized.device.type == "cpu"
    speech = quantized.model.speech_model  # Whisper: its layers in ONNX Runtime int8, its convolutions torch fp32
    assert len(speech.layers) == 2 and all(isinstance(layer, OnnxRuntimeEncoderLayer) for layer in speech.layers)
    assert type(speech.conv1) is torch.nn.Conv1d and not any("Linear" in type(m).__name__ for m in speech.modules())
    assert isinstance(quantized.model.spectrogram_model, OnnxRuntimeImageModel)
    assert all(layer.fp32_nodes == ("/layer/fc2/MatMul",) for layer in speech.layers)  # the down-projection stays fp32
    for part in (quantized.model.fusion, quantized.model.text_model):  # the trained head and the text tower: fp32
        assert all(type(layer) is torch.nn.Linear for layer in part.modules() if "Linear" in type(layer).__name__)
    clips = sorted(audio_dir.glob("*.wav"))
    check_close_but_quantized(torch.cat([c.embeddings for c in quantized.embed_files(clips)]),
                              torch.cat([c.embeddings for c in embedder.embed_files(clips)]))
    texts = ["the cat sat", "a dog sat on mat", "red house"]
    torch.testing.assert_close(quantized.embed_texts(texts), embedder.embed_texts(texts))


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
    assert (reports["int8"]["quantize"], reports["fp32"]["quantize"]) == ("int8", None)  # the report says which it was
    assert quantized == ["int8", None]


def test_a_waveform_speech_encoder_gets_torch_int8_linear_layers():
    model = tiny_model(tiny_config("hubert")).eval()
    inputs = {"input_values": torch.from_numpy(tone_batch()), "pixel_values": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        fp32 = model.get_audio_features(**inputs).pooler_output
        quantize_model(model, "int8")
        int8 = model.get_audio_features(**inputs).pooler_output
    assert {(True, "output_dense"), (False, "intermediate_dense"), (False, "q_proj")} <= linear_kinds(model.speech_model)
    check_close_but_quantized(int8, fp32)


def tone_batch():
    from tiny import tone

    return __import__("numpy").stack([tone(1.0, freq=220.0, seed=0), tone(1.0, freq=330.0, seed=1)])


@pytest.mark.parametrize("batch, frames", [(1, 5), (3, 17)])
def test_an_onnx_runtime_layer_runs_any_batch_and_length_like_the_torch_layer(batch, frames):
    """Exported on (2, 8): other shapes must run, masked as torch masks, within int8 rounding of torch's
    output. (Exact independence of the padded frames is lost: one activation scale covers the tensor.)"""
    layer = tiny_model(tiny_config("whisper")).speech_model.layers[0].eval()
    hidden = torch.randn(batch, frames, layer.embed_dim)
    mask = torch.zeros(batch, 1, 1, frames)
    mask[0, ..., frames - 2 :] = torch.finfo(torch.float32).min  # the first clip's last two frames are padding
    ort_layer = OnnxRuntimeEncoderLayer(layer, layer.embed_dim, threads=1)
    with torch.no_grad():
        expected = layer(hidden, mask)
        expected = expected[0] if isinstance(expected, tuple) else expected
    output = ort_layer(hidden, mask)
    assert output.shape == (batch, frames, layer.embed_dim) and output.dtype == torch.float32
    assert cosines(output.flatten(0, 1), expected.flatten(0, 1)).min() >= TINY_BOUND
    assert (output - expected).abs().max() > 1e-6  # int8, not fp32


def test_the_onnx_runtime_cnn_equals_torch():
    """At the config's image size and another one (the torch CNN takes any). The tiny random CNN's
    pooled features are ~1e-11 (each block shrinks them), so the tolerance scales with them: a fixed
    atol of 1e-5 would pass an all-zero output."""
    model = tiny_model(tiny_config("whisper")).eval()
    cnn = OnnxRuntimeImageModel(model.spectrogram_model, model.config.spectrogram_image_size, threads=1)
    for size in (model.config.spectrogram_image_size, 48):
        pixels = torch.randn(3, 3, size, size)
        with torch.no_grad():
            expected = model.spectrogram_model(pixel_values=pixels).pooler_output
        scale = expected.abs().max()
        assert scale > 0
        torch.testing.assert_close(cnn(pixel_values=pixels).pooler_output / scale, expected / scale, atol=1e-5, rtol=1e-4)


def test_a_cnn_that_does_not_export_stays_in_torch_with_a_warning(monkeypatch):
    model = tiny_model(tiny_config("whisper")).eval()
    cnn = model.spectrogram_model

    def refuse(self, *args, **kwargs):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(OnnxRuntimeImageModel, "__init__", refuse)
    with pytest.warns(UserWarning, match="the spectrogram CNN stays in torch .RuntimeError: cannot trace this"):
        quantize_model(model, "int8")
    assert model.spectrogram_model is cnn
    assert isinstance(model.speech_model.layers[0], OnnxRuntimeEncoderLayer)


def test_without_onnx_runtime_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = tiny_model(tiny_config("whisper"))
    with pytest.raises(ImportError, match=r"--quantize int8 needs ONNX Runtime: pip install 'clasp-hf\[int8\]'"):
        quantize_model(model, "int8")
    assert type(model.speech_model.layers[0]).__name__ == "WhisperEncoderLayer"


def test_a_node_to_keep_in_fp32_that_the_export_does_not_name_is_an_error():
    """Were the exporter to name the down-projection otherwise, it would silently be quantized."""
    layer = tiny_model(tiny_config("whisper")).speech_model.layers[0].eval()
    from search_clasp.quantization import _LayerOutput, onnx_runtime_session

    with pytest.raises(RuntimeError, match=r"nodes to keep in fp32 not in the exported graph: \['/layer/ffn/MatMul'\]"):
        onnx_runtime_session(_LayerOutput(layer), (torch.zeros(1, 4, layer.embed_dim), torch.zeros(1, 1, 1, 4)),
                             ["hidden_states", "attention_mask"], {}, int8=True, threads=1, keep_fp32=("/layer/ffn/MatMul",))


def test_the_quantized_layer_graph_keeps_its_down_projection_in_fp32(monkeypatch):
    import onnx
    import onnxruntime.quantization

    written = []
    original = onnxruntime.quantization.quantize_dynamic

    def record(model_input, model_output, **kwargs):
        original(model_input, model_output, **kwargs)
        written.append({node.name: node.op_type for node in onnx.load(model_output).graph.node})

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", record)
    layer = tiny_model(tiny_config("whisper")).speech_model.layers[0].eval()
    OnnxRuntimeEncoderLayer(layer, layer.embed_dim, threads=1)
    (nodes,) = written
    assert nodes["/layer/fc2/MatMul"] == "MatMul"
    assert {nodes[f"/layer/{name}/MatMul_quant"] for name in ("fc1", "self_attn/q_proj", "self_attn/out_proj")} == {"MatMulInteger"}


def test_an_index_refused_for_its_quantize_setting_leaves_nothing_behind(model_dir, audio_dir, tmp_path, monkeypatch, capsys):
    """Refused before the .partial index is started (a rerun would otherwise resume a folder never built)."""
    import sys

    output = tmp_path / "index"
    assert main(["index", "--model", str(model_dir), "--audio", str(audio_dir), "--output", str(output),
                 "--quantize", "int8", "--device", "cuda"]) == 2
    assert "--quantize int8 runs on the CPU, not on --device cuda" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["index", "--model", str(model_dir), "--audio", str(audio_dir), "--output", str(output),
                 "--quantize", "int8"]) == 2
    assert "pip install 'clasp-hf[int8]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_index_keeps_the_quantize_setting_it_was_built_with(model_dir, audio_dir, tmp_path, monkeypatch, capsys):
    """Like its window and kind: --add (or a resumed build) embeds as the index was built, and
    asking for the other precision is refused, so that one index never mixes int8 and fp32 rows."""
    clips = [str(clip) for clip in sorted(audio_dir.glob("*.wav"))]
    quantized = []
    monkeypatch.setattr("search_clasp.quantization.quantize_model",
                        lambda model, quantize, device=None: quantized.append(quantize) or quantize_model(model, quantize, device))

    def index(name, files, *extra):
        return main(["index", "--model", str(model_dir), "--audio", *files, "--output", str(tmp_path / name), *extra])

    assert index("fp32", clips[:3]) == 0
    assert index("fp32", clips[3:], "--add", "--quantize", "int8") == 2
    assert "was built with quantize=None, not 'int8'" in capsys.readouterr().err
    assert index("int8", clips[:3], "--quantize", "int8") == 0
    assert index("int8", clips[3:], "--add") == 0
    assert quantized == [None, "int8", "int8"]
    assert len(ClaspIndex(tmp_path / "fp32")) == 3 and len(ClaspIndex(tmp_path / "int8")) == 6
    assert ClaspIndex(tmp_path / "int8").info["quantize"] == "int8"


@pytest.mark.parametrize("speech", ["whisper", "hubert"])
def test_a_quantized_model_is_never_saved_nor_copied(speech, tmp_path):
    """Its int8 / ONNX Runtime parts hold no fp32 weights: a checkpoint of it would lack them (Whisper's
    layers were missing from model.safetensors) or fail half-way; copies are refused too (copy.copy
    goes through __reduce_ex__, the path pickling takes; this project imports no pickle module)."""
    import copy

    model = quantize_model(tiny_model(tiny_config(speech)), "int8")
    with pytest.raises(RuntimeError, match="a --quantize int8 model cannot be saved: save the fp32 model it was made from"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
    with pytest.raises(RuntimeError, match="cannot be saved"):
        torch.save(model.speech_model.state_dict(), tmp_path / "speech.pt")
    for copier, part in ((copy.deepcopy, model), (copy.copy, model.spectrogram_model)):
        with pytest.raises(TypeError, match="ONNX Runtime session: it cannot be copied or pickled; quantize a copy of the fp32 model"):
            copier(part)


def test_a_quantized_model_refuses_to_train_the_layers_it_runs_in_onnx_runtime():
    """With k trainable Whisper layers their ONNX Runtime stand-ins would silently not train (no
    parameters, no gradient): refused. A frozen encoder under a trained head still runs (eval mode)."""
    from tiny import tiny_feature_extractor

    for k, trains in ((1, False), (0, True)):
        config = tiny_config("whisper", speech_trainable_layers=k)
        model = quantize_model(tiny_model(config), "int8").train()
        inputs = tiny_feature_extractor(config)(list(torch.from_numpy(tone_batch())), sampling_rate=16000)
        if trains:
            assert model.get_audio_features(**inputs).pooler_output.requires_grad
        else:
            with pytest.raises(RuntimeError, match="OnnxRuntimeEncoderLayer .--quantize int8. runs inference only"):
                model.get_audio_features(**inputs)
        with torch.no_grad():
            assert model.eval().get_audio_features(**inputs).pooler_output.shape == (2, config.projection_dim)


def test_a_multi_process_launch_on_gpus_embeds_int8_on_the_cpu(model_dir, audio_dir, tmp_path, monkeypatch):
    """`accelerate launch` on GPUs gives each process its GPU as its device; with --quantize int8 (and
    no --device) each embeds on the CPU, as one process does, instead of refusing a --device never given."""
    import contextlib
    import types

    import search_clasp.shards

    state = types.SimpleNamespace(num_processes=2, process_index=1, is_main_process=False, device=torch.device("cuda", 1),
                                  main_process_first=contextlib.nullcontext)
    devices = []

    def embed_across_processes(paths, shard_dir, fingerprint, load_embedder, **kwargs):
        devices.append(load_embedder().device.type)  # not the main process: it returns nothing

    monkeypatch.setattr(search_clasp.shards, "process_state", lambda: state)
    monkeypatch.setattr(search_clasp.shards, "embed_across_processes", embed_across_processes)
    arguments = ["--model", str(model_dir), "--audio", str(audio_dir), "--quantize", "int8"]
    assert main(["embed", *arguments, "--output", str(tmp_path / "embeddings.safetensors")]) == 0
    assert main(["index", *arguments, "--output", str(tmp_path / "index")]) == 0
    assert devices == ["cpu", "cpu"]


@pytest.mark.parametrize("speech", ["whisper", "hubert"])
def test_a_model_with_trained_top_layers_embeds_close_to_fp32(speech):
    """k = 1: the top layer runs in pool_speech (run_trainable_layers) on window means, not frames."""
    import copy

    from tiny import tiny_feature_extractor

    config = tiny_config(speech, speech_trainable_layers=1)
    model = tiny_model(config).eval()
    inputs = tiny_feature_extractor(config)(list(torch.from_numpy(tone_batch())), sampling_rate=16000)
    with torch.no_grad():
        fp32 = model.get_audio_features(**inputs).pooler_output
        int8 = quantize_model(copy.deepcopy(model), "int8").get_audio_features(**inputs).pooler_output
    check_close_but_quantized(int8, fp32)


def test_a_quantized_model_moved_off_the_cpu_gets_a_clear_error():
    """E.g. ClaspEmbedder(quantize_model(model, "int8"), processor) on a GPU machine (its device defaults
    to cuda): the session's CPU output met the GPU's final layer norm in a device-mismatch error.
    (The meta device stands in for a GPU here.)"""
    layer = tiny_model(tiny_config("whisper")).speech_model.layers[0].eval()
    ort_layer = OnnxRuntimeEncoderLayer(layer, layer.embed_dim, threads=1)
    with pytest.raises(RuntimeError, match=r"OnnxRuntimeEncoderLayer \(--quantize int8\) runs on the CPU, not on meta"):
        ort_layer(torch.zeros(1, 4, layer.embed_dim, device="meta"), torch.zeros(1, 1, 1, 4, device="meta"))
