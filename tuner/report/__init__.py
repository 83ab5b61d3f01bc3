"""``skintune compare``: the MTL vs single-task report (HTML, Markdown, Parquet, PNG); see :mod:`.build`."""

from tuner.report.build import build_report
from tuner.report.load import Inputs, load_inputs

__all__ = ["Inputs", "build_report", "load_inputs"]
