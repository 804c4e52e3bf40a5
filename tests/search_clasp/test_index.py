import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from search_clasp import ClaspIndex, build_index, model_identity, read_entries
from search_fixtures import REPO, write_tones

QUIET = dict(progress=False, device="cpu")


def stored(index_dir):
    """(paths in row order, embeddings, FAISS vectors) of a finished index."""
    index = ClaspIndex(index_dir)
    rows = index.db.execute("SELECT path FROM items ORDER BY position").fetchall()
    faiss_vectors = index.faiss.reconstruct_n(0, index.faiss.ntotal)
    result = [path for (path,) in rows], index.embeddings(), faiss_vectors
    index.close()
    return result


def test_each_file_finds_itself_first(model_dir, audio_dir, embedder, tmp_path):
    summary = build_index(tmp_path / "index", model_dir, [audio_dir], **QUIET)
    assert summary.added == summary.total == 6 and not summary.failed
    assert sorted(os.listdir(tmp_path)) == ["index"]  # the .partial folder was renamed into place
    index = ClaspIndex(tmp_path / "index")
    paths, embeddings, faiss_vectors = stored(tmp_path / "index")
    np.testing.assert_array_equal(embeddings, faiss_vectors)
    for path, embedding in zip(paths, embeddings):
        hits = index.search(embedding[None], k=3)[0]
        assert hits[0]["path"] == path and hits[0]["rank"] == 1
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_exact_self_matches(model_dir, audio_dir, tmp_path, kind):
    build_index(tmp_path / kind, model_dir, [audio_dir], kind=kind, **QUIET)
    index = ClaspIndex(tmp_path / kind)
    assert index.info["kind"] == kind
    paths, embeddings, _ = stored(tmp_path / kind)
    hits = index.search(embeddings, k=1, nprobe=index.info["nlist"] or 1, ef=16)
    assert [h[0]["path"] for h in hits] == paths


def test_manifest_text_and_language_come_back_with_results(model_dir, audio_dir, tmp_path):
    clips = sorted(audio_dir.glob("*.wav"))
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"audio": os.path.relpath(clips[0], tmp_path), "text": "le chat est sur la table", "language": "fr"},
            {"audio": str(clips[1])}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    build_index(tmp_path / "index", model_dir, [manifest], **QUIET)
    index = ClaspIndex(tmp_path / "index")
    paths, embeddings, _ = stored(tmp_path / "index")
    assert paths == [str(clips[0]), str(clips[1])]
    first, second = (index.search(e[None], k=1)[0][0] for e in embeddings)
    assert first["text"] == "le chat est sur la table" and first["language"] == "fr"
    assert "text" not in second and "language" not in second
    assert first["duration"] == pytest.approx(0.5)

    (tmp_path / "broken.jsonl").write_text('{"audio": "a.wav"}\n{"text": "no audio"}\n')
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        read_entries([tmp_path / "broken.jsonl"])


def test_add_embeds_only_new_files(model_dir, audio_dir, tmp_path):
    build_index(tmp_path / "index", model_dir, [audio_dir], **QUIET)
    with pytest.raises(ValueError, match="already exists: pass --add"):
        build_index(tmp_path / "index", model_dir, [audio_dir], **QUIET)
    more = write_tones(tmp_path / "more", 3, seed=10)
    summary = build_index(tmp_path / "index", model_dir, [audio_dir, tmp_path / "more"], add=True, **QUIET)
    assert (summary.added, summary.skipped, summary.total) == (3, 6, 9)
    paths, embeddings, faiss_vectors = stored(tmp_path / "index")
    assert paths[-3:] == [str(p) for p in more]
    np.testing.assert_array_equal(embeddings, faiss_vectors)
    # The same as building everything at once.
    build_index(tmp_path / "at-once", model_dir, [audio_dir, tmp_path / "more"], **QUIET)
    at_once = stored(tmp_path / "at-once")
    assert at_once[0] == paths
    np.testing.assert_allclose(at_once[1], embeddings, atol=1e-6)
    with pytest.raises(ValueError, match="kind='flat', not 'hnsw'"):
        build_index(tmp_path / "index", model_dir, [audio_dir], add=True, kind="hnsw", **QUIET)


