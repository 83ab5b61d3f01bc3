"""``make bench``: run every benchmark, then print one summary table of benchmarks/results/*.json."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import RESULTS

BENCHMARKS = ["bench_loader", "bench_overhead", "bench_search"]
HEADLINES = {
    "loader": ("train_aug_speedup", "no_aug_speedup", "goal_speedup"),
    "overhead": ("ratio", "goal_ratio", "fit_to_first_step_s"),
    "search": ("epochs_ratio", "objective_gain", "goal"),
}


def main() -> None:
    for name in BENCHMARKS:
        print(f"--- {name}", flush=True)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)
    print(f"\n{'benchmark':<12} {'figures':<70} machine")
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        keys = HEADLINES.get(data["benchmark"], ())
        figures = ", ".join(f"{k}={data[k]}" for k in keys if k in data)
        machine = f"{data['machine']['cpus']} CPU, GPU {data['machine']['gpu']}"
        print(f"{data['benchmark']:<12} {figures:<70} {machine}")


if __name__ == "__main__":
    main()
