"""prepare: shards + dataset.json from real image files, odd image modes, bad images, idempotence, resume."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainables.data.prepare import PrepareOptions, load_info, prepare
from trainables.errors import UserError

SIZE = 24


def _rgb(seed, w=48, h=36):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _write_good(folder):
    """Ordinary and odd-but-valid images: the odd ones must come out as upright 8-bit RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(30):
        _rgb(i).save(folder / f"img{i:02d}.jpg", quality=90)
        names.append(f"img{i:02d}.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": a landscape file that is a portrait photo
    _rgb(100, 60, 30).save(folder / "exif.jpg", exif=exif)
    Image.fromarray(np.full((30, 40), 120, np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(np.full((30, 40), 30000, np.uint16)).save(folder / "deep16.png")
    _rgb(101).convert("CMYK").save(folder / "cmyk.jpg")
    return names + ["exif.jpg", "gray.png", "deep16.png", "cmyk.jpg"]


AGES = ["", "35", "60", "unknown", "85", "20", "NaN"]  # a 3/7 missing share, in a cycle prime to the others
SEXES = ["female", "male", "", "MALE", "Female"]  # 1/5 missing


def _write_csv(root, names):
    """labels.csv; its age and sex columns are read only with the PATIENT options."""
    lines = ["image,lesion,site,group,age,sex"]
    for i, name in enumerate(names):
        lines.append(f"{name},{'ABC'[i % 3]},{['', 'arm', 'leg'][i % 3]},G{i // 2},{AGES[i % 7]},{SEXES[i % 5]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


PATIENT = {"file": "labels.csv", "group_column": "group", "age_column": "age", "sex_column": "sex"}


def _opts(root, **kw):
    base = dict(
        format="csv",
        root=str(root),
        options={"file": "labels.csv", "group_column": "group"},
        image_size=SIZE,
        val_fraction=0.2,
        test_fraction=0.2,
        shard_size=8,
    )
    return PrepareOptions(**{**base, **kw})


@pytest.fixture
def good_root(tmp_path):
    root = tmp_path / "raw"
    _write_csv(root, _write_good(root))
    return root


def _read_all(out):
    info = load_info(out)
    return info, pq.read_table([out / s["file"] for s in info["shards"]]).to_pandas()


def test_prepare_writes_shards_and_dataset_json(good_root, tmp_path):
    out = tmp_path / "prep"
    prepare(_opts(good_root), out, workers=2, progress=False)
    info, rows = _read_all(out)
    assert info["images"] == len(rows) == 34
    assert info["lesion_classes"] == ["A", "B", "C"] and info["site_classes"] == ["arm", "leg"]
    assert sum(info["counts"][s]["images"] for s in ("train", "val", "test")) == 34
    assert info["counts"]["train"]["site_missing"] == int(((rows.split == "train") & (rows.site == -1)).sum())
    assert 0.3 < info["site_missing_rate"] < 0.4
    assert len(info["fingerprint"]) == 64 and info["bad_images"] == []
    assert list(rows.columns) == ["image_id", "group_id", "lesion", "site", "age", "sex", "split", "source", "image"]
    assert rows.age.isna().all() and (rows.sex == -1).all()  # no age or sex column named: all missing
    assert info["metadata"]["age"] == {
        "present": False,
        "missing_rate": 1.0,
        "missing_rate_by_split": {"train": 1.0, "val": 1.0, "test": 1.0},
    }
    assert info["metadata"]["site"]["present"] and info["metadata"]["site"]["missing_rate"] == info["site_missing_rate"]
    for group, part in rows.groupby("group_id"):
        assert part.split.nunique() == 1, group
    decoded = {r.image_id: Image.open(io.BytesIO(r.image)) for r in rows.itertuples()}
    assert all(im.mode == "RGB" and min(im.size) == SIZE for im in decoded.values())
    assert decoded["exif.jpg"].size[1] > decoded["exif.jpg"].size[0]  # upright portrait
    assert 100 < np.asarray(decoded["deep16.png"]).mean() < 140  # 30000/65535 of full scale, not clipped white
    assert abs(np.asarray(decoded["gray.png"]).astype(int).mean() - 120) < 3


def test_prepare_is_idempotent_and_resumes_missing_shards(good_root, tmp_path, capsys):
    out = tmp_path / "prep"
    first = prepare(_opts(good_root), out, workers=1, progress=False)
    shards = sorted((out / "shards").glob("*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    again = prepare(_opts(good_root), out, workers=1)
    assert "up to date" in capsys.readouterr().out
    assert again["fingerprint"] == first["fingerprint"]
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes
    # as after a crash: one shard missing and a stray temporary file
    shards[0].unlink()
    (out / "shards" / (shards[1].name + ".tmp-999")).write_bytes(b"partial")
    resumed = prepare(_opts(good_root), out, workers=1, progress=False)
    assert resumed["fingerprint"] == first["fingerprint"]
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in shards[1:])
    assert not list((out / "shards").glob("*.tmp-*"))
    # other options: new shards, the old ones removed
    prepare(_opts(good_root, image_size=SIZE + 8), out, workers=1, progress=False)
    assert not any(p.exists() for p in shards)


def test_bad_images_fail_the_run_unless_skip_bad(good_root, tmp_path):
    names = _write_good(good_root)
    (good_root / "truncated.jpg").write_bytes((good_root / "img00.jpg").read_bytes()[:200])
    (good_root / "notes.jpg").write_text("this is not an image")
    Image.new("RGB", (1, 1)).save(good_root / "tiny.jpg")
    _write_csv(good_root, names + ["truncated.jpg", "notes.jpg", "tiny.jpg"])
    out = tmp_path / "prep"
    with pytest.raises(UserError, match=r"3 image\(s\) could not be used.*--skip-bad") as err:
        prepare(_opts(good_root), out, workers=2, progress=False)
    assert str(out / "prepare_report.json") in str(err.value)
    report = json.loads((out / "prepare_report.json").read_text())
    assert {b["image_id"] for b in report["bad_images"]} == {"truncated.jpg", "notes.jpg", "tiny.jpg"}
    assert not (out / "dataset.json").exists()
    info = prepare(_opts(good_root), out, workers=2, skip_bad=True, progress=False)
    assert info["images"] == 34 and len(info["bad_images"]) == 3
    reasons = {b["image_id"]: b["reason"] for b in info["bad_images"]}
    assert "1x1" in reasons["tiny.jpg"]


def test_patient_metadata_in_shards_and_dataset_json(good_root, tmp_path):
    """Age and sex land in the shards (float32 years / int8 codes; missing stays NaN / -1) and dataset.json lists
    each metadata field with its missing rate, overall and per split."""
    info = prepare(_opts(good_root, options=PATIENT), tmp_path / "prep", workers=2, progress=False)
    _, rows = _read_all(tmp_path / "prep")
    schema = pq.read_schema(tmp_path / "prep" / info["shards"][0]["file"])
    assert str(schema.field("age").type) == "float" and str(schema.field("sex").type) == "int8"
    labels = pd.read_csv(good_root / "labels.csv", dtype=str, keep_default_na=False).set_index("image")
    for row in rows.itertuples():
        raw_age, raw_sex = labels.loc[row.image_id, "age"], labels.loc[row.image_id, "sex"].lower()
        assert np.isnan(row.age) if raw_age in ("", "unknown", "NaN") else row.age == float(raw_age)
        assert row.sex == {"female": 0, "male": 1, "": -1}[raw_sex]
    meta = info["metadata"]
    assert set(meta) == {"site", "age", "sex"} and all(m["present"] for m in meta.values())
    for name, missing in [("age", rows.age.isna()), ("sex", rows.sex == -1), ("site", rows.site == -1)]:
        assert meta[name]["missing_rate"] == pytest.approx(missing.mean())
        for split in ("train", "val", "test"):
            assert meta[name]["missing_rate_by_split"][split] == pytest.approx(missing[rows.split == split].mean())
    assert meta["age"]["missing_rate"] == pytest.approx(14 / 34)  # rows 0, 3, 6 of each 7: 4 * 3 + 2 of 34
    assert meta["sex"]["missing_rate"] == pytest.approx(7 / 34)


def _old_fingerprint(out, info):
    """The fingerprint as prepare computed it before age and sex: ids and image bytes only."""
    digests = []
    for shard in info["shards"]:
        digest = hashlib.sha256()
        table = pq.read_table(out / shard["file"], columns=["image_id", "image"]).to_pydict()
        for image_id, data in zip(table["image_id"], table["image"], strict=True):
            digest.update(image_id.encode() + hashlib.sha256(data).digest())
        digests.append(digest.hexdigest())
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def test_fingerprint_changes_with_patient_metadata_only(good_root, tmp_path):
    without = prepare(_opts(good_root), tmp_path / "a", workers=1, progress=False)
    assert without["fingerprint"] == _old_fingerprint(tmp_path / "a", without)  # no metadata: as before
    with_meta = prepare(_opts(good_root, options=PATIENT), tmp_path / "b", workers=1, progress=False)
    assert with_meta["fingerprint"] != without["fingerprint"]
    assert with_meta["fingerprint"] != _old_fingerprint(tmp_path / "b", with_meta)
    only_age = prepare(_opts(good_root, options={**PATIENT, "sex_column": None}), tmp_path / "c", progress=False)
    assert len({without["fingerprint"], with_meta["fingerprint"], only_age["fingerprint"]}) == 3


def test_missing_prepared_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="run `skintune prepare"):
        load_info(tmp_path / "nowhere")


def test_prepare_memory_does_not_hold_the_dataset(good_root, tmp_path):
    """Each worker process writes one shard at a time: shards are bounded by shard_size."""
    out = tmp_path / "prep"
    info = prepare(_opts(good_root, shard_size=5), out, workers=2, progress=False)
    assert max(s["rows"] for s in info["shards"]) <= 5
    assert len(info["shards"]) >= 34 // 5
    assert all(os.path.getsize(out / s["file"]) > 0 for s in info["shards"])


def _session_processes(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (a command started with start_new_session=True)."""
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_prepare_killed_by_sigkill_resumes_to_the_same_dataset(tmp_path, sigkill_when):
    """A real SIGKILL of `skintune prepare` after its first shard: no worker outlives it, the rerun keeps the
    finished shards, leaves no partial file and ends with the dataset an uninterrupted run makes."""
    from trainables.data.synthetic import generate

    raw = generate(tmp_path / "raw", n=1500, image_size=48, seed=0, progress=False)
    size, shard_size = 384, 20  # upscaled on purpose: ~3 s of encoding in 75 shards, time to kill it mid-way
    reference = prepare(
        PrepareOptions(format="isic2019", root=str(raw), image_size=size, shard_size=shard_size),
        tmp_path / "reference",
        progress=False,
    )
    out = tmp_path / "prep"
    cmd = [sys.executable, "-m", "tuner.cli", "prepare", "--format", "isic2019", "--root", str(raw)]
    cmd += ["--out", str(out), "--image-size", str(size), "--shard-size", str(shard_size)]
    first_shard = lambda: list(out.glob("shards/*.parquet"))  # noqa: E731
    proc = sigkill_when(cmd, first_shard, "prepare", timeout=120, poll=0.005, start_new_session=True)
    try:
        kept = {p: p.stat().st_mtime_ns for p in out.glob("shards/*.parquet")}
        assert not (out / "dataset.json").exists()  # killed mid-way: not complete, and it does not look complete
        assert 1 <= len(kept) < len(reference["shards"])
        deadline = time.time() + 10  # its pool workers die with it (none left encoding shards for ever)
        while _session_processes(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert _session_processes(proc.pid) == []
    finally:
        for pid in _session_processes(proc.pid):  # only if the assertion above failed
            os.kill(pid, signal.SIGKILL)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    info = load_info(out)
    assert info == reference  # the same dataset.json: split, counts, shard list, fingerprint of every image
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished shards were kept, not redone
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert sorted(p.name for p in out.glob("shards/*.parquet")) == sorted(Path(s["file"]).name for s in info["shards"])
    rows = pq.read_table([out / s["file"] for s in info["shards"]], columns=["image_id", "image"]).to_pandas()
    assert rows["image_id"].is_unique and rows["image"].map(len).gt(0).all()
    truth = pd.read_csv(raw / "ISIC_2019_Training_GroundTruth.csv")
    assert set(rows["image_id"]) == set(truth["image"]) and len(rows) == len(truth) == 1500
