"""After an interrupted run restarts, TensorBoard shows every step once: what the killed start logged for the
epochs the restart trains again is dropped from its event files (no Ray: the writer calls of the train loop)."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from trainables.tensorboard import drop_stale_events, log_config, open_writer

STEPS = 4  # optimizer steps per epoch


def _log_epochs(writer, epochs: range, partial_steps: int = 0) -> None:
    """What the loop logs: per-step losses, per-epoch val metrics; then ``partial_steps`` of one more epoch."""
    for epoch in epochs:
        for i in range(STEPS):
            writer.add_scalar("train/loss", 1.0, epoch * STEPS + i)
            writer.add_scalar("lr", 0.1, epoch * STEPS + i)
        writer.add_scalar("val/lesion_bacc", 0.5, epoch + 1)
    for i in range(partial_steps):
        writer.add_scalar("train/loss", 1.0, epochs.stop * STEPS + i)
    writer.flush()


def _steps(logdir, tag: str) -> list[int]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_restart_drops_what_the_killed_start_logged_after_its_checkpoint(tmp_path):
    other = SummaryWriter(tmp_path)  # someone else's events in the same folder (Tune's ray/tune/*): kept
    other.add_scalar("ray/tune/epoch", 1.0, 1)
    other.close()
    first = SummaryWriter(tmp_path)
    log_config(first, {"lr": 0.1}, "none")
    _log_epochs(first, range(0, 2), partial_steps=3)  # epochs 1-2 logged, killed in epoch 3
    first.flush()  # (a SIGKILL: never closed)

    # the restart resumes from the checkpoint of epoch 1 (0-based 0): epochs 2 and 3 are trained again
    second = SummaryWriter(tmp_path)
    log_config(second, {"lr": 0.1}, "none")
    dropped = drop_stale_events(str(tmp_path), 1, STEPS, second)
    assert dropped == STEPS + STEPS + 1 + 3 + 1  # epoch 2's steps (2 tags) and val, epoch 3's steps, old config
    _log_epochs(second, range(1, 3))
    # nothing stale (a restart after the last epoch): nothing is rewritten
    files = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert drop_stale_events(str(tmp_path), 3, STEPS, second) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files
    second.close()

    assert _steps(tmp_path, "train/loss") == list(range(3 * STEPS))
    assert _steps(tmp_path, "lr") == list(range(3 * STEPS))
    assert _steps(tmp_path, "val/lesion_bacc") == [1, 2, 3]
    assert _steps(tmp_path, "ray/tune/epoch") == [1]
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert len(acc.Tensors("config/text_summary")) == 1
    assert not list(tmp_path.glob(".skintune-*"))


def test_on_cloud_storage_the_stale_events_are_dropped_too(tmp_path):
    # a URI (file:// here; the same code as s3://): the rank-0 worker's events are uploaded, not written in place
    uri = f"file://{tmp_path}/tb"
    first = open_writer(uri, 0)
    _log_epochs(first, range(0, 2), partial_steps=3)  # uploaded at flush; killed in epoch 3
    second = open_writer(uri, 0)
    log_config(second, {"lr": 0.1}, "none")
    assert drop_stale_events(uri, 1, STEPS, second) == STEPS + STEPS + 1 + 3
    _log_epochs(second, range(1, 3))
    second.close()
    assert _steps(tmp_path / "tb", "train/loss") == list(range(3 * STEPS))
    assert _steps(tmp_path / "tb", "val/lesion_bacc") == [1, 2, 3]


def test_nothing_to_do_without_a_folder(tmp_path):
    assert drop_stale_events(None, 0, STEPS) == 0
    assert drop_stale_events(str(tmp_path / "missing"), 0, STEPS) == 0
    assert drop_stale_events(f"file://{tmp_path}/missing", 0, STEPS) == 0
