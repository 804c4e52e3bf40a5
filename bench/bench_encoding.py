"""Audio encoding with the offline-base backbones on this CPU: batched + length-bucketed against
one clip at a time (the notebooks' way), and Whisper on the real length against padded to 30 s.

    .venv/bin/python bench/bench_encoding.py

Clips: 16 speech-like clips of 2–20 s (bench.common.speech_like_clips); the encoders' cost depends
on the length only. Each contender encodes all 16 clips to CLASP audio embeddings from waveforms in
memory (feature extraction included), interleaved, best of 2. The "padded to 30 s" contender is
what transformers' WhisperEncoder.forward insists on: every clip's log-mel padded to 3,000 frames.
Needs `clasp backbones build`.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import best_of, print_result, speech_like_clips, write_result  # noqa: E402

NUM_CLIPS, BATCH, RATE = 16, 8, 16000
TARGET = 2.0


def main():
    from clasp_cli.features_command import load_model_and_processor
    from evaluation.embed import length_batches

    started = time.perf_counter()
    model, processor = load_model_and_processor("offline-base")
    model.eval()
    extractor = processor.feature_extractor
    clips = speech_like_clips(NUM_CLIPS)
    audio_s = sum(len(c) for c in clips) / RATE

    @torch.no_grad()
    def encode(batch_clips):
        return model.get_audio_features(**extractor(batch_clips, sampling_rate=RATE))

    @torch.no_grad()
    def padded_to_30s(clip):
        inputs = extractor([clip], sampling_rate=RATE)
        mel = torch.nn.functional.pad(inputs["input_values"], (0, 3000 - inputs["input_values"].shape[-1]))
        frames = model.speech_model(mel).last_hidden_state[:, : (inputs["input_values"].shape[-1] + 1) // 2]
        speech = torch.nn.functional.normalize(frames.mean(dim=1), dim=-1)
        return model.get_audio_features(speech_embeds=speech, input_features=inputs["input_features"])

    batches = [[clips[i] for i in batch] for batch in length_batches([len(c) for c in clips], BATCH)]
    contenders = {
        "one clip at a time, real length (notebook loop)": lambda: [encode([c]) for c in clips],
        "one clip at a time, Whisper padded to 30 s": lambda: [padded_to_30s(c) for c in clips],
        f"batched ({BATCH}) + length-bucketed, real length (ours)": lambda: [encode(b) for b in batches],
    }
    for function in contenders.values():  # warm-up
        function()
    seconds = {name: float("inf") for name in contenders}
    for _ in range(2):
        for name, function in contenders.items():
            seconds[name] = min(seconds[name], best_of(function, 1))

    # Batching must not change a clip's embedding (padding is masked out).
    alone = torch.cat([encode([c]) for c in batches[0]])
    together = encode(batches[0])
    max_difference = float((alone - together).abs().max())

    baseline = seconds["one clip at a time, real length (notebook loop)"]
    ours = seconds[f"batched ({BATCH}) + length-bucketed, real length (ours)"]
    rows = [[name, NUM_CLIPS / s, s / audio_s, baseline / s] for name, s in seconds.items()]
    result = {
        "title": "Audio encoding, offline-base (Whisper-base + EfficientNet-Lite0 + head), CPU",
        "tables": [{
            "caption": f"{NUM_CLIPS} clips of 2–20 s ({audio_s:.0f} s of audio), waveform in memory → CLASP embedding.",
            "columns": ["path", "clips / s", "real-time factor", "speed-up vs one at a time"],
            "rows": rows,
        }],
        "targets": [{"target": f">= {TARGET}x the per-clip loop (batched + bucketed)", "value": f"{baseline / ours:.1f}x",
                     "met": baseline / ours >= TARGET}],
        "notes": [f"Largest difference between a clip embedded alone and in its batch: {max_difference:.1e}.",
                  f"torch threads: {torch.get_num_threads()}."],
        "wall_s": time.perf_counter() - started,
    }
    write_result("bench_encoding", result)
    print_result(result)


if __name__ == "__main__":
    main()
