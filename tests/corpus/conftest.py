"""The bad-input corpus' builder: writes one broken (or odd-but-valid) input per case into ``tmp_path``.

``corpus.isic2019()`` writes a tiny ISIC 2019 release (the two CSVs with the release's exact headers and ten
small JPEGs); the ``corpus.*`` helpers then break one thing in it, or write an experiment YAML / search space.
Static YAML cases live in ``cases/`` beside this file. Every test here also makes sure Ray is never started.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "cases"

GT = "ISIC_2019_Training_GroundTruth.csv"
META = "ISIC_2019_Training_Metadata.csv"
IMAGES = "ISIC_2019_Training_Input"
GT_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
META_HEADER = "image,age_approx,anatom_site_general,lesion_id,sex"
SITES = ["anterior torso", "posterior torso", "head/neck", "lower extremity", ""]
CLASSES = ["MEL", "NV"]


def onehot(cls: str) -> str:
    return ",".join("1.0" if c == cls else "0.0" for c in GT_HEADER.split(",")[1:])


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class Corpus:
    """Writes the inputs of one case under ``tmp``; paths it returns are absolute."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.root = tmp / "isic2019"
        self.out = tmp / "prepared"
        self.storage = tmp / "results"

    # ISIC 2019 release -------------------------------------------------------------------------------------
    def ids(self, n: int = 10) -> list[str]:
        return [f"ISIC_{i:07d}" for i in range(n)]

    def isic2019(self, n: int = 10) -> Path:
        """A valid release: ``n`` images, 2 classes, sites with one missing, one group per image."""
        ids = self.ids(n)
        self.write_csv(GT, GT_HEADER, [f"{image},{onehot(CLASSES[i % 2])}" for i, image in enumerate(ids)])
        meta = [f"{image},55.0,{SITES[i % len(SITES)]},,female" for i, image in enumerate(ids)]
        self.write_csv(META, META_HEADER, meta)
        for i, image in enumerate(ids):
            self.image_path(image).write_bytes(jpeg_bytes(i))
        return self.root

    def image_path(self, image: str, suffix: str = ".jpg") -> Path:
        path = self.root / IMAGES / f"{image}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_csv(self, name: str, header: str, rows: list[str]) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([header, *rows]) + "\n")
        return path

    def edit_csv(self, name: str, line: int, old: str, new: str) -> Path:
        """Replace ``old`` by ``new`` in 1-based ``line`` of the CSV (the header is line 1)."""
        path = self.root / name
        lines = path.read_text().splitlines()
        assert old in lines[line - 1], (old, lines[line - 1])
        lines[line - 1] = lines[line - 1].replace(old, new, 1)
        path.write_text("\n".join(lines) + "\n")
        return path

    def replace_image(self, index: int, data: bytes | None = None, img: Image.Image | None = None, suffix=".jpg"):
        """Swap image ``index`` of the release for ``data`` (raw bytes) or ``img`` (saved as ``suffix``)."""
        image = self.ids()[index]
        self.image_path(image).unlink()
        path = self.image_path(image, suffix)
        if img is not None:
            img.save(path)
        else:
            path.write_bytes(data)
        return image, path

    def prepare_argv(self, *extra: str, fmt: str = "isic2019") -> list[str]:
        args = ["prepare", "--format", fmt, "--root", str(self.root), "--out", str(self.out)]
        return args + [
            "--image-size",
            "16",
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0.2",
            "--workers",
            "1",
            *extra,
        ]

    # experiment YAML and search spaces -------------------------------------------------------------------------
    def experiment(self, overrides: dict | None = None, name: str = "exp.yaml", **top) -> Path:
        """A valid experiment YAML (nothing is read before the failure) with ``overrides`` merged in per section."""
        data: dict = {"name": "corpus", "storage": str(self.storage), "data": {"root": str(self.root)}}
        data.update(top)
        for section, values in (overrides or {}).items():
            data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
        path = self.tmp / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def resolved_experiment(self, name: str = "corpus") -> Path:
        """``<storage>/<name>/experiment.yaml`` as ``skintune tune`` writes it, with nothing else there."""
        path = self.storage / name / "experiment.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"name": name, "storage": str(self.storage), "data": {"root": str(self.root)}}))
        return path


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return Corpus(tmp_path)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Bad input must fail before Ray starts: starting it here is a test failure (and never touches the
    clusters others run on this machine)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the bad-input corpus must fail before Ray starts, but ray.init was called")

    monkeypatch.setattr("ray.init", refuse)


def run_cli(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -m tuner.cli ARGV`` in a subprocess: the real exit code and stderr."""
    env = dict(os.environ)  # skintune is installed (make's `pip install -e`): no PYTHONPATH, as for a user
    env["RAY_ADDRESS"] = "127.0.0.1:1"  # belt and braces: a stray ray.init would fail, never join a cluster
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.fixture
def cli_subprocess():
    return run_cli
