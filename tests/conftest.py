import os
import sys
from pathlib import Path

import pytest

# tests/tiny.py holds what test modules import (several folders have a conftest.py of their own,
# so `from conftest import ...` would pick whichever was imported first).
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("clasp")


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """The three converted offline backbones, built once per session (or reused from $CLASP_BACKBONES_DIR)."""
    from backbones_clasp import build_backbones

    output_dir = None if os.environ.get("CLASP_BACKBONES_DIR") else tmp_path_factory.mktemp("backbones")
    return build_backbones(output_dir)


def pytest_sessionfinish(session, exitstatus):
    """CI (CLASP_NO_SKIPS=1) installs everything the tests need, so a skipped test there is a failure."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CLASP_NO_SKIPS") and skipped and session.exitstatus == 0:
        print(f"\nCLASP_NO_SKIPS: {len(skipped)} test(s) skipped; CI installs everything, so that is a failure")
        session.exitstatus = 1
