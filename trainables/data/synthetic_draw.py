"""The image model of the synthetic dataset (see trainables/data/synthetic.py): how each diagnosis and each body
site looks, and :func:`render`, which draws and writes one image from its own seeded RNGs.

The skin (tone per patient; texture, redness, freckles, dry-skin scale, acral ridges and hair per body site)
carries the site; the lesion (size, border, colours, network, dots, vessels, scar, keratin per diagnosis, see
``DX``) carries the diagnosis; ``LOOKALIKE`` pairs are drawn part-way towards each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {name: np.array(rgb, np.float32) for name, rgb in {
    "tan": (0.76, 0.56, 0.40), "brown": (0.52, 0.33, 0.21), "dark": (0.30, 0.18, 0.12),
    "black": (0.12, 0.08, 0.08), "bluegrey": (0.36, 0.40, 0.50), "pink": (0.90, 0.56, 0.56),
    "red": (0.74, 0.16, 0.20), "purple": (0.42, 0.14, 0.32), "white": (0.96, 0.93, 0.90),
    "keratin": (0.95, 0.88, 0.78), "grey": (0.58, 0.54, 0.56), "maroon": (0.42, 0.08, 0.12),
}.items()}  # fmt: skip
# Look-alikes: with this probability a lesion's appearance is drawn part-way (25-100 %) towards the other
# class, so telling these pairs apart needs context: where on the body they occur.
LOOKALIKE = {"MEL": ("NV", 0.4), "NV": ("MEL", 0.2), "BCC": ("BKL", 0.15), "AK": ("BKL", 0.55),
             "BKL": ("AK", 0.35), "DF": ("NV", 0.5), "SCC": ("AK", 0.5)}  # fmt: skip


@dataclass(frozen=True)
class Dx:
    """How a diagnosis looks; every number is a mean that each lesion perturbs."""

    radius: float  # lesion radius, fraction of the image half-width
    irregular: float  # amplitude of the radial Fourier noise of the border
    soft: float  # border blur, fraction of the radius
    opacity: float  # how much the lesion hides the skin (pink lesions are translucent)
    colours: tuple[str, ...]  # base colour first, then the variegation candidates
    variegation: float  # mean number of extra colour zones
    network: float  # pigment network strength
    cells: float  # network scale (low: broad cerebriform fissures)
    atypical: float  # 0 regular .. 1 broken network, eccentric pigment, peripheral dots
    dots: tuple[tuple[str, float, float], ...] = ()  # (colour, mean count, radius in half-widths)
    vessels: float = 0.0  # mean number of arborizing vessels
    scar: float = 0.0  # white scar-like centre
    keratin: float = 0.0  # crusty keratin / scale


DX = {
    "MEL": Dx(0.50, 0.13, 0.06, 0.95, ("brown", "dark", "black", "bluegrey", "tan", "grey", "pink"), 2.2,
              0.5, 30, 0.75, (("black", 10, 0.015), ("grey", 6, 0.012))),
    "NV": Dx(0.38, 0.05, 0.09, 0.85, ("brown", "tan", "dark", "bluegrey"), 0.6, 0.7, 32, 0.25,
             (("dark", 6, 0.03),)),
    "BCC": Dx(0.40, 0.09, 0.12, 0.55, ("pink", "bluegrey", "white", "dark"), 1.2, 0.0, 16, 0.3,
              (("bluegrey", 5, 0.07),), vessels=4, keratin=0.1),
    "AK": Dx(0.45, 0.10, 0.30, 0.55, ("pink", "red", "tan", "brown"), 0.7, 0.0, 16, 0.3,
             (("white", 14, 0.025),), keratin=0.45),
    "BKL": Dx(0.46, 0.08, 0.05, 0.85, ("tan", "brown", "pink", "dark", "grey"), 1.0, 0.35, 14, 0.4,
              (("white", 5, 0.025), ("dark", 5, 0.025)), keratin=0.35),
    "DF": Dx(0.34, 0.04, 0.25, 0.70, ("brown", "tan", "pink"), 0.4, 0.5, 36, 0.1, scar=0.8),
    "VASC": Dx(0.32, 0.06, 0.04, 0.95, ("red", "purple", "bluegrey"), 1.2, 0.0, 16, 0.0,
               (("purple", 8, 0.07), ("maroon", 8, 0.06))),
    "SCC": Dx(0.45, 0.10, 0.20, 0.60, ("pink", "red", "keratin", "tan"), 1.0, 0.0, 16, 0.3,
              (("red", 14, 0.015), ("maroon", 3, 0.03)), keratin=0.8),
}  # fmt: skip


@dataclass(frozen=True)
class Site:
    """How the skin of a body site looks."""

    colour: tuple[float, float, float]  # average-tone skin
    texture: float  # fine texture amplitude
    blotch: float  # reddish sun-damage blotches
    freckles: float  # small tan spots
    cracks: float  # dry-skin scaling lines
    ridges: float  # palm/sole ridges and furrows
    hair: float  # mean number of hairs


SITES = {
    "anterior torso": Site((0.80, 0.59, 0.49), 0.02, 0.02, 0.2, 0.0, 0.0, 2),
    "posterior torso": Site((0.77, 0.56, 0.46), 0.03, 0.03, 0.6, 0.0, 0.0, 3),
    "lateral torso": Site((0.79, 0.58, 0.48), 0.02, 0.02, 0.4, 0.0, 0.0, 2),
    "upper extremity": Site((0.81, 0.60, 0.50), 0.04, 0.06, 0.4, 0.15, 0.0, 7),
    "lower extremity": Site((0.80, 0.60, 0.51), 0.05, 0.02, 0.1, 0.5, 0.0, 14),
    "head/neck": Site((0.88, 0.65, 0.57), 0.05, 0.30, 0.3, 0.0, 0.0, 2),
    "palms/soles": Site((0.89, 0.73, 0.58), 0.02, 0.00, 0.0, 0.0, 1.0, 0),
    "oral/genital": Site((0.82, 0.50, 0.52), 0.02, 0.15, 0.0, 0.0, 0.0, 1),
}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(t, t)


def _noise(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """Smooth noise with about ``cells`` features across the image, standardised."""
    c = max(2, round(cells))
    small = Image.fromarray(rng.standard_normal((c + 3, c + 3)).astype(np.float32), "F")
    step = (c + 3) / (c + 1)  # crop a margin: bicubic edges are biased
    field = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC, box=(1, 1, 1 + c * step, 1 + c * step)))
    return (field - field.mean()) / (field.std() + 1e-6)


def _mask(draw_fn, size: int, blur: float = 0.0, ss: int = 2) -> np.ndarray:
    """Anti-aliased [0, 1] mask drawn by ``draw_fn(draw, scale)``, blurred by ``blur`` half-widths."""
    img = Image.new("L", (size * ss, size * ss))
    draw_fn(ImageDraw.Draw(img), size * ss)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur * size * ss / 2))
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), np.float32) / 255


def _cell_borders(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """Distance to the nearest cell border (Worley F2 - F1) of a jittered grid, ``cells`` per image width."""
    c = max(2, round(cells))
    jx, jy = rng.uniform(0, 1, (2, (c + 2) ** 2)).astype(np.float32)  # one point per cell, padded
    gx, gy = np.meshgrid(*[(np.arange(size, dtype=np.float32) + 0.5) * c / size] * 2)
    gx, gy = gx + 0.3 * _noise(rng, size, c / 3), gy + 0.3 * _noise(rng, size, c / 3)  # rounder, uneven holes
    ix, iy = np.clip(np.floor(gx), 0, c - 1), np.clip(np.floor(gy), 0, c - 1)
    fx, fy, cell = gx - ix, gy - iy, ((iy + 1) * (c + 2) + ix + 1).astype(np.intp)
    near = second = np.full_like(gx, np.inf)  # squared distances to the nearest and second nearest point
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            k = cell + dy * (c + 2) + dx
            d = (fx - dx - jx.take(k)) ** 2 + (fy - dy - jy.take(k)) ** 2
            second, near = np.minimum(second, np.maximum(near, d)), np.minimum(near, d)
    return np.sqrt(second) - np.sqrt(near)


def _paint(p: np.ndarray, a: np.ndarray, colour: np.ndarray, w: np.ndarray) -> None:
    """Paint ``colour`` with weight ``w`` over premultiplied RGB ``p`` and alpha ``a``, in place."""
    w = np.clip(w, 0, 1)
    p *= 1 - w[..., None]
    p += w[..., None] * colour
    a *= 1 - w
    a += w


def _skin(rng: np.random.Generator, site: Site, tone: float, size: int) -> np.ndarray:
    """Site-dependent skin; ``tone`` (per patient, ~N(0, 1)) darkens and browns it."""
    base = np.array(site.colour, np.float32) - tone * np.array([0.09, 0.12, 0.12], np.float32)
    furrows = np.exp(-((_noise(rng, size, 10) / 0.12) ** 2))  # the criss-cross lines of the skin surface
    texture, blotch, freckles = rng.lognormal(0, 0.4, 3) * (site.texture, site.blotch, site.freckles)
    shade = 1 + 0.04 * _noise(rng, size, 3) + texture * _noise(rng, size, 50) - 0.04 * furrows
    img = base * shade[..., None]
    if blotch:  # sun damage: reddish patches
        red = np.clip(_noise(rng, size, 7) - 0.2, 0, None) * blotch
        img += red[..., None] * np.array([0.02, -0.12, -0.09], np.float32)
    if freckles:
        spots = np.clip((_noise(rng, size, 26) - 1.8) * 2, 0, 1) * freckles
        img *= 1 - spots[..., None] * np.array([0.15, 0.25, 0.32], np.float32)
    if site.cracks:  # dry skin: whitish scale along the furrows
        img += (furrows * site.cracks)[..., None] * np.array([0.14, 0.14, 0.15], np.float32)
    if site.ridges:  # acral skin: parallel ridges and furrows, sweat pores on the ridges
        u, v = _grid(size)
        th = rng.uniform(0, np.pi)
        along = 24 * np.pi * (u * np.cos(th) + v * np.sin(th))
        ridge = 0.5 + 0.5 * np.sin(along + 2.5 * _noise(rng, size, 3))
        img *= (1 - site.ridges * 0.12 * (1 - ridge))[..., None]
        img += (np.clip((_noise(rng, size, 40) - 2.0) * ridge, 0, 1) * 0.15)[..., None]
    return img


def _polyline(xs: np.ndarray, ys: np.ndarray, s: int) -> list[tuple[float, float]]:
    """Points in [-1, 1] image coordinates to pixels of an ``s``-pixel canvas."""
    return list(zip(((xs + 1) * s / 2).tolist(), ((ys + 1) * s / 2).tolist(), strict=True))


def _hair(rng: np.random.Generator, img: np.ndarray, count: float, colour: np.ndarray) -> np.ndarray:
    """Poisson(count) gently curved hairs, roughly parallel, drawn over everything."""
    n, theta = rng.poisson(count), rng.uniform(0, np.pi)

    def draw(d: ImageDraw.ImageDraw, s: int) -> None:
        for _ in range(n):
            angles = theta + rng.normal(0, 0.3) + rng.normal(0, 0.6) * np.linspace(0, 1, 10)
            step, (x, y) = rng.uniform(0.06, 0.24), rng.uniform(-1.4, 1.4, 2)
            xs, ys = x + np.cumsum(np.cos(angles)) * step, y + np.cumsum(np.sin(angles)) * step
            width = max(1, round(rng.uniform(0.5, 1.4) * s / 128))
            d.line(_polyline(xs, ys, s), fill=int(rng.uniform(160, 255)), width=width)

    m = _mask(draw, img.shape[0])[..., None] if n else 0
    return img * (1 - m) + colour * m


def _shape(rng: np.random.Generator, d: Dx, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Lesion mask from a radial Fourier border; returns (mask, radius / R map, R)."""
    u, v = _grid(size)
    rho, th = np.hypot(u, v), np.arctan2(v, u)
    r0 = float(np.clip(d.radius * rng.lognormal(0, 0.2), 0.12, 0.8))
    k = np.arange(2, 8, dtype=np.float32)
    amp = d.irregular * rng.lognormal(0, 0.4) * rng.standard_normal(k.size) / k**0.7
    phase = rng.uniform(0, 2 * np.pi, k.size)
    angles = np.linspace(-np.pi, np.pi, 721, dtype=np.float32)  # the border on a table of angles
    table = 1 + (amp[:, None] * np.cos(k[:, None] * angles + phase[:, None])).sum(0)
    jagged = 0.3 * d.irregular * _noise(rng, size, 14)
    edge = r0 * (table[np.rint((th + np.pi) * (360 / np.pi)).astype(int)] + jagged)
    soft = max(0.012, d.soft * rng.lognormal(0, 0.3) * r0)
    mask = 0.5 + 0.5 * np.tanh((edge - rho) / soft)
    return mask.astype(np.float32), (rho / np.maximum(edge, 1e-3)).astype(np.float32), r0


