"""A searchable CLASP index: FAISS over the audio embeddings, SQLite for everything else.

    INDEX_DIR/
        metadata.sqlite   info (model identity, settings) and items (position, path, duration,
                          text, language, embedding); row `position` is FAISS row `position`
        index.faiss       inner-product index over the items' embeddings (cosine: they are unit vectors)
        index.N.ivfdata   with --on-disk only: the IVF lists of index.faiss's N vectors (memory-mapped)
        hubness_bank.safetensors   with --hubness-bank only: the training embeddings text queries are
                          corrected with; SQLite's hubness table holds each item's penalty

SQLite is the record. Each chunk of embedded files is committed in one transaction, so a killed
build loses at most the chunk in flight and a rerun skips what is committed. The FAISS file is
derived from it and replaced atomically (temporary file + rename); one that lags behind SQLite
(a run killed after a commit) is caught up by adding the missing positions in order, so a
resumed build ends with the same index as an uninterrupted one. A new index is built in
INDEX_DIR.partial and renamed to INDEX_DIR when complete: INDEX_DIR only ever holds a finished index.

Kinds: "flat" is exact (brute force; fine up to about a million vectors: ~1.5 GB at 384-d and tens
of milliseconds a query), "ivf" clusters the vectors and scans `nprobe` clusters per query, "hnsw"
walks a neighbour graph (`ef` candidates). Both approximate kinds trade recall for speed.

"ivf" with `on_disk` is for indexes larger than RAM (FAISS's on-disk inverted lists, as its
demo_ondisk_ivf.py builds them): the rows are added block by block to per-block IVF indexes
written to disk, and these are merged into one .ivfdata file that searches memory-map, so only
the centroids (nlist × dim floats) and the list pages a query touches are in memory (the kernel's
page cache, which it reclaims). `--add` merges the existing lists with the new blocks into a new
.ivfdata file (a sequential copy, no re-clustering), then replaces index.faiss atomically and
deletes the old file: a reader still holding the old one keeps its mapping; a killed run leaves
index.faiss and its lists as they were.

Hubness correction (CSLS, evaluation/hubness.py): an index built with a bank of training text
embeddings stores each item's penalty r(c), its mean cosine to its k nearest bank texts, derived
from SQLite and caught up like index.faiss. `search(..., hubness="csls")` then asks FAISS for the
best N by cosine (N = max(k, RERANK_DEPTH), doubled as needed) and re-ranks them by 2 cos - r(c).
Every item outside those N scores at most 2 cos_N - min r, so the depth is doubled until the k-th
re-ranked score reaches that bound: the top k are those of an exhaustive CSLS search (of what
FAISS returns, for the approximate kinds).
"""

import contextlib
import hashlib
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_clasp.audio import find_audio_files
from data_clasp.files import write_atomically
from evaluation.hubness import BANK_FILE, csls_penalty, load_hubness_bank

FAISS_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
KINDS = ("flat", "ivf", "hnsw")
DEFAULT_NPROBE = 16
DEFAULT_EF = 64
BLOCK_ROWS = 65536  # rows added to FAISS at a time (100 MB at 384-d)
ON_DISK_BLOCKS = "ivf-blocks.tmp"  # per-block indexes of an on-disk build, merged and then deleted
RERANK_DEPTH = 100  # nearest items by cosine re-ranked by CSLS, at first (see the module docstring)


@dataclass
class AudioEntry:
    path: str
    text: str | None = None
    language: str | None = None


