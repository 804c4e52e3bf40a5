"""train_accelerate.py: gathered negatives, a real 2-process CPU launch, exact resume after SIGKILL."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file, save_file

from tiny import REPO, tiny_config, tiny_model, tiny_processor


# ---- 2 processes × B = 1 process × 2B -----------------------------------------------------------


# Sentence groups of the 12 pairs: groups 1 and 4 span both processes' halves (rows 0-5 | 6-11).
GROUPS = torch.tensor([0, 1, 2, 0, 3, 1, 1, 4, 5, 4, 6, 4])


def _head_step(model, rows, groups=False):
    """The real model (cached-feature inputs, fusion head with batch norm) on `rows` of a fixed set of
    pairs (with `groups`, their GROUPS as pair_group_ids): the loss, every trained parameter's
    gradient, the first batch norm's running statistics."""
    config = model.config
    generator = torch.Generator().manual_seed(3)
    features = {"speech_embeds": torch.randn(12, config.speech_hidden_size, generator=generator),
                "spectrogram_embeds": torch.randn(12, config.spectrogram_hidden_size, generator=generator),
                "text_embeds": torch.randn(12, config.projection_dim, generator=generator)}
    if groups:
        features["pair_group_ids"] = GROUPS
    loss = model(**{k: v[rows] for k, v in features.items()}, return_loss=True).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    norm = model.fusion.head[1]
    return loss.detach(), grads, torch.cat([norm.running_mean, norm.running_var])


def _real_head():
    torch.manual_seed(0)
    return tiny_model(tiny_config(fusion_dropout=[0.0, 0.0])).train()  # dropout would differ per process