def test_a_different_model_is_refused_naming_both(model_dir, other_model_dir, audio_dir, tmp_path):
    assert model_identity(model_dir) != model_identity(other_model_dir)
    build_index(tmp_path / "index", model_dir, [audio_dir], **QUIET)
    with pytest.raises(ValueError, match="model mismatch") as refused:
        build_index(tmp_path / "index", other_model_dir, [audio_dir], add=True, **QUIET)
    assert str(model_dir) in str(refused.value) and str(other_model_dir) in str(refused.value)


def test_model_identity_sees_a_change_of_weights_with_the_same_header(model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert model_identity(copy) == model_identity(model_dir)
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "model.safetensors")
    name = next(n for n in weights if n.startswith("fusion"))
    weights[name] = weights[name] + 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert model_identity(copy) != model_identity(model_dir)


def test_an_interrupted_build_resumes_to_the_same_index(model_dir, audio_dir, tmp_path):
    reference = stored(build_index(tmp_path / "reference", model_dir, [audio_dir], files_per_chunk=2, **QUIET).index_dir)

    def interrupt_after_two_chunks(chunk, seen=[]):
        seen.append(chunk)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "index", model_dir, [audio_dir], files_per_chunk=2, on_chunk=interrupt_after_two_chunks, **QUIET)
    assert not (tmp_path / "index").exists()  # never a half-built index under the real name
    assert len(ClaspIndex(tmp_path / "index.partial")) == 4  # two committed chunks
    summary = build_index(tmp_path / "index", model_dir, [audio_dir], files_per_chunk=2, **QUIET)
    assert (summary.added, summary.skipped) == (2, 4)
    resumed = stored(tmp_path / "index")
    assert resumed[0] == reference[0]
    np.testing.assert_allclose(resumed[1], reference[1], atol=1e-6)
    np.testing.assert_allclose(resumed[2], reference[2], atol=1e-6)


KILL_MID_BUILD = """
import os, signal, sys
from search_clasp import build_index
def kill_after_chunk(chunk, seen=[]):
    seen.append(chunk)
    if len(seen) == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
build_index(sys.argv[1], sys.argv[2], [sys.argv[3]], add=sys.argv[5] == "add", files_per_chunk=2, on_chunk=kill_after_chunk,
            progress=False, device="cpu")
"""


def test_a_killed_build_and_a_killed_add_resume_to_the_same_index(model_dir, audio_dir, tmp_path):
    def run_killed(index_dir, audio, after_chunks, mode):
        arguments = [str(index_dir), str(model_dir), str(audio), str(after_chunks), mode]
        result = subprocess.run([sys.executable, "-c", KILL_MID_BUILD, *arguments],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]

    run_killed(tmp_path / "index", audio_dir, 2, "new")
    assert not (tmp_path / "index").exists() and (tmp_path / "index.partial").exists()
    build_index(tmp_path / "index", model_dir, [audio_dir], files_per_chunk=2, **QUIET)

    more = tmp_path / "more"
    write_tones(more, 5, seed=20)
    run_killed(tmp_path / "index", more, 1, "add")  # a killed --add: SQLite ahead of index.faiss
    assert len(ClaspIndex(tmp_path / "index")) == 8 and ClaspIndex(tmp_path / "index").faiss.ntotal == 6
    build_index(tmp_path / "index", model_dir, [audio_dir, more], add=True, files_per_chunk=2, **QUIET)

    build_index(tmp_path / "reference", model_dir, [audio_dir, more], files_per_chunk=2, **QUIET)
    resumed, reference = stored(tmp_path / "index"), stored(tmp_path / "reference")
    assert resumed[0] == reference[0] and len(resumed[0]) == 11
    np.testing.assert_allclose(resumed[1], reference[1], atol=1e-6)
    np.testing.assert_allclose(resumed[2], reference[2], atol=1e-6)


