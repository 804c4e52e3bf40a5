import os

import pytest

from data_clasp.files import write_atomically


def test_text_and_bytes_are_written_whole_into_new_folders(tmp_path):
    write_atomically(tmp_path / "a" / "report.json", "é\n")
    write_atomically(tmp_path / "a" / "report.json", "{}\n")  # replaces
    write_atomically(tmp_path / "b" / "embeds.safetensors", b"\x00\xff")
    assert (tmp_path / "a" / "report.json").read_bytes() == b"{}\n"
    assert (tmp_path / "b" / "embeds.safetensors").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "embeds.safetensors", "report.json"]


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    (tmp_path / f"report.json.tmp{os.getpid()}").symlink_to("/dev/full")  # a real ENOSPC at the write
    with pytest.raises(OSError, match=rf"^{path}: could not be written \(\[Errno 28\] No space left on device\)$"):
        write_atomically(path, "new" * 100_000)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
