"""Cost of `speech_whisper_padding="max_length"` (Whisper on 30 s, as pretrained) against "real"
(the clip's real length): `get_speech_frames` on 8 clips of 4 s, Whisper-base (the offline-base
preset, `clasp backbones build`), one torch thread, after one warm-up clip.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_whisper_padding.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import speech_like_clips  # noqa: E402

NUM_CLIPS, SECONDS = 8, 4.0


def main():
    from backbones_clasp.checkpoints import load_model_and_processor

    torch.set_num_threads(1)
    clips = speech_like_clips(NUM_CLIPS, SECONDS, SECONDS)
    seconds = {}
    for setting in ("real", "max_length"):
        model, processor = load_model_and_processor("offline-base", speech_whisper_padding=setting)
        inputs = processor.feature_extractor(clips, sampling_rate=16000)
        features, mask = inputs["input_features"], inputs["input_features_mask"]
        with torch.no_grad():
            model.get_speech_frames(features[:1], mask[:1])
            start = time.perf_counter()
            model.get_speech_frames(features, mask)
            seconds[setting] = time.perf_counter() - start
        print(f"{setting}: input_features {tuple(features.shape)}, get_speech_frames {seconds[setting]:.2f} s "
              f"({seconds[setting] / NUM_CLIPS:.3f} s a clip)")
    print(f"max_length / real: {seconds['max_length'] / seconds['real']:.1f}x")


if __name__ == "__main__":
    main()
