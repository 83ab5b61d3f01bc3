"""The commands that made an experiment are recorded in order and listed by the report."""

from __future__ import annotations

from tuner import commands
from tuner.report import build_report

from .test_report import make_experiment


def test_record_appends_in_order_without_repeating_the_last_line(tmp_path):
    exp = str(tmp_path)
    assert commands.recorded(exp) == []
    commands.record(exp, ["tune", "--config", "my experiments/x.yaml"])
    commands.record(exp, ["tune", "--config", "my experiments/x.yaml"])  # a rerun of the same line
    commands.record(exp, ["retrain", "--experiment", "x", "--seeds", "5"])
    assert commands.recorded(exp) == [
        "skintune tune --config 'my experiments/x.yaml'",
        "skintune retrain --experiment x --seeds 5",
    ]


def test_report_lists_the_recorded_commands_then_compare(tmp_path):
    exp = make_experiment(tmp_path)
    commands.record(str(exp), ["tune", "--config", "experiments/fake.yaml", "--storage", str(tmp_path)])
    commands.record(str(exp), ["retrain", "--experiment", "fake", "--storage", str(tmp_path)])
    md = build_report(exp, n_boot=50, n_perm=20).with_name("report.md").read_text()
    block = md.split("The commands that produced this experiment, in order:", 1)[1].split("```")[1]
    lines = [line for line in block.splitlines() if line.startswith("skintune")]
    assert [line.split()[1] for line in lines] == ["tune", "retrain", "compare"]
