"""`speech_trainable_layers`: the speech encoder's last k layers train on the feature cache, and the
exported model computes from raw audio what training computed from the cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio, Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file

from clean_process import run_clean
from data_clasp.features import build_feature_cache, cache_fingerprint
from modeling_clasp import ClaspModel
from modeling_clasp.lora import add_speech_lora, merge_speech_lora
from tiny import REPO, WORDS, tiny_config, tiny_model, tiny_processor, tone


def _clips():
    return [tone(0.4, freq=180.0, seed=1), tone(0.9, freq=260.0, seed=2), tone(0.65, freq=330.0, seed=3)]


@pytest.mark.parametrize("speech", ["whisper", "hubert", "wav2vec2"])
def test_the_top_layers_run_on_the_frames_reproduce_the_whole_encoder(speech, tmp_path):
    """k = 1 at stride 1: the frames entering the last layer, run through it (and the final norm)
    by run_trainable_layers, give the whole encoder's pooled output (k = 0) — padding and batching
    included. Whisper's own path, HuBERT-large's padded stable-layer-norm encoder and wav2vec2-base's
    unpadded group-norm one."""
    torch.manual_seed(0)
    whole = tiny_model(tiny_config(speech, speech_frame_stride=1)).eval()
    top = ClaspModel(tiny_config(speech, speech_frame_stride=1, speech_trainable_layers=1)).eval()
    top.load_state_dict(whole.state_dict())
    processor = tiny_processor(whole.config, tmp_path)
    inputs = processor(audio=_clips(), sampling_rate=16000)
    name = processor.feature_extractor.speech_input_name
    with torch.no_grad():
        expected = whole.get_speech_embeds(inputs[name], inputs[f"{name}_mask"])
        frames, weights = top.get_speech_frames(inputs[name], inputs[f"{name}_mask"])
        got = top.pool_speech(frames, weights)
        entering = whole.get_speech_frames(inputs[name], inputs[f"{name}_mask"])[0]
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    # ... and what is cached is not the output: the frames differ from the whole encoder's.
    assert (frames - entering).abs().max() > 1e-2


def test_only_the_top_layers_and_the_head_train(tmp_path):
    model = ClaspModel(tiny_config("whisper", speech_trainable_layers=1))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    speech = {name for name in trainable if name.startswith("speech_model.")}
    assert speech and all(name.startswith(("speech_model.layers.1.", "speech_model.layer_norm.")) for name in speech)
    assert not any(name.startswith(("spectrogram_model.", "text_model.")) for name in trainable)
    assert any(name.startswith("fusion.") for name in trainable)
    model.train()
    assert model.speech_model.layers[1].training and not model.speech_model.layers[0].training
    assert not model.speech_model.conv1.training


def test_the_config_refuses_more_layers_than_the_encoder_has_or_another_layer():
    with pytest.raises(ValueError, match="speech_trainable_layers"):
        tiny_config("whisper", speech_trainable_layers=3)  # the tiny Whisper has 2
    with pytest.raises(ValueError, match="speech_layer=-1"):
        tiny_config("whisper", speech_trainable_layers=1, speech_layer=-2)


def test_the_cache_of_another_k_has_another_fingerprint(tmp_path):
    torch.manual_seed(0)
    zero = tiny_model(tiny_config("whisper"))
    one = ClaspModel(tiny_config("whisper", speech_trainable_layers=1))
    one.load_state_dict(zero.state_dict())
    processor = tiny_processor(zero.config, tmp_path)
    assert cache_fingerprint(zero, processor)["backbones"] != cache_fingerprint(one, processor)["backbones"]


EMBED_RAW_AUDIO = """
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    folder, data = sys.argv[1], json.load(open(sys.argv[2]))
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(audio=[np.asarray(c, dtype=np.float32) for c in data["clips"]], sampling_rate=16000)
    with torch.no_grad():
        embeds = model.get_audio_features(**inputs).pooler_output
    print(json.dumps({"embeds": embeds.tolist(), "trainable_layers": model.config.speech_trainable_layers}))
