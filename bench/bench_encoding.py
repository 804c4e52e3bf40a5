"""Audio encoding with the offline-base backbones on this CPU: batched + length-bucketed against
one clip at a time (the notebooks' way), and Whisper on the real length against padded to 30 s;
then a profile that says where the time goes and how much batching can buy here at all.

    .venv/bin/python bench/bench_encoding.py

Clips: 16 speech-like clips of 2–20 s (bench.common.speech_like_clips); the encoders' cost depends
on the length only. Each path encodes the clips to CLASP audio embeddings from waveforms in memory
(feature extraction included).

Contest (the target): one clip at a time against batched + bucketed, on torch's default thread
count, interleaved, best of 2, in wall-clock seconds; the process's CPU seconds beside them show
how much of that was torch's threads spinning while they wait for each other (on a busy machine,
at every operation).

Profile: every stage (feature extraction, speech encoder, spectrogram CNN, fusion head) on ONE
torch thread, in CPU seconds: what the work costs, whatever the neighbours do. One clip at a
time, batched, and with Whisper padded to 30 s as transformers' WhisperEncoder.forward insists
(3,000 log-mel frames whatever the clip's length, so it is timed on 4 clips and scaled to 16).
The speech encoder's FLOPs, counted from its shapes, give its GFLOP/s, set against this core's
matrix-multiply peak measured in the same run (a 2048 x 2048 sgemm, also in CPU seconds).
Needs `clasp backbones build`.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import print_result, speech_like_clips, write_result  # noqa: E402

NUM_CLIPS, BATCH, RATE = 16, 8, 16000
PADDED_CLIPS = 4  # the 30 s-padded path costs the same for every clip: timed on 4, scaled to all
TARGET = 2.0
STAGES = ("feature extraction", "speech encoder (Whisper)", "spectrogram CNN", "fusion head")


def timed(function) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def whisper_encoder_flops(config, mel_frames: int) -> float:
    """Multiply-adds x 2 of Whisper's encoder on `mel_frames` log-mel frames (our real-length path)."""
    d, ffn, mels = config.d_model, config.encoder_ffn_dim, config.num_mel_bins
    frames = (mel_frames + 1) // 2  # conv2 has stride 2
    convs = 2 * 3 * (mel_frames * mels * d + frames * d * d)
    per_layer = 2 * (4 * frames * d * d + 2 * frames * d * ffn + 2 * frames * frames * d)  # q k v o, MLP, scores + values
    return convs + config.encoder_layers * per_layer


def sgemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    """This core's practical matmul peak: the best of a few square float32 products, in CPU seconds
    (on one thread, CPU seconds are the work itself; wall seconds would count a neighbour's turns)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = min(timed(lambda: a @ b)[1] for _ in range(repeats))
    return 2 * size**3 / seconds / 1e9


def gpu_gain() -> str:
    """Batched / one at a time on the GPU, from scripts/gpu_run.py's last results (for contrast), or why not."""
    import json

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_results_h100.json")
    try:
        with open(path) as f:
            gpu = json.load(f)
        fp32 = gpu["encode_float32"]
    except (OSError, KeyError, ValueError):
        return "see scripts/gpu_run.py"
    gain = fp32["batched_bucketed_clips_per_s"] / fp32["one_at_a_time_clips_per_s"]
    return f"{gain:.0f}x in fp32 on an {gpu['device']}, bench/gpu_results_h100.json"


