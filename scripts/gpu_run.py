"""GPU figures for the offline-base CLASP: audio encoding in bf16 and training with train_accelerate.py.

Runs on a machine with a CUDA GPU and no network. It needs a folder (default .gpu/) prepared on the
CPU machine by `scripts/gpu_prepare.py`: the trained model's config, the speech-encoder, CNN and
fusion-head weights in bf16 (the frozen text encoder is not needed to encode audio and is left out
to keep the upload small), a few real clips, and their CPU fp32 embeddings as a reference.

    python scripts/gpu_run.py --prepared .gpu --output $OUT

Writes gpu_results.json: encoding clips/s (bf16 vs fp32, batched vs one clip at a time, Whisper at
the real length vs padded to 30 s), agreement of bf16 embeddings with the CPU reference, and
training samples/s of train_accelerate.py in bf16 on a synthetic feature cache of the same shapes.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def timed(fn, repeats=3):
    fn()  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def load_model(prepared, dtype):
    from safetensors.torch import load_file

    from configuration_clasp import ClaspConfig
    from modeling_clasp import ClaspModel

    config = ClaspConfig.from_pretrained(prepared)
    model = ClaspModel(config)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(prepared, "audio_parts.safetensors")), strict=False)
    assert not unexpected and all(k.startswith("text_model.") for k in missing), (missing[:5], unexpected[:5])
    return model.to("cuda", dtype=dtype).eval()


def encoding(prepared, results):
    import soundfile

    from processing_clasp import ClaspProcessor
    from safetensors.torch import load_file

    processor = ClaspProcessor.from_pretrained(prepared)
    reference = load_file(os.path.join(prepared, "reference.safetensors"))["audio_embeds"]
    with open(os.path.join(prepared, "clips.json")) as f:
        names = json.load(f)
    clips = [soundfile.read(os.path.join(prepared, "clips", n), dtype="float32")[0] for n in names]
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(prepared, dtype)
        inputs = processor(audio=clips, sampling_rate=16000)
        inputs = {k: v.cuda().to(dtype) if v.is_floating_point() else v.cuda() for k, v in inputs.items()}
        with torch.no_grad():
            audio = model.get_audio_features(**inputs).pooler_output.float().cpu()
        cosine = torch.nn.functional.cosine_similarity(audio, reference, dim=-1)
        results[f"agreement_with_cpu_fp32_{str(dtype)[6:]}"] = {"min_cosine": cosine.min().item(), "mean_cosine": cosine.mean().item()}

        # Throughput on clips of 2–20 s (real clips concatenated to length), features precomputed:
        # this times the model, not the CPU feature extraction.
        rng = np.random.default_rng(0)
        long_audio = np.concatenate(clips)
        lengths = rng.uniform(2, 20, size=256)
        batch_clips = [long_audio[: int(s * 16000)] for s in lengths]
        order = np.argsort(lengths)
        total_audio_s = float(lengths.sum())
        features = [processor(audio=[batch_clips[i] for i in order[s : s + 32]], sampling_rate=16000) for s in range(0, 256, 32)]
        features = [{k: v.cuda().to(dtype) if v.is_floating_point() else v.cuda() for k, v in f.items()} for f in features]
        single = [processor(audio=[c], sampling_rate=16000) for c in batch_clips[:32]]
        single = [{k: v.cuda().to(dtype) if v.is_floating_point() else v.cuda() for k, v in f.items()} for f in single]

        def batched():
            with torch.no_grad():
                for f in features:
                    model.get_audio_features(**f)

        def one_at_a_time():
            with torch.no_grad():
                for f in single:
                    model.get_audio_features(**f)

        batched_s, single_s = timed(batched), timed(one_at_a_time)
        key = str(dtype)[6:]
        results[f"encode_{key}"] = {
            "batched_bucketed_clips_per_s": 256 / batched_s,
            "one_at_a_time_clips_per_s": 32 / single_s,
            "real_time_factor_batched": batched_s / total_audio_s,
        }
        if dtype == torch.bfloat16:
            encoder = model.speech_model
            mel = torch.randn(32, 80, 3000, device="cuda", dtype=dtype)
            mel_5s = mel[:, :, :500].contiguous()

            def padded_30s():
                with torch.no_grad():
                    encoder(mel)

            def real_length_5s():
                with torch.no_grad():
                    model._whisper_hidden_states(mel_5s, None)

            results["whisper_5s_clips_bf16_batch32"] = {
                "padded_to_30s_clips_per_s": 32 / timed(padded_30s), "real_length_clips_per_s": 32 / timed(real_length_5s)
            }
        del model
        torch.cuda.empty_cache()


def training(prepared, output, results):
    from datasets import Dataset, DatasetDict

    from configuration_clasp import ClaspConfig
    from modeling_clasp import ClaspModel

    config = ClaspConfig.from_pretrained(prepared)
    folder = os.path.join(output, "model-for-training")
    ClaspModel(config).save_pretrained(folder)
    from processing_clasp import ClaspProcessor

    ClaspProcessor.from_pretrained(prepared).save_pretrained(folder)
    rng = np.random.default_rng(0)

    def split(n):
        text = rng.standard_normal((n, config.projection_dim)).astype(np.float32)
        return Dataset.from_dict({
            "speech_embeds": rng.standard_normal((n, config.speech_hidden_size)).astype(np.float32),
            "spectrogram_embeds": rng.standard_normal((n, config.spectrogram_hidden_size)).astype(np.float32),
            "text_embeds": text / np.linalg.norm(text, axis=1, keepdims=True),
        })

    cache = os.path.join(output, "synthetic-features")
    DatasetDict({"train": split(65536), "validation": split(2048)}).save_to_disk(cache)
    open(os.path.join(cache, "clasp_features.json"), "w").write("{}")
    for batch in (256, 1024):
        run_dir = os.path.join(output, f"train-bf16-b{batch}")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "bf16",
                   "--dynamo_backend", "no", os.path.join(REPO, "train_accelerate.py"), "--train_data", cache, "--model", folder,
                   "--output_dir", run_dir, "--per_device_train_batch_size", str(batch), "--num_train_epochs", "2",
                   "--early_stopping_patience", "5"]
        subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
        with open(os.path.join(run_dir, "training_summary.json")) as f:
            summary = json.load(f)
        results[f"train_cached_bf16_batch{batch}"] = {
            "samples_per_s": summary["samples_per_second_this_run"], "steps": summary["steps"],
            "seconds": summary["train_seconds_this_run"], "note": "includes one validation pass per epoch",
        }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prepared", default=".gpu")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        encoding(args.prepared, results)
    finally:
        print(json.dumps(results, indent=2), flush=True)
    training(args.prepared, args.output, results)
    with open(os.path.join(args.output, "gpu_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
