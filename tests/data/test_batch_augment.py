"""The batched GPU augmentation (``train.gpu_decode``) draws what the CPU path draws, with the same distributions,
and given the same draws makes the images torchvision makes image by image; here on CPU tensors (the code is the
same on a GPU)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainables.data.augment import TrainAugment, inverse_affine, rand_augment_geometry
from trainables.data.batch_augment import (
    RA_OPS,
    BatchAugment,
    BatchParams,
    inverse_affine_batch,
    without_rand_augment,
)

N = 4000  # draws per distribution compared
KS_LIMIT = 0.045  # two-sample KS critical value at alpha = 0.001 for 4000 vs 4000 is 0.0437
BILINEAR = InterpolationMode.BILINEAR


def _settings(size: int = 32, **kw) -> TrainAugment:
    args = dict(size=size, crop_scale_min=0.6, flips=True, rotation=180.0, strength=0.5) | kw
    return TrainAugment(**args)


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def _frequencies(values, keys) -> np.ndarray:
    counts = Counter(values)
    return np.array([counts[k] for k in keys]) / len(values)


def _smooth_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 images without detail finer than a few pixels: resampling differences stay small."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 5, 6, generator=g)
    return (F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1) * 255).round().byte()


# ----- the draws -----


@pytest.mark.parametrize("shape", [(30, 40), (20, 40), (64, 48)])  # (20, 40): a try often fails
def test_crop_draws_match_random_resized_crop(shape):
    settings = _settings(crop_scale_min=0.3)
    torch.manual_seed(0)
    image = torch.zeros(3, *shape, dtype=torch.uint8)
    cpu = [settings.crop.make_params([image]) for _ in range(N)]
    batch = BatchAugment(settings, seed=1).sample_crops(torch.full((N,), shape[0]), torch.full((N,), shape[1]))
    top, left, h, w = batch.double().unbind(1)
    theirs = {k: np.array([c[k] for c in cpu], dtype=float) for k in ("top", "left", "height", "width")}
    assert (h <= shape[0]).all() and (w <= shape[1]).all() and (top + h <= shape[0]).all()
    assert (left + w <= shape[1]).all() and (h > 0).all() and (w > 0).all()
    area = (h * w).numpy() / (shape[0] * shape[1])
    assert ks(area, theirs["height"] * theirs["width"] / (shape[0] * shape[1])) < KS_LIMIT
    assert ks((w / h).log().numpy(), np.log(theirs["width"] / theirs["height"])) < KS_LIMIT
    assert ks(top.numpy(), theirs["top"]) < KS_LIMIT and ks(left.numpy(), theirs["left"]) < KS_LIMIT
    # the statistic tells distributions apart: the same draws with another crop scale do not pass
    other = BatchAugment(_settings(crop_scale_min=0.5), seed=1).sample_crops(
        torch.full((N,), shape[0]), torch.full((N,), shape[1])
    )
    other_area = (other[:, 2] * other[:, 3]).double().numpy() / (shape[0] * shape[1])
    assert ks(other_area, theirs["height"] * theirs["width"] / (shape[0] * shape[1])) > 2 * KS_LIMIT


def test_crop_fallback_is_the_central_crop():
    """An image far wider than 4:3 at crop scale 1: no try fits, torchvision's fallback crop it is."""
    settings = _settings(crop_scale_min=1.0)
    crops = BatchAugment(settings, seed=0).sample_crops(torch.tensor([10, 100, 40]), torch.tensor([100, 10, 40]))
    for (height, width), crop in zip([(10, 100), (100, 10)], crops[:2].tolist(), strict=True):
        torch.manual_seed(0)
        expected = settings.crop.make_params([torch.zeros(3, height, width)])
        assert crop == [expected["top"], expected["left"], expected["height"], expected["width"]]
    assert crops[2].tolist() == [0, 0, 40, 40]  # a square at scale 1: the whole image on the first try


