"""A regular install (a wheel, not the source tree) ships what ``skintune demo`` needs, and the installed demo finds
its experiment from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tuner.demo import DEMO_FILES, experiment_file

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("tuner", "trainables", "search_spaces", "experiments", "pyproject.toml", "README.md")


def test_the_demo_experiments_have_one_source():
    """tuner/experiments/ holds links to experiments/: the files users edit are the ones the package ships."""
    for name in DEMO_FILES:
        packaged = ROOT / "tuner" / "experiments" / name
        assert packaged.is_symlink(), f"{packaged} must stay a link to experiments/{name}, not a copy"
        assert packaged.resolve() == (ROOT / "experiments" / name).resolve()
    assert experiment_file().read_bytes() == (ROOT / "experiments" / "demo.yaml").read_bytes()
    assert experiment_file(smoke=True).read_bytes() == (ROOT / "experiments" / "smoke.yaml").read_bytes()


def _copy_sources(dest: Path) -> Path:
    """The files a wheel is built from, links kept as links (as a git checkout has them), no build leftovers."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def test_installed_wheel_ships_the_demo_and_finds_its_experiment_from_an_empty_folder(tmp_path):
    # Built from a copy so that the build leaves nothing in the checkout; --no-build-isolation --no-index: the
    # venv's setuptools builds it offline.
    src = _copy_sources(tmp_path / "src")
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("skintune-*.whl")

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in DEMO_FILES:  # real files with the experiments' contents, not links
            assert z.read(f"tuner/experiments/{name}") == (ROOT / "experiments" / name).read_bytes()
        for space in ("demo", "smoke"):  # the search spaces the two experiments name
            assert f"search_spaces/{space}.yaml" in names
    assert not any(n.startswith("experiments/") for n in names)  # no top-level package named "experiments"

    # The installed, non-editable package, without a venv of its own: a fresh venv would install torch, Ray... again
    # (gigabytes, minutes). `--target` unpacks the wheel as pip installs it (package data, console script); PYTHONPATH
    # then puts that copy first on sys.path, ahead of this venv's editable install of the checkout (setuptools'
    # editable finder is appended to sys.meta_path, after the path entries), while the dependencies still come from
    # this venv. The working folder is empty, so neither the checkout nor a stray experiments/ can be found from it.
    target, empty = tmp_path / "installed", tmp_path / "empty"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("RAY_ADDRESS", None)
    for smoke, name in ((False, "demo"), (True, "smoke")):
        argv = [str(target / "bin" / "skintune"), "demo", "--dry-run", *(["--smoke"] if smoke else [])]
        proc = subprocess.run(argv, cwd=empty, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        first = proc.stdout.splitlines()[0]
        assert first.startswith(f"plan of experiment {name!r} ({target / 'tuner' / 'experiments' / name}.yaml)")
        assert f"({target / 'search_spaces' / name}.yaml)" in proc.stdout  # its search space, installed too
        assert str(ROOT) not in proc.stdout  # nothing came from the checkout
        assert not list(empty.iterdir())  # a dry run writes nothing
