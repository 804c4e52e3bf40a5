import soundfile

from search_clasp.shards import audio_seconds, split_by_duration
from tiny import tone


def test_longest_first_into_the_least_loaded_shard():
    # 9 → shard 0, 8 → 1, 5 → 1 (13), 5 → 0 (14), 2 → 1 (15), 1 → 0 (15): 15 s each, positions in input order.
    assert split_by_duration([1, 9, 5, 5, 2, 8], 2) == [[0, 1, 3], [2, 4, 5]]
    assert split_by_duration([3.0, 1.0], 4) == [[0], [1], [], []]  # more processes than files
    assert split_by_duration([], 2) == [[], []]


def test_durations_come_from_the_header_and_an_unreadable_file_counts_zero(tmp_path):
    soundfile.write(tmp_path / "a.flac", tone(2.5, rate=22050), 22050)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all" * 10)
    assert abs(audio_seconds(tmp_path / "a.flac") - 2.5) < 1e-3
    assert audio_seconds(tmp_path / "bad.wav") == 0.0 and audio_seconds(tmp_path / "missing.wav") == 0.0
