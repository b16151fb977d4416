"""Run every benchmark, print each figure against its goal, and write the raw numbers.

    python benchmarks/run.py [--out benchmarks/results/latest.json]

Every figure is a ratio against a baseline measured in the same run, or an absolute bound
the issue sets (milliseconds of start-up, updates a second); these machines are noisy, so
absolute times alone mean little. Exits 1 if a goal is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_cache
import bench_display
import bench_history
import bench_kernel_asyncio
import bench_local
import bench_provider
import bench_several
import bench_startup
from common import all_met

BENCHMARKS = {
    "provider_throughput": bench_provider,
    "display_overhead": bench_display,
    "start_up": bench_startup,
    "long_conversations": bench_history,
    "local_model": bench_local,
    "several_models": bench_several,
    "kernel_asyncio": bench_kernel_asyncio,
    "cached_answer": bench_cache,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "latest.json"
    )
    args = parser.parse_args()
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print(f"Python {machine['python']} on {machine['platform']}, {machine['cpus']} CPUs\n")
    results = {}
    for name, module in BENCHMARKS.items():
        results[name] = module.run()
        print(module.report(results[name]), "\n", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    print(f"Raw numbers: {args.out}")
    missed = [name for name, result in results.items() if not all_met(result)]
    if missed:
        print(f"Goals not met: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
