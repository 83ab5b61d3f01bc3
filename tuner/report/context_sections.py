"""The report's context sections: the search (history, importances, best trial, edges, compute), the data and
how to reproduce the run."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tuner.commands import recorded
from tuner.report import plots
from tuner.report import search as search_mod
from tuner.report.load import Inputs
from tuner.report.render import Bullets, Code, Figure, Heading, Section, Table, Text

TITLES = {"search": "The search", "data": "The data", "reproduction": "Reproduction"}
STATUS_TEXT = {
    "completed": "completed (ran every epoch)",
    "stopped_early": "stopped early by the scheduler (ASHA)",
    "diverged": "diverged (NaN loss)",
    "error": "failed (error)",
}


def _num(x, digits: int = 4) -> str:
    if getattr(x, "ndim", 0) > 0 or isinstance(x, list | tuple):  # a list-valued parameter (metadata_inputs)
        return str(list(x.tolist() if hasattr(x, "tolist") else x))
    return "n/a" if x is None or x != x else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _compute_table(inp: Inputs, baseline_trials: dict | None = None) -> Table:
    train = inp.config.get("train") or {}
    rows = search_mod.compute(
        inp.trials,
        inp.metrics,
        int(train.get("workers_per_trial", 1)),
        bool(inp.summary.get("gpu")),
        baseline_trials,
    )
    return Table(
        ["stage", "trial-epochs", "wall-hours (sum over runs)", "GPU-hours"],
        [
            [
                r["stage"],
                f"{r['trial_epochs']:.0f}",
                f"{r['wall_hours']:.2f}",
                "no GPU used" if r["gpu_hours"] is None else f"{r['gpu_hours']:.2f}",
            ]
            for r in rows
        ],
    )


def _best_blocks(found: search_mod.Search, metric: str) -> list:
    if found.best is None:
        return [Text("No trial produced an objective value.")]
    b = found.best
    head = (
        f"Best trial `{b['trial_id']}`: best {metric} = {_num(b.get('best_objective'))} at epoch "
        f"{_num(b.get('best_epoch'))} of {_num(b.get('epochs'))} ({b.get('status')})."
    )
    rows = [[p["param"], p["role"], _num(p["value"]), p["range"], p["edge"] or ""] for p in found.params]
    edges = [
        f"`{p['param']}` = {_num(p['value'])} ended at the {p['edge']} edge of {p['range']}: the optimum may "
        "lie outside the range; widen it and search again."
        for p in found.params
        if p["edge"]
    ]
    blocks = [
        Heading("Best trial"),
        Text(head),
        Table(["parameter", "role", "value", "range", "at edge"], rows),
    ]
    blocks.append(Bullets(edges) if edges else Text("No searched parameter ended within 5 % of a range edge."))
    return blocks


ARMS_LABELS = {
    "ablation": "ablation (each arm is the best configuration of the experiment's own search with the site head and "
    "the metadata inputs switched to the arm's)",
    "tuned": "tuned (each arm is the best trial of its own search, with the experiment's search's budget)",
}


def _baseline_blocks(inp: Inputs, found: dict[str, search_mod.ArmSearch], metric: str, mode: str, out: Path):
    """The baseline, labelled for what it is, and with tuned arms every search side by side: their budgets and
    what they spent, and their best-so-far curves in one plot."""
    kind = str(inp.summary.get("baseline_kind"))
    arm_names = [str(a) for a in inp.summary.get("arms") or ("mtl", "single_task")]
    if len(arm_names) > 2:
        label = ARMS_LABELS.get(kind, "not recorded (summary.json has no baseline_kind)")
        blocks: list = [Heading("Arm searches"), Text(f"Arms {', '.join(arm_names)}: {label}.")]
    else:
        label = search_mod.BASELINE_LABELS.get(kind, "not recorded (summary.json has no baseline_kind)")
        blocks = [Heading("Baseline search"), Text(f"Single-task baseline: {label}.")]
    if len(found) < 2:
        if kind == "ablation" and len(arm_names) > 2:
            blocks.append(
                Text(
                    "The arms had no searches of their own: their hyperparameters were tuned for the experiment's "
                    "own arm. `compare: {baseline: tuned}` gives each arm its own search with the same budget."
                )
            )
        elif kind == "ablation":
            blocks.append(
                Text(
                    "The ablation had no search of its own: its hyperparameters were tuned for MTL. "
                    "`compare: {baseline: tuned}` gives the baseline its own search with the MTL search's budget."
                )
            )
        return blocks
    arms = list(found.values())
    blocks.append(Table(["", *(s.title for s in arms)], search_mod.budget_rows(found)))
    curves = {s.arm: s.trials for s in arms if s.trials is not None and not s.trials.empty}
    if len(curves) >= 2:
        fig = plots.best_so_far(curves, {s.arm: s.title for s in arms}, metric, mode, out / "best_so_far.png")
        blocks.append(Figure(fig, "Best objective so far over each search's trials (same budget, same sampler seed)"))
    notes = search_mod.budget_notes(found)
    return blocks + ([Bullets(notes)] if notes else [])


def search(inp: Inputs, out: Path) -> Section:
    section = Section(TITLES["search"])
    tune = inp.config.get("tune") or {}
    metric, mode = tune.get("metric", "val/lesion_bacc"), tune.get("mode", "max")
    found_searches = search_mod.searches(inp.experiment_dir, inp.summary)
    own = next((s for s in found_searches.values() if s.own), found_searches.get(search_mod.MTL))
    baseline_trials = {s.title: s.trials for s in found_searches.values() if s is not own}
    baseline_blocks = _baseline_blocks(inp, found_searches, metric, mode, out)
    if inp.trials is None or inp.trials.empty:
        section.blocks = [
            Text(
                "No search results (tune/results.parquet is absent): the retrained configuration "
                "did not come from a search in this experiment."
            ),
            *baseline_blocks,
            Heading("Compute"),
            _compute_table(inp, baseline_trials),
        ]
        return section
    found = search_mod.analyse(inp.trials, inp.config, inp.summary.get("best_trial"))
    counts = Table(
        ["outcome", "trials"],
        [[STATUS_TEXT[s], n] for s, n in found.status_counts.items()] + [["total", len(found.trials)]],
    )
    fig = plots.objective(found.trials, metric, mode, out / "objective.png")
    blocks = [
        Text(
            f"{len(found.trials)} trials over search space `{inp.config.get('search_space')}`, objective "
            f"{metric} ({mode})."
        ),
        counts,
        Figure(fig, "Each trial's best objective, in creation order; trials without a value at the bottom"),
        *_best_blocks(found, metric),
    ]
    blocks.append(Heading("Parameter importances"))
    if found.importances:
        imp = plots.importances(found.importances, out / "importances.png")
        blocks += [
            Table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in found.importances.items()]),
            Figure(imp, "Parameter importances (fANOVA)"),
        ]
    if found.notes:
        blocks.append(Bullets(found.notes))
    blocks += [*baseline_blocks, Heading("Compute"), _compute_table(inp, baseline_trials)]
    section.blocks = blocks
    return section


def data(inp: Inputs, out: Path) -> Section:
    ds = inp.dataset
    counts = ds.get("counts") or {}
    splits = [s for s in ("train", "val", "test") if s in counts]
    split_rows = [
        [s, counts[s].get("images", ""), counts[s].get("groups", ""), counts[s].get("site_missing", "")] for s in splits
    ]
    lesion_rows = [[c, *(counts[s]["lesion"].get(c, 0) for s in splits)] for c in inp.lesion_classes]
    site_rows = [[c, *(counts[s]["site"].get(c, 0) for s in splits)] for c in inp.site_classes]
    site_rows.append(["(missing)", *(counts[s].get("site_missing", 0) for s in splits)])
    fig = plots.data_counts(counts, inp.lesion_classes, inp.site_classes, out / "data_counts.png")
    rate = ds.get("site_missing_rate")
    return Section(
        TITLES["data"],
        [
            Bullets(
                [
                    f"dataset fingerprint: `{ds.get('fingerprint', 'n/a')}`",
                    f"images: {ds.get('images', 'n/a')}; missing-site rate: "
                    f"{'n/a' if rate is None else f'{100 * rate:.1f} %'}",
                    f"test images in this report: {len(inp.lesion)}",
                ]
            ),
            Table(["split", "images", "groups", "site missing"], split_rows),
            Table(["lesion class", *splits], lesion_rows),
            Table(["body site", *splits], site_rows),
            Figure(fig, "Images per lesion class and body site in each split"),
        ],
    )


def reproduction(inp: Inputs) -> Section:
    storage = inp.config.get("storage") or str(inp.experiment_dir.parent)
    commands = recorded(str(inp.experiment_dir)) or [str(c) for c in inp.summary.get("commands") or []]
    commands.append(f"skintune compare --experiment {shlex.quote(inp.name)} --storage {shlex.quote(storage)}")
    return Section(
        TITLES["reproduction"],
        [
            Text("The commands that produced this experiment, in order:"),
            Code("\n".join(commands), "bash"),
            Text("The resolved experiment config (`experiment.yaml`):"),
            Code(yaml.safe_dump(inp.config, sort_keys=False), "yaml"),
            *_configs(inp),
        ],
    )


def _configs(inp: Inputs) -> list:
    """Each retrained arm's training config (summary.json ``configs``; before named arms, MTL's)."""
    seeds = ", ".join(map(str, inp.seeds))
    configs = inp.summary.get("configs")
    if not configs:
        return [
            Text(f"The retrained MTL training config (seeds {seeds}):"),
            Code(yaml.safe_dump(inp.summary.get("config") or {}, sort_keys=False), "yaml"),
        ]
    blocks: list = []
    for arm, config in configs.items():
        blocks += [
            Text(f"The retrained `{arm}` training config (seeds {seeds}):"),
            Code(yaml.safe_dump(config, sort_keys=False), "yaml"),
        ]
    return blocks
