"""The synthetic generator's site mix (site_weights): a second release from another population of body sites, with
the same diagnoses; without weights, exactly the default release."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from trainables.data.synthetic import SITE_NAMES, _plan, generate, main, parse_site_weights
from trainables.errors import UserError

SHIFT = {"head/neck": 4.0, "anterior torso": 0.25, "posterior torso": 0.25}


def test_no_weights_or_unit_weights_is_the_default_plan():
    default = _plan(500, 3)
    assert _plan(500, 3, {}) == default
    assert _plan(500, 3, dict.fromkeys(SITE_NAMES, 1.0)) == default


def test_weights_shift_the_sites_and_keep_the_diagnoses():
    default, shifted = _plan(4000, 7), _plan(4000, 7, SHIFT)
    assert [r["dx"] for r in shifted] == [r["dx"] for r in default]  # same draws: only the site mapping moves
    share = lambda rows, site: Counter(r["site"] for r in rows)[site] / len(rows)  # noqa: E731
    assert share(shifted, "head/neck") > 1.8 * share(default, "head/neck")
    assert share(shifted, "anterior torso") < 0.5 * share(default, "anterior torso")
    # the missing-site rate is the diagnosis' own, as before
    missing = lambda rows: sum(r["site_label"] == "" for r in rows) / len(rows)  # noqa: E731
    assert missing(shifted) == pytest.approx(missing(default), abs=0.02)


def test_weights_are_recorded_and_a_folder_with_other_weights_is_refused(tmp_path: Path):
    out = generate(tmp_path / "b", 16, 32, seed=5, workers=1, progress=False, site_weights=SHIFT)
    record = json.loads((out / "synth.json").read_text())
    assert record["site_weights"] == SHIFT and record["seed"] == 5
    assert generate(out, 16, 32, seed=5, workers=1, progress=False, site_weights=SHIFT) == out  # complete: reused
    with pytest.raises(UserError, match="site weights"):
        generate(out, 16, 32, seed=5, workers=1, progress=False, site_weights={"head/neck": 2.0})
    with pytest.raises(UserError, match="already exists"):
        generate(out, 16, 32, seed=5, workers=1, progress=False)  # the default release is another dataset


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"torso": 2.0}, "unknown site 'torso'"),
        ({"head/neck": -1.0}, "head/neck=-1.0"),
        ({"head/neck": "lots"}, "use a number >= 0"),
        (dict.fromkeys(["anterior torso", "posterior torso", "upper extremity", "lower extremity"], 0.0), "DF"),
    ],
)
def test_bad_weights(tmp_path: Path, weights: dict, message: str):
    with pytest.raises(UserError, match=message):
        generate(tmp_path / "x", 16, 32, site_weights=weights, progress=False)
    assert not (tmp_path / "x").exists()


def test_parse_site_weights_and_the_module_cli(tmp_path: Path, capsys):
    assert parse_site_weights(["head/neck=3", "posterior torso = 0.5"]) == {"head/neck": 3.0, "posterior torso": 0.5}
    with pytest.raises(UserError, match="expected SITE=WEIGHT"):
        parse_site_weights(["head/neck"])
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "y"), "--n", "16", "--image-size", "32", "--site-weight", "knee=2"])
    assert exit_.value.code == 2 and "unknown site 'knee'" in capsys.readouterr().err
