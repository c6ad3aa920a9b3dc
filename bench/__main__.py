"""Run the benchmarks: `python -m bench [name …]` (all by default).

Every module of this package that has a `run() -> dict` is a benchmark; its result is
written to bench/results/<name>.json and summarised on the terminal.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"


def benchmark_names() -> list[str]:
    names = []
    for module in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        if module.name.startswith("_"):
            continue
        if hasattr(importlib.import_module(f"bench.{module.name}"), "run"):
            names.append(module.name)
    return sorted(names)


def run_benchmark(name: str) -> Path:
    module = importlib.import_module(f"bench.{name}")
    started = time.perf_counter()
    result = module.run()
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    available = benchmark_names()
    selected = argv or available
    unknown = [name for name in selected if name not in available]
    if unknown:
        print(f"Benchmark inconnu : {', '.join(unknown)} (disponibles : {', '.join(available)})", file=sys.stderr)
        return 1
    for name in selected:
        print(f"== {name}", flush=True)
        path = run_benchmark(name)
        print(f"   résultats : {path.relative_to(PACKAGE_DIR.parent)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