def _dots(rng: np.random.Generator, size: int, r0: float, count: float, radius: float, peripheral: float):
    """Mask of ``Poisson(count)`` dots inside the lesion; ``peripheral`` pushes them to one edge."""
    n = rng.poisson(count)
    side = rng.uniform(0, 2 * np.pi)
    rho = r0 * np.sqrt(rng.uniform(peripheral * 0.6, 0.85, n))
    th = rng.uniform(0, 2 * np.pi, n) * (1 - 0.6 * peripheral) + side
    rad = radius * rng.lognormal(0, 0.3, n)

    def draw(dr: ImageDraw.ImageDraw, s: int) -> None:
        for x, y, r in zip(np.cos(th) * rho, np.sin(th) * rho, rad, strict=True):
            cx, cy, rr = (x + 1) * s / 2, (y + 1) * s / 2, max(r * s / 2, 0.7)
            dr.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=255)

    return _mask(draw, size, blur=radius * 0.5)


def _vessels(rng: np.random.Generator, size: int, r0: float, count: float) -> np.ndarray:
    """Arborizing vessels: branching random walks that start near the border and thin inwards."""
    starts = rng.uniform(0, 2 * np.pi, rng.poisson(count))

    def draw(d: ImageDraw.ImageDraw, s: int) -> None:
        stack = [(0.8 * r0 * np.cos(t), 0.8 * r0 * np.sin(t), t + np.pi + rng.normal(0, 0.4), 3.0) for t in starts]
        while stack:
            x, y, heading, width = stack.pop()
            headings = heading + np.cumsum(rng.normal(0, 0.35, 6))
            xs = x + np.concatenate([[0], np.cumsum(np.cos(headings))]) * r0 * 0.1
            ys = y + np.concatenate([[0], np.cumsum(np.sin(headings))]) * r0 * 0.1
            d.line(_polyline(xs, ys, s), fill=230, width=round(width * s / 256) or 1)
            if width > 1.2:
                stack += [(xs[-1], ys[-1], headings[-1] + turn, width * 0.6) for turn in (-0.6, 0.6)]

    return _mask(draw, size)


