"""Synthetic dermoscopy-like images written in the ISIC 2019 release format.

Run it with ``skintune synth --out DIR --n N --image-size S --seed K`` (or
``python -m trainables.data.synthetic --out DIR --n N``), or call :func:`generate`. The output is read by the
real isic2019 adapter: ``ISIC_2019_Training_GroundTruth.csv``, ``ISIC_2019_Training_Metadata.csv`` and
``ISIC_2019_Training_Input/ISIC_9xxxxxx[_downsampled].jpg``, plus ``synth.json`` with the arguments.

Priors: a lesion's diagnosis is drawn with probability proportional to its ISIC 2019 class count ** 0.7 (the
imbalance is flattened so that DF and VASC appear at small n: NV 39 % instead of 51 %, DF 2.4 % instead of
0.9 %); its body site, and whether the site is missing, from that diagnosis' row of the ISIC 2019 diagnosis x
site table (so about 9 % of sites are empty, most of them NV). A lesion has 1-4 images (views differing in
rotation, scale, offset and lighting, same shape and colours) sharing a ``lesion_id``; ~5 % have none.

Patient metadata (``age_approx``, ``sex``; the same for every view of a lesion) follows the direction of the published
ISIC 2019 patterns, so that a model taking metadata as input has something to find: nevus patients are the youngest,
melanoma patients older, BCC, AK, SCC and BKL patients the oldest (:data:`AGE`: the mean age per diagnosis, a
normal spread of :data:`AGE_SD` years, rounded to 5-year steps and clipped to 5-85 like ``age_approx``); MEL, BCC,
AK and SCC patients are more often men (:data:`P_MALE`). Both fields are blank for :data:`P_UNKNOWN_PATIENT` of
the lesions. The images stay those of generator version 1: hair density follows a patient trait drawn as before
(``hairy``, 53 % of patients), from the same uniform number as the recorded sex, so the two agree for all but the
3-7 % of lesions whose draw falls between 0.53 and their class' share of men.

Image model: the skin (tone per patient; texture, redness, freckles, dry-skin scale, acral ridges and hair
per body site) carries the site; the lesion (size, border, colours, network, dots, vessels, scar, keratin per
diagnosis, see ``DX``) carries the diagnosis. Some lesions are drawn part-way towards a look-alike class
(``LOOKALIKE``: MEL/NV, AK/BKL, SCC->AK, DF->NV), and those pairs differ in where they occur, so reading the
background (which a site head makes a model do) genuinely helps the lesion task.

Site mix (``site_weights``, ``skintune synth --site-weight NAME=W``): each general site's column of the diagnosis x
site table is multiplied by its weight (default 1) before a lesion's site is drawn, so a second release can come from
another clinic's population (say, more head/neck and fewer torso lesions) with the same diagnoses and image model:
an external-validation set with covariate shift. The weights are recorded in ``synth.json``; without them the
release is exactly the default one (same random draws, same bytes).

Each image has its own RNG from (seed, image index) and each lesion from (seed, lesion index), so the bytes do
not depend on the number of worker processes. Images are written as they are drawn (memory stays flat).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainables.data.synthetic_draw import render
from trainables.errors import UserError

VERSION = 2  # 2: sex depends on the diagnosis (P_MALE); same images as version 1
CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
SITE_NAMES = ("anterior torso", "posterior torso", "lateral torso", "upper extremity", "lower extremity",
              "head/neck", "palms/soles", "oral/genital")  # fmt: skip
# ISIC 2019 training set, diagnosis x anatom_site_general counts; columns as SITE_NAMES, then missing.
SITE_TABLE = {
    "MEL": (1331, 430, 14, 724, 796, 880, 201, 19, 127),
    "NV": (3699, 1888, 34, 1325, 2876, 767, 168, 24, 2094),
    "BCC": (1114, 186, 0, 358, 462, 1131, 0, 0, 72),
    "AK": (92, 4, 0, 79, 66, 598, 6, 0, 22),
    "BKL": (445, 230, 6, 234, 412, 1001, 7, 14, 275),
    "DF": (43, 2, 0, 52, 138, 0, 0, 0, 4),
    "VASC": (78, 22, 0, 23, 58, 36, 3, 2, 31),
    "SCC": (113, 25, 0, 115, 182, 174, 13, 0, 6),
}
FLATTEN = 0.7  # class probability ~ count ** FLATTEN
AGE = {"MEL": 60, "NV": 44, "BCC": 67, "AK": 70, "BKL": 62, "DF": 47, "VASC": 50, "SCC": 71}
AGE_SD = 14.0
P_MALE = {"MEL": 0.6, "NV": 0.5, "BCC": 0.6, "AK": 0.6, "BKL": 0.5, "DF": 0.5, "VASC": 0.5, "SCC": 0.6}
P_HAIRY = 0.53  # the hair trait of a patient (render's ``male`` argument), as drawn since version 1
P_UNKNOWN_PATIENT = 0.015  # age and sex both blank, about the ISIC 2019 release's rate
GROUND_TRUTH, METADATA, IMAGES = "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv", \
    "ISIC_2019_Training_Input"  # fmt: skip


def _plan(n: int, seed: int, site_weights: Mapping[str, float] | None = None) -> list[dict]:
    """One row per image: lesions with 1-4 views, sampled from the ISIC 2019 priors, in shuffled order.
    ``site_weights`` (site name -> factor) reweights the site columns used to draw each lesion's site."""
    rng = np.random.default_rng([seed, 2])
    table = np.array([SITE_TABLE[c] for c in CLASSES], np.float64)
    p_dx = table.sum(1) ** FLATTEN / (table.sum(1) ** FLATTEN).sum()
    factors = np.array([float((site_weights or {}).get(name, 1.0)) for name in SITE_NAMES])
    rows: list[dict] = []
    lesion = 0
    while len(rows) < n:
        dx = int(rng.choice(len(CLASSES), p=p_dx))
        row = table[dx]
        sites = row[:-1] * factors
        site = SITE_NAMES[rng.choice(len(SITE_NAMES), p=sites / sites.sum())]
        missing = rng.random() < row[-1] / row.sum()
        views = min(n - len(rows), int(rng.choice([1, 2, 3, 4], p=[0.5, 0.27, 0.15, 0.08])))
        no_id = views == 1 and rng.random() < 0.18  # ~5 % of images, like the older ISIC images
        u_sex, unknown = rng.random(), rng.random() < P_UNKNOWN_PATIENT  # the draws of version 1, same order
        age = int(np.clip(round((AGE[CLASSES[dx]] + rng.normal(0, AGE_SD)) / 5) * 5, 5, 85))
        sex = "" if unknown else ("male" if u_sex < P_MALE[CLASSES[dx]] else "female")
        meta = {"dx": CLASSES[dx], "site": site, "site_label": "" if missing else site, "lesion": lesion,
                "lesion_id": "" if no_id else f"SYN_{lesion:07d}", "hairy": u_sex < P_HAIRY, "sex": sex,
                "age": "" if unknown else f"{age:.1f}"}  # fmt: skip
        rows += [dict(meta) for _ in range(views)]
        lesion += 1
    rows = [rows[i] for i in rng.permutation(n)]
    downsampled = rng.random(n) < 0.08  # the real release has 2,074 such names out of 25,331
    for i, r in enumerate(rows):
        r["image"] = f"ISIC_{9_000_000 + i:07d}" + ("_downsampled" if downsampled[i] else "")
    return rows