def read_entries(inputs) -> tuple[list[AudioEntry], list[dict]]:
    """Audio files from directories, files and JSONL manifests, and inputs that gave nothing.

    A manifest has one JSON object a line: {"audio": path, "text"?: ..., "language"?: ...}; relative
    paths are relative to the manifest's folder. A file named twice is kept once, with its first text.
    """
    entries, failed = [], []
    for item in map(os.fspath, inputs):
        if item.endswith(".jsonl") and os.path.isfile(item):
            base = os.path.dirname(os.path.abspath(item))
            with open(item, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        audio = row["audio"]
                    except (json.JSONDecodeError, KeyError, TypeError) as error:
                        raise ValueError(f"{item}:{number}: expected a JSON object with an \"audio\" path ({error})") from None
                    entries.append(AudioEntry(os.path.join(base, audio), row.get("text"), row.get("language")))
        else:
            found = find_audio_files([item])
            if not found:
                failed.append({"path": item, "reason": "directory contains no audio files"})
            entries += [AudioEntry(path) for path in found]
    unique = {}
    for entry in entries:
        unique.setdefault(os.path.abspath(entry.path), entry)
    return list(unique.values()), failed


def model_identity(model_dir) -> str:
    """SHA-256 of the model's config.json, processor_config.json and every byte of its weights.

    All the weights, not the safetensors header: two checkpoints of one training run have the
    same header (names, shapes, offsets) and the same frozen backbones, so only the bytes tell
    them apart. Hashing a few hundred MB takes about a second, and loading reads them anyway.
    """
    from backbones_clasp.checkpoints import weight_files

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir}: not a CLASP model folder (needs config.json and model.safetensors)")
    weights = [Path(path) for path in weight_files(model_dir)]
    digest = hashlib.sha256()
    for path in [model_dir / "config.json", model_dir / "processor_config.json", *weights]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
    return digest.hexdigest()


