"""Commands that read a whole experiment folder (compare, export, tensorboard) work on a local mirror when the
experiment lives on cloud storage: the files they need are copied down (no trial checkpoints, no shards), the
command runs locally, and its output folder is uploaded back. Local experiments are used in place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainables import storage
from trainables.errors import UserError

# what each command leaves out of its copy (regular expressions on paths relative to the experiment folder);
# tune[^/]*/ is every search: tune/ and a tuned baseline's tune_single_task/
SKIP_FOR_REPORT = (r"^tune[^/]*/runs/", r"^prepared/shards/", r"/checkpoint_")
SKIP_FOR_TENSORBOARD = (r"^tune[^/]*/runs/", r"^prepared/", r"/checkpoint_", r"\.parquet$")


def skip_for_export(arm: str) -> tuple[str, ...]:
    """What ``export --arm ARM`` leaves out: the searches, the shards and every other arm's retrain checkpoints
    (``retrain/<other arm>/seed_<k>/run/checkpoint_*``). ARM's checkpoints, every arm's metrics.json and predictions
    and the report are copied."""
    return (r"^tune[^/]*/", r"^prepared/shards/", rf"^retrain/(?!{re.escape(arm)}/)[^/]+/.*/checkpoint_")


def mirror_path(uri: str) -> Path:
    return storage.cache_dir("mirror", uri)


@contextmanager
def local_experiment(experiment_dir: str, skip: tuple[str, ...], publish: str | None = None) -> Iterator[Path]:
    """Yield a local folder with the experiment's files; afterwards upload its ``publish`` subfolder back."""
    if not storage.is_uri(experiment_dir):
        yield Path(experiment_dir)
        return
    if not storage.exists(storage.join(experiment_dir, "experiment.yaml")):
        raise UserError(f"{experiment_dir}/experiment.yaml not found: check --storage and --experiment")
    local = mirror_path(experiment_dir)
    patterns = [re.compile(s) for s in skip]
    print(f"copying {experiment_dir} to {local} (no checkpoints it does not need)", flush=True)
    storage.download(experiment_dir, local, skip=lambda rel: any(p.search(rel) for p in patterns))
    yield local
    if publish and (local / publish).is_dir():
        storage.upload(local / publish, storage.join(experiment_dir, publish))
        print(f"uploaded {publish}/ to {storage.join(experiment_dir, publish)}", flush=True)
