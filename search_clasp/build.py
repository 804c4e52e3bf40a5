"""Building and extending an index: embed the files it lacks, chunk by chunk, then update FAISS.

A new index grows in INDEX_DIR.partial and is renamed to INDEX_DIR at the end; a rerun after a
kill finds the .partial folder and continues it (files already committed are skipped). `add=True`
extends a finished index in place: each chunk is one SQLite transaction and index.faiss is
replaced atomically, so an interrupted --add is also finished by running it again.

Under `accelerate launch` with several processes, the files the index lacks are embedded in
length-balanced shards, one a process (search_clasp/shards.py, resumable per shard, in
INDEX_DIR[.partial]/shards/), and the main process adds them in input order in one transaction:
the same index as one process builds.
"""

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .index import ClaspIndex, model_identity, read_entries

DEFAULTS = dict(kind="flat", nlist=None, m=32, window_s=30.0, hop_s=25.0, on_disk=False, quantize=None)


@dataclass
class BuildSummary:
    index_dir: Path
    added: int = 0
    skipped: int = 0  # already in the index
    total: int = 0
    failed: list[dict] = field(default_factory=list)


def open_or_create(index_dir: Path, add: bool, identity: str, model_dir, settings: dict) -> tuple[ClaspIndex, bool]:
    """(the index to write to, whether it is a .partial folder to rename at the end)."""
    partial = index_dir.with_name(index_dir.name + ".partial")
    if index_dir.exists():
        if not add:
            raise ValueError(f"{index_dir} already exists: pass --add to add files to it, or choose another --output")
        index, is_partial = ClaspIndex(index_dir), False
    elif partial.exists():
        index, is_partial = ClaspIndex(partial), True
    else:
        from configuration_clasp import ClaspConfig

        dim = ClaspConfig.from_pretrained(model_dir).projection_dim
        values = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
        return ClaspIndex.create(partial, identity, model_dir, dim, **values), True
    index.check_model(identity, model_dir)
    for key, value in settings.items():  # an existing index keeps its settings; a different one asked for is an error
        if value is not None and value != index.info[key]:
            raise ValueError(f"{index.directory} was built with {key}={index.info[key]!r}, not {value!r}: build a new index for that")
    return index, is_partial


def build_index(index_dir, model_dir, inputs, add=False, kind=None, nlist=None, m=None, window_s=None, hop_s=None,
                on_disk=None, batch_size=16, files_per_chunk=64, device=None, quantize=None, on_chunk=None,
                progress=True, hubness_bank=None, csls_k=None) -> BuildSummary | None:
    """Embed the audio of `inputs` (directories, files, JSONL manifests) into the index at `index_dir`.

    Settings left as None are the existing index's (or the defaults for a new one). `on_chunk(chunk)`
    is called after each chunk is committed (for reporting, and for tests that kill the build
    mid-way). `hubness_bank`: a bank file (evaluation/hubness.py) whose text embeddings give each
    item its CSLS penalty, with `csls_k` neighbours (default: the bank's k), for
    `search(..., hubness="csls")`; an index keeps its bank, and its later --add runs compute the new
    items' penalties. Raises ValueError when a new index would hold nothing. Under a multi-process
    `accelerate launch`, returns None on every process but the main one.
    """
    from tqdm.auto import tqdm

    from backbones_clasp.checkpoints import check_checkpoint

    from .embedding import ClaspEmbedder
    from .quantization import check_quantize
    from .shards import embed_across_processes, process_state

    index_dir = Path(os.path.abspath(index_dir))
    identity = model_identity(model_dir)  # before loading anything: a wrong model is refused at once
    check_checkpoint(model_dir)  # and a broken one before a .partial index is started with its identity
    check_quantize(quantize, device)  # and a --quantize that cannot run here (a GPU --device, no ONNX Runtime)
    if hubness_bank is not None:
        from evaluation.hubness import load_hubness_bank

        load_hubness_bank(hubness_bank)  # a bad bank is refused before anything is written
    entries, failed = read_entries(inputs)
    for entry in entries:  # absolute: results play from any folder, and --add knows what the index holds
        entry.path = os.path.abspath(entry.path)
    settings = dict(kind=kind, nlist=nlist, m=m, window_s=window_s, hop_s=hop_s, on_disk=on_disk, quantize=quantize)
    state = process_state()
    with state.main_process_first():  # the main process starts a new index; the others then open it
        index, is_partial = open_or_create(index_dir, add, identity, model_dir, settings)
        if hubness_bank is not None and state.is_main_process:
            index.set_hubness_bank(hubness_bank, csls_k)
    quantize = index.info["quantize"]  # an --add embeds as the index was built (one index, one precision)
    check_quantize(quantize, device)
    summary = BuildSummary(index_dir, failed=failed)
    present = index.paths()
    todo = [entry for entry in entries if entry.path not in present]
    summary.skipped = len(entries) - len(todo)
    if todo and state.num_processes > 1:
        shard_dir = index.directory / "shards"
        merged = embed_across_processes(
            [entry.path for entry in todo], shard_dir, json.dumps([index.info[k] for k in ("model_identity", "window_s", "hop_s")] + [quantize]),
            lambda: ClaspEmbedder.from_pretrained(model_dir, batch_size=batch_size, window_s=index.info["window_s"],
                                                  hop_s=index.info["hop_s"], device=device or ("cpu" if quantize else state.device),
                                                  quantize=quantize),
            files_per_chunk=files_per_chunk, progress=progress)
        if merged is not None:  # the main process adds all rows in one transaction: a kill leaves all or none
            by_path = {entry.path: entry for entry in todo}
            if merged.paths:
                index.add(merged.paths, merged.durations, merged.embeddings.numpy(),
                          [by_path[p].text for p in merged.paths], [by_path[p].language for p in merged.paths])
            summary.added, summary.failed = len(merged.paths), summary.failed + merged.failed
            shutil.rmtree(shard_dir)
    elif todo:
        embedder = ClaspEmbedder.from_pretrained(model_dir, batch_size=batch_size, window_s=index.info["window_s"],
                                                 hop_s=index.info["hop_s"], device=device, quantize=quantize)
        by_path = {entry.path: entry for entry in todo}
        bar = tqdm(total=len(todo), unit="file", desc="Indexing", disable=None if progress else True)
        for chunk in embedder.embed_files([entry.path for entry in todo], files_per_chunk=files_per_chunk, progress=bar):
            if chunk.paths:
                index.add(chunk.paths, chunk.durations, chunk.embeddings.numpy(),
                          [by_path[p].text for p in chunk.paths], [by_path[p].language for p in chunk.paths])
            summary.added += len(chunk.paths)
            summary.failed += chunk.failed
            if on_chunk is not None:
                on_chunk(chunk)
        bar.close()
    if not state.is_main_process:  # the main process finishes the index
        index.close()
        return None
    summary.total = len(index)
    if summary.total == 0:  # only a new index can be empty: leave nothing behind
        index.close()
        shutil.rmtree(index.directory)
        raise ValueError("no audio could be embedded: no index written" + "".join(
            f"\n  {failure['path']}: {failure['reason']}" for failure in summary.failed))
    index.write_faiss()
    index.write_hubness()
    index.close()
    if is_partial:
        os.replace(index.directory, index_dir)
    return summary


__all__ = ["BuildSummary", "build_index"]
