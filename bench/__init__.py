"""Benchmarks: `python -m bench` runs each module and writes JSON into bench/results/."""
