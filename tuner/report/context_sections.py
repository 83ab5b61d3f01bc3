"""The report's context sections: the search (history, importances, best trial, edges, compute), the data and
how to reproduce the run."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

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
    return "n/a" if x is None or x != x else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _compute_table(inp: Inputs) -> Table:
    train = inp.config.get("train") or {}
    rows = search_mod.compute(
        inp.trials, inp.metrics, int(train.get("workers_per_trial", 1)), bool(inp.summary.get("gpu"))
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


def search(inp: Inputs, out: Path) -> Section:
    section = Section(TITLES["search"])
    if inp.trials is None or inp.trials.empty:
        section.blocks = [
            Text(
                "No search results (tune/results.parquet is absent): the retrained configuration "
                "did not come from a search in this experiment."
            ),
            Heading("Compute"),
            _compute_table(inp),
        ]
        return section
    tune = inp.config.get("tune") or {}
    metric, mode = tune.get("metric", "val/lesion_bacc"), tune.get("mode", "max")
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
    blocks += [Heading("Compute"), _compute_table(inp)]
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
    commands = [str(c) for c in inp.summary.get("commands") or []]
    commands.append(f"skintune compare --experiment {shlex.quote(inp.name)} --storage {shlex.quote(storage)}")
    return Section(
        TITLES["reproduction"],
        [
            Text("The commands that produced this experiment, in order:"),
            Code("\n".join(commands), "bash"),
            Text("The resolved experiment config (`experiment.yaml`):"),
            Code(yaml.safe_dump(inp.config, sort_keys=False), "yaml"),
            Text(f"The retrained MTL training config (seeds {', '.join(map(str, inp.seeds))}):"),
            Code(yaml.safe_dump(inp.summary.get("config") or {}, sort_keys=False), "yaml"),
        ],
    )