def _write_csvs(root: Path, rows: list[dict]) -> None:
    with open(root / GROUND_TRUTH, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", *CLASSES, "UNK"])
        w.writerows([r["image"], *("1.0" if r["dx"] == c else "0.0" for c in CLASSES), "0.0"] for r in rows)
    with open(root / METADATA, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        w.writerows([r["image"], r["age"], r["site_label"], r["lesion_id"], r["sex"]] for r in rows)


def check_site_weights(site_weights: Mapping[str, float] | None) -> dict[str, float]:
    """The site weights as a plain dict, or a :class:`UserError` naming the bad entry (an unknown site, a weight
    that is not a number >= 0, or weights that leave some diagnosis without any site)."""
    weights: dict[str, float] = {}
    for name, value in (site_weights or {}).items():
        if name not in SITE_NAMES:
            raise UserError(
                f"synthetic data: unknown site {name!r} in the site weights; sites: {', '.join(SITE_NAMES)}"
            )
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = float("nan")
        if not weight >= 0 or weight == float("inf"):
            raise UserError(f"synthetic data: site weight {name}={value!r}; use a number >= 0")
        weights[name] = weight
    for dx, row in SITE_TABLE.items():
        if not any(count * weights.get(site, 1.0) > 0 for site, count in zip(SITE_NAMES, row, strict=False)):
            raise UserError(f"synthetic data: the site weights leave {dx} lesions no site; raise one of its sites")
    return weights


def _check(out: Path, n: int, image_size: int, seed: int, workers: int | None, site_weights: dict[str, float]) -> dict:
    """Validate the arguments; return the record kept in ``synth.json``."""
    if n < 16:
        raise UserError(f"synthetic data: n={n} is too small; use --n 16 or more")
    if image_size < 32:
        raise UserError(f"synthetic data: image size {image_size} is too small; use --image-size 32 or more")
    if seed < 0:
        raise UserError(f"synthetic data: seed {seed} is negative; use --seed 0 or more")
    if workers is not None and workers < 1:
        raise UserError(f"synthetic data: workers={workers}; use 1 or more (or leave it out for all cores)")
    args: dict = dict(generator="skintune-synthetic", version=VERSION, n=n, image_size=image_size, seed=seed)
    if site_weights:  # only when given: the default release keeps the record (and so the folder) it always had
        args["site_weights"] = dict(site_weights)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not _is_complete(out, args):
        if _older_version(out, args):
            return args  # made by an older generator with the same arguments: generate() replaces it
        raise UserError(
            f"{out} already exists and is not a synthetic dataset made with n={n}, image size {image_size}, "
            f"seed {seed}{f', site weights {site_weights}' if site_weights else ''} (generator version {VERSION}); "
            "choose a new --out directory or delete it"
        )
    return args


def _older_version(out: Path, args: dict) -> bool:
    """Whether ``out`` holds a dataset of an older generator version made with the same n, image size and seed."""
    try:
        made = json.loads((out / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(made, dict) or not isinstance(made.get("version"), int):
        return False
    return made["version"] < args["version"] and made == {**args, "version": made["version"]}


def _is_complete(out: Path, args: dict) -> bool:
    try:
        same = json.loads((out / "synth.json").read_text()) == args
    except (OSError, ValueError):
        return False
    return same and (out / GROUND_TRUTH).is_file() and (out / METADATA).is_file()


def generate(
    out: str | Path,
    n: int,
    image_size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    site_weights: Mapping[str, float] | None = None,
) -> Path:
    """Write ``n`` synthetic images in the ISIC 2019 layout under ``out`` and return ``out``.

    ``site_weights``: the site mix (module docstring); unnamed sites keep weight 1.
    Same bytes for the same (n, image_size, seed, site_weights), whatever ``workers`` (default: all cores). Writes into
    ``<out>.partial`` and renames it at the end, so an interrupted run never looks complete; returns at once
    if ``out`` already holds the dataset made with these arguments.
    """
    out = Path(os.path.abspath(Path(out).expanduser()))  # so that "." has a name for the .partial sibling
    weights = check_site_weights(site_weights)
    args = _check(out, n, image_size, seed, workers, weights)
    if _is_complete(out, args):
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / IMAGES).mkdir(parents=True)
    rows = _plan(n, seed, weights)
    jobs = [(str(tmp / IMAGES / f"{r['image']}.jpg"), image_size, seed, r["lesion"], i, r["dx"], r["site"],
             r["hairy"]) for i, r in enumerate(rows)]  # fmt: skip
    workers = min(workers or os.cpu_count() or 1, n)
    with tqdm(total=n, desc="synthetic images", unit="img", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                render(job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(render, jobs, chunksize=max(1, min(64, n // (4 * workers)))):
                    bar.update()
    _write_csvs(tmp, rows)
    (tmp / "synth.json").write_text(json.dumps(args, indent=2) + "\n")
    if out.exists() and _older_version(out, args):
        shutil.rmtree(out)  # a dataset of an older generator version with the same arguments (see _check)
    if out.exists():
        out.rmdir()  # an empty directory, checked above
    tmp.rename(out)
    return out


def parse_site_weights(items: list[str]) -> dict[str, float]:
    """``["head/neck=3", "posterior torso=0.5"]`` -> ``{"head/neck": 3.0, ...}``, checked by
    :func:`check_site_weights`."""
    weights: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip():
            raise UserError(f"--site-weight {item!r}: expected SITE=WEIGHT, e.g. 'head/neck=3'")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--site-weight {item!r}: the weight {value!r} is not a number") from None
    return check_site_weights(weights)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic dermoscopy images in the ISIC 2019 layout.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--site-weight", action="append", default=[], metavar="SITE=W", help="site mix, repeatable")
    a = parser.parse_args(argv)
    try:
        weights = parse_site_weights(a.site_weight)
        print(generate(a.out, a.n, a.image_size, a.seed, a.workers, site_weights=weights))
    except UserError as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
