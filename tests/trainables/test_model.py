"""The multi-task network: heads, shapes, bad names, TorchScript, optimiser groups."""

from __future__ import annotations

import pytest
import torch

from trainables.errors import UserError
from trainables.model import MultiTaskNet, build_model, param_groups

TINY = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def mtl() -> MultiTaskNet:
    torch.manual_seed(0)
    return build_model(TINY, pretrained=False, num_lesion_classes=5, num_site_classes=3, dropout=0.2).eval()


def test_output_shapes(mtl: MultiTaskNet) -> None:
    lesion, site = mtl(torch.randn(2, 3, 64, 64))
    assert lesion.shape == (2, 5) and site.shape == (2, 3)
    assert mtl.multitask and mtl.lesion_head.in_features == mtl.backbone.head_hidden_size


def test_single_task_has_no_site_head() -> None:
    model = build_model(TINY, False, 4, 0, 0.0)
    assert model.site_head is None and not model.multitask
    assert not any(name.startswith("site_head") for name in model.state_dict())
    lesion, site = model(torch.randn(2, 3, 64, 64))
    assert lesion.shape == (2, 4) and site is None


def test_unknown_backbone_lists_close_names() -> None:
    with pytest.raises(UserError, match="unknown backbone 'mobilenetv3_smal_050'.*mobilenetv3_small_050"):
        build_model("mobilenetv3_smal_050", False, 4, 2, 0.0)
    with pytest.raises(UserError, match="pretrained tag"):
        build_model("resnet18.no_such_tag", False, 4, 2, 0.0)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_trace_matches_eager(mtl: MultiTaskNet, tmp_path) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(mtl, x)
    torch.jit.save(traced, tmp_path / "m.pt")
    loaded = torch.jit.load(tmp_path / "m.pt")
    with torch.no_grad():
        for got, want in zip(loaded(x), mtl(x), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_trace_single_task_gives_empty_site() -> None:
    model = build_model(TINY, False, 4, 0, 0.0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        lesion, site = torch.jit.trace(model, x)(x)
        torch.testing.assert_close(lesion, model(x)[0])
    assert site.shape == (2, 0)


def test_param_groups(mtl: MultiTaskNet) -> None:
    extra = torch.nn.Parameter(torch.zeros(2))
    groups = param_groups(mtl, lr_backbone=1e-4, lr_head=1e-3, weight_decay=0.05, extra_head_params=[extra])
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert by_name["backbone"]["lr"] == 1e-4 and by_name["head_no_decay"]["lr"] == 1e-3
    assert by_name["head"]["weight_decay"] == 0.05 and by_name["backbone_no_decay"]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(mtl.parameters())) + 1
    assert {id(mtl.lesion_head.weight), id(mtl.site_head.weight)} == {id(p) for p in by_name["head"]["params"]}
    assert id(extra) in {id(p) for p in by_name["head_no_decay"]["params"]}
    assert all(p.ndim <= 1 for g in groups if g["name"].endswith("no_decay") for p in g["params"])
    torch.optim.AdamW(groups)  # accepted as is
