"""Label vocabularies across datasets: each adapter's lesion and site names mapped onto the ISIC 2019 names.

Every adapter keeps its release's own class names (``akiec`` in HAM10000, ``NEV`` in PAD-UFES-20...). To run a
model trained on one dataset over another (``skintune evaluate``), both vocabularies are mapped onto the ISIC 2019
names (:data:`ISIC2019_LESION`, :data:`ISIC2019_SITES`), and a dataset class goes to the model class with the same
ISIC 2019 name. A class without an ISIC 2019 equivalent (PAD-UFES-20 has none missing; ISIC 2020's ``unknown``,
``cafe-au-lait macule``, ``atypical melanocytic proliferation`` and ``lentigo NOS``; derm7pt's ``MISC``), or
whose equivalent the model lacks, is not mapped: :func:`map_classes` lists it with the reason, and its images are
left out. Nothing is merged that the tables below do not say.

The tables (dataset name -> ISIC 2019 name):

- lesion: HAM10000 ``akiec, bcc, bkl, df, mel, nv, vasc`` -> AK, BCC, BKL, DF, MEL, NV, VASC; PAD-UFES-20
  ``ACK, BCC, MEL, NEV, SCC, SEK`` -> AK, BCC, MEL, NV, SCC, BKL; ISIC 2020 ``melanoma`` -> MEL, ``nevus`` -> NV,
  ``seborrheic keratosis``, ``lichenoid keratosis``, ``solar lentigo`` -> BKL (the three benign keratoses of
  ISIC 2019's BKL; a lentigo NOS may be melanocytic, so it stays out), ISIC 2020 ``label=target``: ``melanoma``
  -> MEL (``benign`` has no single equivalent); derm7pt ``BCC, NEV, MEL, SK`` -> BCC, NV, MEL, BKL.
- site (ISIC 2019's general sites): HAM10000 through ISIC's own mapping (the adapter's ``TO_ISIC_SITE``;
  ``trunk`` and ``genital`` stay out); PAD-UFES-20 regions by anatomy (``LIP`` stays out: head/neck or oral);
  ISIC 2020 the same names except ``torso`` (anterior, posterior or lateral: stays out); derm7pt likewise
  (``buttocks`` stays out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trainables.data.adapters import derm7pt, ham10000, isic2019, isic2020, pad_ufes20

ISIC2019_LESION: tuple[str, ...] = tuple(isic2019.LESION_CLASSES)  # MEL, NV, BCC, AK, BKL, DF, VASC, SCC
ISIC2019_SITES: tuple[str, ...] = tuple(isic2019.SITE_CLASSES)

_IDENTITY_LESION = {name: name for name in (*ISIC2019_LESION, "UNK")}
_IDENTITY_SITES = {name: name for name in ISIC2019_SITES}

LESION_TO_ISIC2019: dict[str, dict[str, str]] = {
    "isic2019": _IDENTITY_LESION,
    "ham10000": dict(zip(ham10000.LESION_CLASSES, ("AK", "BCC", "BKL", "DF", "MEL", "NV", "VASC"), strict=True)),
    "pad_ufes20": dict(zip(pad_ufes20.LESION_CLASSES, ("AK", "BCC", "MEL", "NV", "SCC", "BKL"), strict=True)),
    "isic2020": {
        "melanoma": "MEL",
        "nevus": "NV",
        "seborrheic keratosis": "BKL",
        "lichenoid keratosis": "BKL",
        "solar lentigo": "BKL",
    },
    "derm7pt": {"BCC": "BCC", "NEV": "NV", "MEL": "MEL", "SK": "BKL"},
}

SITE_TO_ISIC2019: dict[str, dict[str, str]] = {
    "isic2019": _IDENTITY_SITES,
    "ham10000": {**ham10000.TO_ISIC_SITE, **_IDENTITY_SITES},  # harmonize_sites=true tables use the ISIC names
    "pad_ufes20": {
        "ABDOMEN": "anterior torso",
        "ARM": "upper extremity",
        "BACK": "posterior torso",
        "CHEST": "anterior torso",
        "EAR": "head/neck",
        "FACE": "head/neck",
        "FOOT": "lower extremity",
        "FOREARM": "upper extremity",
        "HAND": "upper extremity",
        "NECK": "head/neck",
        "NOSE": "head/neck",
        "SCALP": "head/neck",
        "THIGH": "lower extremity",
    },
    "isic2020": {name: name for name in isic2020.SITE_CLASSES if name in ISIC2019_SITES},
    "derm7pt": {
        "abdomen": "anterior torso",
        "acral": "palms/soles",
        "back": "posterior torso",
        "chest": "anterior torso",
        "genital areas": "oral/genital",
        "head neck": "head/neck",
        "lower limbs": "lower extremity",
        "upper limbs": "upper extremity",
    },
}


def _union(tables: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Every dataset name of every format -> its ISIC 2019 name (the formats agree wherever a name repeats)."""
    out: dict[str, str] = {}
    for fmt, table in tables.items():
        for name, isic in table.items():
            if out.setdefault(name, isic) != isic:
                raise AssertionError(f"{fmt}: {name!r} maps to {isic!r} and {out[name]!r} elsewhere")
    return out