def test_a_full_disk_while_writing_index_faiss_keeps_what_was_committed(model_dir, audio_dir, tmp_path):
    """A real ENOSPC: the temporary index.faiss is a link to /dev/full, which takes no byte."""
    def disk_full_from_now_on(chunk, seen=[]):
        seen.append(chunk)
        if len(seen) == 1:
            (tmp_path / "index.partial" / f"index.faiss.tmp{os.getpid()}").symlink_to("/dev/full")

    with pytest.raises(OSError, match=r"index\.faiss: could not be written \(\[Errno 28\] No space left on device\)"):
        build_index(tmp_path / "index", model_dir, [audio_dir], files_per_chunk=4, on_chunk=disk_full_from_now_on, **QUIET)
    assert sorted(os.listdir(tmp_path / "index.partial")) == ["metadata.sqlite"]  # no cut-short index.faiss, no temporary
    assert len(ClaspIndex(tmp_path / "index.partial")) == 6  # every chunk committed
    assert not (tmp_path / "index").exists()
    summary = build_index(tmp_path / "index", model_dir, [audio_dir], files_per_chunk=4, **QUIET)  # space again
    assert (summary.added, summary.skipped) == (0, 6)
    reference = stored(build_index(tmp_path / "reference", model_dir, [audio_dir], **QUIET).index_dir)
    resumed = stored(tmp_path / "index")
    assert resumed[0] == reference[0]
    np.testing.assert_allclose(resumed[2], reference[2], atol=1e-6)


