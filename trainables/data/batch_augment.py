"""The training augmentation of a whole batch in a fixed, small number of tensor operations (``train.gpu_decode``).

:class:`TrainAugment` (the CPU loader workers' path) draws and applies its steps image by image; on a GPU that is
dozens of kernel launches an image, issued by one CPU thread, which then bounds training. :class:`BatchAugment`
makes the same kind of images, with the same distributions of every random draw, for a batch at once:

- **Draws**: every random number of the batch is drawn as a tensor, one call per kind of draw per batch, from its
  own seeded ``torch.Generator`` on the CPU (:meth:`BatchAugment.sample` -> :class:`BatchParams`), with the
  distributions of :class:`TrainAugment` (torchvision's RandomResizedCrop with its 10 tries and central-crop
  fallback, the flips' p = 0.5, RandomRotation's uniform angle, ColorJitter's random order and uniform factors,
  RandAugment's uniform operations and signs). The same seed gives the same draws on any device.
- **Geometry**: the crop, flips, rotation and RandAugment's shears, shifts and rotations are one affine map per
  image (output pixel -> source pixel), applied to the whole batch by one ``F.affine_grid`` and one bilinear
  ``F.grid_sample`` (images of different sizes share a zero-padded canvas). What falls outside the crop is black,
  as when torchvision rotates the cropped image. A crop shrunk by more than ``antialias_limit`` is supersampled
  (k x k samples a pixel, averaged), close to torchvision's antialiased resize.
- **Colour**: ColorJitter's three operations with a factor per image (1: unchanged), three positions x three
  operations as batched calls; RandAugment's colour operations on the images that drew them, a factor per image.
- One host-to-device copy of the batch's parameters (pinned, asynchronous), and no host synchronisation.

What differs from :class:`TrainAugment`, by design: one bilinear resampling instead of an antialiased resize and
nearest-neighbour warps, and RandAugment's geometric operations are applied together with the others, before the
colour steps (these act on each pixel, or on the image as a whole for sharpness, autocontrast and equalize, so only
the black corners a late shear or shift would leave untouched by the colour steps differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from trainables.data.augment import COLOUR_OPS, JITTER_OPS, RAND_AUGMENT_SPACE, TrainAugment, _to

RA_OPS = tuple(RAND_AUGMENT_SPACE)  # RandAugment's operations, in torchvision's order: the index drawn
RA_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range
CROP_TRIES = 10  # RandomResizedCrop's tries before its central-crop fallback


@dataclass(frozen=True)
class BatchParams:
    """A batch's random draws, one row per image (CPU tensors): everything :meth:`BatchAugment.apply` needs."""

    crop: torch.Tensor  # (B, 4) int64: top, left, height, width in the source image (RandomResizedCrop's)
    hflip: torch.Tensor  # (B,) bool
    vflip: torch.Tensor  # (B,) bool
    angle: torch.Tensor  # (B,) float64: RandomRotation's angle in degrees (counter-clockwise, as TF.rotate)
    jitter_order: torch.Tensor  # (B, 3) int64: ColorJitter's order of 0 brightness, 1 contrast, 2 saturation
    jitter_factor: torch.Tensor  # (B, 3) float64: the brightness, contrast and saturation factors
    ra_op: torch.Tensor  # (B, num_ops) int64: RandAugment's operations (indices into RA_OPS)
    ra_magnitude: torch.Tensor  # (B, num_ops) float64: their signed magnitudes (0 where an operation has none)

    def __len__(self) -> int:
        return len(self.crop)


