"""Tampered files never run code: a checkpoint's ``train_state.pt`` and an export bundle's model files are
swapped for pickles whose unpickling would ``touch`` a marker file; loading them is refused with a UserError
and the marker never appears. Each payload is first shown to be live (plain unpickling creates a marker)."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import uuid
import zipfile
from pathlib import Path

import pytest
import torch

from trainables.checkpoint import STATE_FILE, load_train_state, save_checkpoint
from trainables.errors import UserError
from trainables.model import build_model
from tuner.export import export_model
from tuner.predict import load_bundle, predict_images


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _marker(tmp_path: Path) -> Path:
    return tmp_path / f"pwned-{uuid.uuid4().hex}"


def _write_raw(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"epoch": 0, "x": Payload(marker)}, protocol=2))


def _write_torch_save(path: Path, marker: Path) -> None:
    torch.save({"epoch": 0, "x": Payload(marker)}, path)  # the zip format, payload in data.pkl


def _write_fake_torchscript(path: Path, marker: Path, template: Path) -> None:
    """A real TorchScript archive whose data.pkl and constants.pkl are replaced by the payload."""
    evil = pickle.dumps(Payload(marker), protocol=2)
    with zipfile.ZipFile(template) as zin:
        entries = [(n, zin.read(n)) for n in zin.namelist()]
    with zipfile.ZipFile(path, "w") as zout:
        for name, data in entries:
            zout.writestr(name, evil if name.endswith(("/data.pkl", "/constants.pkl")) else data)


def _live(write, tmp_path: Path, load) -> None:
    """Control: the payload written by ``write`` does run on plain unpickling."""
    marker, path = _marker(tmp_path), tmp_path / f"control-{uuid.uuid4().hex}.pt"
    write(path, marker)
    load(path)
    assert marker.exists(), "the test payload is not live; the refusal tests would prove nothing"


def _make_experiment(base: Path) -> Path:
    exp = base / "results" / "sec"
    seed_dir = exp / "retrain" / "mtl" / "seed_0"
    model = build_model("test_efficientnet", pretrained=False, num_lesion_classes=3, num_site_classes=2, dropout=0.1)
    meta = {
        "config": {"backbone": "test_efficientnet", "dropout": 0.1, "multitask": True, "image_size": 32},
        "lesion_classes": ["MEL", "NV", "BCC"],
        "site_classes": ["head/neck", "torso"],
        "metrics": {},
        "weights_source": model.weights_source,
        "dataset_fingerprint": "0" * 64,
    }
    save_checkpoint(seed_dir / "checkpoint", model, state={"epoch": 0}, meta=meta)
    metrics = {
        "arm": "mtl",
        "seed": 0,
        "checkpoint": str(seed_dir / "checkpoint"),
        "val": {"val/lesion_bacc": 0.5},
        "test": {"test/lesion_bacc": 0.5},
    }
    (seed_dir / "metrics.json").write_text(json.dumps(metrics))
    return exp


@pytest.fixture(scope="module")
def bundle_src(tmp_path_factory) -> tuple[Path, Path]:
    """(experiment folder, a clean export bundle) to copy from."""
    from PIL import Image

    base = tmp_path_factory.mktemp("security")
    exp = _make_experiment(base)
    Image.new("RGB", (40, 40), (180, 120, 90)).save(base / "lesion.png")
    return exp, export_model(str(exp), str(base / "bundle"), n_boot=10)


def _copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_train_state_roundtrip_still_loads(tmp_path):
    model = build_model("test_efficientnet", False, 3, 0, 0.0)
    save_checkpoint(tmp_path, model, state={"epoch": 3, "w": torch.ones(2)}, meta={})
    assert load_train_state(tmp_path)["epoch"] == 3


def _unpickle(path: Path):
    return pickle.loads(path.read_bytes())


def _torch_load_unsafe(path: Path):
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize(
    ("write", "control"),
    [(_write_raw, _unpickle), (_write_torch_save, _torch_load_unsafe)],
    ids=["raw-pickle", "torch-save-zip"],
)
def test_malicious_train_state_is_refused(tmp_path, write, control):
    _live(write, tmp_path, control)
    marker = _marker(tmp_path)
    write(tmp_path / STATE_FILE, marker)
    with pytest.raises(UserError, match=r"train_state\.pt: refused to load"):
        load_train_state(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["raw-pickle", "torch-save-zip", "torchscript-archive"])
def test_swapped_torchscript_is_refused(bundle_src, tmp_path, kind):
    _, src = bundle_src
    bundle = _copy_bundle(src, tmp_path / "bundle")
    target, marker = bundle / "model.torchscript.pt", _marker(tmp_path)
    if kind == "raw-pickle":
        _live(_write_raw, tmp_path, _unpickle)
        _write_raw(target, marker)
    elif kind == "torch-save-zip":
        _write_torch_save(target, marker)
    else:
        _write_fake_torchscript(target, marker, src / "model.torchscript.pt")
    with pytest.raises(UserError, match=r"model\.torchscript\.pt: refused to load as TorchScript"):
        load_bundle(bundle, backend="torchscript")
    assert not marker.exists()


@pytest.mark.parametrize("write", [_write_raw, _write_torch_save], ids=["raw-pickle", "torch-save-zip"])
def test_swapped_safetensors_is_refused(bundle_src, tmp_path, write):
    bundle = _copy_bundle(bundle_src[1], tmp_path / "bundle")
    marker = _marker(tmp_path)
    write(bundle / "model.safetensors", marker)
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file"):
        load_bundle(bundle, backend="safetensors")
    assert not marker.exists()


def test_export_and_safetensors_predict_never_unpickle(bundle_src, tmp_path, monkeypatch):
    """With every unpickling entry point booby-trapped and pickles planted next to the weights, export and the
    safetensors predict path still work: they never unpickle anything."""
    exp, src = bundle_src
    marker = _marker(tmp_path)
    _write_raw(exp / "retrain/mtl/seed_0/checkpoint" / STATE_FILE, marker)  # export must not read it
    bundle = _copy_bundle(src, tmp_path / "bundle")
    _write_raw(bundle / "model.torchscript.pt", marker)  # the safetensors backend must not read it

    def trap(*args, **kwargs):
        raise AssertionError("something unpickled")

    for owner, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(owner, name, trap)
    out = export_model(str(exp), str(tmp_path / "export"), n_boot=10)
    assert (out / "model.safetensors").exists()
    rows = predict_images(load_bundle(bundle, backend="safetensors"), [exp.parents[1] / "lesion.png"])
    assert len(rows) == 1 and abs(sum(rows[0]["lesion_probs"].values()) - 1) < 1e-5
    assert not marker.exists()