def _rank_worker(rank, world_size, store, queue):
    import datetime
    import traceback
    import warnings

    try:
        from train_accelerate import synchronise_batch_norm

        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=120))
        results = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for sync, groups in ((False, False), (True, False), ("groups", True)):
                model = _real_head()
                if sync:
                    synchronise_batch_norm(model)
                loss, grads, running = _head_step(model, slice(rank * 6, (rank + 1) * 6), groups)
                # What DDP does: average gradients (and we average the losses) over processes.
                dist.all_reduce(grads)
                dist.all_reduce(loss)
                results[sync] = ((loss / world_size).item(), (grads / world_size).tolist(), running.tolist())
        if rank == 0:
            queue.put((results, [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]))
        dist.destroy_process_group()
    except BaseException:
        queue.put(traceback.format_exc())
        raise


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    """The real head (batch norm; dropout off): the loss, the gradients and the batch-norm running
    statistics of 2 gloo processes × 6 pairs equal one process × 12, with the negatives gathered and
    the batch norm synchronised (and not without the synchronisation), also with sentence groups that
    span the processes left out of each other's negatives; no FutureWarning."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank_worker, args=(rank, 2, str(tmp_path / "store"), queue)) for rank in range(2)]
    for p in processes:
        p.start()
    answer = queue.get(timeout=300)
    if isinstance(answer, str):
        pytest.fail(answer)
    results, future_warnings = answer
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert future_warnings == []  # the gather calls no deprecated collective

    one_loss, one_grads, one_running = _head_step(_real_head(), slice(0, 12))
    two_loss, two_grads, two_running = (torch.tensor(x) for x in results[True])
    torch.testing.assert_close(two_loss, one_loss, atol=1e-6, rtol=1e-6)
    # Relative to the whole gradient: the biases before a batch norm have a gradient of exactly 0 in
    # theory, float noise (~1e-6) in practice, in either computation.
    assert (two_grads - one_grads).norm() < 1e-5 * one_grads.norm()
    torch.testing.assert_close(two_running, one_running, atol=1e-6, rtol=1e-5)
    # Same-group rows left out of the negatives across the two processes as in one.
    one_loss, one_grads, _ = _head_step(_real_head(), slice(0, 12), groups=True)
    two_loss, two_grads, _ = (torch.tensor(x) for x in results["groups"])
    torch.testing.assert_close(two_loss, one_loss, atol=1e-6, rtol=1e-6)
    assert (two_grads - one_grads).norm() < 1e-5 * one_grads.norm()
    assert abs(one_loss - _head_step(_real_head(), slice(0, 12))[0]) > 1e-3  # the groups changed the loss
    one_loss, one_grads, _ = _head_step(_real_head(), slice(0, 12))
    unsynced_loss, unsynced_grads, _ = (torch.tensor(x) for x in results[False])
    assert abs(unsynced_loss - one_loss) > 1e-3  # per-process batch statistics: not the same training
    assert (unsynced_grads - one_grads).norm() > 0.05 * one_grads.norm()


# ---- the trainer --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny CLASP folder and a learnable feature cache (audio features are noisy maps of the text)."""
    root = tmp_path_factory.mktemp("train")
    config = tiny_config()
    torch.manual_seed(0)
    model = tiny_model(config)
    model.save_pretrained(root / "model")
    tiny_processor(config, root).save_pretrained(root / "model")
    rng, frame_rng = np.random.default_rng(0), np.random.default_rng(1)
    to_speech = rng.standard_normal((config.projection_dim, config.speech_hidden_size))
    to_spectrogram = rng.standard_normal((config.projection_dim, config.spectrogram_hidden_size))

    def split(n):
        text = rng.standard_normal((n, config.projection_dim)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        speech = (text @ to_speech + 0.1 * rng.standard_normal((n, config.speech_hidden_size))).astype(np.float32)
        # Frames: the clip's speech vector in a few noisy windows, with noise windows around it.
        frames = [np.concatenate([frame_rng.standard_normal((int(frame_rng.integers(1, 4)), config.speech_hidden_size)),
                                  speech[i] + 0.1 * frame_rng.standard_normal((int(frame_rng.integers(2, 6)), config.speech_hidden_size))])
                  .astype(np.float16) for i in range(n)]
        return Dataset.from_dict({
            "speech_embeds": speech,
            "speech_frames": frames,
            "speech_frame_weights": [np.ones(len(f), np.float32) for f in frames],
            "spectrogram_embeds": (text @ to_spectrogram + 0.1 * rng.standard_normal((n, config.spectrogram_hidden_size))).astype(np.float32),
            "text_embeds": text,
            "text": [f"row {i}" for i in range(n)],
        })

    DatasetDict({"train": split(64), "validation": split(16)}).save_to_disk(root / "features")
    (root / "features" / "clasp_features.json").write_text(json.dumps({"model": "tiny"}))
    return root


def _train_command(setup, output, *extra):
    return [sys.executable, str(REPO / "train_accelerate.py"), "--train_data", str(setup / "features"),
            "--model", str(setup / "model"), "--output_dir", str(output), "--per_device_train_batch_size", "8",
            "--learning_rate", "3e-3", "--seed", "7", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def test_two_process_cpu_launch_trains_like_one_process_with_twice_the_batch(tiny_setup, tmp_path):
    """The whole trainer, 2 gloo processes × 4 pairs against 1 process × 8 (dropout off): the same
    batches, gathered negatives, synchronised batch norm and a warmup counted in optimizer steps give
    the same learning rates, losses and weights; checkpoints and the export as usual."""
    same = ("--num_train_epochs", "3", "--lr_warmup_steps", "12", "--config_overrides", "fusion_dropout=[0.0,0.0]")
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = launch + _train_command(tiny_setup, two, *same, "--per_device_train_batch_size", "4", "--checkpointing_steps", "5")[1:]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    result = subprocess.run(_train_command(tiny_setup, one, *same), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    summary = json.loads((two / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["effective_batch"] == 8 and summary["negatives_per_step"] == 7
    assert summary["steps"] == 24  # 64 rows / (4 × 2 processes) × 3 epochs
    history, expected = summary["history"], json.loads((one / "training_summary.json").read_text())["history"]
    assert [h["step"] for h in history] == [h["step"] for h in expected] == [8, 16, 24]
    assert [h["lr"] for h in history] == pytest.approx([3e-3 * 9 / 12, 3e-3, 3e-3], rel=1e-6)  # warmup: 12 optimizer steps
    assert [h["lr"] for h in history] == pytest.approx([h["lr"] for h in expected], rel=1e-6)
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in expected], rel=1e-5)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    trained, reference = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    # The export is a plain model: the same weights and buffers (batch norm included) as before training.
    assert trained.keys() == load_file(tiny_setup / "model" / "model.safetensors").keys()
    # Biases (and so running means) are left out: a bias that a batch norm removes downstream has a
    # gradient of 0 in theory and float noise in practice, which Adam turns into steps of ~lr either
    # way. So validation, which normalises with the running means, is not compared either.
    compared = [name for name in trained if name.endswith(("weight", "running_var", "logit_scale"))]
    for name in compared:
        torch.testing.assert_close(trained[name], reference[name], atol=1e-5, rtol=1e-4, msg=name)
    assert any(not torch.equal(trained[name], load_file(tiny_setup / "model" / "model.safetensors")[name]) for name in compared)
    assert (two / "training_curves.png").exists() and (two / "config.json").exists()
    assert (two / "modeling_clasp.py").exists() and (two / "hubness_bank.safetensors").exists()  # the main process's
    assert sorted(os.listdir(two / "checkpoints")) == ["step_20", "step_24"]  # total limit 2


def test_sigkill_then_resume_reaches_the_same_weights(tiny_setup, tmp_path):
    args = ("--num_train_epochs", "4", "--checkpointing_steps", "3")
    straight = tmp_path / "straight"
    subprocess.run(_train_command(tiny_setup, straight, *args), cwd=REPO, env=_env(), check=True,
                   capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    # A real SIGKILL, sent by the trainer to itself right after checkpoint 9 (mid-epoch 2, 8 steps an
    # epoch): waiting for the folder from here lost the race on a fast machine.
    result = subprocess.run(_train_command(tiny_setup, killed, *args, "--kill_after_checkpoint", "9"), cwd=REPO,
                            env=_env(), capture_output=True, timeout=600)
    assert result.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "step_9").is_dir()
    # Where training stood is JSON; accelerate's own custom-object file (a pickle it reads with
    # weights_only=False) is not written.
    assert json.loads((killed / "checkpoints" / "step_9" / "training_progress.json").read_text())["step"] == 9
    assert not list((killed / "checkpoints" / "step_9").glob("custom_checkpoint*"))
    # A checkpoint of an earlier version (that state in accelerate's pickle) still resumes.
    step_9 = killed / "checkpoints" / "step_9"
    torch.save(json.loads((step_9 / "training_progress.json").read_text()), step_9 / "custom_checkpoint_0.pkl")
    (step_9 / "training_progress.json").unlink()
    # ...and one AdamW parameter group (weight decay on every parameter), the order of model.parameters().
    from modeling_clasp import ClaspModel
    from train_accelerate import parameter_groups

    model = ClaspModel.from_pretrained(tiny_setup / "model")
    position = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    old_index = [position[id(p)] for group in parameter_groups(model, 0.01) for p in group["params"]]
    optimizer = torch.load(step_9 / "optimizer.bin", weights_only=True)
    assert len(optimizer["param_groups"]) == 2
    optimizer = {"state": {old_index[i]: v for i, v in optimizer["state"].items()},
                 "param_groups": [{**optimizer["param_groups"][1], "params": sorted(old_index)}]}
    torch.save(optimizer, step_9 / "optimizer.bin")
    scheduler = torch.load(step_9 / "scheduler.bin", weights_only=True)
    scheduler.update(base_lrs=scheduler["base_lrs"][:1], _last_lr=scheduler["_last_lr"][:1], lr_lambdas=[None])
    torch.save(scheduler, step_9 / "scheduler.bin")
    assert not (killed / "training_summary.json").exists()
    result = subprocess.run(_train_command(tiny_setup, killed, *args, "--resume_from_checkpoint", "latest"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from" in result.stdout + result.stderr
    assert "at step 9" in result.stdout + result.stderr  # the old pickle's progress was read

    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], atol=1e-6, rtol=0, msg=name)
    assert any(not torch.equal(expected[n], load_file(tiny_setup / "model" / "model.safetensors")[n]) for n in expected)


def test_attention_pooling_on_cached_frames_and_the_best_epoch_by_validation_mrr(tiny_setup, tmp_path):
    output = tmp_path / "attention"
    result = subprocess.run(
        _train_command(tiny_setup, output, "--num_train_epochs", "5", "--speech_pooling", "attention",
                       "--config_overrides", "speech_pooling_heads=2,fusion_dropout=[0.2,0.05]"),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((output / "training_summary.json").read_text())
    history = summary["history"]
    assert summary["metric_for_best_model"] == "mrr"
    assert summary["best_epoch"] == max(history, key=lambda h: h["val_mrr"])["epoch"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    config = json.loads((output / "config.json").read_text())
    assert config["speech_pooling"] == "attention" and config["fusion_dropout"] == [0.2, 0.05]
    # The exported model is the best epoch's, and pools frames by attention.
    assert any(name.startswith("speech_pooler.") for name in load_file(output / "model.safetensors"))


def test_the_export_ships_a_hubness_bank_of_the_training_pairs_with_k_chosen_on_validation(tiny_setup, tmp_path):
    """hubness_bank.safetensors beside the exported model: its rows are the exported model's embeddings
    of the training cache, its csls_k the grid's best validation mean MRR, and the summary holds the
    validation figures with and without CSLS; --no_hubness_bank writes none (and drops an earlier one)."""
    from datasets import load_from_disk

    from data_clasp.features import CachedFeatures
    from evaluation.hubness import load_hubness_bank
    from evaluation.protocols import retrieval_report
    from modeling_clasp import ClaspModel

    output = tmp_path / "run"
    result = subprocess.run(_train_command(tiny_setup, output, "--num_train_epochs", "3"), cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    model = ClaspModel.from_pretrained(output).eval()
    embeds = {}
    for split, rows in load_from_disk(tiny_setup / "features").items():
        cached = CachedFeatures(rows, frames=False)
        with torch.no_grad():
            out = model(**cached.collate([cached[i] for i in range(len(cached))]))
        embeds[split] = {"audio_embeds": out.audio_embeds, "text_embeds": out.text_embeds}
    bank, k = load_hubness_bank(output / "hubness_bank.safetensors")
    for name, value in bank.items():  # float16 on disk
        torch.testing.assert_close(torch.from_numpy(value), embeds["train"][name], atol=1e-3, rtol=0, msg=name)

    def figures(k):  # the validation split: 16 rows of distinct texts, no groups
        report = retrieval_report(**embeds["validation"], texts=[f"row {i}" for i in range(16)], soft_k=2,
                                  hubness="none" if k is None else "csls", csls_k=k or 1,
                                  hubness_bank={name: value.numpy() for name, value in embeds["train"].items()})
        return {direction: report[direction]["mrr"] for direction in ("audio_to_text", "text_to_audio")}

    by_k = {k: figures(k) for k in (None, 1, 5, 10, 20, 50)}
    assert k in (1, 5, 10, 20, 50) and sum(by_k[k].values()) == pytest.approx(max(sum(by_k[j].values()) for j in by_k if j))
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["hubness"]["csls_k"] == k and summary["hubness"]["bank_rows"] == 64
    recorded = summary["hubness"]["validation"]
    for direction in ("audio_to_text", "text_to_audio"):
        assert recorded["none"][direction]["mrr"] == pytest.approx(summary["best"][f"val_{direction}_mrr"], rel=1e-6)
        assert recorded["none"][direction]["mrr"] == pytest.approx(by_k[None][direction], rel=1e-6)
        assert recorded["csls"][direction]["mrr"] == pytest.approx(by_k[k][direction], rel=1e-6)
        assert 1 <= recorded["csls"][direction]["mean_rank"] <= 16

    result = subprocess.run(_train_command(tiny_setup, output, "--num_train_epochs", "1", "--no_hubness_bank"), cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (output / "hubness_bank.safetensors").exists()
    assert json.loads((output / "training_summary.json").read_text())["hubness"] is None


def test_config_overrides_parse_json_values_and_bare_strings():
    from train_accelerate import parse_config_overrides

    assert parse_config_overrides("a=1, b=[0.3,0.2],c=attention,d=true") == {"a": 1, "b": [0.3, 0.2], "c": "attention", "d": True}
    assert parse_config_overrides(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("attention")


def test_no_weight_decay_on_the_logit_scale_biases_and_norm_weights():
    """open_clip's parameter groups, checked by name: only the weight matrices of the trained Linear
    layers (and the attention probe, a matrix) decay."""
    from torch import nn

    from train_accelerate import parameter_groups

    model = tiny_model(tiny_config(speech_pooling="attention", speech_pooling_heads=2))
    no_decay, decay = parameter_groups(model, 0.05)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    names = {id(p): name for name, p in model.named_parameters()}
    trained_modules = [(name, m) for name, m in model.named_modules() if name.startswith(("fusion.", "speech_pooler."))]
    assert {names[id(p)] for p in no_decay["params"]} == {"logit_scale"} | {
        f"{name}.{kind}" for name, m in trained_modules for kind in ("weight", "bias")
        if isinstance(m, nn.BatchNorm1d) or (kind == "bias" and isinstance(m, nn.Linear) and m.bias is not None)}
    assert {names[id(p)] for p in decay["params"]} == {"speech_pooler.probe"} | {
        f"{name}.weight" for name, m in trained_modules if isinstance(m, nn.Linear)}


def test_the_logit_scale_is_clamped_after_each_step(tiny_setup, tmp_path):
    """open_clip's clamp into [0, logit_scale_max] after each optimizer step. From a logit scale of 0
    with a cap of 0.01, training pushes it up past the cap: it stays at the cap (its gradient was never
    cut in forward, see tests/modeling_clasp), and the export holds it."""
    start = tmp_path / "start"
    shutil.copytree(tiny_setup / "model", start)
    weights = load_file(start / "model.safetensors")
    weights["logit_scale"] = torch.tensor(0.0)
    save_file(weights, start / "model.safetensors", metadata={"format": "pt"})
    command = _train_command(tiny_setup, tmp_path / "run", "--num_train_epochs", "2", "--learning_rate", "3e-2",
                             "--config_overrides", "logit_scale_max=0.01")
    command[command.index("--model") + 1] = str(start)
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    scales = [h["logit_scale"] for h in json.loads((tmp_path / "run" / "training_summary.json").read_text())["history"]]
    assert scales == pytest.approx([0.01, 0.01], abs=1e-7)
    assert load_file(tmp_path / "run" / "model.safetensors")["logit_scale"].item() == pytest.approx(0.01, abs=1e-7)


def test_a_diverged_epoch_is_never_the_best_and_stops_training(tiny_setup, tmp_path):
    """Weights turned NaN after epoch 2 (as a diverged run's): epoch 3 is not ranked, not selected,
    training stops with a message naming the epoch and what was not finite, and exits 1 with epoch
    1 or 2 exported; with no finite epoch at all, nothing is exported."""
    output = tmp_path / "diverged"
    result = subprocess.run(_train_command(tiny_setup, output, "--num_train_epochs", "5", "--inject_nan_after_epoch", "2",
                                           "--checkpointing_steps", "3"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-4000:]
    # The checkpoints kept are finite ones (NaN weights are never saved, so they never rotate the good ones out).
    assert "checkpoint not saved" in result.stdout + result.stderr
    kept = sorted((output / "checkpoints").glob("step_*"))
    assert kept and all(torch.isfinite(v).all() for c in kept for v in load_file(c / "model.safetensors").values())
    assert "epoch 3's validation is not finite (val_loss=nan; audio_embeds: 16 of 16 rows hold NaN/Inf)" in result.stderr
    summary = json.loads((output / "training_summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3] and summary["best_epoch"] in (1, 2)
    assert summary["stopped_because"].startswith("epoch 3's validation is not finite")
    exported = load_file(output / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in exported.values())
    best = load_file(output / "trained_weights.safetensors")
    for name, value in best.items():
        torch.testing.assert_close(exported[name], value, atol=0, rtol=0, msg=name)

    output = tmp_path / "diverged_at_once"
    result = subprocess.run(_train_command(tiny_setup, output, "--num_train_epochs", "2", "--inject_nan_after_epoch", "0"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "epoch 1's validation is not finite" in result.stderr and "nothing exported" in result.stderr
    assert not (output / "model.safetensors").exists() and not (output / "trained_weights.safetensors").exists()


def test_a_cache_of_other_backbones_or_another_processor_is_refused(tiny_setup, tmp_path):
    """The head would learn features that the exported model never computes."""
    import shutil

    from data_clasp.features import backbone_fingerprint

    from modeling_clasp import ClaspModel

    features = tmp_path / "features"
    shutil.copytree(tiny_setup / "features", features)
    backbones = backbone_fingerprint(ClaspModel.from_pretrained(tiny_setup / "model"))
    (features / "clasp_features.json").write_text(json.dumps({"backbones": backbones, "processor": "0123456789abcdef"}))
    command = _train_command(tiny_setup, tmp_path / "out", "--num_train_epochs", "1")
    command[command.index("--train_data") + 1] = str(features)
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert f"--train_data {features} was cached with other processor than --model" in result.stderr
    assert "processor 0123456789abcdef there" in result.stderr
    # One line, as `clasp` commands print errors, and no empty --output_dir left behind.
    assert "Traceback" not in result.stderr and "train_accelerate.py: error: --train_data" in result.stderr
    assert not (tmp_path / "out").exists()


def test_extra_training_data_adds_rows_but_never_a_held_out_group(tmp_path):
    """--extra_train_data: rows of held-out groups (validation or test of --train_data) stay out,
    every other row of every split of the extra folder trains; mixed kinds and missing columns are refused."""
    from datasets import Dataset, DatasetDict, load_from_disk

    from train_accelerate import add_extra_training_data

    def rows(groups, tag):
        return Dataset.from_dict({"text": [f"{tag} {g}" for g in groups], "group": groups,
                                  "text_embeds": [[float(i)] for i in range(len(groups))]})

    primary = DatasetDict({"train": rows(["a", "b"], "p"), "validation": rows(["v"], "p"), "test": rows(["t"], "p")})
    primary.save_to_disk(tmp_path / "primary")
    (tmp_path / "primary" / "clasp_features.json").write_text("{}")
    DatasetDict({"train": rows(["a", "v", "c"], "x"), "validation": rows(["t", "d"], "x")}).save_to_disk(tmp_path / "extra")
    (tmp_path / "extra" / "clasp_features.json").write_text("{}")
    data, counts = add_extra_training_data(load_from_disk(tmp_path / "primary"), "cached", [str(tmp_path / "extra")])
    assert data["train"]["text"] == ["p a", "p b", "x a", "x c", "x d"]
    assert counts == {str(tmp_path / "extra"): (3, 2)}
    assert data["validation"]["text"] == ["p v"] and data["test"]["text"] == ["p t"]

    DatasetDict({"train": rows(["e"], "y")}).save_to_disk(tmp_path / "dataset")  # no marker: a dataset of audio
    with pytest.raises(ValueError, match="extra_train_data .*dataset.* is a dataset, --train_data is not"):
        add_extra_training_data(load_from_disk(tmp_path / "primary"), "cached", [str(tmp_path / "dataset")])
    DatasetDict({"train": rows(["e"], "y").remove_columns("text_embeds")}).save_to_disk(tmp_path / "narrow")
    (tmp_path / "narrow" / "clasp_features.json").write_text("{}")
    with pytest.raises(ValueError, match="narrow: no column.s. text_embeds"):
        add_extra_training_data(load_from_disk(tmp_path / "primary"), "cached", [str(tmp_path / "narrow")])


def test_a_run_with_extra_training_data_trains_on_both(tiny_setup, tmp_path):
    from datasets import DatasetDict, load_from_disk

    extra = load_from_disk(tiny_setup / "features")["train"].map(lambda row, i: {"text": f"extra {i}"}, with_indices=True)
    DatasetDict({"train": extra}).save_to_disk(tmp_path / "extra")
    (tmp_path / "extra" / "clasp_features.json").write_text(json.dumps({"model": "tiny"}))
    output = tmp_path / "run"
    result = subprocess.run(_train_command(tiny_setup, output, "--num_train_epochs", "1", "--extra_train_data",
                                           str(tmp_path / "extra")), cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "64 rows added to train, 0 left out" in result.stdout + result.stderr
    # The hubness bank holds one row per training pair: 64 of --train_data + 64 extra.
    assert json.loads((output / "training_summary.json").read_text())["hubness"]["bank_rows"] == 128


@pytest.mark.parametrize("groups", [None, "a label a row"])
def test_same_group_negatives_drop_trains_without_twins_as_negatives(tiny_setup, tmp_path, groups):
    """--same_group_negatives drop: the rows of a sentence group (here the same text: 8 texts read 8
    times, without a group column, or with a group label of each row's own, which validation counts
    as correct for each other all the same) reach the loss as pair_group_ids; the run trains, records
    the setting, and its training loss is not the plain CLIP loss of the same seed and batches."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(tiny_setup / "features")
    train = data["train"].map(lambda row, i: {"text": f"sentence {i % 8}"}, with_indices=True)
    if groups:
        train = train.add_column("group", [f"row {i}" for i in range(len(train))])
    DatasetDict({"train": train, "validation": data["validation"]}).save_to_disk(tmp_path / "twins")
    (tmp_path / "twins" / "clasp_features.json").write_text(json.dumps({"model": "tiny"}))
    losses = {}
    for rule in ("keep", "drop"):
        command = _train_command(tiny_setup, tmp_path / rule, "--num_train_epochs", "1", "--same_group_negatives", rule)
        command[command.index("--train_data") + 1] = str(tmp_path / "twins")
        result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        summary = json.loads((tmp_path / rule / "training_summary.json").read_text())
        assert summary["same_group_negatives"] == rule
        losses[rule] = summary["history"][0]["train_loss"]
    assert abs(losses["drop"] - losses["keep"]) > 1e-3  # the groups reached the loss (the same seed and batches)


def test_same_group_ids_are_the_rows_validation_counts_as_correct_for_each_other():
    """--same_group_negatives drop leaves out of a row's negatives exactly the rows that validation
    (and `clasp eval`) count as correct for it: one group label, or the same text (whitespace
    collapsed), linked across both. A split with neither column is refused by name."""
    from train_accelerate import same_group_ids

    def pairs(ids):
        return {(i, j) for i in range(len(ids)) for j in range(len(ids)) if i != j and ids[i] == ids[j]}

    split = Dataset.from_dict({"group": ["a", "a", "b", "c", "d", "e"], "text": ["x", "y", "z", " z", "w  v", "y"]})
    # {0, 1} by group, {2, 3} by text, 5 joins {0, 1} by its text; 4 alone.
    expected = {(i, j) for members in ({0, 1, 5}, {2, 3}) for i in members for j in members if i != j}
    assert pairs(same_group_ids(split, "here")) == expected
    assert pairs(same_group_ids(Dataset.from_dict({"text": ["a b", "c", "a  b"]}), "here")) == {(0, 2), (2, 0)}
    with pytest.raises(ValueError, match="--same_group_negatives drop: --train_data t: the train split has "
                                         "neither a `group` nor a `text` column"):
        same_group_ids(Dataset.from_dict({"text_embeds": [[1.0], [2.0]]}), "--train_data t: the train split")


def test_eval_data_is_validated_every_epoch_and_can_choose_the_best_epoch(tiny_setup, tmp_path):
    """--eval_data real=PATH: its validation split is ranked every epoch (real_mrr, ...), and with
    --metric_for_best_model real_mrr the exported epoch is the one with the best real_mrr, whose
    figure is what the exported model scores on that split."""
    from datasets import DatasetDict, load_from_disk

    from data_clasp.features import CachedFeatures
    from evaluation.protocols import retrieval_report
    from modeling_clasp import ClaspModel

    # Another validation set: the training rows' text embeddings with noisier speech (a "real" domain).
    train = load_from_disk(tiny_setup / "features")["train"].select(range(24))
    rng = np.random.default_rng(5)
    noisy = train.map(lambda row: {"speech_embeds": (np.asarray(row["speech_embeds"]) + 0.8 * rng.standard_normal(
        len(row["speech_embeds"]))).astype(np.float32), "text": "real " + row["text"]})
    DatasetDict({"validation": noisy}).save_to_disk(tmp_path / "real")
    (tmp_path / "real" / "clasp_features.json").write_text(json.dumps({"model": "tiny"}))
    output = tmp_path / "run"
    result = subprocess.run(_train_command(tiny_setup, output, "--num_train_epochs", "4", "--eval_data",
                                           f"real={tmp_path / 'real'}", "--metric_for_best_model", "real_mrr"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((output / "training_summary.json").read_text())
    history = summary["history"]
    assert all({"real_mrr", "real_loss", "real_text_to_audio_hits@1", "val_mrr"} <= set(h) for h in history)
    best = max(history, key=lambda h: (h["real_mrr"], -h["epoch"]))
    assert summary["best_epoch"] == best["epoch"] and summary["metric_for_best_model"] == "real_mrr"
    model = ClaspModel.from_pretrained(output).eval()
    cached = CachedFeatures(noisy, frames=False)
    with torch.no_grad():
        out = model(**cached.collate([cached[i] for i in range(len(cached))]))
    report = retrieval_report(audio_embeds=out.audio_embeds, text_embeds=out.text_embeds, texts=noisy["text"], soft_k=2)
    mrr = (report["audio_to_text"]["mrr"] + report["text_to_audio"]["mrr"]) / 2
    assert mrr == pytest.approx(best["real_mrr"], rel=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--eval_data", "Real=x"], "NAME in lower-case"),
    (["--eval_data", "real"], "give NAME=PATH"),
    (["--eval_data", "val=x"], "not 'val'"),
    (["--eval_data", "a=x", "--eval_data", "a=y"], "given twice"),
])
def test_bad_eval_data_is_refused(argv, message):
    from train_accelerate import parse_args

    with pytest.raises(ValueError, match=message):
        parse_args(["--train_data", "t", "--output_dir", "o", *argv])


@pytest.mark.parametrize("extra", [["features"], ["./features/"], ["other", "other"]])
def test_extra_training_data_given_twice_is_refused(extra):
    """The same folder as --train_data (or twice): every train row would be there twice, silently."""
    from train_accelerate import parse_args

    with pytest.raises(ValueError, match=f"--extra_train_data {extra[-1]}: given already"):
        parse_args(["--train_data", "features", "--output_dir", "o", "--extra_train_data", *extra])


def test_an_empty_validation_split_is_named(tmp_path):
    """An --eval_data (or --train_data) dataset whose validation split has no rows (a `clasp data synth
    --from-manifest --splits train` dataset) failed with "zero-size array to reduction operation maximum"."""
    from train_accelerate import load_training_data

    rows = Dataset.from_dict({"text": ["a", "b"]})
    empty = Dataset.from_dict({"text": []}, features=rows.features)
    DatasetDict({"train": rows, "validation": empty}).save_to_disk(tmp_path / "data", num_shards={"validation": 1})
    with pytest.raises(ValueError, match=r"--eval_data real= .*data: needs a 'validation' split with rows, found "
                                         r"train \(2 rows\), validation \(0 rows\)"):
        load_training_data(str(tmp_path / "data"), "--eval_data real=", required=("validation",))


def test_metric_for_best_model_must_name_a_set(capsys):
    from train_accelerate import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--train_data", "t", "--output_dir", "o", "--metric_for_best_model", "real_mrr"])
    assert "choose from mrr, loss" in capsys.readouterr().err
    assert parse_args(["--train_data", "t", "--output_dir", "o", "--eval_data", "real=x",
                       "--metric_for_best_model", "real_mrr"]).eval_data == {"real": "x"}


def test_an_augmented_cache_trains_on_one_view_per_clip_in_every_process(tiny_setup, tmp_path):
    """A `clasp features --augment 2` cache: an epoch has as many rows as clips (one view each), 2
    processes × 4 draw the same views as 1 process × 8 (the same losses), and the hubness bank holds
    the clips as recorded (views 0)."""
    from datasets import Features, Value, load_from_disk

    features = tmp_path / "features"
    cached = load_from_disk(tiny_setup / "features")
    train = cached["train"].to_dict()
    rng, clips = np.random.default_rng(5), len(cached["train"])
    rows = {name: [] for name in [*train, "clip", "view", "augmentation"]}
    for i in range(clips):
        for view in range(3):  # views: the clip's features moved a little, as augmentation moves them
            for name, values in train.items():
                value = np.asarray(values[i])
                moved = view and name in ("speech_embeds", "spectrogram_embeds", "speech_frames")
                rows[name].append((value + 0.3 * rng.standard_normal(value.shape)).tolist() if moved else values[i])
            rows["clip"].append(i), rows["view"].append(view), rows["augmentation"].append("noise:10.0dB:white" if view else "")
    columns = Features({**cached["train"].features, "clip": Value("int64"), "view": Value("int64"), "augmentation": Value("string")})
    DatasetDict({"train": Dataset.from_dict(rows, features=columns), "validation": cached["validation"]}).save_to_disk(features)
    (features / "clasp_features.json").write_text(json.dumps({"model": "tiny", "augment": 2}))

    same = ("--num_train_epochs", "2", "--config_overrides", "fusion_dropout=[0.0,0.0]")
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # The one-process run notes which cache row each training example was (the trainer run as it is).
    served = tmp_path / "served.json"
    spy = ("import json, sys\nfrom data_clasp.features import OneViewPerClip\nrows = []\n"
           "get = OneViewPerClip.__getitem__\nOneViewPerClip.__getitem__ = lambda self, i: rows.append(int(self.index[i])) or get(self, i)\n"
           f"import train_accelerate\ntrain_accelerate.main()\nopen({str(served)!r}, 'w').write(json.dumps(rows))\n")
    for command in (launch + _train_command(tiny_setup, two, *same, "--per_device_train_batch_size", "4")[1:],
                    [sys.executable, "-c", spy, *_train_command(tiny_setup, one, *same)[2:]]):
        command[command.index("--train_data") + 1] = str(features)
        result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
    summary, expected = (json.loads((out / "training_summary.json").read_text()) for out in (two, one))
    assert summary["steps"] == expected["steps"] == 16  # 64 clips / 8 × 2 epochs, not 192 rows
    epochs = np.array(json.loads(served.read_text())).reshape(2, clips)  # rows are clip-major: clip × 3 + view
    for epoch in epochs:
        assert sorted(epoch // 3) == list(range(clips))  # one view of every clip
    views = [dict(zip(epoch // 3, epoch % 3)) for epoch in epochs]
    assert views[0] != views[1] and set(views[0].values()) == {0, 1, 2}  # drawn again each epoch
    assert [h["train_loss"] for h in summary["history"]] == pytest.approx([h["train_loss"] for h in expected["history"]], rel=1e-5)
    assert summary["hubness"]["bank_rows"] == 64


def test_extra_training_data_keeps_augmented_views_grouped_by_clip_and_each_folders_clips_apart(tmp_path):
    """--extra_train_data beside an augmented cache: the clips of each folder stay apart (clip 0 of one
    cache is not clip 0 of another), a row without views is a clip of its own, and an epoch takes one
    row of each."""
    from datasets import Dataset, DatasetDict, load_from_disk

    from data_clasp.features import OneViewPerClip
    from train_accelerate import add_extra_training_data

    def rows(groups, tag, views=0):
        n = len(groups) * (views + 1)
        columns = {"text": [f"{tag} {g}" for g in groups for _ in range(views + 1)],
                   "group": [g for g in groups for _ in range(views + 1)],
                   "speech_embeds": [[1.0, 0.0]] * n, "spectrogram_embeds": [[1.0]] * n, "text_embeds": [[0.0, 1.0]] * n}
        if views:
            columns |= {"clip": [c for c in range(len(groups)) for _ in range(views + 1)],
                        "view": list(range(views + 1)) * len(groups),
                        "augmentation": ["", *["noise:9.0dB:white"] * views] * len(groups)}
        return Dataset.from_dict(columns)

    for name, splits in {"primary": {"train": rows(["a", "b"], "p", views=2), "validation": rows(["v"], "p")},
                         "augmented": {"train": rows(["c", "d", "v"], "x", views=1), "validation": rows(["e"], "x")},
                         "plain": {"train": rows(["f", "g"], "y")}}.items():
        DatasetDict(splits).save_to_disk(tmp_path / name)
        (tmp_path / name / "clasp_features.json").write_text("{}")
    data, counts = add_extra_training_data(load_from_disk(tmp_path / "primary"), "cached",
                                           [str(tmp_path / "augmented"), str(tmp_path / "plain")])
    train = data["train"].to_dict()
    assert counts == {str(tmp_path / "augmented"): (5, 2), str(tmp_path / "plain"): (2, 0)}
    assert train["text"] == ["p a"] * 3 + ["p b"] * 3 + ["x c"] * 2 + ["x d"] * 2 + ["x e", "y f", "y g"]
    assert train["clip"] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6]
    assert train["view"] == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 0, 0]
    assert train["augmentation"][-3:] == ["", "", ""] and train["augmentation"][7] == "noise:9.0dB:white"
    assert len(OneViewPerClip(data["train"])) == 7

    # A plain --train_data beside an augmented extra cache: its rows are clips of one view.
    data, _ = add_extra_training_data(load_from_disk(tmp_path / "plain"), "cached", [str(tmp_path / "augmented")])
    assert data["train"]["clip"][:] == [0, 1, 2, 2, 3, 3, 4, 4, 5]


def _sourced(groups, sources, tag):
    return Dataset.from_dict({"text": [f"{tag} {i}" for i in range(len(groups))], "group": groups, "source": sources,
                              "text_embeds": [[float(i)] for i in range(len(groups))]})


def test_hold_out_sources_leaves_a_corpus_and_its_sentence_groups_out_of_training_and_selection():
    """--hold_out_sources fortunes: fortunes-* rows leave train and validation, and so does every row of
    a group one of them reads (django's reading of a proverb); the validation rows left out are returned
    to be evaluated as the held-out source."""
    from train_accelerate import hold_out_sources

    data = DatasetDict({
        "train": _sourced(["a", "b", "c", "d", "e"],
                          ["espeak:django", "espeak:fortunes-de", "espeak:django", "piper:fortunes-br", "espeak:fortunesx"], "t"),
        "validation": _sourced(["v", "w", "x", "b"], ["espeak:fortunes-de", "espeak:django", "espeak:wagtail", "espeak:lee"], "v"),
        "test": _sourced(["y"], ["espeak:fortunes-de"], "s"),
    })
    data, heldout, counts = hold_out_sources(data, ["fortunes"])
    assert data["train"]["text"] == ["t 0", "t 2", "t 4"]  # fortunesx is not a fortunes-* corpus
    assert data["validation"]["text"] == ["v 1", "v 2"]
    assert heldout["text"] == ["v 0", "v 3"]  # v 3 (lee) reads group b, a fortunes-de sentence
    assert counts == {"train": 2, "validation": 2} and len(data["test"]) == 1
    fresh = DatasetDict({"train": _sourced(["a"], ["espeak:django"], "t"), "validation": _sourced(["v"], ["espeak:lee"], "v")})
    with pytest.raises(ValueError, match="hold_out_sources: kjv: no such corpus here; the corpora are django, lee"):
        hold_out_sources(fresh, ["kjv"])
    with pytest.raises(ValueError, match="no validation rows of django"):
        hold_out_sources(fresh, ["django"])
    with pytest.raises(ValueError, match="lee: no validation row of another corpus is left to choose the epoch"):
        hold_out_sources(DatasetDict({k: v for k, v in fresh.items()}), ["lee"])
    with pytest.raises(ValueError, match="no `source` column"):
        hold_out_sources(DatasetDict({k: v.remove_columns("source") for k, v in fresh.items()}), ["lee"])


@pytest.mark.parametrize("argv, message", [
    (["--hold_out_sources", " , "], "at least one corpus"),
    (["--hold_out_sources", "lee", "--eval_data", "heldout=x"], "taken by --hold_out_sources"),
    (["--metric_for_best_model", "heldout_mrr"], "choose from mrr, loss"),
])
def test_bad_hold_out_sources_are_refused(argv, message, capsys):
    from train_accelerate import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--train_data", "t", "--output_dir", "o", *argv])
    assert message in capsys.readouterr().err


def test_a_run_with_held_out_sources_never_trains_or_selects_on_them(tiny_setup, tmp_path):
    """The held-out corpus leaves the training pairs (the hubness bank holds the 48 others) and the
    validation that chooses the epoch (the exported model's MRR on the 12 kept validation rows is the
    recorded val_mrr), and its 4 validation rows are ranked every epoch as heldout_*."""
    from datasets import load_from_disk

    from data_clasp.features import CachedFeatures
    from evaluation.protocols import retrieval_report
    from modeling_clasp import ClaspModel

    cache = load_from_disk(tiny_setup / "features")
    for split, n in (("train", 64), ("validation", 16)):
        cache[split] = cache[split].add_column("source", ["espeak:django"] * (n * 3 // 4) + ["espeak:fortunes-de"] * (n // 4))
        # Texts of their own a split (the fixture's read "row i" in both): rows share no sentence group.
        cache[split] = cache[split].map(lambda row, i, split=split: {"text": f"{split} {i}"}, with_indices=True)
    cache.save_to_disk(tmp_path / "features")
    (tmp_path / "features" / "clasp_features.json").write_text(json.dumps({"model": "tiny"}))
    setup = tmp_path / "setup"
    setup.mkdir()
    (setup / "features").symlink_to(tmp_path / "features")
    (setup / "model").symlink_to(tiny_setup / "model")
    output = tmp_path / "run"
    result = subprocess.run(_train_command(setup, output, "--num_train_epochs", "3", "--hold_out_sources", "fortunes"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "16 train and 4 validation rows left out; the 4 held-out validation rows" in result.stdout + result.stderr
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["hold_out_sources"] == ["fortunes"] and summary["hubness"]["bank_rows"] == 48
    assert all({"heldout_mrr", "heldout_text_to_audio_hits@1", "val_mrr"} <= set(h) for h in summary["history"])
    kept = cache["validation"].select(range(12))
    model = ClaspModel.from_pretrained(output).eval()
    features = CachedFeatures(kept, frames=False)
    with torch.no_grad():
        out = model(**features.collate([features[i] for i in range(len(features))]))
    report = retrieval_report(audio_embeds=out.audio_embeds, text_embeds=out.text_embeds, texts=kept["text"], soft_k=2)
    assert (report["audio_to_text"]["mrr"] + report["text_to_audio"]["mrr"]) / 2 == pytest.approx(summary["best"]["val_mrr"], rel=1e-5)


def test_another_validation_set_does_not_change_the_training(tiny_setup, tmp_path):
    """Validation only reads: a run with an --eval_data set trains the same weights as one without
    (each validation pass used to draw its loader's seed from torch's global generator, so every
    added set moved the dropout masks of all later epochs)."""
    from datasets import DatasetDict, load_from_disk

    DatasetDict({"validation": load_from_disk(tiny_setup / "features")["validation"]}).save_to_disk(tmp_path / "more")
    (tmp_path / "more" / "clasp_features.json").write_text(json.dumps({"model": "tiny"}))
    weights = {}
    for name, extra in (("alone", []), ("with_eval_data", ["--eval_data", f"more={tmp_path / 'more'}"])):
        # Dropout on, so that the global generator's state matters; every epoch exported (patience > epochs).
        result = subprocess.run(_train_command(tiny_setup, tmp_path / name, "--num_train_epochs", "3",
                                               "--config_overrides", "fusion_dropout=[0.3,0.3]", "--metric_for_best_model",
                                               "loss", *extra), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        weights[name] = load_file(tmp_path / name / "model.safetensors")
        history = json.loads((tmp_path / name / "training_summary.json").read_text())["history"]
        weights[name + " losses"] = [h["train_loss"] for h in history]
    assert weights["alone losses"] == weights["with_eval_data losses"]
    assert weights["alone"].keys() == weights["with_eval_data"].keys()
    for key, value in weights["alone"].items():
        assert torch.equal(value, weights["with_eval_data"][key]), key
