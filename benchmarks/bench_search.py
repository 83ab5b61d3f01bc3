"""Search efficiency: TPE + ASHA vs random search without early stopping, same number of trials, 3 seeds.

For each seed both strategies search the demo space on the same synthetic data; the benchmark records the best
validation objective each reached and the trial-epochs each spent. Goal (issue 4): the same or a better objective
at no more than 40 % of the trial-epochs.

    python -m benchmarks.bench_search [--seeds 3] [--trials 6] [--epochs 3] [--n 800]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ray

from benchmarks.common import timed, write_result
from tuner.config import ExperimentConfig
from tuner.tune_run import run_tune


def _experiment(storage: Path, root: Path, name: str, seed: int, strategy: str, args) -> ExperimentConfig:
    asha = strategy == "tpe_asha"
    return ExperimentConfig(
        name=name,
        storage=str(storage),
        data={
            "format": "isic2019",
            "root": str(root),
            "synth": {"n": args.n, "image_size": 80, "seed": 0},
            "image_size": 64,
            "prepared": str(storage / "prepared"),
        },
        search_space="demo",
        tune={
            "num_samples": args.trials,
            "max_epochs": args.epochs,
            "grace_period": 1,
            "reduction_factor": 2,
            "sampler": "tpe" if asha else "random",
            "scheduler": "asha" if asha else "none",
            "seed": seed,
        },
        train={
            "workers_per_trial": 1,
            "backbone": "tf_efficientnet_lite0",
            "pretrained": True,
            "batch_size": 32,
            "warmup_epochs": 0.5,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=800)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for strategy in ("tpe_asha", "random_full"):
                exp = _experiment(Path(tmp), Path(tmp, "raw"), f"{strategy}-{seed}", seed, strategy, args)
                seconds, (_, table) = timed(run_tune, exp)
                runs.append(
                    {
                        "seed": seed,
                        "strategy": strategy,
                        "best_objective": float(table["best_objective"].max()),
                        "trial_epochs": int(table["epochs"].sum()),
                        "seconds": round(seconds, 1),
                    }
                )
                print(runs[-1], flush=True)
        ray.shutdown()
    summary = {}
    for strategy in ("tpe_asha", "random_full"):
        mine = [r for r in runs if r["strategy"] == strategy]
        summary[strategy] = {
            "best_objective_mean": round(statistics.mean(r["best_objective"] for r in mine), 4),
            "trial_epochs_mean": statistics.mean(r["trial_epochs"] for r in mine),
        }
    epochs_ratio = summary["tpe_asha"]["trial_epochs_mean"] / summary["random_full"]["trial_epochs_mean"]
    result = {
        "settings": vars(args),
        "runs": runs,
        "summary": summary,
        "epochs_ratio": round(epochs_ratio, 3),
        "objective_gain": round(
            summary["tpe_asha"]["best_objective_mean"] - summary["random_full"]["best_objective_mean"], 4
        ),
        "goal": "objective_gain >= 0 at epochs_ratio <= 0.40",
    }
    write_result("search", result)
    print(result)


if __name__ == "__main__":
    main()
