"""TensorBoard from world rank 0 only: a real ``SummaryWriter`` there, a null writer on the other ranks.

Scalars use the DESIGN.md metric names as tags (``train/loss``, ``val/lesion_bacc``...), so the TensorBoard
view, the Tune results and the report read the same names.
"""

from __future__ import annotations

import json
import shutil
import tempfile

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
