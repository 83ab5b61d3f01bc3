"""The training augmentation as one fast transform (about 3x faster than torchvision's pipeline on a CPU at 224 px).

It draws the same random numbers in the same order (so with the same seed it makes nearly the same image), and
applies the same operations in the same order, as this torchvision ``v2`` pipeline (:func:`reference_pipeline`)::

    RandomResizedCrop(size, scale=(crop_scale_min, 1)) -> RandomHorizontalFlip -> RandomVerticalFlip
    -> RandomRotation(rotation) -> ColorJitter(brightness, contrast, saturation) -> RandAugment(2, magnitude)

What differs is only how: consecutive geometric steps (the flips and the rotation; RandAugment's shears, shifts and
rotations that follow one another) are composed into one affine map and applied by one nearest-neighbour
``grid_sample`` (torchvision resamples once per step, each also nearest-neighbour, through a slower grid); the
colour steps run on float images in [0, 1] (torchvision's own functions, without rounding to 8 bits after each;
ColorJitter's three and sharpness with the same arithmetic, written so that each image of a batch has its own
factor, sharpness with a faster blur). :meth:`TrainAugment.batch` runs the same steps once per batch (for images on
a GPU, ``train.gpu_decode``; there the crops are resized by one ``roi_align`` per image size: see
:meth:`TrainAugment.crop_batch`). Every random number comes from torch's global generator, so
``torch.manual_seed`` (and a DataLoader's per-worker seeding) makes it reproducible.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# torchvision's RandAugment space (v2.RandAugment): operation -> (magnitudes over the bins, signed); H, W: image size
RAND_AUGMENT_SPACE = {
    "Identity": (lambda bins, h, w: None, False),
    "ShearX": (lambda bins, h, w: torch.linspace(0.0, 0.3, bins), True),
    "ShearY": (lambda bins, h, w: torch.linspace(0.0, 0.3, bins), True),
    "TranslateX": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, bins), True),
    "TranslateY": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, bins), True),
    "Rotate": (lambda bins, h, w: torch.linspace(0.0, 30.0, bins), True),
    "Brightness": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Color": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Contrast": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Sharpness": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Posterize": (lambda bins, h, w: (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int(), False),
    "Solarize": (lambda bins, h, w: torch.linspace(1.0, 0.0, bins), False),
    "AutoContrast": (lambda bins, h, w: None, False),
    "Equalize": (lambda bins, h, w: None, False),
}


def adjust_sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``TF.adjust_sharpness`` of a float image, the same arithmetic; its 3x3 blur done with shifted sums (torch's
    depthwise ``conv2d`` takes ~20x longer on a CPU)."""
    box = image[..., :, :-2] + image[..., :, 1:-1] + image[..., :, 2:]
    box = box[..., :-2, :] + box[..., 1:-1, :] + box[..., 2:, :]  # 3x3 sums of the interior pixels
    output = image.clone()
    view = output[..., 1:-1, 1:-1]
    blurred = box.add_(view, alpha=4.0).div_(13.0)  # kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
    view.add_(blurred.sub_(view), alpha=1.0 - factor)
    return output.clamp_(0.0, 1.0)


