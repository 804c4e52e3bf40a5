"""Embedding audio files across processes and machines with Accelerate: `accelerate launch ... -m clasp_cli.main embed|index`.

Every process reads the same inputs and computes the same split: files are dealt, longest first,
to the shard with the least audio so far (the greedy longest-processing-time rule: durations come
from the file headers, and no shard ends up with more than 4/3 of the best possible longest shard).
Process `rank` embeds shard `rank` on its own device (Accelerate's `PartialState().device`: its GPU,
or the CPU; the CPU with --quantize int8) and writes SHARD_DIR/shard-RANK-of-N.safetensors whole
(temporary file + rename). Once every process is done (`wait_for_everyone`), the main process
merges the shards in input order: the same rows, paths and failures as a one-process run, whatever
the number of processes.

Resumable per shard: a shard file records its inputs and the model's fingerprint, and a rerun
with the same inputs, model and number of processes keeps each finished shard and embeds only the
others (a killed process's shard, and nobody else's). SHARD_DIR must be on a file system that all
processes share (on several machines: a network file system).
"""

import heapq
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from data_clasp.files import write_atomically
from data_clasp.processes import process_state  # noqa: F401 (re-exported: build.py and the commands use it)

from .embedding import EmbeddedChunk

# A process that finishes its shard waits at the barrier for the slowest one: hours on a large archive.


def audio_seconds(path) -> float:
    """A file's duration from its header (libsndfile, else FFmpeg through torchcodec); 0 if neither reads it."""
    try:
        import soundfile

        return float(soundfile.info(os.fspath(path)).duration)
    except Exception:
        try:
            from torchcodec.decoders import AudioDecoder

            return float(AudioDecoder(os.fspath(path)).metadata.duration_seconds_from_header or 0.0)
        except Exception:  # unreadable: it fails at once when embedded, so it costs nothing
            return 0.0


def split_by_duration(seconds: list[float], num_shards: int) -> list[list[int]]:
    """Input positions of each of `num_shards` shards, in input order: longest first into the least-loaded shard."""
    loads = [(0.0, shard) for shard in range(num_shards)]
    shards = [[] for _ in range(num_shards)]
    for position in sorted(range(len(seconds)), key=lambda i: (-seconds[i], i)):
        load, shard = heapq.heappop(loads)
        shards[shard].append(position)
        heapq.heappush(loads, (load + seconds[position], shard))
    return [sorted(shard) for shard in shards]


def shard_file(shard_dir, rank: int, num_shards: int) -> Path:
    return Path(shard_dir) / f"shard-{rank:05d}-of-{num_shards:05d}.safetensors"


def read_shard(path, inputs: list[str], fingerprint: str) -> EmbeddedChunk | None:
    """The finished shard at `path` if it holds these inputs embedded by this model, else None."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
            if json.loads(metadata["inputs"]) != inputs or metadata["fingerprint"] != fingerprint:
                return None
            return EmbeddedChunk(json.loads(metadata["paths"]), f.get_tensor("durations").tolist(),
                                 f.get_tensor("embeddings"), json.loads(metadata["failed"]))
    except Exception:  # missing, or from an interrupted copy: embed it again
        return None


def embed_shard(inputs: list[str], path, fingerprint: str, load_embedder, strict=False, files_per_chunk=64,
                progress=None) -> EmbeddedChunk:
    """Embed `inputs` into the shard file `path` (written whole), unless it holds them already."""
    done = read_shard(path, inputs, fingerprint)
    if done is not None:
        return done
    shard = EmbeddedChunk(embeddings=torch.zeros(0, 0))
    if inputs:
        embedder = load_embedder()
        chunks = list(embedder.embed_files(inputs, files_per_chunk=files_per_chunk, strict=strict, progress=progress))
        shard = EmbeddedChunk([p for c in chunks for p in c.paths], [d for c in chunks for d in c.durations],
                              torch.cat([c.embeddings for c in chunks]), [f for c in chunks for f in c.failed])
    metadata = {"inputs": json.dumps(inputs), "fingerprint": fingerprint, "paths": json.dumps(shard.paths),
                "failed": json.dumps(shard.failed)}
    write_atomically(path, save({"embeddings": shard.embeddings.contiguous(),
                                 "durations": torch.tensor(shard.durations, dtype=torch.float64)}, metadata=metadata))
    return shard


def embed_across_processes(paths: list[str], shard_dir, fingerprint: str, load_embedder, strict=False,
                           files_per_chunk=64, progress=True) -> EmbeddedChunk | None:
    """Each process embeds its shard of `paths`; the main process returns all of them merged in input order.

    `fingerprint`: a string that changes with anything that changes the embeddings (the model's
    identity, the window settings): a shard file made with another is embedded again.
    `load_embedder()`: a ClaspEmbedder on this process's device, called only if there is work.
    Returns None on the other processes. The caller removes `shard_dir` once the result is stored.
    """
    from tqdm.auto import tqdm

    state = process_state()
    shards = split_by_duration([audio_seconds(path) for path in paths], state.num_processes)
    mine = [paths[i] for i in shards[state.process_index]]
    with tqdm(total=len(mine), unit="file", desc=f"Embedding (shard {state.process_index + 1}/{state.num_processes})",
              disable=None if progress and state.is_main_process else True) as bar:
        embed_shard(mine, shard_file(shard_dir, state.process_index, state.num_processes), fingerprint, load_embedder,
                    strict=strict, files_per_chunk=files_per_chunk, progress=bar)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    position = {path: i for i, path in enumerate(paths)}
    rows, failed = [], []
    for rank, shard in enumerate(shards):
        inputs = [paths[i] for i in shard]
        done = read_shard(shard_file(shard_dir, rank, state.num_processes), inputs, fingerprint)
        if done is None:
            raise OSError(f"{shard_file(shard_dir, rank, state.num_processes)}: missing or unreadable after every process finished")
        rows += [(position[p], p, d, e) for p, d, e in zip(done.paths, done.durations, done.embeddings)]
        failed += done.failed
    rows.sort(key=lambda row: row[0])
    failed.sort(key=lambda failure: position[failure["path"]])
    embeddings = torch.stack([row[3] for row in rows]) if rows else torch.zeros(0, 0)
    return EmbeddedChunk([row[1] for row in rows], [row[2] for row in rows], embeddings, failed)


__all__ = ["audio_seconds", "embed_across_processes", "embed_shard", "process_state", "shard_file", "split_by_duration"]