def test_flip_rotation_jitter_and_rand_augment_draws_match_the_cpu_path():
    settings = _settings(rotation=150.0, strength=0.7)
    torch.manual_seed(2)
    flips, angles, orders, factors, ops = [], [], [], [], []
    for _ in range(N):
        maps = settings.flips_and_rotation()  # the flips' diagonal maps (horizontal first), then the rotation's
        flips.append((any(m[0, 0] < 0 for m in maps[:-1]), any(m[1, 1] < 0 for m in maps[:-1])))
        angles.append(math.degrees(math.atan2(float(maps[-1][1, 0]), float(maps[-1][0, 0]))))
        jitter = settings.jitter_params()
        assert jitter is not None  # strength > 0
        order, f = jitter
        orders.append(tuple(order))
        factors.append(f)
        ops.extend(settings.sample_rand_augment())
    p = BatchAugment(settings, seed=3).sample([(40, 40)] * N)
    # flips: each with p = 0.5, independently
    theirs_flips = np.array(flips, dtype=float)
    for drawn, cpu_rate in ((p.hflip, theirs_flips[:, 0].mean()), (p.vflip, theirs_flips[:, 1].mean())):
        assert abs(float(drawn.float().mean()) - cpu_rate) < 0.03
    both = float((p.hflip & p.vflip).float().mean())
    assert abs(both - theirs_flips.prod(1).mean()) < 0.03 and abs(both - 0.25) < 0.025
    # rotation: the angle of the CPU path's inverse map is -angle; uniform on (-150, 150)
    assert ks(p.angle.numpy(), [-a for a in angles]) < KS_LIMIT
    assert float(p.angle.abs().max()) <= 150.0
    # ColorJitter: the 6 orders equally often, factors uniform on (1 - 0.21, 1 + 0.21)
    perms = sorted(set(orders))
    assert len(perms) == 6
    mine = _frequencies([tuple(o) for o in p.jitter_order.tolist()], perms)
    assert np.abs(mine - _frequencies(orders, perms)).max() < 0.025
    for k in range(3):
        assert ks(p.jitter_factor[:, k].numpy(), [f[k] for f in factors]) < KS_LIMIT
    # RandAugment: 2 operations an image, uniform over the 14, signed magnitudes negative half the time
    assert p.ra_op.shape == (N, 2)
    theirs_ops = [op for op, _ in ops]
    assert np.abs(_frequencies([RA_OPS[i] for i in p.ra_op.flatten().tolist()], RA_OPS) - 1 / 14).max() < 0.01
    assert np.abs(_frequencies(theirs_ops, RA_OPS) - 1 / 14).max() < 0.01
    for op in ("Rotate", "Brightness", "TranslateX"):
        mags = p.ra_magnitude[p.ra_op == RA_OPS.index(op)]
        cpu_mags = [m for o, m in ops if o == op]
        assert set(mags.abs().tolist()) == {abs(cpu_mags[0])}  # the one magnitude of strength 0.7, signed
        assert abs(float((mags < 0).float().mean()) - np.mean([m < 0 for m in cpu_mags])) < 0.06
    assert set(p.ra_magnitude[p.ra_op == RA_OPS.index("Posterize")].tolist()) == {
        m for o, m in ops if o == "Posterize"
    }  # unsigned


def test_switched_off_steps_are_never_drawn():
    p = BatchAugment(_settings(flips=False, rotation=0.0, strength=0.0), seed=0).sample([(20, 30)] * 200)
    assert not p.hflip.any() and not p.vflip.any() and not p.angle.any()
    assert p.ra_op.shape == (200, 0)


def test_draws_are_seeded_and_device_independent():
    a = BatchAugment(_settings(), seed=5).sample([(30, 40)] * 64)
    b = BatchAugment(_settings(), seed=5).sample([(30, 40)] * 64)
    c = BatchAugment(_settings(), seed=6).sample([(30, 40)] * 64)
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))
    assert not torch.equal(a.crop, c.crop)
    torch.manual_seed(9)  # the default seed comes from torch's global generator
    d = BatchAugment(_settings()).sample([(30, 40)] * 8)
    torch.manual_seed(9)
    assert torch.equal(d.angle, BatchAugment(_settings()).sample([(30, 40)] * 8).angle)


# ----- the geometry -----


