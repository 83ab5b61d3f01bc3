"""``make bench``: run the benchmarks, then print one summary table of their results and the machine.

python -m benchmarks.run_all                      # everything (about 50 minutes on 2 cores)
python -m benchmarks.run_all --only loader,scaling
python -m benchmarks.run_all --quick              # a smoke run (figures too noisy to quote), results/quick/
python -m benchmarks.run_all --table              # only print the table of the last results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RESULTS

# name -> (module, extra arguments with --quick); run in this order
BENCHMARKS = {
    "loader": ("bench_loader", ["--n", "96", "--epochs", "1", "--repeats", "1"]),
    "overhead": ("bench_overhead", ["--n", "200", "--epochs", "2"]),
    "scaling": ("bench_scaling", ["--sizes", "250,1000", "--ddp-size", "1000", "--epochs", "1"]),
    "memory": ("bench_memory", ["--sizes", "250,1000"]),
    "search": (
        "bench_search",
        [
            "--seeds",
            "1",
            "--trials",
            "4",
            "--epochs",
            "2",
            "--n",
            "300",
            "--backbone",
            "test_efficientnet",
            "--no-pretrained",
        ],
    ),
    "augment": ("bench_augment", ["--batch-size", "8", "--image-size", "96", "--repeats", "2"]),
    # ceiling, default path, gpu_decode and packing in one run; says so and measures nothing without a GPU
    "gpu": ("bench_gpu", ["--n", "1024", "--epochs", "2", "--packing", "1,2"]),
}
# (benchmark, figure, key in its JSON, goal as written, test of the goal)
FIGURES = [
    ("loader", "img/s shards vs JPEG, training augmentation", "train_aug_speedup", ">= 5x", lambda v: v >= 5),
    ("loader", "img/s shards vs JPEG, no augmentation", "no_aug_speedup", ">= 5x", lambda v: v >= 5),
    ("overhead", "epoch time Ray Train / plain PyTorch", "ratio", "<= 1.10", lambda v: v <= 1.10),
    ("overhead", "TorchTrainer.fit() to first step (s)", "fit_to_first_step_s", "<= 10 s", lambda v: v <= 10),
    ("scaling", "img/s 2 DDP workers / 1 worker", "two_worker_speedup", "> 1", lambda v: v > 1),
    ("scaling", "epoch time per image, largest / smallest set", "time_per_image_ratio", "0.8-1.25 (linear)",
     lambda v: 0.8 <= v <= 1.25),
    ("scaling", "worker peak RSS, largest / smallest set", "worker_rss_ratio", "<= 1.10 (flat)", lambda v: v <= 1.1),
    ("memory", "prepare peak RSS, largest / smallest set", "prepare_peak_ratio", "<= 1.10 (flat)",
     lambda v: v <= 1.1),
    ("search", "trial-epochs TPE+ASHA / random", "epochs_ratio", "<= 0.40", lambda v: v <= 0.40),
    ("search", "held-out objective of the chosen trial, TPE+ASHA - random", "test_objective_gain", ">= 0",
     lambda v: v >= 0),
    ("search", "best validation objective, TPE+ASHA - random", "objective_gain", "(see README)", None),
    ("augment", "image-sized ops per batch, image by image / BatchAugment", "image_ops_ratio", "(see README)", None),
    ("gpu", "img/s default loop / step ceiling", "default_vs_ceiling", "(see README)", None),
    ("gpu", "img/s train.gpu_decode loop / step ceiling", "gpu_decode_vs_ceiling", ">= 0.85", lambda v: v >= 0.85),
    ("gpu", "trial-epochs per GPU-hour, 4 trials per GPU / 1", "packing_4_vs_1", ">= 2.5", lambda v: v >= 2.5),
]  # fmt: skip


def run(names: list[str], quick: bool, results: Path) -> list[str]:
    """Run each benchmark in its own process; returns the names that failed (the others still run)."""
    env = {**os.environ, "SKINTUNE_BENCH_RESULTS": str(results)}
    failed = []
    for name in names:
        module, quick_args = BENCHMARKS[name]
        print(f"--- {name} ({module}{' --quick' if quick else ''})", flush=True)
        cmd = [sys.executable, "-m", f"benchmarks.{module}", *(quick_args if quick else [])]
        if subprocess.run(cmd, env=env).returncode != 0:
            failed.append(name)
    return failed


def table(names: list[str], results: Path) -> str:
    """The summary: one row per figure, then the machine(s) the figures were measured on."""
    rows = [("benchmark", "figure", "measured", "goal", "met?")]
    machines, missing = {}, []
    for name, label, key, goal, test in FIGURES:
        path = results / f"{name}.json"
        if name not in names:
            continue
        if not path.exists():
            missing.append(name)
            continue
        data = json.loads(path.read_text())
        value = data.get(key)
        met = "-" if value is None or test is None else ("yes" if test(value) else "NO")
        rows.append((name, label, "-" if value is None else str(value), goal, met))
        m = data["machine"]
        machine = f"{m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}, torch {m['torch']}, {m['platform']}"
        machine += f" ({m['note']})" if m.get("note") else ""
        machines.setdefault(machine, set()).add(f"{name} ({data['when']})")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for machine, which in machines.items():
        lines.append(f"machine: {machine}; {', '.join(sorted(which))}")
    lines += [f"no results for {name} in {results}" + (" (needs a CUDA device)" if name.startswith("gpu") else "")
              for name in sorted(set(missing))]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small settings; results go to results/quick/")
    parser.add_argument("--table", action="store_true", help="run nothing, print the table of the last results")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    results = RESULTS / "quick" if args.quick else RESULTS
    failed = [] if args.table else run(names, args.quick, results)
    print("\n" + table(names, results))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
