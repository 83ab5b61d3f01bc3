"""The fast training augmentation does what torchvision's v2 pipeline does: same steps, same draws, same statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from trainables.data.augment import (
    RAND_AUGMENT_SPACE,
    TrainAugment,
    adjust_sharpness,
    inverse_affine,
    rand_augment_geometry,
    reference_pipeline,
)

SIZE = 40
FLIP_X = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))


def _warped(image: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
    aug = TrainAugment(size=SIZE, crop_scale_min=0.6, flips=True, rotation=180.0, strength=0.5)
    out = aug.warp_batch(image.float()[None], [maps])[0]
    return out.round().to(torch.uint8)


@pytest.mark.parametrize(
    ("reference", "maps"),
    [
        (lambda img: TF.horizontal_flip(img), [FLIP_X]),
        (lambda img: TF.rotate(img, 37.0), [inverse_affine(angle=-37.0)]),
        (lambda img: TF.rotate(img, -150.0), [inverse_affine(angle=150.0)]),
        (
            lambda img: TF.affine(img, 0.0, [0, 0], 1.0, [math.degrees(math.atan(-0.21)), 0.0], center=[0, 0]),
            [rand_augment_geometry("ShearX", -0.21, SIZE)],
        ),
        (
            lambda img: TF.affine(img, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(0.15))], center=[0, 0]),
            [rand_augment_geometry("ShearY", 0.15, SIZE)],
        ),
        (lambda img: TF.affine(img, 0.0, [7, 0], 1.0, [0.0, 0.0]), [rand_augment_geometry("TranslateX", 7.6, SIZE)]),
        (lambda img: TF.affine(img, 0.0, [0, -5], 1.0, [0.0, 0.0]), [rand_augment_geometry("TranslateY", -5.2, SIZE)]),
        (lambda img: TF.rotate(img, -9.0), [rand_augment_geometry("Rotate", -9.0, SIZE)]),
        (  # composed steps that are exact on the pixel grid: flip, quarter turn, shift
            lambda img: TF.affine(TF.rotate(TF.horizontal_flip(img), 90.0), 0.0, [6, 0], 1.0, [0.0, 0.0]),
            [FLIP_X, inverse_affine(angle=-90.0), rand_augment_geometry("TranslateX", 6.0, SIZE)],
        ),
    ],
)
def test_each_geometric_step_matches_torchvision(reference, maps):
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    differ = (_warped(image, maps) != reference(image)).any(0).float().mean()
    assert differ <= 0.01  # only where a pixel centre falls exactly between two: float rounding picks either


def test_rand_augment_space_is_torchvision_s():
    theirs = v2.RandAugment._AUGMENTATION_SPACE
    assert list(RAND_AUGMENT_SPACE) == list(theirs)
    for op, (magnitudes, signed) in RAND_AUGMENT_SPACE.items():
        mine, expected = magnitudes(31, 64, 48), theirs[op][0](31, 64, 48)
        assert signed == theirs[op][1]
        assert (mine is None and expected is None) or torch.equal(mine, expected)


def test_sharpness_matches_torchvision():
    image = torch.rand(3, 30, 20, generator=torch.Generator().manual_seed(1))
    for factor in (0.3, 1.1, 1.9):
        assert torch.allclose(adjust_sharpness(image, factor), TF.adjust_sharpness(image, factor), atol=1e-6)


def test_colour_jitter_draws_as_torchvision():
    """Same seed, same draws: on a step-free image (no geometry) the jitter equals v2.ColorJitter's."""
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    fast = TrainAugment(size=SIZE, crop_scale_min=0.6, flips=True, rotation=180.0, strength=0.8)
    torch.manual_seed(3)
    mine = fast.jitter_batch(image[None], [fast.jitter_params()])[0]
    torch.manual_seed(3)
    theirs = v2.ColorJitter(brightness=0.24, contrast=0.24, saturation=0.24)(image)
    assert torch.allclose(mine, theirs, atol=1e-6)


