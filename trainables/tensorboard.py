"""TensorBoard from world rank 0 only: a real ``SummaryWriter`` there, a null writer on the other ranks.

Scalars use the metric names of docs/design.md as tags (``train/loss``, ``val/lesion_bacc``...), so the TensorBoard
view, the Tune results and the report read the same names.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from trainables import storage


class NullWriter:
    """Swallows every call: the loop logs unconditionally, no ``if rank == 0`` in it."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def open_writer(logdir: str | None, rank: int):
    if rank != 0 or not logdir:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter

    if storage.is_uri(logdir):
        return UploadingWriter(SummaryWriter(log_dir=tempfile.mkdtemp(prefix="skintune-tb-")), logdir)
    return SummaryWriter(log_dir=logdir)


class UploadingWriter:
    """A SummaryWriter on local disk whose event files are copied to cloud storage at every flush and close."""

    def __init__(self, writer, uri: str):
        self.writer, self.uri = writer, uri

    def __getattr__(self, name):
        return getattr(self.writer, name)

    def flush(self) -> None:
        self.writer.flush()
        storage.upload(self.writer.log_dir, self.uri)

    def close(self) -> None:
        self.writer.close()
        storage.upload(self.writer.log_dir, self.uri)
        shutil.rmtree(self.writer.log_dir, ignore_errors=True)


# The train loop's tags by the step they are logged at: per optimizer step (``epoch * steps_per_epoch + i``),
# per epoch (the epoch number, 1-based), and the text logged again by every start of the loop.
STEP_TAGS = ("train/loss", "train/loss_lesion", "train/loss_site", "lr")
EPOCH_TAG_PREFIX = "val/"
RESTART_TAGS = ("config/text_summary",)


def drop_stale_events(logdir: str | None, next_epoch: int, steps_per_epoch: int, writer=None) -> int:
    """Remove from ``logdir``'s event files what an earlier, interrupted start of this run logged for the epochs
    a restart trains again (``next_epoch`` on, 0-based: the epoch after the restored checkpoint, 0 without one),
    so that after a killed worker, driver or node every step appears once in TensorBoard. Returns the events
    dropped.

    Only our own tags are dropped (Tune's ``ray/tune/*`` events in the same folder are left alone); the file of
    ``writer`` (the restart's own) is skipped, and a file is rewritten (temp name, then rename) only when
    something is dropped. On cloud storage the folder's event files are fetched and those with stale events
    written back whole (an object store replaces a file at once)."""
    if not logdir:
        return 0
    own = getattr(getattr(getattr(writer, "file_writer", None), "event_writer", None), "_file_name", None)
    own = Path(own).name if own else None
    if not storage.is_uri(logdir):
        return _drop_stale(Path(logdir), next_epoch, steps_per_epoch, own)[0] if Path(logdir).is_dir() else 0
    with tempfile.TemporaryDirectory(prefix="skintune-tb-") as tmp:
        local = storage.download(logdir, tmp, skip=lambda rel: "/" in rel or "tfevents" not in rel)
        dropped, changed = _drop_stale(local, next_epoch, steps_per_epoch, own)
        for path in changed:
            storage.write_bytes(storage.join(logdir, path.name), path.read_bytes())
    return dropped


def _drop_stale(logdir: Path, next_epoch: int, steps_per_epoch: int, own: str | None) -> tuple[int, list[Path]]:
    """drop_stale_events in a local folder: (events dropped, files rewritten)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    def stale(event) -> bool:
        for value in event.summary.value:
            if value.tag in STEP_TAGS:
                return event.step >= next_epoch * steps_per_epoch
            if value.tag.startswith(EPOCH_TAG_PREFIX):
                return event.step > next_epoch
            if value.tag in RESTART_TAGS:
                return True
        return False

    dropped, changed = 0, []
    for path in sorted(logdir.glob("*tfevents*")):
        if path.name == own:
            continue
        records = list(RawEventFileLoader(str(path)).Load())
        keep = [r for r in records if not stale(event_pb2.Event.FromString(r))]
        if len(keep) == len(records):
            continue
        tmp = path.with_name(f".skintune-{path.name.replace('tfevents', 'tmp')}")  # not an event file by its name
        with open(tmp, "wb") as f:
            out = RecordWriter(f)
            for record in keep:
                out.write(record)
        os.replace(tmp, path)
        dropped += len(records) - len(keep)
        changed.append(path)
    return dropped, changed


def confusion_figure(cm: np.ndarray, classes: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(classes), 1 + 0.5 * len(classes)), dpi=80)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(n),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if rates[i, j] > 0.5 else "black",
        )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def log_config(writer, config: dict, weights_source: str) -> None:
    text = "```\n" + json.dumps({**config, "weights_source": weights_source}, indent=2, default=str) + "\n```"
    writer.add_text("config", text, 0)


def log_hparams(writer, config: dict, final_metrics: dict) -> None:
    """The run's hyperparameters and final metrics in TensorBoard's HParams dashboard."""
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
    metrics = {f"hparam/{k}": v for k, v in final_metrics.items() if isinstance(v, (int, float))}
    writer.add_hparams(hparams, metrics, run_name=".")
