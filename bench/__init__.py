"""Benchmarks (`make bench`): each bench_*.py runs alone; run_all.py runs them all and writes BENCHMARKS.md."""