class ClaspIndex:
    """An index folder: `ClaspIndex(dir)` opens one, `ClaspIndex.create(dir, ...)` starts one."""

    def __init__(self, directory):
        self.directory = Path(directory)
        if not (self.directory / METADATA_FILE).is_file():
            raise FileNotFoundError(f"{self.directory}: not a CLASP index (no {METADATA_FILE})")
        # Gradio answers requests from worker threads: one connection, used under a lock.
        self.db = sqlite3.connect(self.directory / METADATA_FILE, check_same_thread=False)
        self.lock = threading.Lock()
        self.info = {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM info")}
        self.info.setdefault("on_disk", False)  # an index from before --on-disk
        self.info.setdefault("quantize", None)  # an index from before --quantize: fp32
        self._faiss = None
        self._penalties = None  # hubness penalties by position, read at the first CSLS search
        for leftover in self.directory.glob(FAISS_FILE + ".tmp*"):  # from a run killed while writing
            leftover.unlink()

    @classmethod
    def create(cls, directory, model_identity, model_path, dim, kind="flat", nlist=None, m=32, window_s=30.0, hop_s=25.0,
               on_disk=False, quantize=None):
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if on_disk and kind != "ivf":
            raise ValueError(f"on-disk lists (--on-disk) are for --kind ivf, not {kind!r}")
        directory = Path(directory)
        directory.mkdir(parents=True)
        db = sqlite3.connect(directory / METADATA_FILE)
        with db:
            db.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE items (position INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, duration REAL NOT NULL, "
                "text TEXT, language TEXT, embedding BLOB NOT NULL)"
            )
            info = dict(format_version=1, model_identity=model_identity, model_path=os.path.abspath(model_path), dim=dim,
                        kind=kind, nlist=nlist, m=m, window_s=window_s, hop_s=hop_s, on_disk=on_disk, quantize=quantize)
            db.executemany("INSERT INTO info VALUES (?, ?)", [(k, json.dumps(v)) for k, v in info.items()])
        db.close()
        return cls(directory)

    def close(self):
        self.db.close()

    def __len__(self):
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def paths(self) -> set[str]:
        with self.lock:
            return {path for (path,) in self.db.execute("SELECT path FROM items")}

    def check_model(self, identity: str, model_dir):
        if identity != self.info["model_identity"]:
            raise ValueError(
                f"model mismatch: index {self.directory} was built with {self.info['model_path']} "
                f"(sha256 {self.info['model_identity'][:16]}…), but {model_dir} is a different model "
                f"(sha256 {identity[:16]}…); its embeddings would not be comparable. Use the index's model or build a new index."
            )

    def add(self, paths, durations, embeddings, texts=None, languages=None):
        """Append rows in one transaction: all of them are committed, or none."""
        embeddings = np.asarray(embeddings, dtype="<f4")
        texts = texts or [None] * len(paths)
        languages = languages or [None] * len(paths)
        try:
            with self.lock, self.db:
                start = self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
                self.db.executemany(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                    [(start + i, p, float(d), t, lang, e.tobytes())
                     for i, (p, d, t, lang, e) in enumerate(zip(paths, durations, texts, languages, embeddings))],
                )
        except sqlite3.OperationalError as error:  # "database or disk is full": the transaction was rolled back
            raise OSError(f"{self.directory / METADATA_FILE}: {error}; nothing of this chunk was kept: rerun when fixed") from error

    def embeddings(self, start=0, stop=None, step=1) -> np.ndarray:
        """`[n, dim]` float32: rows start, start + step, ... before stop, in position order."""
        stop = len(self) if stop is None else stop
        with self.lock:
            rows = self.db.execute(
                "SELECT embedding FROM items WHERE position >= ? AND position < ? AND (position - ?) % ? = 0 ORDER BY position",
                (start, stop, start, step),
            ).fetchall()
        return np.frombuffer(b"".join(blob for (blob,) in rows), dtype="<f4").reshape(-1, self.info["dim"]).astype(np.float32)

    # ---- FAISS -----------------------------------------------------------------------------

    def _new_faiss(self, count: int):
        import faiss

        kind, dim = self.info["kind"], self.info["dim"]
        if kind == "flat":
            return faiss.IndexFlatIP(dim)
        if kind == "hnsw":
            return faiss.index_factory(dim, f"HNSW{self.info['m']},Flat", faiss.METRIC_INNER_PRODUCT)
        # Around 4·√n clusters is FAISS's rule of thumb; never more clusters than vectors to train them.
        nlist = min(self.info["nlist"] or round(4 * math.sqrt(count)), count)
        if nlist != self.info["nlist"]:
            self._set_info(nlist=nlist)
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        # k-means needs no more than 256 points a cluster (FAISS subsamples to that anyway).
        index.train(self.embeddings(step=max(1, count // (256 * nlist))))
        return index

    def _set_info(self, **values):
        with self.lock, self.db:
            self.db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])
        self.info.update(values)

    @property
    def faiss(self):
        if self._faiss is None:
            import faiss

            path = self.directory / FAISS_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{self.directory}: no {FAISS_FILE}: the build did not finish; rerun `clasp index`")
            self._faiss = self._read_faiss(path)
        return self._faiss

    def _read_faiss(self, path):
        import faiss

        if not self.info["on_disk"]:
            return faiss.read_index(str(path))
        # The lists are memory-mapped from the .ivfdata file beside index.faiss (it records the path it
        # was written at, which a renamed folder no longer has).
        with faiss_prints_to_stderr():
            return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)

    def write_faiss(self):
        """Bring index.faiss up to date with the committed rows, then replace the file atomically."""
        import faiss

        count = len(self)
        path = self.directory / FAISS_FILE
        index = self._read_faiss(path) if path.is_file() else None
        if index is None or index.ntotal > count:
            index = self._new_faiss(count)
        if self.info["on_disk"]:
            if index.ntotal < count:
                self._merge_on_disk(index, count)
        else:
            for start in range(index.ntotal, count, BLOCK_ROWS):
                index.add(self.embeddings(start=start, stop=start + BLOCK_ROWS))
        temporary = path.with_name(f"{FAISS_FILE}.tmp{os.getpid()}")
        try:
            # Through a Python file: faiss.write_index only prints a full disk's error when it closes
            # the file, and would leave a cut-short index to rename into place.
            with open(temporary, "wb") as f:
                faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except Exception as error:  # a full disk: the old index.faiss stays as it was, and a rerun finishes
            if os.path.lexists(temporary):
                os.unlink(temporary)
            raise OSError(f"{path}: could not be written ({error}); the committed rows are kept: rerun when fixed") from error
        self._faiss = index
        if self.info["on_disk"]:  # the lists index.faiss named before, and any a killed run left
            current = os.path.basename(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename)
            for stale in self.directory.glob("*.ivfdata"):
                if stale.name != current:
                    stale.unlink()

    def _merge_on_disk(self, index, count):
        """Add rows index.ntotal..count to the IVF `index` as a new on-disk .ivfdata file (see the module doc).

        The loop of faiss.contrib.ondisk.merge_ondisk, which reads every input by file name: an existing
        index's lists cannot be found that way once its folder was renamed (.partial), so they are passed
        as one more input here. Raises OSError, before writing it, if the disk cannot hold the merged file.
        """
        import faiss

        for leftover in self.directory.glob(ON_DISK_BLOCKS + "*"):  # from a killed run
            shutil.rmtree(leftover)
        ivf = faiss.extract_index_ivf(index)
        lists, blocks = [ivf.invlists] if index.ntotal else [], []
        with tempfile.TemporaryDirectory(dir=self.directory, prefix=ON_DISK_BLOCKS) as folder:
            for start in range(index.ntotal, count, BLOCK_ROWS):
                block = faiss.IndexIVFFlat(ivf.quantizer, ivf.d, ivf.nlist, ivf.metric_type)
                rows = self.embeddings(start=start, stop=min(start + BLOCK_ROWS, count))
                block.add_with_ids(rows, np.arange(start, start + len(rows)))  # ids = positions
                name = os.path.join(folder, f"{start}.faiss")
                with open(name, "wb") as f:  # a Python file: a full disk raises here
                    faiss.write_index(block, faiss.PyCallbackIOWriter(f.write))
                # Mapped, not read: the blocks together may be larger than RAM.
                blocks.append(faiss.read_index(name, faiss.IO_FLAG_MMAP))
                lists.append(faiss.extract_index_ivf(blocks[-1]).invlists)
            data = self.directory / f"index.{count}.ivfdata"
            needed = sum(lst.compute_ntotal() for lst in lists) * (ivf.code_size + 8)  # codes and int64 ids
            if shutil.disk_usage(self.directory).free < needed:  # the mapped file would fail page by page (SIGBUS)
                raise OSError(f"{data}: {needed / 1e9:.1f} GB needed and the disk has less free; nothing was changed")
            merged = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
            pointers = faiss.InvertedListsPtrVector()
            for inverted_lists in lists:
                pointers.push_back(inverted_lists)
            with faiss_prints_to_stderr():
                merged.merge_from_multiple(pointers.data(), pointers.size(), False)
            with open(data, "rb") as f:  # written through the mapping: flush it before index.faiss names it
                os.fsync(f.fileno())
            ivf.replace_invlists(merged, True)
            merged.this.disown()
            index.ntotal = ivf.ntotal = count
            del blocks

    def search(self, queries, k=10, nprobe=None, ef=None, hubness="none") -> list[list[dict]]:
        """For each query embedding, the k best items, best first: {path, score, rank, duration, text?, language?}.

        hubness="csls": text-query embeddings ranked by 2 cos - r(item) (see the module docstring),
        each hit with its "csls_score" beside the cosine "score"; ValueError if the index has no penalties.
        """
        import faiss

        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.info["dim"]))

        def params(depth):  # FAISS's settings for the `depth` best
            if self.info["kind"] == "ivf":
                return faiss.SearchParametersIVF(nprobe=nprobe or DEFAULT_NPROBE)
            if self.info["kind"] == "hnsw":
                return faiss.SearchParametersHNSW(efSearch=max(ef or DEFAULT_EF, depth))
            return None

        if hubness == "csls":
            scores, positions, corrected = self._csls_search(queries, k, params)
        elif hubness == "none":
            scores, positions = self.faiss.search(queries, k, params=params(k))
        else:
            raise ValueError(f"hubness must be 'none' or 'csls', got {hubness!r}")
        found = sorted({int(p) for p in positions.ravel() if p >= 0})
        with self.lock:
            rows = self.db.execute(
                f"SELECT position, path, duration, text, language FROM items WHERE position IN ({','.join('?' * len(found))})", found
            ).fetchall()
        by_position = {row[0]: row[1:] for row in rows}
        results = []
        for query_scores, query_positions in zip(scores, positions):
            hits = []
            for score, position in zip(query_scores, query_positions):
                if position < 0:  # fewer than k items (or IVF clusters too small)
                    continue
                path, duration, text, language = by_position[int(position)]
                hit = {"path": path, "score": float(score), "rank": len(hits) + 1, "duration": duration}
                if hubness == "csls":
                    hit["csls_score"] = float(corrected[len(results)][len(hits)])
                hit.update({key: value for key, value in (("text", text), ("language", language)) if value is not None})
                hits.append(hit)
            results.append(hits)
        return results


    # ---- hubness ---------------------------------------------------------------------------

    def set_hubness_bank(self, bank_path, csls_k=None):
        """Copy a bank file (evaluation/hubness.py) into the index and record its k (default: the
        bank's own, else 10); `write_hubness` then computes the items' penalties. ValueError for a
        bank that cannot be used, or when the index already has another bank or k."""
        bank, bank_k = load_hubness_bank(bank_path)
        k = csls_k if csls_k is not None else bank_k or 10
        if not 1 <= k <= len(bank["text_embeds"]) or bank["text_embeds"].shape[1] != self.info["dim"]:
            raise ValueError(f"{bank_path}: needs [B, {self.info['dim']}] text_embeds and k in [1, B]; got "
                             f"{list(bank['text_embeds'].shape)} and k={k}")
        with open(bank_path, "rb") as f:
            bank_bytes = f.read()
        digest = hashlib.sha256(bank_bytes).hexdigest()
        if self.info.get("hubness_bank_sha256") not in (None, digest) or self.info.get("csls_k") not in (None, k):
            raise ValueError(f"{self.directory} was built with another hubness bank or csls k "
                             f"(k={self.info['csls_k']}): build a new index for that")
        write_atomically(self.directory / BANK_FILE, bank_bytes)
        with self.lock, self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS hubness (position INTEGER PRIMARY KEY, penalty REAL NOT NULL)")
        self._set_info(hubness_bank_sha256=digest, csls_k=k)

    def write_hubness(self):
        """Compute the penalty r(c) of every item that lacks one, a block a transaction (a killed run
        keeps the blocks it committed). Nothing to do for an index without a bank."""
        if "csls_k" not in self.info:
            return
        bank = load_hubness_bank(self.directory / BANK_FILE)[0]["text_embeds"]
        count = len(self)
        with self.lock:
            done = self.db.execute("SELECT COUNT(*) FROM hubness").fetchone()[0]
        for start in range(done, count, BLOCK_ROWS):
            penalty = csls_penalty(self.embeddings(start=start, stop=start + BLOCK_ROWS), bank, self.info["csls_k"])
            with self.lock, self.db:
                self.db.executemany("INSERT INTO hubness VALUES (?, ?)",
                                    [(start + i, float(p)) for i, p in enumerate(penalty)])

    def _csls_search(self, queries, k, params):
        """(cosines, positions, CSLS scores) [Q, k], best CSLS first (see the module docstring);
        params(depth): FAISS's search parameters for the depth best."""
        if "csls_k" not in self.info:
            raise ValueError(f"{self.directory} has no hubness penalties: build it with "
                             "`clasp index --hubness-bank FILE.safetensors`")
        total = self.faiss.ntotal
        if self._penalties is None or len(self._penalties) != total:
            with self.lock:
                rows = self.db.execute("SELECT penalty FROM hubness ORDER BY position").fetchall()
            self._penalties = np.array([penalty for (penalty,) in rows], dtype=np.float32)
            if len(self._penalties) != total:
                raise ValueError(f"{self.directory}: {len(self._penalties)} hubness penalties for {total} items: "
                                 "the build did not finish; rerun `clasp index`")
        penalties, smallest = self._penalties, float(self._penalties.min())
        results = [], [], []
        for query in queries:
            depth = min(max(k, RERANK_DEPTH), total)
            while True:
                cosines, positions = (row[0] for row in self.faiss.search(query[None], depth, params=params(depth)))
                keep = positions >= 0
                cosines, positions = cosines[keep], positions[keep]
                corrected = 2 * cosines - penalties[positions]
                order = np.argsort(-corrected, kind="stable")[:k]
                # Anything FAISS did not return scores at most 2 * (its last cosine) - the smallest penalty.
                bound = 2 * cosines[-1] - smallest if len(cosines) else -np.inf
                # FAISS had no more to give (IVF: the probed lists are exhausted), or none unseen can win.
                if depth >= total or len(cosines) < depth or (len(order) == k and corrected[order[-1]] >= bound):
                    break
                depth = min(2 * depth, total)
            for result, values in zip(results, (cosines, positions, corrected)):
                result.append(np.pad(values[order], (0, k - len(order)), constant_values=-1))
        return tuple(np.stack(result) for result in results)


@contextlib.contextmanager
def faiss_prints_to_stderr():
    """FAISS's on-disk lists printf file names to the C stdout, which `clasp search --json` keeps for its answer."""
    import ctypes

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


__all__ = ["AudioEntry", "ClaspIndex", "KINDS", "model_identity", "read_entries"]
