"""What every benchmark shares: the machine's description, peak memory of a child process,
timing, and the result file (JSON, written atomically, read back by run_all for BENCHMARKS.md).

The machine this runs on is shared and small (2 cores), so absolute seconds drift from run to
run; every benchmark therefore reports a ratio against a baseline timed in the same run, and
interleaves the contenders so that a busy neighbour slows both sides alike.
"""

import json
import os
import platform
import subprocess
import sys
import time

from data_clasp.files import write_atomically

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numpy
    import torch

    return {
        "nproc": os.cpu_count() if not hasattr(os, "sched_getaffinity") else len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def best_of(function, repeats: int) -> float:
    """Fastest of `repeats` wall-clock timings: the run least disturbed by the neighbours."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def run_child(argv: list[str]) -> tuple[str, int]:
    """Run a command; return its stdout and its own peak resident memory in bytes.

    os.wait4 gives the rusage of exactly this child (getrusage(RUSAGE_CHILDREN) would be the
    maximum over every child this process ever waited for).
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    stdout = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
    return stdout, usage.ru_maxrss * 1024  # Linux reports kilobytes


def format_table(columns: list[str], rows: list[list]) -> str:
    """A markdown table (it reads fine in a terminal too)."""

    def cell(value):
        if isinstance(value, float):
            if value == 0 or 0.01 <= abs(value) < 1e6:
                return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
            return f"{value:.2e}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, result: dict, command: str | None = None) -> str:
    """bench/results/<name>.json, written whole (data_clasp.files.write_atomically); `command`: how
    it was run, when not the plain `.venv/bin/python bench/<name>.py`."""
    result = {"name": name, "machine": machine(), "command": command or f".venv/bin/python bench/{name}.py",
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **result}
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    write_atomically(path, json.dumps(result, indent=2) + "\n")
    return path


def print_result(result: dict) -> None:
    print(f"\n## {result['title']}\n")
    for table in result["tables"]:
        if table.get("caption"):
            print(table["caption"] + "\n")
        print(format_table(table["columns"], table["rows"]) + "\n")
    for target in result.get("targets", []):
        print(f"[{'met' if target['met'] else 'MISSED'}] {target['target']}: {target['value']}")
    for note in result.get("notes", []):
        print(f"- {note}")
    sys.stdout.flush()


def speech_like_clips(num_clips: int, shortest_s: float = 2.0, longest_s: float = 20.0, rate: int = 16000, seed: int = 0):
    """Deterministic float32 clips, durations spread evenly over [shortest_s, longest_s].

    Speech-like enough for timing (the encoders' cost depends on the length only): a gliding
    pitch with harmonics, switched on and off at a syllable rate of about 4 Hz, plus noise.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    clips = []
    for seconds in np.linspace(shortest_s, longest_s, num_clips):
        t = np.arange(int(seconds * rate)) / rate
        pitch = 120 + 40 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
        syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
        clips.append((0.2 * voiced * syllables + 0.01 * rng.standard_normal(t.shape)).astype(np.float32))
    return clips
