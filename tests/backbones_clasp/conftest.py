import os
from pathlib import Path

import pytest

from backbones_clasp import build_backbones


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """The three converted folders, built once per session (or reused from $CLASP_BACKBONES_DIR)."""
    output_dir = None if os.environ.get("CLASP_BACKBONES_DIR") else tmp_path_factory.mktemp("backbones")
    return build_backbones(output_dir)