ANY_LESION = _union(LESION_TO_ISIC2019)
ANY_SITE = _union(SITE_TO_ISIC2019)
# the release formats whose vocabularies are known; others (csv) are matched by name through ANY_LESION/ANY_SITE
KNOWN_FORMATS = tuple(LESION_TO_ISIC2019)
assert set(derm7pt.LESION_CLASSES) >= set(LESION_TO_ISIC2019["derm7pt"])


def isic_lesion(name: str, fmt: str | None = None) -> str | None:
    """The ISIC 2019 name of lesion class ``name`` of format ``fmt`` (any known format when None); None if none."""
    table = LESION_TO_ISIC2019.get(fmt, ANY_LESION) if fmt else ANY_LESION
    return table.get(name)


def isic_site(name: str, fmt: str | None = None) -> str | None:
    """The ISIC 2019 general site of site class ``name`` of format ``fmt`` (any known format when None)."""
    table = SITE_TO_ISIC2019.get(fmt, ANY_SITE) if fmt else ANY_SITE
    return table.get(name)


@dataclass
class ClassMapping:
    """Dataset class index -> model class index (``index``), and the dataset classes left out with the reason."""

    index: dict[int, int] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # dataset class name -> why it does not map
    via: dict[str, str] = field(default_factory=dict)  # dataset class name -> model class name

    def lookup(self, n: int) -> list[int]:
        """A table for ``numpy.take``: ``[model index or -1 for each dataset class 0..n-1]``."""
        return [self.index.get(i, -1) for i in range(n)]


def map_classes(dataset: Sequence[str], model: Sequence[str], fmt: str | None, kind: str = "lesion") -> ClassMapping:
    """Map the dataset's classes (of format ``fmt``) onto the model's: the same name (one vocabulary), else the
    same ISIC 2019 name when exactly one model class has it. ``kind``: ``lesion`` or ``site``."""
    isic = isic_lesion if kind == "lesion" else isic_site
    model_isic = [isic(name) for name in model]
    out = ClassMapping()
    for i, name in enumerate(dataset):
        if name in model:
            out.index[i] = list(model).index(name)
        else:
            target = isic(name, fmt)
            if target is None:
                out.left_out[name] = "no ISIC 2019 equivalent"
                continue
            hits = [j for j, m in enumerate(model_isic) if m == target]
            if len(hits) == 1:
                out.index[i] = hits[0]
            else:
                why = "the model has no class" if not hits else "several model classes map to"
                out.left_out[name] = f"{why} {target}"
                continue
        out.via[name] = model[out.index[i]]
    return out