# the colour operations, on float images in [0, 1], as v2.RandAugment applies them
COLOUR_OPS = {
    "Identity": lambda img, m: img,
    "Brightness": lambda img, m: TF.adjust_brightness_image(img, 1.0 + m),
    "Color": lambda img, m: TF.adjust_saturation_image(img, 1.0 + m),
    "Contrast": lambda img, m: TF.adjust_contrast_image(img, 1.0 + m),
    "Sharpness": lambda img, m: adjust_sharpness(img, 1.0 + m),
    "Posterize": lambda img, m: TF.posterize_image(img, int(m)),
    "Solarize": lambda img, m: TF.solarize_image(img, m),  # threshold = magnitude x the float maximum, 1.0
    "AutoContrast": lambda img, m: TF.autocontrast_image(img),
    "Equalize": lambda img, m: TF.equalize_image(img),
}


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without a stream synchronisation: a blocking host-to-device copy makes the
    CPU wait for every kernel queued before it, so a GPU pipeline of many small steps would run in lock-step. Only a
    copy from pinned memory is asynchronous: the tensor is pinned first (torch's caching host allocator)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _apply(x: torch.Tensor, idx: list[int], fn) -> torch.Tensor:
    """``fn`` applied to the images ``idx`` of the batch ``x`` (in place; all of it when ``idx`` is everything)."""
    if len(idx) == len(x):
        return fn(x)
    index = _to(torch.tensor(idx), x.device)
    return x.index_copy_(0, index, fn(x.index_select(0, index)))


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's blend of float images, ``image * ratio + other * (1 - ratio)`` clamped to [0, 1], with one
    ratio per image (a (n, 1, 1, 1) tensor)."""
    return image.mul(ratio).add_(other.mul(1.0 - ratio)).clamp_(0.0, 1.0)


def _grey(image: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale_image(image, num_output_channels=1)


# v2.ColorJitter's operations by its index (no hue: lesion colour is diagnostic, and hue is the slowest), as
# TF.adjust_brightness/contrast/saturation_image compute them, on (n, C, H, W) float images with a factor per image
JITTER_OPS = {
    0: lambda x, f: x.mul(f).clamp_(0.0, 1.0),
    1: lambda x, f: _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True), f),
    2: lambda x, f: _blend(x, _grey(x), f),
}


def inverse_affine(
    angle: float = 0.0, translate: tuple = (0.0, 0.0), shear: tuple = (0.0, 0.0), center: tuple = (0.0, 0.0)
) -> torch.Tensor:
    """3x3 map from output to input pixel coordinates (origin at the image centre), as torchvision's affine/rotate.

    The same formula as ``torchvision.transforms.v2.functional``'s ``_get_inverse_affine_matrix`` (scale 1).
    """
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    cx, cy = center
    tx, ty = cx + translate[0], cy + translate[1]
    return torch.tensor(
        [[d, -b, cx - d * tx + b * ty], [-c, a, cy + c * tx - a * ty], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def rand_augment_geometry(op: str, magnitude: float, size: int) -> torch.Tensor:
    """The inverse map of one of RandAugment's geometric operations on a ``size`` x ``size`` image."""
    corner = (-size / 2, -size / 2)  # RandAugment shears about the top-left corner (center=[0, 0])
    if op == "ShearX":
        return inverse_affine(shear=(math.degrees(math.atan(magnitude)), 0.0), center=corner)
    if op == "ShearY":
        return inverse_affine(shear=(0.0, math.degrees(math.atan(magnitude))), center=corner)
    if op == "TranslateX":
        return inverse_affine(translate=(float(int(magnitude)), 0.0))
    if op == "TranslateY":
        return inverse_affine(translate=(0.0, float(int(magnitude))))
    return inverse_affine(angle=-magnitude)  # "Rotate": F.rotate(angle) uses the affine matrix of -angle


class TrainAugment:
    """uint8 CHW image -> augmented float image of ``size`` x ``size`` (see the module docstring): in [0, 1], or
    normalised with ``mean`` and ``std`` (per channel) where given, as a following ``v2.Normalize`` would.

    ``size`` x ``size`` is also the size the geometric steps work at (RandomResizedCrop's output, as in torchvision).
    """

    def __init__(
        self, *, size: int, crop_scale_min: float, flips: bool, rotation: float, strength: float, mean=None, std=None
    ):
        self.size, self.flips, self.rotation, self.strength = size, flips, rotation, strength
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.crop = v2.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), antialias=True)
        self.jitter_range = (1.0 - 0.3 * strength, 1.0 + 0.3 * strength)  # v2.ColorJitter(0.3 s, 0.3 s, 0.3 s)
        self.num_ops, self.magnitude = (2, max(1, round(9 * strength))) if strength > 0 else (0, 0)
        magnitudes = {op: fn(31, size, size) for op, (fn, _) in RAND_AUGMENT_SPACE.items()}
        self.magnitude_of = {op: None if m is None else float(m[self.magnitude]) for op, m in magnitudes.items()}
        ramp = torch.linspace(-size / 2 + 0.5, size / 2 - 0.5, size)  # output pixel centres, origin at the centre
        self.xs, self.ys = ramp.view(1, size), ramp.view(size, 1)

    def __repr__(self) -> str:
        return (
            f"TrainAugment(size={self.size}, crop={self.crop.scale}, flips={self.flips}, rotation={self.rotation}, "
            f"strength={self.strength})"
        )

    def sample_rand_augment(self) -> list[tuple[str, float]]:
        """RandAugment's operations and signed magnitudes, drawn as v2.RandAugment draws them."""
        ops, keys = [], list(RAND_AUGMENT_SPACE)
        for _ in range(self.num_ops):
            op = keys[int(torch.randint(len(keys), ()))]
            magnitude, signed = self.magnitude_of[op], RAND_AUGMENT_SPACE[op][1]
            if magnitude is not None and signed and torch.rand(()) <= 0.5:
                magnitude *= -1
            ops.append((op, magnitude or 0.0))
        return ops

    def jitter_params(self) -> tuple[list[int], list[float]] | None:
        """v2.ColorJitter(brightness, contrast, saturation)'s draws: the order of the operations and three factors."""
        if self.strength <= 0:
            return None
        order = torch.randperm(4)  # as v2.ColorJitter: index 3 (hue) is drawn but not used
        factors = [float(torch.empty(1).uniform_(*self.jitter_range).item()) for _ in range(3)]
        return [k for k in order.tolist() if k in JITTER_OPS], factors

    def flips_and_rotation(self) -> list[torch.Tensor]:
        """Inverse maps of the random flips and rotation, drawn as v2's RandomHorizontal/VerticalFlip and
        RandomRotation draw them."""
        maps = []
        for flip in ((-1.0, 1.0, 1.0), (1.0, -1.0, 1.0)):
            if self.flips and not torch.rand(1) >= 0.5:  # p = 0.5
                maps.append(torch.diag(torch.tensor(flip, dtype=torch.float64)))
        if self.rotation > 0:
            angle = torch.empty(1).uniform_(-self.rotation, self.rotation).item()
            maps.append(inverse_affine(angle=-angle))  # F.rotate(angle) uses the affine matrix of -angle
        return maps

    def warp_batch(self, images: torch.Tensor, maps: list[list[torch.Tensor]]) -> torch.Tensor:
        """Each float image (B, C, H, W) warped by the geometric transforms whose inverse maps are its ``maps`` (in
        order), as one nearest-neighbour resampling, black outside; all in one ``grid_sample`` (images without maps
        are left as they are; ``images`` may be changed in place)."""
        warped = [b for b, image_maps in enumerate(maps) if image_maps]
        if not warped:
            return images
        rows = []
        for b in warped:
            inverse = maps[b][0]
            for m in maps[b][1:]:
                inverse = inverse @ m  # output -> input: the last transform's inverse first
            rows.append(inverse[:2] / (self.size / 2))  # to grid_sample's coordinates: -1..1 across the image
        m = _to(torch.stack(rows).to(torch.float32).view(-1, 2, 3, 1, 1), images.device)
        xs, ys = _to(self.xs, images.device), _to(self.ys, images.device)  # (no copy on the CPU)
        # the input x, y of every output pixel; one broadcast add per coordinate (~3x faster than one into the
        # last dimension)
        grid = torch.empty(len(warped), self.size, self.size, 2, device=images.device)
        for k in (0, 1):
            torch.add(xs * m[:, k, 0], ys * m[:, k, 1] + m[:, k, 2], out=grid[..., k])
        sample = partial(F.grid_sample, grid=grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return _apply(images, warped, sample)

    def rand_augment_plan(self) -> tuple[list[tuple[list[torch.Tensor], tuple[str, float]]], list[torch.Tensor]]:
        """RandAugment's draws as ``(segments, final)``: each segment the geometric maps pending before a colour
        operation and that operation (``Identity`` included: it ends a segment too), then the maps left over."""
        segments: list[tuple[list[torch.Tensor], tuple[str, float]]] = []
        pending: list[torch.Tensor] = []
        for op, magnitude in self.sample_rand_augment():
            if op in COLOUR_OPS:
                segments.append((pending, (op, magnitude)))
                pending = []
            else:
                pending.append(rand_augment_geometry(op, magnitude, self.size))
        return segments, pending

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:  # both or neither
            return image
        return image.sub_(_to(self.mean, image.device)).div_(_to(self.std, image.device))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.batch([image])[0]

    def batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        """``torch.stack([self(image) for image in images])``: the same random draws in the same order (image by
        image), but each step after the crop run once for the whole batch: one ``grid_sample`` per geometric step,
        one call per (colour operation, magnitude) on the images it applies to. For images on a GPU
        (``train.gpu_decode``), where a per-image pipeline is dozens of small kernel launches per image."""
        crops, flips, jitters, plans = [], [], [], []
        for image in images:  # the draws, image by image, in the order __call__ makes them
            crops.append(self.crop.make_params([image]))  # what v2.RandomResizedCrop draws: top, left, height, width
            flips.append(self.flips_and_rotation())
            jitters.append(self.jitter_params())
            plans.append(self.rand_augment_plan())
        x = self.warp_batch(self.crop_batch(images, crops).div_(255.0), flips)
        if self.strength > 0:
            x = self.jitter_batch(x, [j for j in jitters if j is not None])  # all drawn when strength > 0
        for slot in range(max((len(segments) for segments, _ in plans), default=0)):
            here = [segments[slot] if slot < len(segments) else None for segments, _ in plans]
            x = self.warp_batch(x, [s[0] if s else [] for s in here])
            groups: dict[tuple[str, float], list[int]] = {}
            for b, s in enumerate(here):
                if s is not None and s[1][0] != "Identity":
                    groups.setdefault(s[1], []).append(b)
            for (op, magnitude), idx in groups.items():
                x = _apply(x, idx, partial(COLOUR_OPS[op], m=magnitude))
        return self.normalise(self.warp_batch(x, [final for _, final in plans]))

    def crop_batch(self, images: list[torch.Tensor], crops: list[dict], batched: bool | None = None) -> torch.Tensor:
        """Each image's crop (``crops``: RandomResizedCrop's top, left, height, width) resized to ``size`` x ``size``,
        as a float batch of 8-bit values. Image by image with torchvision's antialiased resize (as RandomResizedCrop
        does), or ``batched`` (the default for images on a GPU, where a resize is ~10 kernel launches an image and
        the CPU that issues them is the bottleneck): one ``roi_align`` per image size. That samples bilinearly at
        the same points; only the edge pixels differ (it reads the pixel beyond the crop's edge where torchvision
        repeats the edge), and a crop wider than ``size`` is averaged over ceil(width / size) samples per output
        pixel, close to torchvision's antialiasing."""
        size = [self.size, self.size]
        if not (images[0].is_cuda if batched is None else batched):
            return torch.stack(
                [
                    TF.resized_crop(image, **crop, size=size, antialias=True)
                    for image, crop in zip(images, crops, strict=True)
                ]
            ).float()
        device = images[0].device
        out = torch.empty(len(images), images[0].shape[0], *size, device=device)
        by_shape: dict[tuple, list[int]] = {}
        for b, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(b)
        for idx in by_shape.values():
            boxes = [
                [k, c["left"], c["top"], c["left"] + c["width"], c["top"] + c["height"]]
                for k, c in enumerate(crops[b] for b in idx)
            ]
            group = roi_align(
                torch.stack([images[b] for b in idx]).float(),
                _to(torch.tensor(boxes, dtype=torch.float32), device),
                output_size=self.size,
                sampling_ratio=-1,
                aligned=True,
            )
            out.index_copy_(0, _to(torch.tensor(idx), device), group)
        return out.round_().clamp_(0.0, 255.0)  # 8-bit values, as torchvision's resize of a uint8 image

    @staticmethod
    def jitter_batch(x: torch.Tensor, params: list[tuple[list[int], list[float]]]) -> torch.Tensor:
        """ColorJitter of each image (B, C, H, W) with its own order and factors: per position in the order, per
        operation, one call on the images that apply it there, with their factors as a (n, 1, 1, 1) tensor."""
        for position in range(3):
            for k, op in JITTER_OPS.items():
                idx = [b for b, (order, _) in enumerate(params) if order[position] == k]
                if idx:
                    factor = _to(torch.tensor([params[b][1][k] for b in idx]).view(-1, 1, 1, 1), x.device)
                    x = _apply(x, idx, partial(op, f=factor))
        return x


def reference_pipeline(
    *, size: int, crop_scale_min: float, flips: bool, rotation: float, strength: float
) -> v2.Compose:
    """The plain torchvision pipeline that :class:`TrainAugment` reproduces (for tests and benchmarks)."""
    steps: list = [v2.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), antialias=True)]
    if flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rotation > 0:
        steps.append(v2.RandomRotation(rotation))
    if strength > 0:
        s = strength
        steps.append(v2.ColorJitter(brightness=0.3 * s, contrast=0.3 * s, saturation=0.3 * s))
        steps.append(v2.RandAugment(num_ops=2, magnitude=max(1, round(9 * s))))
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])