def inverse_affine_batch(angle, translate_x, translate_y, shear_x, shear_y, center_x, center_y) -> torch.Tensor:
    """(B, 3, 3) maps from output to input pixel coordinates (origin at the image centre), one per row of the
    float64 tensors given (degrees, pixels): :func:`trainables.data.augment.inverse_affine` for a batch."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    tx, ty = center_x + translate_x, center_y + translate_y
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rows = [
        torch.stack([d, -b, center_x - d * tx + b * ty], -1),
        torch.stack([-c, a, center_y + c * tx - a * ty], -1),
        torch.stack([zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def adjust_sharpness_batch(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """:func:`trainables.data.augment.adjust_sharpness` with a factor per image (``factor``: (n, 1, 1, 1))."""
    box = image[..., :, :-2] + image[..., :, 1:-1] + image[..., :, 2:]
    box = box[..., :-2, :] + box[..., 1:-1, :] + box[..., 2:, :]
    output = image.clone()
    view = output[..., 1:-1, 1:-1]
    blurred = box.add_(view, alpha=4.0).div_(13.0)
    view.addcmul_(blurred.sub_(view), 1.0 - factor)
    return output.clamp_(0.0, 1.0)


# RandAugment's colour operations with a factor per image ((n, 1, 1, 1): 1 + magnitude, as v2.RandAugment)
FACTOR_OPS = {
    "Brightness": JITTER_OPS[0],
    "Contrast": JITTER_OPS[1],
    "Color": JITTER_OPS[2],
    "Sharpness": adjust_sharpness_batch,
}


class BatchAugment:
    """:class:`TrainAugment`'s settings (size, crop scale, flips, rotation, strength, mean and std), applied to a
    batch at once (see the module docstring). ``seed``: the generator's seed (default: drawn from torch's global
    generator, so ``torch.manual_seed`` makes a run reproducible). ``antialias_limit``: the largest shrink of a
    crop sampled once per output pixel; above it, k x k samples are averaged."""

    def __init__(self, settings: TrainAugment, seed: int | None = None, antialias_limit: float = 2.0):
        self.settings = settings
        self.size = settings.size
        if seed is None:
            seed = int(torch.randint(2**62, ()))
        self.generator = torch.Generator().manual_seed(seed)
        self.antialias_limit = antialias_limit
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def __repr__(self) -> str:
        return f"BatchAugment({self.settings!r})"

    def reseed(self, seed: int) -> None:
        """Start a new stream of draws (:class:`~trainables.data.loader.DeviceDecoded` does, each epoch)."""
        self.generator.manual_seed(seed)

    # ----- draws -----

    def _uniform(self, shape: tuple, low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64) * (high - low) + low

    def sample_crops(self, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """RandomResizedCrop's (top, left, height, width) for images of these sizes, as torchvision draws them:
        up to 10 tries of (area, log aspect ratio), the first that fits, else the central crop."""
        n, (lo, hi) = len(heights), self.settings.crop.scale
        h_img, w_img = heights.to(torch.float64), widths.to(torch.float64)
        area = (h_img * w_img)[:, None] * self._uniform((n, CROP_TRIES), lo, hi)
        aspect = torch.exp(self._uniform((n, CROP_TRIES), math.log(RATIO[0]), math.log(RATIO[1])))
        w = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round
        h = torch.round(torch.sqrt(area / aspect))
        fits = (w > 0) & (w <= w_img[:, None]) & (h > 0) & (h <= h_img[:, None])
        first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits (0 when none does)
        found = fits.any(1)
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        # fallback: the central crop, clamped to the ratio range
        in_ratio = w_img / h_img
        fb_w = torch.where(in_ratio > RATIO[1], torch.round(h_img * RATIO[1]), w_img)
        fb_h = torch.where(in_ratio < RATIO[0], torch.round(w_img / RATIO[0]), h_img)
        h, w = torch.where(found, h, fb_h), torch.where(found, w, fb_w)
        u = torch.rand((n, 2), generator=self.generator, dtype=torch.float64)  # randint(0, free + 1): uniform
        top = torch.where(found, torch.floor(u[:, 0] * (h_img - h + 1)), torch.div(h_img - h, 2, rounding_mode="floor"))
        left = torch.where(
            found, torch.floor(u[:, 1] * (w_img - w + 1)), torch.div(w_img - w, 2, rounding_mode="floor")
        )
        return torch.stack([top, left, h, w], 1).to(torch.int64)

    def sample(self, shapes: Sequence[tuple[int, int]]) -> BatchParams:
        """The random draws for a batch of images of these (height, width)s."""
        s, n, g = self.settings, len(shapes), self.generator
        sizes = torch.tensor(shapes, dtype=torch.int64).view(n, 2)
        crop = self.sample_crops(sizes[:, 0], sizes[:, 1])
        flips = torch.rand((n, 2), generator=g) < 0.5  # v2.RandomHorizontal/VerticalFlip: p = 0.5
        if not s.flips:
            flips = torch.zeros_like(flips)
        angle = self._uniform((n,), -s.rotation, s.rotation) if s.rotation > 0 else torch.zeros(n, dtype=torch.float64)
        # v2.ColorJitter: a random permutation of its 4 operations, hue (3) not used
        perm = torch.rand((n, 4), generator=g).argsort(1)
        order = perm[perm != 3].view(n, 3)
        factor = self._uniform((n, 3), *s.jitter_range)
        ra_op = torch.randint(len(RA_OPS), (n, s.num_ops), generator=g)
        negative = torch.rand((n, s.num_ops), generator=g, dtype=torch.float64) <= 0.5
        magnitude = torch.tensor([s.magnitude_of[op] or 0.0 for op in RA_OPS], dtype=torch.float64)[ra_op]
        signed = torch.tensor([RAND_AUGMENT_SPACE[op][1] for op in RA_OPS])[ra_op]
        magnitude = torch.where(signed & negative, -magnitude, magnitude)
        return BatchParams(crop, flips[:, 0], flips[:, 1], angle, order, factor, ra_op, magnitude)

    # ----- geometry -----

    def geometry(self, params: BatchParams) -> torch.Tensor:
        """(B, 3, 3) float64: each image's inverse map of its flips, rotation and RandAugment's geometric steps, in
        output pixel coordinates of the ``size`` x ``size`` crop (origin at its centre)."""
        n, size = len(params), self.size
        zero = torch.zeros(n, dtype=torch.float64)
        flip = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        flip[:, 0, 0] = torch.where(params.hflip, -1.0, 1.0)
        flip[:, 1, 1] = torch.where(params.vflip, -1.0, 1.0)
        # F.rotate(angle) uses the affine matrix of -angle
        m = flip @ inverse_affine_batch(-params.angle, zero, zero, zero, zero, zero, zero)
        corner = torch.full((n,), -size / 2, dtype=torch.float64)  # RandAugment shears about the top-left corner
        for slot in range(params.ra_op.shape[1]):
            op, mag = params.ra_op[:, slot], params.ra_magnitude[:, slot]
            is_ = {name: op == RA_OPS.index(name) for name in RA_GEOMETRIC}
            shear = torch.rad2deg(torch.atan(mag))
            step = inverse_affine_batch(
                torch.where(is_["Rotate"], -mag, zero),
                torch.where(is_["TranslateX"], torch.trunc(mag), zero),  # int(magnitude) pixels
                torch.where(is_["TranslateY"], torch.trunc(mag), zero),
                torch.where(is_["ShearX"], shear, zero),
                torch.where(is_["ShearY"], shear, zero),
                torch.where(is_["ShearX"] | is_["ShearY"], corner, zero),
                torch.where(is_["ShearX"] | is_["ShearY"], corner, zero),
            )
            m = m @ step  # output -> input: the last transform's inverse first
        return m

    def warp_params(self, params: BatchParams, canvas: tuple[int, int]) -> torch.Tensor:
        """(B, 10) float32 per image: ``affine_grid``'s theta (output -> the crop's -1..1 square, 6), then the scale
        and offset (x, y) from that square to the canvas's -1..1 coordinates (4)."""
        m = self.geometry(params)
        theta = torch.cat([m[:, :2, :2], m[:, :2, 2:] / (self.size / 2)], 2)  # in -1..1 of the output
        top, left, h, w = params.crop.to(torch.float64).unbind(1)
        hc, wc = canvas
        scale = torch.stack([w / wc, h / hc], 1)
        offset = torch.stack([(2 * left + w) / wc - 1.0, (2 * top + h) / hc - 1.0], 1)
        return torch.cat([theta.flatten(1), scale, offset], 1).to(torch.float32)

    def supersampling(self, params: BatchParams) -> int:
        """Samples per output pixel along each axis: 1, or more where the batch's largest shrink of a crop exceeds
        ``antialias_limit``."""
        shrink = float(params.crop[:, 2:].max()) / self.size
        return max(1, math.ceil(shrink / self.antialias_limit))

    def warp(self, canvas: torch.Tensor, warp: torch.Tensor, k: int = 1) -> torch.Tensor:
        """The crops of a float canvas (B, C, Hc, Wc) warped to (B, C, size, size), black outside each crop, in
        [0, 1] for a canvas of 8-bit values: one ``affine_grid``, one ``grid_sample`` (``warp``: the rows of
        :meth:`warp_params`, on the canvas's device)."""
        n, c, out = len(canvas), canvas.shape[1], self.size * k
        unit = F.affine_grid(warp[:, :6].view(n, 2, 3), [n, c, out, out], align_corners=False)  # crop's -1..1
        inside = (unit.abs() <= 1.0).all(-1, keepdim=True).movedim(-1, 1)  # (B, 1, out, out)
        grid = torch.addcmul(warp[:, None, None, 8:10], unit, warp[:, None, None, 6:8])
        x = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = x.mul_(inside.to(x.dtype).mul_(1.0 / 255.0))
        return F.avg_pool2d(x, k) if k > 1 else x

    # ----- colour -----

    @staticmethod
    def jitter_factors(params: BatchParams) -> torch.Tensor:
        """(B, 9) float32: for each of ColorJitter's 3 positions, each operation's factor (1 where the image
        applies another operation there)."""
        rows = []
        for position in range(3):
            for k in range(3):
                rows.append(torch.where(params.jitter_order[:, position] == k, params.jitter_factor[:, k], 1.0))
        return torch.stack(rows, 1).to(torch.float32)

    @staticmethod
    def jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """ColorJitter of the batch with :meth:`jitter_factors` (on ``x``'s device): 9 batched operations."""
        for position in range(3):
            for k, op in JITTER_OPS.items():
                x = op(x, factors[:, 3 * position + k].view(-1, 1, 1, 1))
        return x

    def rand_augment_colour(self, x: torch.Tensor, params: BatchParams) -> torch.Tensor:
        """RandAugment's colour operations, slot by slot: each operation once, on the images that drew it there
        (their indices and factors copied to the device with one asynchronous copy each)."""
        for slot in range(params.ra_op.shape[1]):
            ops = params.ra_op[:, slot]
            for op in torch.unique(ops).tolist():
                name = RA_OPS[op]
                if name in RA_GEOMETRIC or name == "Identity":
                    continue
                idx = torch.nonzero(ops == op)[:, 0]
                mags = params.ra_magnitude[idx, slot]
                packed = _to(torch.cat([idx.to(torch.float32), mags.to(torch.float32)]), x.device)
                index = packed[: len(idx)].long()
                sub = x.index_select(0, index)
                if name in FACTOR_OPS:
                    sub = FACTOR_OPS[name](sub, packed[len(idx) :].view(-1, 1, 1, 1).add(1.0))
                else:  # Posterize, Solarize, AutoContrast, Equalize: one magnitude for all (unsigned)
                    sub = COLOUR_OPS[name](sub, float(mags[0]))
                x = x.index_copy_(0, index, sub)
        return x

    def _normaliser(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(1 / std, -mean / std) on ``device``, copied there once."""
        if device not in self._constants:
            s = self.settings
            if s.mean is None or s.std is None:
                self._constants[device] = None
            else:
                scale, shift = 1.0 / s.std, -s.mean / s.std
                self._constants[device] = (_to(scale[None], device), _to(shift[None], device))
        return self._constants[device]

    # ----- the whole batch -----

    @staticmethod
    def canvas(images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The images as one float batch (B, C, Hc, Wc): stacked, or, of different sizes, each at the top left of
        a zero canvas of the largest height and width (one copy per size)."""
        if isinstance(images, torch.Tensor):
            return images.float()
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) == 1:
            return torch.stack(list(images)).float()
        c = images[0].shape[0]
        hc, wc = max(s[1] for s in shapes), max(s[2] for s in shapes)
        out = torch.zeros(len(images), c, hc, wc, device=images[0].device)
        for shape in shapes:
            idx = [b for b, image in enumerate(images) if tuple(image.shape) == shape]
            group = torch.stack([images[b] for b in idx]).float()
            out[:, :, : shape[1], : shape[2]].index_copy_(0, _to(torch.tensor(idx), out.device), group)
        return out

    def apply(self, images: Sequence[torch.Tensor] | torch.Tensor, params: BatchParams) -> torch.Tensor:
        """The augmented batch (B, C, size, size) float32 of uint8 images (a list of (C, H, W), or a (B, C, H, W)
        tensor) with the draws ``params``, on the images' device."""
        canvas = self.canvas(images)
        hc, wc = canvas.shape[-2:]
        packed = torch.cat([self.warp_params(params, (hc, wc)), self.jitter_factors(params)], 1)
        packed = _to(packed, canvas.device)  # one asynchronous copy
        x = self.warp(canvas, packed[:, :10], self.supersampling(params))
        if self.settings.strength > 0:
            x = self.jitter(x, packed[:, 10:])
            x = self.rand_augment_colour(x, params)
        norm = self._normaliser(x.device)
        return x if norm is None else torch.addcmul(norm[1], x, norm[0])

    def batch(self, images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Draw and apply: what :class:`trainables.data.loader.DeviceDecoded` calls once per batch."""
        shapes = [tuple(image.shape[-2:]) for image in images]
        return self.apply(images, self.sample(shapes))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.batch([image])[0]


def without_rand_augment(params: BatchParams) -> BatchParams:
    """``params`` with RandAugment's draws removed (tests and benchmarks: the steps compared one at a time)."""
    n = len(params)
    return replace(params, ra_op=torch.zeros(n, 0, dtype=torch.int64), ra_magnitude=torch.zeros(n, 0))