def test_inverse_affine_batch_is_the_scalar_formula():
    g = torch.Generator().manual_seed(0)
    rows = torch.rand(20, 7, generator=g, dtype=torch.float64) * 60 - 30
    batch = inverse_affine_batch(*rows.unbind(1))
    for row, m in zip(rows.tolist(), batch, strict=True):
        angle, tx, ty, sx, sy, cx, cy = row
        torch.testing.assert_close(m, inverse_affine(angle, (tx, ty), (sx, sy), (cx, cy)))


def _params(n: int, *, crop, hflip=False, vflip=False, angle=0.0, ops=(), mags=(), order=(0, 1, 2), factor=(1.0,) * 3):
    return BatchParams(
        crop=torch.tensor([crop] * n),
        hflip=torch.full((n,), hflip),
        vflip=torch.full((n,), vflip),
        angle=torch.full((n,), angle, dtype=torch.float64),
        jitter_order=torch.tensor([order] * n),
        jitter_factor=torch.tensor([factor] * n, dtype=torch.float64),
        ra_op=torch.tensor([[RA_OPS.index(o) for o in ops]] * n, dtype=torch.int64).view(n, len(ops)),
        ra_magnitude=torch.tensor([list(mags)] * n, dtype=torch.float64).view(n, len(ops)),
    )


