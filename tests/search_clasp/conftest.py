"""Tiny CLASP folders and audio files shared by the search tests (built once per session)."""

import pytest

from search_fixtures import write_tones
from tiny import save_tiny_clasp


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny Whisper-based CLASP: its encoder takes at most 30 s, so long audio must be windowed."""
    return save_tiny_clasp(tmp_path_factory.mktemp("tiny-whisper-clasp"))


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory):
    """Same architecture, other random weights: a different model."""
    return save_tiny_clasp(tmp_path_factory.mktemp("other-clasp"))


@pytest.fixture(scope="session")
def embedder(model_dir):
    from search_clasp import ClaspEmbedder

    return ClaspEmbedder.from_pretrained(model_dir, batch_size=4, device="cpu")


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    write_tones(folder, 6)
    return folder