def test_a_full_disk_while_adding_rows_rolls_the_chunk_back(model_dir, audio_dir, tmp_path, monkeypatch, capsys):
    """SQLite's own "database or disk is full" (max_page_count: the file may not grow) during `clasp index --add`."""
    import sqlite3

    from clasp_cli.main import main

    build_index(tmp_path / "index", model_dir, [audio_dir], **QUIET)
    more = write_tones(tmp_path / "more", 2, seed=30)
    manifest = tmp_path / "more.jsonl"  # long transcripts: rows that need new pages
    manifest.write_text("".join(json.dumps({"audio": str(p), "text": "the cat sat " * 500}) + "\n" for p in more))
    connect = sqlite3.connect

    def no_room_to_grow(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        return db

    monkeypatch.setattr("search_clasp.index.sqlite3.connect", no_room_to_grow)
    arguments = ["index", "--model", str(model_dir), "--audio", str(audio_dir), str(manifest), "--output",
                 str(tmp_path / "index"), "--add"]
    assert main(arguments) == 2
    assert f"clasp index: error: {tmp_path / 'index' / 'metadata.sqlite'}: database or disk is full" in capsys.readouterr().err
    monkeypatch.undo()
    index = ClaspIndex(tmp_path / "index")
    assert len(index) == index.faiss.ntotal == 6  # the failed chunk left nothing behind; the index still answers
    assert index.search(index.embeddings(stop=1), k=1)[0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert main(arguments) == 0
    reference = stored(build_index(tmp_path / "reference", model_dir, [audio_dir, manifest], **QUIET).index_dir)
    resumed = stored(tmp_path / "index")
    assert resumed[0] == reference[0] and len(resumed[0]) == 8
    np.testing.assert_allclose(resumed[2], reference[2], atol=1e-6)


def test_an_on_disk_ivf_index_searches_its_lists_from_a_file_like_the_in_ram_one(model_dir, audio_dir, tmp_path):
    import faiss

    build_index(tmp_path / "ram", model_dir, [audio_dir], kind="ivf", nlist=2, **QUIET)
    build_index(tmp_path / "disk", model_dir, [audio_dir], kind="ivf", nlist=2, on_disk=True, files_per_chunk=2, **QUIET)
    assert sorted(os.listdir(tmp_path / "disk")) == ["index.6.ivfdata", "index.faiss", "metadata.sqlite"]
    index = ClaspIndex(tmp_path / "disk")
    assert index.info["on_disk"] is True
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.faiss).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    assert lists.filename == str(tmp_path / "disk" / "index.6.ivfdata")  # found beside index.faiss, not in .partial
    paths, embeddings, faiss_vectors = stored(tmp_path / "disk")
    np.testing.assert_array_equal(embeddings, faiss_vectors)
    ram = ClaspIndex(tmp_path / "ram")
    for nprobe in (1, 2):
        on_disk, in_ram = index.search(embeddings, k=4, nprobe=nprobe), ram.search(embeddings, k=4, nprobe=nprobe)
        assert [[h["path"] for h in hits] for hits in on_disk] == [[h["path"] for h in hits] for hits in in_ram]
    assert [hits[0]["path"] for hits in index.search(embeddings, k=1, nprobe=2)] == paths
    with pytest.raises(ValueError, match="--on-disk.*--kind ivf, not 'flat'"):
        build_index(tmp_path / "flat", model_dir, [audio_dir], on_disk=True, **QUIET)
    with pytest.raises(ValueError, match="on_disk=False, not True"):
        build_index(tmp_path / "ram", model_dir, [audio_dir], add=True, on_disk=True, **QUIET)


def test_add_to_an_on_disk_index_merges_a_new_lists_file_and_old_readers_keep_theirs(model_dir, audio_dir, tmp_path):
    build_index(tmp_path / "index", model_dir, [audio_dir], kind="ivf", nlist=2, on_disk=True, **QUIET)
    reader = ClaspIndex(tmp_path / "index")
    before = reader.search(reader.embeddings(), k=1, nprobe=2)
    more = write_tones(tmp_path / "more", 3, seed=10)
    summary = build_index(tmp_path / "index", model_dir, [audio_dir, tmp_path / "more"], add=True, **QUIET)
    assert (summary.added, summary.skipped, summary.total) == (3, 6, 9)
    assert sorted(os.listdir(tmp_path / "index")) == ["index.9.ivfdata", "index.faiss", "metadata.sqlite"]
    paths, embeddings, faiss_vectors = stored(tmp_path / "index")
    assert paths[-3:] == [str(p) for p in more]
    np.testing.assert_array_equal(embeddings, faiss_vectors)
    index = ClaspIndex(tmp_path / "index")
    for path, hits in zip(paths, index.search(embeddings, k=3, nprobe=2)):  # clip012 is clip002 with other noise: a tie
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and path in [h["path"] for h in hits]
    # A search process opened before the --add still maps the (now deleted) old lists.
    assert reader.search(reader.embeddings(stop=6), k=1, nprobe=2) == before


KILL_IN_ON_DISK_MERGE = """
import os, signal, sys
import faiss
from search_clasp import build_index
if sys.argv[4] == "before-merge":  # per-block indexes written, merged lists not started
    faiss.OnDiskInvertedLists = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
else:  # merged lists written, index.faiss not yet replaced
    replace = os.replace
    def kill_before_index_faiss(source, target):
        if str(target).endswith("index.faiss"):
            os.kill(os.getpid(), signal.SIGKILL)
        replace(source, target)
    os.replace = kill_before_index_faiss
build_index(sys.argv[1], sys.argv[2], [sys.argv[3]], add=True, progress=False, device="cpu")
"""


@pytest.mark.parametrize("moment", ["before-merge", "before-replace"])
def test_an_add_killed_while_writing_on_disk_lists_leaves_the_index_as_it_was(model_dir, audio_dir, tmp_path, moment):
    build_index(tmp_path / "index", model_dir, [audio_dir], kind="ivf", nlist=2, on_disk=True, **QUIET)
    more = tmp_path / "more"
    write_tones(more, 3, seed=20)
    result = subprocess.run([sys.executable, "-c", KILL_IN_ON_DISK_MERGE, str(tmp_path / "index"), str(model_dir), str(more), moment],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    leftover = "index.9.ivfdata" if moment == "before-replace" else "ivf-blocks.tmp"
    assert any(name.startswith(leftover) for name in os.listdir(tmp_path / "index"))
    index = ClaspIndex(tmp_path / "index")
    assert (len(index), index.faiss.ntotal) == (9, 6)  # the rows are committed; the old lists still answer
    assert index.search(index.embeddings(stop=1), k=1, nprobe=2)[0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    build_index(tmp_path / "index", model_dir, [audio_dir, more], add=True, **QUIET)
    assert sorted(os.listdir(tmp_path / "index")) == ["index.9.ivfdata", "index.faiss", "metadata.sqlite"]
    paths, embeddings, faiss_vectors = stored(tmp_path / "index")
    assert len(paths) == 9
    np.testing.assert_array_equal(embeddings, faiss_vectors)


def test_clasp_search_json_on_an_on_disk_index_prints_only_json(model_dir, audio_dir, tmp_path):
    """FAISS prints the lists' file name on the C stdout when it opens them: it must not reach the JSON."""
    build_index(tmp_path / "index", model_dir, [audio_dir], kind="ivf", nlist=2, on_disk=True, **QUIET)
    clip = sorted(audio_dir.glob("*.wav"))[0]
    result = subprocess.run([sys.executable, "-m", "clasp_cli.main", "search", "--index", str(tmp_path / "index"),
                             "--audio", str(clip), "-k", "2", "--nprobe", "2", "--json", "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    hits = json.loads(result.stdout)
    assert hits[0]["path"] == str(clip) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
