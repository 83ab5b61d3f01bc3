"""What `skintune submit` uploads as the job's working directory, packed by Ray's own packaging code (Ray's default
excludes, the project's .gitignore, then skintune's EXCLUDES) exactly as the Jobs SDK packs it. No cluster needed:
the zip is the upload."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

from tuner import jobs

PACKAGES = ("tuner", "trainables", "search_spaces")


def _upload(root: Path, tmp: Path) -> set[str]:
    """The file names in the zip that the Jobs SDK would upload for ``working_dir=root``."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    target = tmp / "upload.zip"
    target.unlink(missing_ok=True)
    excludes = ray_constants.get_runtime_env_default_excludes() + jobs.EXCLUDES  # as working_dir.py combines them
    create_package(str(root), target, include_gitignore=True, excludes=excludes)
    with zipfile.ZipFile(target) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def _files(root: Path, *paths: str) -> set[str]:
    """The project's files (tracked, or new and not ignored) as they are in the working tree."""
    command = ["git", "ls-files", "--cached", "--others", "--exclude-standard", *paths]
    listed = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout.split()
    return {name for name in listed if (root / name).is_file()}


def test_upload_holds_every_module_and_drops_only_root_folders(tmp_path):
    root = jobs.PROJECT_ROOT
    wanted = _files(root, *PACKAGES)  # modules, YAML search spaces, package data
    assert "trainables/data/loader.py" in wanted and len(wanted) > 50
    # a copy of the tracked tree, plus what a user's checkout holds besides: data, results, an environment,
    # benchmark output, caches and checkpoints, some at the root and some nested
    copy = tmp_path / "project"
    for name in _files(root):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, copy / name)
    decoys = [
        "data/isic2019/ISIC_0000000.jpg",
        "results/demo/experiment.yaml",
        ".venv/lib/site.py",
        ".git/HEAD",
        "benchmarks/results/loader.json.tmp",
        "trainables/data/__pycache__/loader.cpython-311.pyc",
        "tuner/best.pt",
        "export/model.safetensors",
    ]
    for name in decoys:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text("x")
    uploaded = _upload(copy, tmp_path)
    assert not wanted - uploaded, f"missing from the upload: {sorted(wanted - uploaded)[:10]}"
    assert not set(decoys) & uploaded, sorted(set(decoys) & uploaded)
    assert {"pyproject.toml", "experiments/demo.yaml"} <= uploaded  # the job's entry point needs these
    # the real checkout uploads the same package files
    assert not wanted - _upload(root, tmp_path)


def test_upload_root_is_the_checkout_or_else_the_current_folder(tmp_path, monkeypatch):
    assert jobs.upload_root() == jobs.PROJECT_ROOT  # run from the source tree
    monkeypatch.setattr(jobs, "PROJECT_ROOT", tmp_path / "site-packages")  # as in a regular (wheel) install
    monkeypatch.chdir(tmp_path)
    assert jobs.upload_root() == tmp_path