"""


def _k1_start_and_cache(tmp_path):
    """A tiny Whisper CLASP of k = 1 saved in tmp_path/start, and its feature cache of 16 + 8 clips."""
    rng = np.random.default_rng(0)
    paths, texts = [], []
    for i in range(24):
        path = tmp_path / f"clip{i}.wav"
        soundfile.write(path, tone(0.3 + 0.05 * (i % 7), freq=120 + 25 * i, seed=i), 16000)
        paths.append(str(path))
        texts.append(" ".join(rng.choice(WORDS, 3)))
    rows = Dataset.from_dict({"audio": paths, "text": texts}).cast_column("audio", Audio(sampling_rate=16000))
    data = DatasetDict({"train": rows.select(range(16)), "validation": rows.select(range(16, 24))})
    config = tiny_config("whisper", speech_trainable_layers=1, fusion_dropout=[0.0, 0.0])
    torch.manual_seed(0)
    start = tiny_model(config).eval()
    processor = tiny_processor(config, tmp_path)
    start.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    start = ClaspModel.from_pretrained(tmp_path / "start").eval()  # as `clasp features --model FOLDER` loads it
    cache = build_feature_cache(start, processor, data, str(tmp_path / "features"), batch_size=4, chunk_size=8,
                                progress=False)
    return start, cache, paths


def _train(tmp_path, cache, output, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "train_accelerate.py"), "--train_data", cache, "--model", str(tmp_path / "start"),
         "--output_dir", str(output), "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
         "--speech_learning_rate", "1e-2", "--num_train_epochs", "3", "--seed", "3", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_training_on_the_cache_then_raw_audio_through_the_exported_folder(tmp_path):
    """clasp features (k = 1) → train_accelerate.py --speech_trainable_layers 1 → the exported Hub
    folder, loaded with remote code in a clean process, embeds the raw clips as the trained model
    embeds their cached frames; the last layer changed, the layers below did not."""
    start, cache, paths = _k1_start_and_cache(tmp_path)
    output = tmp_path / "trained"
    result = _train(tmp_path, cache, output)
    assert result.returncode == 0, result.stderr[-4000:]

    before, after = start.state_dict(), load_file(output / "model.safetensors")
    assert not torch.equal(before["speech_model.layers.1.fc1.weight"], after["speech_model.layers.1.fc1.weight"])
    assert torch.equal(before["speech_model.layers.0.fc1.weight"], after["speech_model.layers.0.fc1.weight"])

    # What training computes for a validation row: the trained model on its cached features.
    trained = ClaspModel.from_pretrained(output).eval()
    cached = load_from_disk(cache)["validation"].with_format("torch")
    with torch.no_grad():
        from_cache = torch.stack([
            trained.get_audio_features(speech_frames=row["speech_frames"][None].float(),
                                       speech_frame_weights=row["speech_frame_weights"][None],
                                       spectrogram_embeds=row["spectrogram_embeds"][None]).pooler_output[0]
            for row in (cached[i] for i in range(len(cached)))])
        untrained = start.get_audio_features(speech_frames=cached[0]["speech_frames"][None].float(),
                                             speech_frame_weights=cached[0]["speech_frame_weights"][None],
                                             spectrogram_embeds=cached[0]["spectrogram_embeds"][None]).pooler_output[0]
    clips = [soundfile.read(p, dtype="float32")[0] for p in paths[16:]]
    (tmp_path / "clips.json").write_text(json.dumps({"clips": [c.tolist() for c in clips]}))
    raw = run_clean(tmp_path, EMBED_RAW_AUDIO, output, tmp_path / "clips.json")
    assert raw["trainable_layers"] == 1
    raw_embeds = torch.tensor(raw["embeds"])
    # float16 frames in the cache: agreement to ~1e-3, far closer than the untrained model is.
    torch.testing.assert_close(raw_embeds, from_cache, atol=3e-3, rtol=0)
    assert (raw_embeds[0] - untrained).abs().max() > 10 * (raw_embeds[0] - from_cache[0]).abs().max()


@pytest.mark.parametrize("speech", ["hubert", "wav2vec2", "whisper"])
def test_in_training_the_frozen_part_of_the_encoder_runs_as_in_evaluation(speech, tmp_path):
    """model.train() with k trainable layers: the frozen layers below them give the frames they give
    in eval mode (no SpecAugment masking or layerdrop from wav2vec2's/HuBERT's Model and Encoder,
    no input dropout in Whisper's), as the whole frozen encoder does with k = 0; the top layers train
    (dropout on)."""
    torch.manual_seed(0)
    model = ClaspModel(tiny_config(speech, speech_trainable_layers=1, speech_frame_stride=1))
    if speech == "whisper":
        model.speech_model.dropout = 0.5  # WhisperConfig.dropout: the input embedding's dropout
    processor = tiny_processor(model.config, tmp_path)
    inputs = processor(audio=[tone(1.5, seed=1), tone(1.2, seed=2)], sampling_rate=16000)
    name = processor.feature_extractor.speech_input_name
    with torch.no_grad():
        expected = model.eval().get_speech_frames(inputs[name], inputs[f"{name}_mask"])[0]
        model.train()
        for _ in range(3):
            torch.testing.assert_close(model.get_speech_frames(inputs[name], inputs[f"{name}_mask"])[0], expected)
    assert all(layer.training for layer in model._speech_top_layers()[0])


def test_a_cache_of_another_k_is_refused_with_the_command_that_builds_the_right_one(tmp_path):
    """train_accelerate.py --speech_trainable_layers 1 on a cache of k = 0 (or the reverse): the error
    says which k the cache holds and gives the `clasp features` command with --speech-trainable-layers,
    not one that rebuilds the same wrong cache."""
    sys.path.insert(0, str(REPO))
    from train_accelerate import check_cache_fits

    rows = Dataset.from_dict({"audio": [{"array": tone(0.5, seed=i), "sampling_rate": 16000} for i in range(2)],
                              "text": ["the cat", "a dog"]})
    data = DatasetDict({"train": rows, "validation": rows})
    torch.manual_seed(0)
    zero = tiny_model(tiny_config("whisper")).eval()
    one = ClaspModel(tiny_config("whisper", speech_trainable_layers=1)).eval()
    one.load_state_dict(zero.state_dict())
    processor = tiny_processor(zero.config, tmp_path)
    for cached, trained, k in ((zero, one, 1), (one, zero, 0)):
        cache = build_feature_cache(cached, processor, data, str(tmp_path / f"features-{1 - k}"), batch_size=2,
                                    progress=False)
        with pytest.raises(ValueError) as error:
            check_cache_fits(cache, trained, processor, "model/")
        assert f"last {1 - k} layers, this run trains {k} (--speech_trainable_layers)" in str(error.value)
        command = "clasp features --model model/" + (" --speech-trainable-layers 1" if k else "") + " --data ...`"
        assert command in str(error.value)
    check_cache_fits(cache, one, processor, "model/")  # the cache of k = 1 fits the model of k = 1


def test_clasp_features_of_a_model_that_trains_its_top_layers_can_cache_for_k_0(tmp_path):
    """`clasp features --model MODEL-K1 --speech-trainable-layers 0` caches the encoder's output (k = 0),
    as `train_accelerate.py --speech_trainable_layers 0` trains it; 0 was taken as "not given"."""
    from clasp_cli.main import main

    config = tiny_config("whisper", speech_trainable_layers=1)
    tiny_model(config).save_pretrained(tmp_path / "model")
    tiny_processor(config, tmp_path).save_pretrained(tmp_path / "model")
    rows = Dataset.from_dict({"audio": [{"array": tone(0.5, seed=i), "sampling_rate": 16000} for i in range(2)],
                              "text": ["the cat", "a dog"]})
    DatasetDict({"train": rows}).save_to_disk(tmp_path / "data")
    for k in ("0", "1"):
        assert main(["features", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"),
                     "--output", str(tmp_path / f"features-{k}"), "--speech-trainable-layers", k]) == 0
        marker = json.loads((tmp_path / f"features-{k}" / "clasp_features.json").read_text())
        assert marker["speech_trainable_layers"] == int(k)


def test_a_killed_run_resumes_with_its_trained_speech_layers(tmp_path):
    """Checkpoints leave the frozen layers out but keep the trained top layer (and its norm); a run
    killed after checkpoint 3 (mid-epoch 2) and resumed exports the weights of a run never stopped."""
    import signal

    _, cache, _ = _k1_start_and_cache(tmp_path)
    straight = _train(tmp_path, cache, tmp_path / "straight", "--checkpointing_steps", "1")
    assert straight.returncode == 0, straight.stderr[-4000:]
    killed = _train(tmp_path, cache, tmp_path / "killed", "--checkpointing_steps", "1", "--kill_after_checkpoint", "3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    stored = set(load_file(tmp_path / "killed" / "checkpoints" / "step_3" / "model.safetensors"))
    assert "speech_model.layers.1.fc1.weight" in stored and "speech_model.layer_norm.weight" in stored
    assert not any(name.startswith(("speech_model.layers.0.", "speech_model.conv1.")) for name in stored)
    resumed = _train(tmp_path, cache, tmp_path / "killed", "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    expected, got = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert not torch.equal(got["speech_model.layers.1.fc1.weight"], load_file(tmp_path / "start" / "model.safetensors")["speech_model.layers.1.fc1.weight"])
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_the_demo_plots_embed_cached_frames_through_the_trained_speech_layers(tmp_path, monkeypatch):
    """clasp demo's make_plots on a model of k = 1 whose top layer changed since the cache was built:
    the plotted audio embeddings are the model's own (frames through its trained layer), not the
    cache's speech_embeds (pooled through the layer as it was)."""
    from clasp_cli.demo_command import make_plots

    rows = Dataset.from_dict({"audio": [{"array": tone(0.4 + 0.1 * i, seed=i), "sampling_rate": 16000} for i in range(4)],
                              "text": ["the cat", "a dog", "le chat", "der hund"], "language": ["en", "en", "fr", "de"]})
    config = tiny_config("whisper", speech_trainable_layers=1)
    torch.manual_seed(0)
    model = tiny_model(config).eval()
    processor = tiny_processor(config, tmp_path)
    cache = build_feature_cache(model, processor, DatasetDict({"test": rows}), str(tmp_path / "features"), progress=False)
    with torch.no_grad():
        model.speech_model.layers[1].fc2.weight.add_(torch.randn_like(model.speech_model.layers[1].fc2.weight))  # "trained"
    model.save_pretrained(tmp_path / "model")
    plotted = []
    forward = ClaspModel.forward
    monkeypatch.setattr(ClaspModel, "forward", lambda self, **kw: plotted.append(forward(self, **kw)) or plotted[-1])
    make_plots(tmp_path / "model", cache, tmp_path)
    cached = load_from_disk(cache)["test"].with_format("torch")
    with torch.no_grad():
        expected = torch.cat([model.get_audio_features(speech_frames=row["speech_frames"][None].float(),
                                                       speech_frame_weights=row["speech_frame_weights"][None],
                                                       spectrogram_embeds=row["spectrogram_embeds"][None]).pooler_output
                              for row in (cached[i] for i in range(len(cached)))])
    torch.testing.assert_close(plotted[0].audio_embeds, expected, atol=1e-5, rtol=0)


def test_the_fingerprint_leaves_out_the_layers_that_train_not_the_ones_below():
    """A model whose top layer trained still fits the cache its frames came from; a change below does not."""
    from data_clasp.features import backbone_fingerprint

    torch.manual_seed(0)
    model = ClaspModel(tiny_config("whisper", speech_trainable_layers=1))
    before = backbone_fingerprint(model)
    with torch.no_grad():
        model.speech_model.layers[1].fc1.weight.add_(0.01)
        model.speech_model.layer_norm.weight.add_(0.01)
    assert backbone_fingerprint(model) == before
    with torch.no_grad():
        model.speech_model.layers[0].fc1.weight.add_(0.01)
    assert backbone_fingerprint(model) != before


def test_lora_adapters_train_alone_and_merge_into_a_plain_model():
    """modeling_clasp.lora.add_speech_lora: only the adapters of the top layer (and the head) train, the model computes
    what it did before (B starts at zero); after changing the adapters, merge_speech_lora gives a
    model of plain names whose top layer is W + (alpha / r) B A and computes what the adapted one did."""
    torch.manual_seed(0)
    model = tiny_model(tiny_config("whisper", speech_trainable_layers=1, speech_frame_stride=1)).eval()
    frames = torch.randn(2, 5, model.config.speech_config.d_model)
    weights = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])
    names = set(model.state_dict())
    with torch.no_grad():
        before = model.pool_speech(frames, weights)
    fc1 = model.speech_model.layers[1].fc1.weight.detach().clone()
    add_speech_lora(model, 2, alpha=6.0)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and name.startswith("speech_model.")}
    assert trainable and all(".lora_" in name and name.startswith("speech_model.layers.1.") for name in trainable)
    assert {name.split(".lora_")[0].removeprefix("speech_model.layers.1.") for name in trainable} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"}
    assert any(name.startswith("fusion.") for name, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        torch.testing.assert_close(model.pool_speech(frames, weights), before)  # B = 0: no change yet
        lora = model.speech_model.layers[1].fc1
        lora.lora_B["default"].weight.normal_()
        adapted = model.pool_speech(frames, weights)
        expected_fc1 = fc1 + 3.0 * lora.lora_B["default"].weight @ lora.lora_A["default"].weight  # alpha / r = 3
    assert (adapted - before).abs().max() > 1e-3
    assert model.has_speech_lora()
    merge_speech_lora(model)
    assert not model.has_speech_lora() and set(model.state_dict()) == names
    torch.testing.assert_close(model.speech_model.layers[1].fc1.weight, expected_fc1)
    with torch.no_grad():
        torch.testing.assert_close(model.pool_speech(frames, weights), adapted, atol=1e-5, rtol=1e-4)


def test_lora_needs_trainable_layers_and_a_positive_rank():
    with pytest.raises(ValueError, match="speech_trainable_layers"):
        add_speech_lora(ClaspModel(tiny_config("whisper")), 4, 8.0)
    with pytest.raises(ValueError, match="rank must be an int of at least 1"):
        add_speech_lora(ClaspModel(tiny_config("whisper", speech_trainable_layers=1)), 0, 8.0)


def test_lora_training_on_the_cache_exports_a_plain_folder_that_embeds_raw_audio_as_training_did(tmp_path):
    """train_accelerate.py --speech_trainable_layers 1 --speech_lora_rank 2: the exported folder has no
    adapter weights, its top layer moved by a low-rank update (rank ≤ 2 per matrix), the layers below
    did not, and raw audio through it (a clean process, remote code) embeds as the training model
    embedded the cache."""
    start, cache, paths = _k1_start_and_cache(tmp_path)
    output = tmp_path / "lora"
    result = _train(tmp_path, cache, output, "--speech_lora_rank", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "speech layers trained=1 (LoRA rank 2)" in result.stdout
    before, after = start.state_dict(), load_file(output / "model.safetensors")
    assert set(after) == set(before) and not any("lora" in name for name in after)
    for name in ("fc1", "fc2", "self_attn.q_proj", "self_attn.out_proj"):
        delta = after[f"speech_model.layers.1.{name}.weight"] - before[f"speech_model.layers.1.{name}.weight"]
        assert delta.abs().max() > 1e-4, name
        assert torch.linalg.matrix_rank(delta.double(), atol=1e-6) <= 2, name
    assert torch.equal(before["speech_model.layers.1.fc1.bias"], after["speech_model.layers.1.fc1.bias"])
    assert torch.equal(before["speech_model.layer_norm.weight"], after["speech_model.layer_norm.weight"])
    assert torch.equal(before["speech_model.layers.0.fc1.weight"], after["speech_model.layers.0.fc1.weight"])
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["speech_lora"] == {"rank": 2, "alpha": 4, "merged_into_the_exported_weights": True}

    trained = ClaspModel.from_pretrained(output).eval()

    def from_cache(split):
        rows = load_from_disk(cache)[split].with_format("torch")
        with torch.no_grad():
            return torch.stack([
                trained.get_audio_features(speech_frames=row["speech_frames"][None].float(),
                                           speech_frame_weights=row["speech_frame_weights"][None],
                                           spectrogram_embeds=row["spectrogram_embeds"][None]).pooler_output[0]
                for row in (rows[i] for i in range(len(rows)))])

    # The hubness bank: the training rows embedded by the training model itself, adapters unmerged.
    bank = load_file(output / "hubness_bank.safetensors")["audio_embeds"].float()  # stored in float16
    torch.testing.assert_close(from_cache("train"), bank, atol=2e-3, rtol=0)
    clips = [soundfile.read(p, dtype="float32")[0] for p in paths[16:]]
    (tmp_path / "clips.json").write_text(json.dumps({"clips": [c.tolist() for c in clips]}))
    raw = torch.tensor(run_clean(tmp_path, EMBED_RAW_AUDIO, output, tmp_path / "clips.json")["embeds"])
    torch.testing.assert_close(raw, from_cache("validation"), atol=3e-3, rtol=0)


def test_lora_options_are_checked(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from train_accelerate import parse_args

    base = ["--train_data", "x", "--model", "m", "--output_dir", "o"]
    for extra, message in ((["--speech_lora_rank", "-1"], "--speech_lora_rank -1: give 0"),
                           (["--speech_lora_alpha", "8"], "--speech_lora_alpha needs --speech_lora_rank"),
                           (["--speech_lora_rank", "4", "--speech_lora_alpha", "0"], "--speech_lora_alpha 0.0: give a positive"),
                           (["--speech_lora_rank", "4", "--unfreeze_speech_encoder"], "choose one")):
        with pytest.raises(SystemExit):
            parse_args(base + extra)
        assert message in capsys.readouterr().err
    # A rank without trainable layers: refused by name, nothing trained.
    _, cache, _ = _k1_start_and_cache(tmp_path)
    result = _train(tmp_path, cache, tmp_path / "no-layers", "--speech_trainable_layers", "0", "--speech_lora_rank", "2")
    assert result.returncode == 2 and "LoRA adapts the speech encoder's trainable top layers" in result.stderr
    # A checkpoint of another rank is refused by name, not with a size-mismatch traceback.
    first = _train(tmp_path, cache, tmp_path / "rank2", "--speech_lora_rank", "2", "--checkpointing_steps", "1",
                   "--num_train_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = _train(tmp_path, cache, tmp_path / "rank2", "--speech_lora_rank", "4", "--resume_from_checkpoint", "latest")
    assert again.returncode == 2 and "another --speech_lora_rank?" in again.stderr and "Traceback" not in again.stderr
    assert "[2, " in again.stderr and "[4, " in again.stderr  # lora_A: [rank, in] there and here


def test_the_remote_code_of_a_saved_folder_needs_no_optional_package(tmp_path):
    """transformers refuses to load remote code whose files import a package that is not installed
    (dynamic_module_utils.get_imports: every import outside a try block); PEFT is an optional extra
    of training, so a saved folder's code must not ask for it (nor for any other optional package)."""
    from transformers.dynamic_module_utils import get_imports

    save_tiny_clasp = __import__("tiny").save_tiny_clasp
    folder = save_tiny_clasp(tmp_path)
    flat = {path.stem for path in folder.glob("*.py")}
    required = {name for path in folder.glob("*.py") for name in get_imports(path)} - flat - set(sys.stdlib_module_names)
    assert required == {"torch", "torchaudio", "numpy", "transformers"}, required
