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


def oracle_index(index_dir, model_dir, clips, transcripts, languages):
    """An index in which each clip's vector is the text embedding of its transcript.

    That is what a perfectly trained CLASP would store. A tiny random model cannot put speech
    next to its transcript, so this is how a test can know which file a text query must find first.
    """
    from search_clasp import ClaspEmbedder, ClaspIndex, model_identity

    embedder = ClaspEmbedder.from_pretrained(model_dir, device="cpu")
    index = ClaspIndex.create(index_dir, model_identity(model_dir), model_dir, embedder.model.config.projection_dim)
    durations = [soundfile.info(clip).duration for clip in clips]
    index.add([str(c) for c in clips], durations, embedder.embed_texts(transcripts).numpy(), transcripts, languages)
    index.write_faiss()
    index.close()
    return index_dir
