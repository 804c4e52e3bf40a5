"""Run every bench/bench_*.py (each in its own process) and write BENCHMARKS.md from their results.

    .venv/bin/python bench/run_all.py            # what `make bench` runs
    .venv/bin/python bench/run_all.py --report   # only rewrite BENCHMARKS.md from bench/results/*.json

A benchmark that fails is reported and the others still run; BENCHMARKS.md then shows the
results on file for it (with the date they were measured), and the exit code is 1.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO_ROOT, RESULTS_DIR, format_table  # noqa: E402
from data_clasp.files import write_atomically  # noqa: E402

BENCH_DIR = os.path.join(REPO_ROOT, "bench")
REPORT = os.path.join(REPO_ROOT, "BENCHMARKS.md")
FULL_RUN = os.path.join(RESULTS_DIR, "make_bench.json")  # the last full run's wall time (not a benchmark)


def report() -> str:
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`.venv/bin/python bench/run_all.py`) from `bench/results/*.json`; each",
        "section names the command that measured it, the machine and the time it took. The machines",
        "here are shared and small, so every figure that matters is a ratio against a baseline timed in",
        "the same run (the notebooks' way of doing it, re-implemented in `bench/baselines/`).",
        "GPU figures (one H100, bf16: encoding, Whisper real length vs 30 s, training) come from",
        "`scripts/gpu_run.py` and are in `bench/gpu_results_h100.json` and the README.",
    ]
    if os.path.exists(FULL_RUN):
        with open(FULL_RUN, encoding="utf-8") as f:
            run = json.load(f)
        minutes, seconds = divmod(round(run["wall_s"]), 60)
        parts += ["", f"Last full run (`make bench`, every script below): {minutes} min {seconds} s, finished {run['finished']}"
                  + (f"; failed: {', '.join(run['failed'])}." if run["failed"] else ".")]
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "bench_*.json"))):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        machine = result["machine"]
        measured = result.get("measured", "at an unrecorded date")
        parts += ["", f"## {result['title']}", "",
                  f"`{result['command']}` on {machine['nproc']} × {machine['cpu']}, torch {machine['torch']} "
                  f"({machine['torch_threads']} thread{'s' if machine['torch_threads'] != 1 else ''}), measured {measured}, "
                  f"{result.get('wall_s', 0):.0f} s.", ""]
        for table in result["tables"]:
            if table.get("caption"):
                parts += [table["caption"], ""]
            parts += [format_table(table["columns"], table["rows"]), ""]
        parts += [f"- [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}" for t in result.get("targets", [])]
        parts += [f"- {note}" for note in result.get("notes", [])]
        parts += [f"\n![{name}](bench/results/{name})" for name in sorted(os.listdir(RESULTS_DIR))
                  if name.endswith(".png") and name.startswith(result["name"].removeprefix("bench_"))]
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="only rewrite BENCHMARKS.md from the results on file")
    args = parser.parse_args()
    failed = []
    if not args.report:
        started = time.perf_counter()
        for script in sorted(glob.glob(os.path.join(BENCH_DIR, "bench_*.py"))):
            print(f"\n$ {sys.executable} {os.path.relpath(script, REPO_ROOT)}", flush=True)
            if subprocess.run([sys.executable, script], cwd=REPO_ROOT).returncode != 0:
                failed.append(os.path.basename(script))
        run = {"wall_s": time.perf_counter() - started, "failed": failed,
               "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        write_atomically(FULL_RUN, json.dumps(run, indent=2))
        print(f"\nmake bench: {run['wall_s']:.0f} s for every benchmark", flush=True)
    write_atomically(REPORT, report())
    print(f"\nwrote {os.path.relpath(REPORT, REPO_ROOT)}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