@pytest.mark.parametrize("strength", [0.2, 0.5, 1.0])
def test_same_seed_gives_nearly_the_torchvision_pipeline_s_image(strength):
    """The random draws are torchvision's, in its order: with the same seed the images differ only by rounding."""
    gen = torch.Generator().manual_seed(4)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=gen), size=(SIZE + 8, 52), mode="bilinear")
    image = (base[0] * 200 + 30).to(torch.uint8)
    fast, reference = (
        TrainAugment(size=SIZE, crop_scale_min=0.6, flips=True, rotation=180.0, strength=strength),
        reference_pipeline(size=SIZE, crop_scale_min=0.6, flips=True, rotation=180.0, strength=strength),
    )
    differences = []
    for seed in range(100):
        torch.manual_seed(seed)
        mine = fast(image)
        torch.manual_seed(seed)
        theirs = reference(image)
        assert mine.shape == theirs.shape == (3, SIZE, SIZE) and mine.dtype == torch.float32
        differences.append((mine - theirs).abs().mean())
    differences = torch.stack(differences)
    # on a 0-1 scale; a few images differ more where nearest-neighbour ties fall the other way at the black border
    assert differences.median() < 0.01 and differences.quantile(0.95) < 0.03, differences


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_batch_equals_the_per_image_transform(strength):
    """TrainAugment.batch (train.gpu_decode: each step once per batch) makes exactly the images that calling the
    transform image by image makes, from the same random draws; images of different sizes, every RandAugment
    operation and every jitter position covered."""
    from trainables.data.augment import RAND_AUGMENT_SPACE

    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(36, 64, (96, 2), generator=g).tolist()
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]
    aug = TrainAugment(
        size=32,
        crop_scale_min=0.35,
        flips=True,
        rotation=20.0,
        strength=strength,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )
    torch.manual_seed(0)
    expected = torch.stack([aug(image) for image in images])
    torch.manual_seed(0)
    got = aug.batch(images)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.manual_seed(0)  # replay the draws: the comparison covered what it claims to
    ops, first = set(), set()
    for image in images:
        aug.crop(image), aug.flips_and_rotation()
        first.add(aug.jitter_params()[0][0])
        ops |= {op for op, _ in aug.sample_rand_augment()}
    assert ops == set(RAND_AUGMENT_SPACE) and first == {0, 1, 2}


def test_batched_crop_is_torchvision_s_resize_but_at_the_edges():
    """The GPU path's crop (one roi_align per image size, train.gpu_decode) samples where torchvision's resize does:
    when the crop is enlarged (a prepared image's shorter side is the training size), equal to 1 level of 255 inside
    and within a few at the edges; when a wider image's crop shrinks, close on average. Image order survives the
    grouping by size."""
    g = torch.Generator().manual_seed(3)

    def smooth(h: int, w: int) -> torch.Tensor:  # a lesion-like smooth image, not noise
        low = torch.rand(1, 3, h // 6, w // 6, generator=g) * 255
        return torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic").clamp(0, 255).round()[0].byte()

    aug = TrainAugment(size=32, crop_scale_min=0.35, flips=True, rotation=20.0, strength=0.5)
    for shapes, interior, mean in (([(32, 32)], 1.0, 0.4), ([(32, 40), (40, 32), (48, 48)], 6.0, 1.0)):
        images = [smooth(*shapes[k % len(shapes)]) for k in range(24)]
        crops = [aug.crop.make_params([image]) for image in images]
        theirs = aug.crop_batch(images, crops, batched=False)
        mine = aug.crop_batch(images, crops, batched=True)
        assert mine.shape == theirs.shape == (24, 3, 32, 32) and mine.dtype == torch.float32
        assert torch.equal(mine, mine.round()) and mine.min() >= 0 and mine.max() <= 255
        difference = (mine - theirs).abs()
        assert difference[..., 1:-1, 1:-1].max() <= interior and difference.mean() < mean, difference.mean()
        assert difference.mean() < 0.1 * (mine - theirs.roll(1, 0)).abs().mean()  # each image is its own