def main():
    import torch.nn.functional as F

    from backbones_clasp.checkpoints import load_model_and_processor
    from evaluation.embed import length_batches

    started = time.perf_counter()
    model, processor = load_model_and_processor("offline-base")
    model.eval()
    extractor = processor.feature_extractor
    clips = speech_like_clips(NUM_CLIPS)
    lengths = [len(c) for c in clips]
    audio_s = sum(lengths) / RATE
    one_at_a_time = [[i] for i in range(NUM_CLIPS)]
    batches = length_batches(lengths, BATCH)
    padding = sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths) - 1

    @torch.inference_mode()
    def encode(groups):
        for group in groups:
            model.get_audio_features(**extractor([clips[i] for i in group], sampling_rate=RATE))

    # ---- the contest, default threads, wall clock
    contenders = {"one clip at a time, real length (notebook loop)": one_at_a_time,
                  f"batched ({BATCH}) + length-bucketed, real length (ours)": batches}
    encode(one_at_a_time[:1]), encode(batches[-1:])  # warm-up
    seconds = dict.fromkeys(contenders, (float("inf"), float("inf")))
    for _ in range(2):  # interleaved passes, so a busy neighbour slows each alike; keep each one's fastest
        for name, groups in contenders.items():
            seconds[name] = min(seconds[name], timed(lambda: encode(groups)))
    (baseline_wall, baseline_cpu), (ours_wall, _) = seconds.values()
    speedup = baseline_wall / ours_wall

    # ---- the profile, one thread, CPU seconds by stage
    def real_length(inputs):
        return model.get_speech_embeds(inputs["input_features"], inputs["input_features_mask"])

    def padded_to_30s(inputs):  # one clip at a time, so no mask is needed
        mel_frames = inputs["input_features"].shape[-1]
        hidden = model.speech_model(F.pad(inputs["input_features"], (0, 3000 - mel_frames))).last_hidden_state
        return F.normalize(hidden[:, : (mel_frames + 1) // 2].mean(dim=1), dim=-1)

    @torch.inference_mode()
    def stages(groups, speech_embeds):
        """CPU seconds of each stage over `groups` of clip indices, and each clip's embedding."""
        cpu = dict.fromkeys(STAGES, 0.0)
        embeds = torch.empty(NUM_CLIPS, model.config.projection_dim)

        def step(stage, function, *args):
            mark = time.process_time()
            out = function(*args)
            cpu[stage] += time.process_time() - mark
            return out

        for group in groups:
            inputs = step(STAGES[0], extractor, [clips[i] for i in group], RATE)
            speech = step(STAGES[1], speech_embeds, inputs)
            spectrogram = step(STAGES[2], model.get_spectrogram_embeds, inputs["pixel_values"])
            embeds[torch.as_tensor(group)] = step(
                STAGES[3], lambda: model.get_audio_features(speech_embeds=speech, spectrogram_embeds=spectrogram).pooler_output)
        return cpu, embeds

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stages(one_at_a_time[:1], real_length), stages(one_at_a_time[:1], padded_to_30s)  # warm-up
        single, single_embeds = stages(one_at_a_time, real_length)
        batched, batched_embeds = stages(batches, real_length)
        sample = one_at_a_time[NUM_CLIPS // PADDED_CLIPS // 2 :: NUM_CLIPS // PADDED_CLIPS]  # spread over the lengths
        padded_whisper = stages(sample, padded_to_30s)[0][STAGES[1]] * NUM_CLIPS / len(sample)
        peak = sgemm_gflops()
    finally:
        torch.set_num_threads(default_threads)
    # Batching must not change a clip's embedding (padding is masked out).
    max_difference = float((single_embeds - batched_embeds).abs().max())

    whisper_gflop = sum(whisper_encoder_flops(model.speech_model.config, n // extractor.whisper_hop_length) for n in lengths) / 1e9
    whisper_rate = whisper_gflop / single[STAGES[1]]
    single_total, batched_total = sum(single.values()), sum(batched.values())
    padded_total = single_total - single[STAGES[1]] + padded_whisper
    rest_share = 1 - single[STAGES[1]] / single_total
    profile_rows = [[stage, single[stage], batched[stage], padded_whisper if stage == STAGES[1] else "same",
                     single[stage] / batched[stage], single[stage] / single_total] for stage in STAGES]
    profile_rows.append(["all", single_total, batched_total, padded_total, single_total / batched_total, 1.0])
    profile_rows.append(["clips / CPU s", NUM_CLIPS / single_total, NUM_CLIPS / batched_total, NUM_CLIPS / padded_total, "", ""])

    rows = [[name, NUM_CLIPS / wall, wall / audio_s, cpu, baseline_wall / wall] for name, (wall, cpu) in seconds.items()]
    result = {
        "title": "Audio encoding, offline-base (Whisper-base + EfficientNet-Lite0 + head), CPU",
        "tables": [
            {"caption": f"{NUM_CLIPS} clips of 2–20 s ({audio_s:.0f} s of audio), waveform in memory → CLASP embedding, "
                        f"torch's default {default_threads} threads; wall clock, best of 2.",
             "columns": ["path", "clips / s", "real-time factor", "CPU s", "speed-up vs one at a time"],
             "rows": rows},
            {"caption": f"Profile on 1 torch thread: CPU seconds by stage for the {NUM_CLIPS} clips.",
             "columns": ["stage", "one at a time", f"batched ({BATCH})", "one at a time, Whisper padded to 30 s",
                         "gain from batching", "share of one-at-a-time work"],
             "rows": profile_rows},
        ],
        "targets": [{"target": f">= {TARGET}x the per-clip loop (batched + bucketed)", "value": f"{speedup:.1f}x",
                     "met": speedup >= TARGET}],
        "notes": [
            f"Whisper-base's encoder does {whisper_gflop:.0f} GFLOP on these clips; one clip at a time on one thread it runs at "
            f"{whisper_rate:.0f} GFLOP/s, {whisper_rate / peak:.0%} of this core's sgemm peak measured in this run "
            f"({peak:.0f} GFLOP/s, 2048 x 2048). Its matrices are already large for a single clip (the shortest clip gives "
            f"{min(lengths) // extractor.whisper_hop_length // 2} frames x {model.speech_model.config.d_model}), so it is "
            "compute-bound at batch 1: batching cannot make it faster, only padding can make it slower "
            f"(these {BATCH}-clip batches compute {padding:.0%} more frames than the clips have: {NUM_CLIPS} clips spread "
            "evenly over 2–20 s; a real collection has many clips of each length and pads far less).",
            f"Everything batching can speed up (CNN, feature extraction, head) is {rest_share:.0%} of the one-clip work on one "
            f"thread, so on this CPU batching can gain at most {1 / (1 - rest_share):.2f}x in work; the measured work ratio "
            f"on one thread is {single_total / batched_total:.2f}x. The {TARGET:.0f}x target is out of physical reach here "
            f"(on a GPU, where one clip leaves most of the device idle, batching gains {gpu_gain()}).",
            f"What batching buys on {default_threads} threads is fewer waits: one clip at a time spent {baseline_cpu:.1f} CPU s "
            f"for {single_total:.1f} s of work (one thread): torch's threads spin at each of the many small operations while "
            f"a neighbour holds the other core, and a batch has {BATCH}x fewer operations. That gain depends on how busy the "
            "machine is, so the wall-clock ratio moves from run to run.",
            f"Whisper on the real length against padded to 30 s: {padded_whisper / single[STAGES[1]]:.1f}x less speech-encoder "
            f"work, {padded_total / single_total:.1f}x less in all (padded: timed on {len(sample)} clips, scaled to {NUM_CLIPS}).",
            f"Largest difference between a clip embedded alone and in its batch: {max_difference:.1e}.",
        ],
        "profile_cpu_s": {"one_at_a_time": single, "batched": batched, "whisper_padded_to_30s": padded_whisper},
        "whisper_gflops_per_s": whisper_rate, "sgemm_peak_gflops_per_s": peak, "padding_fraction": padding,
        "wall_s": time.perf_counter() - started,
    }
    write_result("bench_encoding", result)
    print_result(result)


if __name__ == "__main__":
    main()
