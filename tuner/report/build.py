"""``build_report(experiment_dir)``: read the experiment's outputs, compute every statistic from the per-image
test predictions, draw the figures and write ``report/{report.html, report.md, results.parquet, *.png}``, plus
``ci.json`` (MTL - single-task, quoted by the export) and ``arms.json`` (every arm - single-task).

    python -c "from tuner.report import build_report; print(build_report('results/smoke'))"
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from trainables import storage
from tuner.report import context_sections, render, result_sections
from tuner.report.comparison import (
    N_BOOT,
    N_PERM,
    arms_record,
    check_metrics_json,
    ci_record,
    compare,
    metrics_table,
    pooled_mcnemar,
)
from tuner.report.load import Inputs, load_inputs


def _subtitle(inp: Inputs) -> str:
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f"experiment `{inp.name}` · {len(inp.lesion)} test images · seeds {', '.join(map(str, inp.seeds))} · "
        f"objective `{inp.summary.get('objective', 'val/lesion_bacc')}` · written {when}"
    )


def build_report(experiment_dir: str | Path, n_boot: int = N_BOOT, n_perm: int = N_PERM) -> Path:
    """Write the report under ``<experiment_dir>/report/`` and return the path of ``report.html``.

    ``n_boot``/``n_perm``: bootstrap resamples and permutations of the paired statistics (fewer: faster,
    coarser).
    """
    inp = load_inputs(experiment_dir)
    out = inp.experiment_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for partial in out.glob(".*.tmp*"):  # left by a killed compare (every file here is written by temp + rename)
        partial.unlink(missing_ok=True)
    table = metrics_table(inp)
    storage.write_parquet(str(out / "results.parquet"), table)  # atomic: a killed compare leaves no half file
    comparisons = compare(inp, table, n_boot, n_perm)
    storage.write_text(str(out / "ci.json"), json.dumps(ci_record(inp, comparisons), indent=2))  # read by export
    storage.write_text(str(out / "arms.json"), json.dumps(arms_record(inp, comparisons), indent=2))
    notes = check_metrics_json(inp, table)
    parts = [
        result_sections.headline(inp, comparisons, pooled_mcnemar(inp), notes, out),
        result_sections.per_class(inp, out),
        result_sections.per_site(inp, out),
        result_sections.confusion(inp, out),
        result_sections.site_head(inp, table),
        result_sections.calibration(inp, out),
        context_sections.search(inp, out),
        context_sections.data(inp, out),
        context_sections.reproduction(inp),
    ]
    title, subtitle = f"skintune report: {inp.name}", _subtitle(inp)
    storage.write_text(str(out / "report.md"), render.markdown(title, subtitle, parts))
    storage.write_text(str(out / "report.html"), render.html_page(title, subtitle, parts))
    return out / "report.html"