def _look(rng: np.random.Generator, dx: str) -> Dx:
    """The lesion's appearance: its class's own, or (see LOOKALIKE) part-way towards a look-alike class."""
    partner, chance = LOOKALIKE.get(dx, (dx, 0.0))
    if rng.random() >= chance:
        return DX[dx]
    t, own, other = rng.uniform(0.25, 1.0), DX[dx], DX[partner]
    numbers = [f.name for f in fields(Dx) if isinstance(getattr(own, f.name), (int, float))]
    mixed = {k: (1 - t) * getattr(own, k) + t * getattr(other, k) for k in numbers}
    return replace(other if t > 0.5 else own, **mixed)


def _lesion(rng: np.random.Generator, d: Dx, size: int, tone: float) -> tuple[np.ndarray, np.ndarray]:
    """The lesion in its own frame: premultiplied RGB and alpha."""
    mask, rel, r0 = _shape(rng, d, size)
    base = COLOURS[d.colours[0] if rng.random() > 0.2 else d.colours[rng.integers(1, 3)]]  # like a neighbour
    base = np.clip(base * rng.normal(1 - 0.05 * tone, 0.08) * rng.normal(1, 0.03, 3), 0, 1).astype(np.float32)
    atyp = float(np.clip(d.atypical + rng.normal(0, 0.2), 0, 1))
    a = mask * float(np.clip(d.opacity * rng.normal(1, 0.1), 0.2, 1))
    centre = 1 - 0.25 * (1 - rel) * rng.uniform(-0.5, 1)  # darker or lighter centre
    p = (a * centre * (1 + rng.uniform(0.05, 0.2) * _noise(rng, size, 12)))[..., None] * base
    for name in rng.choice(d.colours[1:], min(rng.poisson(d.variegation), len(d.colours) - 1), replace=False):
        zone = np.clip(_noise(rng, size, 4) + rng.uniform(-1.2, 0.2) + atyp * 0.6, 0, 1)
        _paint(p, a, COLOURS[name], zone * mask * 0.7)
    if d.network:  # pigmented cell borders; an atypical network is uneven, thick and broken
        width = 0.5 * np.exp(atyp * 0.5 * _noise(rng, size, 6))
        lines = np.exp(-((_cell_borders(rng, size, d.cells * rng.lognormal(0, 0.2)) / width) ** 2))
        broken = np.clip(_noise(rng, size, 5) + 1.5 - 2 * atyp, 0, 1)
        fade = 1 - 0.7 * (1 - atyp) * rel**3  # a regular network fades out towards the border
        _paint(p, a, base * 0.6, 0.8 * lines * broken * fade * d.network * rng.lognormal(0, 0.3) * mask)
    for name, count, radius in d.dots:
        dots = _dots(rng, size, r0, count, radius, atyp if name in ("black", "dark") else 0)
        _paint(p, a, COLOURS[name], dots * 0.85)
    if d.vessels:
        _paint(p, a, COLOURS["red"], _vessels(rng, size, r0, d.vessels) * 0.85)
    if d.scar:
        scar = np.clip(1.5 * (1 - rel / 0.5) + 0.6 * _noise(rng, size, 6), 0, 1) * rng.lognormal(0, 0.4)
        _paint(p, a, COLOURS["white"] * np.array([0.97, 0.9, 0.88], np.float32), scar * d.scar * mask)
    if d.keratin:
        crust = np.clip(_noise(rng, size, 6) + 1.2 * (1 - rel) - 0.8, 0, 1)
        crust *= 0.7 + 0.3 * _noise(rng, size, 30)  # rough surface
        _paint(p, a, COLOURS["keratin"], crust * d.keratin * rng.lognormal(0, 0.4) * mask)
    return p, a


