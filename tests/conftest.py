import sys
from pathlib import Path

import pytest

# tests/tiny.py holds what test modules import (several folders have a conftest.py of their own,
# so `from conftest import ...` would pick whichever was imported first).
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("clasp")
