"""train_accelerate.py: gathered negatives, a real 2-process CPU launch, exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file

from modeling_clasp import clasp_loss
from tiny import REPO, tiny_config, tiny_model, tiny_processor


# ---- gathered negatives -------------------------------------------------------------------------


def _features(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 16, generator=generator), dim=-1), F.normalize(torch.randn(n, 16, generator=generator), dim=-1)


def _loss_and_grads(weight, audio, text, config):
    """A linear 'head' on audio features, the CLASP loss, and the head's gradient."""
    weight = weight.clone().requires_grad_(True)
    loss = clasp_loss(F.normalize(audio @ weight, dim=-1), text, torch.tensor(10.0), config)
    loss.backward()
    return loss.detach(), weight.grad


def _rank_worker(rank, world_size, store, batch, queue):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    config = tiny_config()
    audio, text = _features(batch * world_size)
    weight = torch.eye(16) + 0.1 * torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    rows = slice(rank * batch, (rank + 1) * batch)
    loss, grad = _loss_and_grads(weight, audio[rows], text[rows], config)
    # What DDP does: average gradients (and we average the losses) over processes.
    dist.all_reduce(grad)
    dist.all_reduce(loss)
    if rank == 0:
        queue.put(((loss / world_size).tolist(), (grad / world_size).tolist()))
    dist.destroy_process_group()


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    batch = 6
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    context_args = (2, str(tmp_path / "store"), batch, queue)
    processes = [context.Process(target=_rank_worker, args=(rank, *context_args)) for rank in range(2)]
    for p in processes:
        p.start()
    two_loss, two_grad = (torch.tensor(x) for x in queue.get())
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0

    audio, text = _features(2 * batch)
    weight = torch.eye(16) + 0.1 * torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    one_loss, one_grad = _loss_and_grads(weight, audio, text, tiny_config())
    torch.testing.assert_close(two_loss, one_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(two_grad, one_grad, atol=1e-6, rtol=1e-5)


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


def test_two_process_cpu_launch_trains_checkpoints_and_exports(tiny_setup, tmp_path):
    output = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += _train_command(tiny_setup, output, "--num_train_epochs", "3", "--checkpointing_steps", "2")[1:]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["effective_batch"] == 16 and summary["negatives_per_step"] == 15
    assert summary["steps"] == 12  # 64 rows / (8 × 2 processes) × 3 epochs
    history = summary["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert (output / "training_curves.png").exists() and (output / "config.json").exists()
    assert (output / "modeling_clasp.py").exists()
    assert sorted(os.listdir(output / "checkpoints")) == ["step_10", "step_12"]  # total limit 2


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


def test_config_overrides_parse_json_values_and_bare_strings():
    from train_accelerate import parse_config_overrides

    assert parse_config_overrides("a=1, b=[0.3,0.2],c=attention,d=true") == {"a": 1, "b": [0.3, 0.2], "c": "attention", "d": True}
    assert parse_config_overrides(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("attention")
