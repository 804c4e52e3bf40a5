"""An IVF index larger than RAM: `clasp index --kind ivf --on-disk` against the in-RAM IVF, at 1M
(and, as an option, 10M) vectors: FAISS build time, peak memory of the build and of a search
process, p50/p99 latency of one query at a time, and recall@10 against exact search.

    .venv/bin/python bench/bench_ondisk_index.py [--sizes 1000000[,10000000]] [--nlist 1024] [--nprobe 64]
        [--kinds in-RAM,on-disk] [--folder DIR]

At 10M the in-RAM contender needs ~15 GB of memory for its lists and its SQLite record doubles the
disk needed (~3 kB a vector each), so `--sizes 10000000 --kinds on-disk` measures the on-disk one
alone; the 1M rows compare the two.

Vectors: 384-d, drawn around 20,000 random centres as in bench_search.py, but generated slice by
slice (seeded per slice) so that 10M vectors (15 GB) never sit in this process's memory. Both
indexes hold the same rows in their SQLite record and are built by `ClaspIndex.write_faiss` with
the same nlist. Each build and each search runs in a child process, so that its peak resident set
(wait4's ru_maxrss, the same as the child's VmHWM) is its own. The search child imports torch, as
`clasp search` does (about 1 GB resident before any index is opened), so it also reports what the
open index and its queries added: anonymous memory (RssAnon) and mapped file pages (RssFile). A
memory-mapped list file's pages count in the resident set once touched, but they are the kernel's
page cache, which it reclaims when memory is short. Recall@10: each index's top 10 against the exact top 10
(numpy over every vector) for the same queries (noisy copies of stored vectors).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import print_result, run_child, write_result  # noqa: E402

DIM = 384
QUERIES = 200
SLICE = 100_000
TARGET_RECALL = 0.95
TARGET_SEARCH_RSS = 1e9  # at 10M vectors
KINDS = ("in-RAM", "on-disk")


def vector_slices(count, centres=20_000, seed=0):
    """(start, [n, DIM] float32 unit vectors) slices of the same clustered vectors for any `count`."""
    middle = np.random.default_rng(seed).standard_normal((min(centres, count), DIM), dtype=np.float32)
    for start in range(0, count, SLICE):
        rng = np.random.default_rng([seed, start])
        vectors = middle[rng.integers(0, len(middle), min(SLICE, count - start))]
        vectors += 0.6 * rng.standard_normal(vectors.shape, dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield start, vectors


def make_indexes(folder, count, nlist, kinds=KINDS, seed=1):
    """The two unbuilt indexes (SQLite records), the queries, and the exact top 10 of each query."""
    from search_clasp import ClaspIndex

    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(count, QUERIES, replace=False))
    queries = np.empty((QUERIES, DIM), dtype=np.float32)
    indexes = {name: ClaspIndex.create(os.path.join(folder, name), "bench", "bench-model", DIM, kind="ivf", nlist=nlist,
                                       on_disk=name == "on-disk") for name in kinds}
    best_scores = np.full((QUERIES, 10), -np.inf, dtype=np.float32)
    best_ids = np.zeros((QUERIES, 10), dtype=np.int64)
    for start, vectors in vector_slices(count):  # a first pass for the queries' sources (nothing kept)
        inside = picked[(picked >= start) & (picked < start + len(vectors))]
        queries[np.searchsorted(picked, inside)] = vectors[inside - start]
    queries += 0.05 * rng.standard_normal(queries.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for start, vectors in vector_slices(count):
        for index in indexes.values():
            index.add([f"clip{start + i}.wav" for i in range(len(vectors))], [3.0] * len(vectors), vectors)
        scores = queries @ vectors.T  # exact top 10 so far, merged slice by slice
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(merged_scores, keep, 1), np.take_along_axis(merged_ids, keep, 1)
    for index in indexes.values():
        index.close()
    return queries, best_ids


def child_build(index_dir):
    from search_clasp import ClaspIndex

    index = ClaspIndex(index_dir)
    started = time.perf_counter()
    index.write_faiss()
    print(json.dumps({"build_s": time.perf_counter() - started}))


def memory_status():
    """VmHWM (peak resident), VmRSS, RssAnon, RssFile of this process, in bytes."""
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f
                if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile"))}


def child_search(index_dir, queries_file, nprobe):
    from search_clasp import ClaspIndex  # imports torch, as `clasp search` does (it embeds the query)

    queries = np.load(queries_file)
    before = memory_status()
    index = ClaspIndex(index_dir)
    index.faiss  # opening is not a query's latency
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(query, k=10, nprobe=nprobe)[0]
        latencies.append(time.perf_counter() - started)
        found.append([int(h["path"][4:-4]) for h in hits])
    after = memory_status()
    print(json.dumps({"latencies_ms": [1000 * s for s in latencies], "found": found, "before": before, "after": after}))


CGROUP_ROOT = "/sys/fs/cgroup/memory"  # cgroup v1's memory controller (v2: memory.max; not handled here)


def run_in_memory_cgroup(argv, limit_bytes):
    """`run_child(argv)` inside a new memory cgroup of `limit_bytes`, which counts the page cache the
    child's mapped files occupy as well as its own memory (the kernel reclaims cached pages at the
    limit; a working set above it is killed). Returns (stdout, peak RSS, the cgroup's peak charge,
    times the limit was hit). OSError when this machine's cgroup v1 memory controller is not writable."""
    folder = os.path.join(CGROUP_ROOT, f"clasp-bench-{os.getpid()}")
    os.mkdir(folder)
    try:
        with open(os.path.join(folder, "memory.limit_in_bytes"), "w") as f:
            f.write(str(int(limit_bytes)))
        if os.path.exists(os.path.join(folder, "memory.memsw.limit_in_bytes")):  # no swapping around the limit
            with open(os.path.join(folder, "memory.memsw.limit_in_bytes"), "w") as f:
                f.write(str(int(limit_bytes)))
        procs = os.path.join(folder, "cgroup.procs")
        # The shell puts itself in the cgroup, then becomes the child (exec): wait4 still measures the child.
        out, peak = run_child(["sh", "-c", f'echo $$ > "{procs}" && exec "$0" "$@"', *argv])
        with open(os.path.join(folder, "memory.max_usage_in_bytes")) as f:
            charged = int(f.read())
        with open(os.path.join(folder, "memory.failcnt")) as f:
            hits = int(f.read())
        return out, peak, charged, hits
    finally:
        os.rmdir(folder)