def _view(rng: np.random.Generator, p: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate, flip, scale and shift the lesion (premultiplied, so edges interpolate correctly)."""
    size = a.shape[0]
    th, scale, off = rng.uniform(0, 2 * np.pi), rng.lognormal(0, 0.12), rng.normal(0, 0.08, 2)
    m = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]]) / scale
    m[:, 0] *= rng.choice([-1, 1])
    c = size / 2 - m @ (size / 2 * (1 + off))  # output pixel -> lesion-frame pixel
    data = (m[0, 0], m[0, 1], c[0], m[1, 0], m[1, 1], c[1])
    chans = [np.ascontiguousarray(ch) for ch in (p[..., 0], p[..., 1], p[..., 2], a)]
    out = [
        np.asarray(Image.fromarray(ch).transform(a.shape, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR))
        for ch in chans
    ]
    return np.dstack(out[:3]), np.clip(out[3], 0, 1)


def _optics(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Illumination gradient, white balance, dermoscope vignetting and sensor noise."""
    u, v = _grid(img.shape[0])
    gx, gy = rng.normal(0, 0.08, 2)
    img = img * (1 + gx * u + gy * v)[..., None] * rng.normal(1, 0.02, 3).astype(np.float32)
    r = np.hypot(u, v)
    img *= (1 - rng.uniform(0.1, 0.35) * (r / 1.42) ** 3)[..., None]
    if rng.random() < 0.4:  # the dark circle of a contact dermoscope
        img *= np.clip((rng.uniform(1.0, 1.35) - r) / 0.04, 0, 1)[..., None]
    return img + rng.uniform(0.004, 0.02) * rng.standard_normal(img.shape, dtype=np.float32)


def render(job: tuple) -> None:
    """Draw and write one image; ``job`` = (path, size, seed, lesion index, image index, dx, site, hairy): ``hairy``
    (the patient's hair trait, mostly the men: see synthetic.py) makes hair denser."""
    path, size, seed, lesion, index, dx, site, hairy = job
    lrng = np.random.default_rng([seed, 0, lesion])  # the lesion and its patient: same in every view
    vrng = np.random.default_rng([seed, 1, index])  # this view
    tone, hair = lrng.normal(0, 1), lrng.lognormal(0.3 if hairy else -0.7, 0.5)
    hair_colour = COLOURS["black"] * lrng.uniform(0.5, 2.5)
    p, a = _view(vrng, *_lesion(lrng, _look(lrng, dx), size, tone))
    img = _skin(vrng, SITES[site], tone, size) * (1 - a[..., None]) + p
    img = _optics(vrng, _hair(vrng, img, SITES[site].hair * hair, hair_colour))
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path, quality=90)
