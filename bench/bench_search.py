"""Search latency of a `clasp index` (FAISS + its SQLite record) at 10k / 100k / 1M vectors:
exact (flat) against approximate (IVF, HNSW), with the approximate kinds' recall@10 against exact.

    .venv/bin/python bench/bench_search.py [--sizes 10000,100000,1000000]

Vectors: 384-d (the offline-base projection), drawn around 20,000 random centres so that they
have the neighbourhood structure real embeddings have (uniform random vectors have none, and
no approximate index can find their neighbours). Queries: 200 noisy copies of stored vectors,
one query at a time, as `clasp search` sends them; latency is `ClaspIndex.search` (FAISS plus
the metadata lookup). The query's own embedding (the text encoder, e5-small on this CPU) is timed
once with the offline-base preset when its backbones are built, and added in the last column.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import print_result, write_result  # noqa: E402

DIM = 384
QUERIES = 200
TARGET_P50_MS, TARGET_RECALL = 50.0, 0.95


def clustered_vectors(count, dim=DIM, centres=20_000, seed=0):
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((min(centres, count), dim), dtype=np.float32)
    vectors = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):  # in slices: no second N x d temporary
        stop = min(start + 100_000, count)
        vectors[start:stop] = middle[rng.integers(0, len(middle), stop - start)]
        vectors[start:stop] += 0.6 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def query_embedding_ms():
    """Milliseconds to embed one short text query with the offline-base text encoder, or None."""
    try:
        import torch

        from backbones_clasp.checkpoints import load_model_and_processor

        model, processor = load_model_and_processor("offline-base")
        model.eval()
    except FileNotFoundError:
        return None
    times = []
    with torch.no_grad():
        for i in range(30):
            started = time.perf_counter()
            model.get_text_features(**processor(text=[f"où est la gare numéro {i} ?"]))
            times.append(time.perf_counter() - started)
    return float(np.median(times[5:]) * 1000)


def build(index_dir, vectors, kind, nlist=None):
    from search_clasp import ClaspIndex

    index = ClaspIndex.create(index_dir, "bench", "bench-model", DIM, kind=kind, nlist=nlist)
    for start in range(0, len(vectors), 50_000):
        chunk = vectors[start : start + 50_000]
        index.add([f"clip{start + i}.wav" for i in range(len(chunk))], [3.0] * len(chunk), chunk)
    started = time.perf_counter()
    index.write_faiss()
    return index, time.perf_counter() - started


def timed_search(index, queries, **params):
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(query, k=10, **params)[0]
        latencies.append(time.perf_counter() - started)
        found.append({h["path"] for h in hits})
    return np.array(latencies) * 1000, found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    started = time.perf_counter()
    embed_ms = query_embedding_ms()
    rows, targets = [], []
    for count in map(int, args.sizes.split(",")):
        vectors = clustered_vectors(count)
        rng = np.random.default_rng(1)
        queries = vectors[rng.choice(count, QUERIES, replace=False)] + 0.05 * rng.standard_normal((QUERIES, DIM), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        # IVF: ~4·√n clusters up to 100k; at 1M, 1,024 keeps k-means (and the build) in minutes on 2 cores.
        contenders = [("flat", {}, {}), ("ivf", {"nlist": min(round(4 * count**0.5), 1024)}, {"nprobe": 16}),
                      ("ivf", {"nlist": min(round(4 * count**0.5), 1024)}, {"nprobe": 64})]
        if count <= 100_000:  # an HNSW graph of 1M vectors takes too long to build on this machine
            contenders.append(("hnsw", {}, {"ef": 64}))
        exact = None
        with tempfile.TemporaryDirectory() as folder:
            built = {}
            for kind, build_args, search_args in contenders:
                key = (kind, tuple(build_args.items()))
                if key not in built:
                    built[key] = build(os.path.join(folder, f"{kind}-{len(built)}"), vectors, kind, **build_args)
                index, build_s = built[key]
                latencies, found = timed_search(index, queries, **search_args)
                if exact is None:
                    exact = found
                recall = float(np.mean([len(a & b) / 10 for a, b in zip(found, exact)]))
                p50, p99 = np.percentile(latencies, [50, 99])
                setting = ", ".join(f"{k}={v}" for k, v in {**build_args, **search_args}.items()) or "exact"
                rows.append([f"{count:,}", kind, setting, build_s, p50, p99, recall,
                             p50 + embed_ms if embed_ms is not None else "n/a"])
                if count == 1_000_000 and kind != "flat":
                    targets.append({"target": f"p50 <= {TARGET_P50_MS:.0f} ms at 1M with recall@10 >= {TARGET_RECALL}",
                                    "value": f"{setting}: p50 {p50:.1f} ms, recall@10 {recall:.3f}",
                                    "met": bool(p50 <= TARGET_P50_MS and recall >= TARGET_RECALL)})
            for index, _ in built.values():
                index.close()
        del vectors
    result = {
        "title": "Search latency of a clasp index (one query at a time, k = 10)",
        "tables": [{
            "caption": f"{QUERIES} queries per row; recall@10 against the exact (flat) index of the same vectors; "
                       "the last column adds the median time to embed a text query.",
            "columns": ["vectors", "kind", "setting", "FAISS build s", "p50 ms", "p99 ms", "recall@10", "p50 + query embedding ms"],
            "rows": rows,
        }],
        "targets": targets,
        "notes": ["Embedding one text query (offline-base e5-small, CPU): "
                  + (f"{embed_ms:.1f} ms median." if embed_ms is not None else "not measured (no backbones built).")],
        "wall_s": time.perf_counter() - started,
    }
    write_result("bench_search", result)
    print_result(result)


if __name__ == "__main__":
    main()
