"""Helpers for the search tests: tiny CLASP folders and short audio files."""

from pathlib import Path

import numpy as np
import soundfile

from tiny import tone

REPO = Path(__file__).resolve().parents[2]


def write_tones(folder, count, seed=0):
    """`count` distinct short clips (different pitch, length, rate and channels) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rate = (16000, 22050, 8000)[i % 3]
        clip = tone(0.5 + 0.3 * i, rate=rate, freq=110 * (1 + i) * 1.3, seed=seed + i)
        if i % 2:
            clip = np.stack([clip, 0.5 * clip], axis=1)  # stereo
        paths.append(folder / f"clip{seed + i:03d}.wav")
        soundfile.write(paths[-1], clip, rate)
    return paths