@pytest.mark.parametrize("op", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometry_composes_flips_rotation_and_rand_augment(op):
    aug = BatchAugment(_settings(size=40), seed=0)
    p = _params(1, crop=(0, 0, 40, 40), hflip=True, angle=33.0, ops=(op, "Brightness"), mags=(-7.3, 0.2))
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    expected = flip @ inverse_affine(angle=-33.0) @ rand_augment_geometry(op, -7.3, 40)
    torch.testing.assert_close(aug.geometry(p)[0], expected)


def _reference(image: torch.Tensor, p: BatchParams, b: int, size: int, strength: bool = True) -> torch.Tensor:
    """One image, step by step with torchvision's functions (bilinear), in the batched path's order: the
    geometric steps, then ColorJitter, then RandAugment's colour steps."""
    top, left, h, w = p.crop[b].tolist()
    x = TF.resized_crop(image.float() / 255.0, top, left, h, w, [size, size], antialias=True)
    if p.hflip[b]:
        x = TF.horizontal_flip(x)
    if p.vflip[b]:
        x = TF.vertical_flip(x)
    x = TF.rotate(x, float(p.angle[b]), interpolation=BILINEAR)
    colour = []
    for op, m in zip(p.ra_op[b].tolist(), p.ra_magnitude[b].tolist(), strict=True):
        name = RA_OPS[op]
        if name in ("ShearX", "ShearY"):
            shear = [math.degrees(math.atan(m)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(m))]
            x = TF.affine(x, 0.0, [0, 0], 1.0, shear, interpolation=BILINEAR, center=[0, 0])
        elif name in ("TranslateX", "TranslateY"):
            shift = [int(m), 0] if name == "TranslateX" else [0, int(m)]
            x = TF.affine(x, 0.0, shift, 1.0, [0.0, 0.0], interpolation=BILINEAR)
        elif name == "Rotate":
            x = TF.rotate(x, m, interpolation=BILINEAR)
        else:
            colour.append((name, m))
    if not strength:
        return x
    jitter = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for k in p.jitter_order[b].tolist():
        x = jitter[k](x, float(p.jitter_factor[b, k]))
    for name, m in colour:
        x = _colour_reference(x, name, m)
    return x


def _colour_reference(x: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """RandAugment's colour operation ``name`` with magnitude ``m``, as v2.RandAugment applies it."""
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        fn = {
            "Brightness": TF.adjust_brightness,
            "Color": TF.adjust_saturation,
            "Contrast": TF.adjust_contrast,
            "Sharpness": TF.adjust_sharpness,
        }[name]
        return fn(x, 1.0 + m)
    if name == "Posterize":
        return TF.posterize(x, int(m))
    if name == "Solarize":
        return TF.solarize(x, m)
    return {"Identity": lambda img: img, "AutoContrast": TF.autocontrast, "Equalize": TF.equalize}[name](x)


def _interior(size: int, margin: int = 2) -> torch.Tensor:
    """Pixels whose distance from the centre leaves ``margin`` pixels to the edge of the output at any rotation."""
    c = torch.arange(size) - (size - 1) / 2
    return (c[None, :] ** 2 + c[:, None] ** 2).sqrt() < size / 2 - margin


def test_batched_geometry_and_jitter_match_torchvision_image_by_image():
    size, n = 48, 24
    images = _smooth_images(n, 40, 56)
    aug = BatchAugment(_settings(size=size, strength=0.8), seed=11)
    p = without_rand_augment(aug.sample([(40, 56)] * n))
    got = aug.apply(images, p)
    assert got.shape == (n, 3, size, size) and got.dtype == torch.float32
    inside = _interior(size)
    for b in range(n):
        diff = (got[b] - _reference(images[b], p, b, size)).abs()[:, inside]
        assert diff.mean() < 0.004 and diff.max() < 0.04, (b, float(diff.mean()), float(diff.max()))
    # and the draws matter: another image's parameters make another image
    assert (got[0] - _reference(images[0], p, 1, size)).abs()[:, inside].mean() > 0.02


@pytest.mark.parametrize("op", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_rand_augment_geometry_matches_torchvision(op):
    size, n = 48, 4
    images = _smooth_images(n, size, size, seed=1)
    aug = BatchAugment(_settings(size=size, strength=0.0), seed=0)
    mag = {"ShearX": 0.21, "ShearY": -0.15, "TranslateX": 6.7, "TranslateY": -5.2, "Rotate": 17.0}[op]
    p = _params(n, crop=(0, 0, size, size), ops=(op,), mags=(mag,))
    got = aug.apply(images, p)
    inside = _interior(size, margin=size // 4)  # clear of the black a shift or shear brings in
    for b in range(n):
        diff = (got[b] - _reference(images[b], p, b, size, strength=False)).abs()[:, inside]
        assert diff.max() < 1e-4, (op, b, float(diff.max()))  # one bilinear resampling each: the same
    wrong = replace(p, ra_magnitude=-p.ra_magnitude)  # the other sign: another image
    assert (aug.apply(images, wrong)[0] - got[0]).abs()[:, inside].mean() > 0.05


@pytest.mark.parametrize(
    ("op", "mag"),
    [
        ("Brightness", 0.4),
        ("Brightness", -0.4),
        ("Color", 0.5),
        ("Contrast", -0.3),
        ("Sharpness", 0.6),
        ("Sharpness", -0.6),
        ("Posterize", 5.0),
        ("Solarize", 0.6),
        ("AutoContrast", 0.0),
        ("Equalize", 0.0),
        ("Identity", 0.0),
    ],
)
def test_rand_augment_colour_matches_torchvision(op, mag):
    """Without geometry (the whole image at its own size: the warp samples at the pixel centres), each colour
    operation on the images that drew it, in the second slot, after a brightness step in the first."""
    size, n = 32, 6
    images = _smooth_images(n, size, size, seed=2)
    aug = BatchAugment(_settings(size=size), seed=0)
    p = _params(n, crop=(0, 0, size, size), ops=("Brightness", op), mags=(0.1, mag), factor=(1.1, 0.9, 1.2))
    # the first two images draw Identity in the second slot instead: left as they are by it
    ra_op = p.ra_op.clone()
    ra_op[:2, 1] = RA_OPS.index("Identity")
    p = replace(p, ra_op=ra_op)
    got = aug.apply(images, p)
    for b in range(n):
        expected = _reference(images[b], p, b, size)
        close = ((got[b] - expected).abs() <= 2e-4).float().mean()
        assert close >= (0.99 if op in ("Posterize", "Equalize") else 1.0), (op, b, float(close))  # 8-bit bins


def test_images_of_different_sizes_share_a_canvas():
    """A batch of two sizes (a zero-padded canvas) makes each image what it makes alone."""
    size = 32
    aug = BatchAugment(_settings(size=size), seed=3)
    images = list(_smooth_images(3, 40, 30, seed=4)) + list(_smooth_images(3, 30, 44, seed=5))
    p = aug.sample([tuple(image.shape[-2:]) for image in images])
    together = aug.apply(images, p)
    for b, image in enumerate(images):
        one = BatchParams(*(t[b : b + 1] for t in vars(p).values()))
        torch.testing.assert_close(together[b], aug.apply([image], one)[0], atol=1e-5, rtol=0)


def test_normalised_output_and_the_seeded_batch():
    settings = _settings(size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    images = _smooth_images(8, 30, 30, seed=6)
    raw = BatchAugment(_settings(size=24), seed=7).batch(images)
    normed = BatchAugment(settings, seed=7).batch(list(images))  # a list or a tensor: the same batch
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    torch.testing.assert_close(normed, (raw - mean) / std, atol=1e-5, rtol=0)
    assert not torch.equal(raw, BatchAugment(_settings(size=24), seed=8).batch(images))
    single = BatchAugment(settings, seed=7)(images[0])
    assert single.shape == (3, 24, 24) and single.dtype == torch.float32


def test_a_large_shrink_is_supersampled_like_an_antialiased_resize():
    """A 96-pixel crop made 24 pixels: 2 x 2 samples a pixel (limit 2) are closer to torchvision's antialiased
    resize than one bilinear sample."""
    image = torch.randint(0, 256, (1, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p = _params(1, crop=(0, 0, 96, 96))
    expected = TF.resize(image[0].float() / 255.0, [24, 24], antialias=True)
    plain = BatchAugment(_settings(size=24, strength=0.0), seed=0, antialias_limit=8.0)
    smooth = BatchAugment(_settings(size=24, strength=0.0), seed=0, antialias_limit=2.0)
    assert plain.supersampling(p) == 1 and smooth.supersampling(p) == 2
    err_plain = (plain.apply(image, p)[0] - expected).abs().mean()
    err_smooth = (smooth.apply(image, p)[0] - expected).abs().mean()
    assert err_smooth < 0.6 * err_plain, (float(err_smooth), float(err_plain))


# ----- the gpu_decode loader -----


def test_gpu_decode_loaders_augment_a_batch_at_once(smoke_data):
    """train.gpu_decode's training loader (the Train loop's own, here on the CPU device: on a GPU it is the same
    code) augments with BatchAugment: batches of the loader's shape and labels, new draws each epoch, the same
    batches again from the same global seed; the validation loader keeps its plain transform."""
    from trainables.config import TrainConfig
    from trainables.data.loader import DeviceDecoded, batched
    from trainables.data.prepare import load_info
    from trainables.factory import build_parts
    from trainables.train_loop import _loaders

    _, prepared = smoke_data
    cfg = TrainConfig(prepared=prepared, backbone="test_efficientnet", pretrained=False, batch_size=8, image_size=40)
    parts = build_parts(cfg, load_info(prepared))
    torch.manual_seed(0)
    train, val = _loaders(cfg, prepared, parts, 0, 1, on_gpu=False, decode_on=torch.device("cpu"))
    assert isinstance(train, DeviceDecoded) and isinstance(val, DeviceDecoded)
    assert isinstance(train.transform, BatchAugment) and not isinstance(val.transform, BatchAugment)
    assert train.transform.settings.size == 40 and train.transform.settings.mean is not None
    epochs = []
    for _ in range(2):
        torch.manual_seed(0)  # the same global seed before each epoch (the sampler: the same order)
        train.sampler.set_epoch(0)
        epochs.append(list(train))
    torch.manual_seed(5)
    train.sampler.set_epoch(0)
    other = list(train)
    first, again = epochs
    assert len(first) == len(train) > 1
    for (x, lesion, site), (y, lesion2, _), (z, lesion3, _) in zip(first, again, other, strict=True):
        assert x.shape == (len(lesion), 3, 40, 40) and x.dtype == torch.float32 and site.dtype == torch.int64
        assert torch.equal(x, y) and torch.equal(lesion, lesion2) and torch.equal(lesion, lesion3)
        assert not torch.equal(x, z)  # another epoch's global seed: other draws
    assert batched(parts.eval_transform) is parts.eval_transform  # only the training augmentation is batched
