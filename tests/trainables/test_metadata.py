"""The metadata branch: encoding, training-time blanking, the fusion, and an image-only network unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.config import TrainConfig, parse_train_config
from trainables.errors import UserError
from trainables.factory import build_parts
from trainables.metadata import all_missing, blank_metadata, blanking_generator, encode_metadata, encoded_width

TINY = "test_efficientnet"
INFO = {
    "lesion_classes": ["MEL", "NV", "BCC", "AK"],
    "site_classes": ["torso", "head/neck", "palms/soles"],
    "prepare_options": {"image_size": 32, "quality": 90},
    "counts": {"train": {"lesion": {"MEL": 10, "NV": 70, "BCC": 15, "AK": 5}}},
}
NAN = math.nan


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(backbone=TINY, pretrained=False, **kw)


def test_encoding_one_hots_scaled_age_and_missing_indicators():
    raw = torch.tensor([[1.0, 45.0, 0.0], [-1.0, NAN, -1.0], [2.0, 80.0, 1.0]])
    enc = encode_metadata(raw, ["site", "age", "sex"], num_sites=3)
    assert enc.shape == (3, encoded_width(["site", "age", "sex"], 3)) == (3, 4 + 2 + 3)
    # site one-hot (3) + missing | age/100 + missing | sex one-hot (2) + missing
    expected = torch.tensor(
        [
            [0, 1, 0, 0, 0.45, 0, 1, 0, 0],
            [0, 0, 0, 1, 0.0, 1, 0, 0, 1],
            [0, 0, 1, 0, 0.80, 0, 0, 1, 0],
        ]
    )
    torch.testing.assert_close(enc, expected.float())
    assert not torch.isnan(enc).any()
    # the encoding follows the canonical order (site, age, sex) whatever order the fields are listed in
    torch.testing.assert_close(encode_metadata(raw, ["sex", "age"], 3), expected[:, 4:].float())
    assert encode_metadata(raw, [], 3).shape == (3, 0)
    torch.testing.assert_close(encode_metadata(all_missing(2), ["site", "age", "sex"], 3), expected[[1, 1]].float())


def test_blanking_sets_fields_missing_at_the_configured_rate_reproducibly():
    n = 20000
    raw = torch.tensor([[1.0, 50.0, 1.0]]).repeat(n, 1)
    out = blank_metadata(raw, ["site", "age"], 0.3, torch.Generator().manual_seed(0))
    assert (out[:, 0] == -1).float().mean() == pytest.approx(0.3, abs=0.02)
    assert torch.isnan(out[:, 1]).float().mean() == pytest.approx(0.3, abs=0.02)
    assert (out[:, 2] == 1).all()  # not an input: never blanked
    assert torch.equal((out[:, 0] == -1), (out[:, 0] == -1) & (raw[:, 0] == 1))
    # independent draws per field, not one mask for all
    assert 0.05 < ((out[:, 0] == -1) & torch.isnan(out[:, 1])).float().mean() < 0.13
    assert (raw[:, 0] == 1).all()  # the input is not modified
    again = blank_metadata(raw, ["site", "age"], 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(torch.nan_to_num(out, nan=-7), torch.nan_to_num(again, nan=-7))
    assert torch.equal(blank_metadata(raw, ["site"], 0.0, torch.Generator()), raw)
    assert (blank_metadata(raw, ["sex"], 1.0, torch.Generator())[:, 2] == -1).all()
    # a generator of (seed, rank, epoch): the same triple draws the same, another one differs
    draw = lambda *key: torch.rand(8, generator=blanking_generator(*key))  # noqa: E731
    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2)) and not torch.equal(draw(0, 1, 2), draw(0, 1, 3))


def test_site_head_sees_the_image_only_the_lesion_head_sees_the_metadata():
    torch.manual_seed(0)
    model = build_parts(_cfg(metadata_inputs=["site", "age", "sex"], multitask=True), INFO).model.eval()
    x = torch.randn(4, 3, 32, 32)
    meta = torch.tensor([[0.0, 30.0, 0.0]] * 4)
    other = torch.tensor([[2.0, 30.0, 0.0]] * 4)  # only the site input changes
    with torch.no_grad():
        lesion_a, site_a = model(x, meta)
        lesion_b, site_b = model(x, other)
        lesion_none, _ = model(x)
        lesion_missing, _ = model(x, all_missing(4))
    torch.testing.assert_close(site_a, site_b, rtol=0, atol=0)
    assert not torch.allclose(lesion_a, lesion_b)
    torch.testing.assert_close(lesion_none, lesion_missing)  # no metadata given = every field missing
    assert model.site_head.in_features == model.lesion_head.in_features - 64  # fusion_width by default


def test_image_only_config_builds_todays_network_exactly():
    torch.manual_seed(0)
    today = build_parts(_cfg(), INFO).model.eval()
    torch.manual_seed(0)
    explicit = build_parts(_cfg(metadata_inputs=[], metadata_dropout=0.5, fusion_width=8), INFO).model.eval()
    names = [n for n, _ in today.named_parameters()]
    assert names == [n for n, _ in explicit.named_parameters()]
    assert not any("metadata" in n for n in names) and explicit.metadata_mlp is None
    assert today.lesion_head.in_features == today.backbone.num_features
    state = explicit.state_dict()
    assert today.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in today.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for got, want in zip(explicit(x, torch.tensor([[0.0, 50.0, 1.0]] * 2)), today(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # metadata ignored
    # and an image-only checkpoint loads into it strictly
    explicit.load_state_dict(today.state_dict(), strict=True)


def test_metadata_network_parameters_and_fusion_width():
    parts = build_parts(_cfg(metadata_inputs=["age", "sex"], fusion_width=16, multitask=False), INFO)
    model = parts.model
    assert parts.metadata_inputs == ("age", "sex")
    assert model.metadata_mlp[0].in_features == 2 + 3 and model.metadata_mlp[-2].out_features == 16
    assert model.lesion_head.in_features == model.backbone.num_features + 16
    lesion, site = model.eval()(torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 40.0, 0.0], [-1, NAN, -1]]))
    assert lesion.shape == (2, 4) and site is None and torch.isfinite(lesion).all()


def test_config_rejects_unknown_or_repeated_fields():
    with pytest.raises(UserError, match="metadata_inputs"):
        parse_train_config({"metadata_inputs": ["site", "weight"]})
    with pytest.raises(UserError, match="metadata_inputs: lists age more than once"):
        parse_train_config({"metadata_inputs": ["age", "age"]})
    with pytest.raises(UserError, match="metadata_dropout"):
        parse_train_config({"metadata_dropout": 1.5})
    assert parse_train_config({"metadata_inputs": ["sex", "site"]}).metadata_inputs == ["sex", "site"]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_two_input_network_traces_and_matches_eager(tmp_path):
    """The export's TorchScript path: a metadata network traced with (image, raw codes) gives the eager outputs
    to 1e-5, also for rows with missing fields (the encoding is traced, not frozen at the example's values)."""
    torch.manual_seed(0)
    model = build_parts(_cfg(metadata_inputs=["site", "age", "sex"]), INFO).model.eval()
    x = torch.randn(3, 3, 32, 32)
    example = torch.tensor([[0.0, 35.0, 1.0], [2.0, 70.0, 0.0], [1.0, 50.0, 1.0]])
    with torch.no_grad():
        traced = torch.jit.trace(model, (x, example))
    torch.jit.save(traced, tmp_path / "m.pt")
    loaded = torch.jit.load(tmp_path / "m.pt")
    other = torch.tensor([[-1.0, NAN, -1.0], [1.0, 20.0, -1.0], [-1.0, 85.0, 0.0]])
    with torch.no_grad():
        for got, want in zip(loaded(x, other), model(x, other), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
