"""What the cloud-storage mirror of ``export --arm`` copies (the skip patterns; no storage needed)."""

from __future__ import annotations

import re

import pytest

from tuner.mirror import skip_for_export


def _skipped(arm: str, rel: str) -> bool:
    return any(re.search(p, rel) for p in skip_for_export(arm))


@pytest.mark.parametrize("arm", ["mtl", "meta", "mtl_meta", "single_task"])
def test_export_copies_only_its_own_arms_checkpoints(arm):
    others = {"mtl", "meta", "mtl_meta", "single_task"} - {arm}
    assert not _skipped(arm, f"retrain/{arm}/seed_0/run/checkpoint_000002/model.pt")
    for other in others:  # mtl is a prefix of mtl_meta: each is its own arm
        assert _skipped(arm, f"retrain/{other}/seed_0/run/checkpoint_000002/model.pt")
        assert not _skipped(arm, f"retrain/{other}/seed_0/metrics.json")
        assert not _skipped(arm, f"retrain/{other}/seed_0/predictions.parquet")
    for rel in ("tune/results.parquet", "tune_single_task/runs/x", "prepared/shards/train-0.tar"):
        assert _skipped(arm, rel)
    for rel in ("experiment.yaml", "report/ci.json", "report/arms.json", "retrain/summary.json"):
        assert not _skipped(arm, rel)
