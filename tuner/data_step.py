"""Make sure an experiment's prepared data exists: synthesise (when configured) and prepare, both idempotent."""

from __future__ import annotations

from pathlib import Path

from trainables.errors import UserError
from tuner.config import ExperimentConfig, is_uri


def ensure_data(exp: ExperimentConfig, progress: bool = True) -> str:
    """Return the prepared dataset folder of ``exp``, creating it if needed (nothing is redone if up to date)."""
    from trainables.data.prepare import PrepareOptions, prepare

    d = exp.data
    if d.synth is not None:
        from trainables.data.synthetic import generate

        generate(d.root, n=d.synth.n, image_size=d.synth.image_size, seed=d.synth.seed, progress=progress)
    if is_uri(exp.prepared_dir):
        raise UserError(
            f"data.prepared = {exp.prepared_dir}: prepared shards must be on a local or shared file system for now; "
            "set data.prepared to a local path (results may still go to cloud storage later)"
        )
    opts = PrepareOptions(
        format=d.format,
        root=d.root,
        options=d.options,
        image_size=d.image_size,
        quality=d.quality,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        seed=d.seed,
        official_split=d.official_split,
    )
    prepare(opts, Path(exp.prepared_dir), progress=progress)
    return exp.prepared_dir