def parse_bytes(text: str) -> int:
    """"1G" / "512M" / "1000000000" -> bytes (decimal: 1G = 10^9, as the target's "1 GB")."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1:].upper() in units else int(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000", help="comma-separated vector counts (10000000 is the large option)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF clusters (default: 4·√n, at most 1,024 as bench_search.py)")
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--folder", default=None, help="where the indexes are built (default: a temporary folder); "
                                                       "needs ~3 kB a vector of free disk")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which indexes to build: in-RAM, on-disk or both")
    parser.add_argument("--search-memory-limit", type=parse_bytes, default=None, metavar="BYTES",
                        help="also search the on-disk index inside a memory cgroup of this size (e.g. 1G; page cache "
                             "included; needs a writable cgroup v1 memory controller, as root)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kinds = tuple(args.kinds.split(","))
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds: a comma-separated subset of {','.join(KINDS)}, got {args.kinds!r}")
    if args.child:
        return child_build(*args.child[1:]) if args.child[0] == "build" else child_search(*args.child[1:3], int(args.child[3]))
    started = time.perf_counter()
    load = [os.getloadavg()]
    rows, targets, cgroup_notes = [], [], []
    me = [sys.executable, os.path.abspath(__file__), "--child"]
    for count in map(int, args.sizes.split(",")):
        nlist = args.nlist or min(round(4 * count**0.5), 1024)
        folder = tempfile.mkdtemp(dir=args.folder, prefix="bench-ondisk-")
        try:
            queries, exact = make_indexes(folder, count, nlist, kinds)
            np.save(os.path.join(folder, "queries.npy"), queries)
            searches = [(name, None) for name in kinds]
            if args.search_memory_limit and "on-disk" in kinds:
                searches.append(("on-disk", args.search_memory_limit))
            for name, limit in searches:
                index_dir = os.path.join(folder, name)
                search = [*me, "search", index_dir, os.path.join(folder, "queries.npy"), str(args.nprobe)]
                if limit is None:  # build, then search it; a row with a limit searches the index just built again
                    out, build_rss = run_child([*me, "build", index_dir])
                    build_s = json.loads(out)["build_s"]
                    out, search_rss = run_child(search)
                else:
                    with open("/proc/sys/vm/drop_caches", "w") as f:  # cold: the lists start on disk
                        os.sync()
                        f.write("1")
                    out, search_rss, charged, hits = run_in_memory_cgroup(search, limit)
                    cgroup_notes.append(f"The search in a {limit / 1e9:g} GB memory cgroup (page cache counted, started "
                                        f"with a cold cache): the cgroup's peak charge {charged / 1e9:.2f} GB, the "
                                        f"limit reached {hits:,} times" + (" (each time the kernel reclaimed mapped list pages)" if hits else "")
                                        + "; its peak RSS counts the mapped pages it touched before they were reclaimed.")
                searched = json.loads(out)
                recall = float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(searched["found"], exact.tolist())]))
                p50, p99 = np.percentile(searched["latencies_ms"], [50, 99])
                disk = sum(os.path.getsize(os.path.join(index_dir, f)) for f in os.listdir(index_dir) if "faiss" in f or "ivfdata" in f)
                before, after = searched["before"], searched["after"]
                index_anon, index_mapped = after["RssAnon"] - before["RssAnon"], after["RssFile"] - before["RssFile"]
                label = name if limit is None else f"{name}, search in a {limit / 1e9:g} GB memory cgroup"
                rows.append([f"{count:,}", label, f"nlist={nlist}, nprobe={args.nprobe}", build_s, build_rss / 1e9,
                             search_rss / 1e9, before["VmRSS"] / 1e9, index_anon / 1e9, index_mapped / 1e9,
                             p50, p99, recall, disk / 1e9])
                load.append(os.getloadavg())
                if limit is not None:
                    targets.append({"target": f"search within a {limit / 1e9:g} GB memory cgroup at {count:,} (on disk)",
                                    "value": f"done, recall@10 {recall:.3f}, p50 {p50:.0f} ms",
                                    "met": bool(limit <= TARGET_SEARCH_RSS and recall >= TARGET_RECALL)})
                elif name == "on-disk":
                    targets.append({"target": f"recall@10 >= {TARGET_RECALL} at {count:,} (on disk)",
                                    "value": f"{recall:.3f}", "met": bool(recall >= TARGET_RECALL)})
                    if count >= 10_000_000:
                        targets.append({"target": "memory a search adds for the index <= 1 GB at 10M (on disk)",
                                        "value": f"anonymous {index_anon / 1e9:.2f} GB, mapped pages {index_mapped / 1e9:.2f} GB",
                                        "met": bool(index_anon <= TARGET_SEARCH_RSS)})
        finally:
            shutil.rmtree(folder)
    result = {
        "title": "IVF lists on disk (memory-mapped) against in RAM" if kinds == KINDS else
                 f"IVF lists {' and '.join(kinds)} alone, {', '.join(f'{int(n):,}' for n in args.sizes.split(','))} vectors",
        "tables": [{
            "caption": f"{QUERIES} queries one at a time, k = 10; build = ClaspIndex.write_faiss (k-means on a sample, "
                       "then adding every row); peak RSS of the build and of a search process (its own, wait4); "
                       "before index = its resident set after imports (torch, as `clasp search`), before opening the index; "
                       "index anonymous / mapped = what the open index and the queries added to RssAnon / RssFile "
                       "(mapped file pages are the kernel's reclaimable page cache); "
                       "recall@10 against exact search; index files = index.faiss (+ .ivfdata).",
            "columns": ["vectors", "lists", "setting", "FAISS build s", "build peak RSS GB", "search peak RSS GB",
                        "before index GB", "index anonymous GB", "index mapped GB", "p50 ms", "p99 ms", "recall@10", "index files GB"],
            "rows": rows,
        }],
        "targets": targets,
        "notes": ["Load average (1, 5, 15 min) at the start and after each row: "
                  + "; ".join(" ".join(f"{x:.2f}" for x in entry) for entry in load),
                  "The page cache was warm (the lists had just been written) for the searches without a cgroup; a cold "
                  "cache adds disk reads to the first queries that touch each list.", *cgroup_notes],
        "wall_s": time.perf_counter() - started,
    }
    # Another size or a single kind is another section of BENCHMARKS.md, beside the default 1M comparison.
    default = args.sizes == "1000000" and kinds == KINDS and args.nlist is None and args.nprobe == 64 and not args.search_memory_limit
    name = "bench_ondisk_index" + ("" if default else "_" + "_".join(f"{int(n) / 1e6:g}m" for n in args.sizes.split(","))
                                                      + ("" if kinds == KINDS else "_" + "_".join(k.lower() for k in kinds)))
    arguments = " ".join(a for a in sys.argv[1:] if not a.startswith("--folder") and a != args.folder)
    write_result(name, result, command=f".venv/bin/python bench/bench_ondisk_index.py {arguments}".strip())
    print_result(result)


if __name__ == "__main__":
    main()
