"""The ``skintune`` command line: one entry, one subcommand per pipeline step (docs/design.md, "Data flow").

Heavy modules (torch, ray) are imported inside the handlers so that ``skintune --help`` answers at once.
Bad input raises ``UserError``; it is printed as one line and the exit code is 2 (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from trainables.errors import UserError
from tuner import commands
from tuner.cli_cluster import add_check_cluster, add_jobs, add_submit
from tuner.ray_runtime import set_verbose

EXAMPLES = """\
the pipeline (each step resumes and skips finished work):
  skintune demo --storage results                      # all of the below on synthetic data
  skintune synth --out data/synth --n 2000 --image-size 96
  skintune prepare --format isic2019 --root data/synth --out data/synth-64 --image-size 64
  skintune train --config experiments/smoke.yaml       # one DDP run of the base config
  skintune tune --config experiments/demo.yaml         # Optuna TPE + ASHA search
  skintune retrain --experiment demo --storage results --seeds 3
  skintune compare --experiment demo --storage results
  skintune export --experiment demo --storage results
  skintune predict --model results/demo/export image.jpg
  skintune evaluate --model results/demo/export --format ham10000 --root /data/HAM10000 --out eval-ham
  skintune tensorboard --experiment demo --storage results

on a Ray cluster (see docs/cluster.md):
  skintune check-cluster cluster.yaml
  skintune submit --address http://127.0.0.1:8265 -- tune --config experiments/demo.yaml --storage s3://B/st
  skintune jobs list | status JOB | logs JOB | stop JOB
"""

RAY_COMMANDS = ("train", "tune", "retrain", "demo")  # the commands that run Ray (and take --verbose after them)
VERBOSE_HELP = (
    "show Ray's own output on the console too (its workers' logs, Tune's status tables); by default it goes only "
    "to the experiment's driver log, <storage>/<experiment>/logs/driver.log"
)


def _parse_option(text: str) -> tuple[str, object]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option {text!r}: expected KEY=VALUE, e.g. harmonize_sites=true")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _cmd_synth(args: argparse.Namespace) -> None:
    from trainables.data.synthetic import generate, parse_site_weights

    weights = parse_site_weights(args.site_weight or [])
    out = generate(
        args.out, n=args.n, image_size=args.image_size, seed=args.seed, workers=args.workers, site_weights=weights
    )
    print(f"synth: {args.n} images in ISIC 2019 format at {out}")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from trainables.data.prepare import PrepareOptions
    from tuner.data_step import prepare_to

    opts = PrepareOptions(
        format=args.format,
        root=args.root,
        options=dict(args.option or []),
        image_size=args.image_size,
        quality=args.quality,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        official_split=args.official_split,
        shard_size=args.shard_size,
    )
    prepare_to(opts, args.out, workers=args.workers, skip_bad=args.skip_bad)


def _cmd_train(args: argparse.Namespace) -> None:
    from tuner.config import load_experiment

    exp = load_experiment(args.config, storage=args.storage)  # bad input is refused before torch/Ray load
    from tuner.train_run import run_train

    result = run_train(exp, name=args.name)
    if result.error is not None:
        raise UserError(f"training failed: {str(result.error).splitlines()[0]} (logs under {result.path})")
    m = result.metrics or {}
    print(
        f"train: {m.get('epoch', 0)} epoch(s); val/lesion_bacc {m.get('val/lesion_bacc', float('nan')):.3f}; "
        f"checkpoint {result.checkpoint.path if result.checkpoint else '-'}"
    )
    print(f"TensorBoard: skintune tensorboard --storage {exp.storage} --experiment {exp.name}")


def _cmd_tune(args: argparse.Namespace) -> None:
    from tuner.config import load_experiment

    exp = load_experiment(args.config, storage=args.storage)  # bad input is refused before torch/Ray load
    if args.cluster and not args.dry_run:
        raise UserError("--cluster FILE only plans (--dry-run); a search runs on the cluster it is submitted to")
    if args.dry_run:
        from tuner.plan import plan

        print("\n".join(plan(exp, str(args.config), resume=args.resume, cluster=args.cluster)))
        return
    from tuner.layout import search_arms, search_title, tune_dir
    from tuner.results import read_results
    from tuner.tune_run import run_tune

    _, table = run_tune(exp, resume=args.resume)
    commands.record(exp.experiment_dir, args.argv)
    counts = table["status"].value_counts().to_dict()
    print(
        f"tune: {len(table)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
        f"table: {tune_dir(exp)}/results.parquet"
    )
    if table["best_objective"].notna().any():
        best = table.iloc[0]
        params = {k.removeprefix("param/"): v for k, v in best.items() if k.startswith("param/") and _is_set(v)}
        print(
            f"best trial {best['trial_id']}: {exp.tune.metric} = {best['best_objective']:.4f} "
            f"(epoch {best['best_epoch']}) with {format_params(params)}"
        )
    for arm in search_arms(exp)[1:]:  # the other tuned arms' searches (compare: {baseline: tuned})
        other = read_results(tune_dir(exp, arm))  # best trial first
        print(
            f"tune: {search_title(exp, arm)}: {len(other)} trials, best {exp.tune.metric} = "
            f"{other['best_objective'].iloc[0]:.4f}; table: {tune_dir(exp, arm)}/results.parquet"
        )
    print(f"TensorBoard: skintune tensorboard --storage {exp.storage} --experiment {exp.name}")


def format_params(params: dict) -> str:
    """``w_site=1, lr_head=0.003162, lesion_loss=ce``: values as values (a results-table cell is a numpy scalar,
    which a dict would print as ``np.float64(1.0)``), floats to 4 significant digits."""

    def value(v) -> str:
        v = v.tolist() if hasattr(v, "tolist") else v  # numpy scalars, and arrays (a list-valued parameter)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in params.items())


def _is_set(value) -> bool:
    """A results-table cell holds a value: not None or NaN (a list-valued parameter, read back as an array, is)."""
    if getattr(value, "ndim", 0) > 0 or isinstance(value, list | tuple):
        return True
    return value is not None and value == value


def _experiment(args: argparse.Namespace):
    """The resolved experiment.yaml of ``--experiment`` under ``--storage`` (a folder or a URI)."""
    from trainables import storage
    from tuner.config import load_experiment, resolve_storage

    path = storage.join(resolve_storage(args.storage), args.experiment, "experiment.yaml")
    if not storage.exists(path):
        raise UserError(
            f"{path} not found: no experiment {args.experiment!r} under {args.storage} "
            "(check --storage and --experiment, or run `skintune tune` first)"
        )
    return load_experiment(path)


def _cmd_retrain(args: argparse.Namespace) -> None:
    from tuner.retrain import run_retrain

    exp = _experiment(args)
    baseline_exp = None
    if args.baseline_experiment:
        baseline_exp = _experiment(argparse.Namespace(storage=args.storage, experiment=args.baseline_experiment))
    table = run_retrain(exp, seeds=args.seeds, baseline=args.baseline, baseline_exp=baseline_exp)
    commands.record(exp.experiment_dir, args.argv)
    summary = table.groupby("arm")["test/lesion_bacc"].agg(["mean", "std", "count"])
    for arm, row in summary.iterrows():
        print(
            f"retrain: {arm:<11} test/lesion_bacc {row['mean']:.3f} +- {row['std']:.3f} "
            f"over {int(row['count'])} seed(s)"
        )
    print(f"next: skintune compare --storage {args.storage} --experiment {exp.name}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from tuner.mirror import SKIP_FOR_REPORT, local_experiment
    from tuner.report.build import build_report

    exp = _experiment(args)
    with local_experiment(exp.experiment_dir, SKIP_FOR_REPORT, publish="report") as folder:
        report = build_report(folder)
    print(f"compare: report at {report} (also report.md, results.parquet and the PNGs beside it)")


def _cmd_export(args: argparse.Namespace) -> None:
    from trainables import storage
    from tuner.bundle import read_bundle_files
    from tuner.export import export_model
    from tuner.mirror import local_experiment, skip_for_export

    exp = _experiment(args)
    remote_out = args.out if args.out and storage.is_uri(args.out) else None
    local_out = None if remote_out else args.out
    publish = "export" if storage.is_uri(exp.experiment_dir) and not args.out else None
    with local_experiment(exp.experiment_dir, skip_for_export(args.arm), publish=publish) as folder:
        out = export_model(str(folder), local_out, seed=args.seed, arm=args.arm)
        inputs = read_bundle_files(out)[0].metadata_inputs
        if remote_out:
            storage.upload(out, remote_out)
            out = remote_out
    print(f"export: bundle at {out}")
    meta = f" --metadata FILE.csv  # columns image, {', '.join(inputs)}" if inputs else ""
    print(f"next: skintune predict --model {out} IMAGE.jpg{meta}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from tuner.predict import MetadataSource, run_predict

    metadata = MetadataSource(csv=args.metadata, site=args.site, age=args.age, sex=args.sex)
    run_predict(
        args.model,
        args.images,
        output=args.output,
        backend=args.backend,
        batch_size=args.batch_size,
        metadata=metadata,
        fmt=args.format,
        tta=args.tta,
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from tuner.evaluate_cmd import run_evaluate

    run_evaluate(
        args.model,
        args.format,
        args.root,
        args.out,
        options=dict(args.option or []),
        split=args.split,
        tta=args.tta,
        backend=args.backend,
        batch_size=args.batch_size,
        n_boot=args.n_boot,
        workers=args.workers,
        skip_bad=args.skip_bad,
    )


def _cmd_demo(args: argparse.Namespace) -> None:
    from tuner.demo import demo_plan, run_demo

    if args.dry_run:
        print("\n".join(demo_plan(args.storage, smoke=args.smoke, arms=args.arms)))
        return
    run_demo(args.storage, smoke=args.smoke, arms=args.arms)


def _cmd_tensorboard(args: argparse.Namespace) -> None:
    from trainables import storage
    from tuner.mirror import SKIP_FOR_TENSORBOARD, local_experiment
    from tuner.tensorboard_server import serve

    if not storage.is_uri(args.storage):
        serve(args.storage, args.experiment, port=args.port)
        return
    with local_experiment(storage.join(args.storage, args.experiment), SKIP_FOR_TENSORBOARD) as folder:
        serve(str(folder.parent), folder.name, port=args.port)  # a snapshot: rerun to refresh


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic dermoscopy-like dataset in the ISIC 2019 release format",
        description="Write a synthetic dermoscopy-like dataset in the ISIC 2019 release format (the two CSVs and "
        "ISIC_2019_Training_Input/*.jpg): lesion look depends on the diagnosis, skin on the body site.",
        epilog="example:\n  skintune synth --out data/synth --n 2000 --image-size 96 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    p.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument("--image-size", type=int, default=128, help="side of the square images in px (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--site-weight",
        action="append",
        metavar="SITE=W",
        help="site mix, repeatable: scale how often lesions are drawn at SITE (an ISIC 2019 general site, e.g. "
        "'head/neck=3'); another mix and --seed make a second release for external validation",
    )
    p.set_defaults(handler=_cmd_synth)


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="read a dataset, split it without leakage, write resized Parquet shards + dataset.json",
        description="Read a dataset through its adapter into the canonical table, make a split stratified by "
        "lesion class and grouped by lesion/patient, and write Parquet shards of resized JPEGs plus "
        "dataset.json. Rerunning with the same inputs does nothing; an interrupted run resumes.",
        epilog=textwrap.dedent("""\
            formats and their options (--option KEY=VALUE):
              isic2019    ISIC_2019_Training_GroundTruth.csv + _Metadata.csv + ISIC_2019_Training_Input/
              isic2020    train.csv (Kaggle) or ISIC_2020_Training_GroundTruth[_v2].csv; label=diagnosis|target
              ham10000    HAM10000_metadata.csv + images anywhere below root; harmonize_sites=true|false
              derm7pt     meta/meta.csv + images/; image=derm|clinic; --official-split uses its index files
              pad_ufes20  metadata.csv + images below root
              csv         file=labels.csv image_column=.. lesion_column=.. site_column=.. group_column=..

            examples:
              skintune prepare --format isic2019 --root data/synth --out data/synth-64 --image-size 64
              skintune prepare --format ham10000 --root /data/HAM10000 --out /data/ham-224 \\
                  --option harmonize_sites=true --skip-bad
            """),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", required=True, help="dataset format (see below)")
    p.add_argument("--root", required=True, type=Path, help="the unpacked release folder")
    p.add_argument("--out", required=True, help="folder or URI (s3://...) for shards and dataset.json")
    p.add_argument("--image-size", type=int, default=224, help="shorter side after resizing (default 224)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the shards (default 90)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--official-split", action="store_true", help="use the release's own split where it has one")
    p.add_argument(
        "--option",
        action="append",
        type=_parse_option,
        metavar="KEY=VALUE",
        help="adapter option, repeatable",
    )
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard (default 1024)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable images out (listed in dataset.json) instead of failing",
    )
    p.set_defaults(handler=_cmd_prepare)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the experiment's base configuration once (Ray Train DDP, no search)",
        description="Prepare the data if needed, then run one Ray Train TorchTrainer fit of the experiment's "
        "`train:` settings with `workers_per_trial` DDP workers: the worker function every trial uses. "
        "Rerunning with the same --name resumes from its last checkpoint.",
        epilog="examples:\n  skintune train --config experiments/smoke.yaml --storage /tmp/skintune-results\n"
        "  skintune train --config experiments/demo.yaml --name baseline-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (see experiments/)")
    p.add_argument("--storage", default=None, help="results folder or URI (overrides the YAML's storage)")
    p.add_argument("--name", default="train", help="run name under <storage>/<experiment>/ (default: train)")
    p.set_defaults(handler=_cmd_train)


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters: Ray Tune + Optuna (TPE) + ASHA early stopping",
        description="Run the experiment's search: OptunaSearch over the YAML search space, ASHA early stopping on "
        "the objective, each trial a Ray Train DDP run. Writes <storage>/<name>/experiment.yaml, tune/ (trials, "
        "checkpoints, TensorBoard events) and tune/results.parquet|csv. An existing experiment is never "
        "overwritten: continue it with --resume.",
        epilog="examples:\n  skintune tune --config experiments/demo.yaml\n"
        "  skintune tune --config experiments/smoke.yaml --storage /tmp/results\n"
        "  skintune tune --config experiments/demo.yaml --resume      # after a crash or Ctrl-C\n"
        "  skintune tune --config experiments/isic2019.yaml --dry-run --cluster cluster.yaml   # the plan only\n\n"
        "--resume trusts the storage: it restores Ray Tune's saved experiment state, which Ray unpickles, so\n"
        "whoever can write to the storage can run code on the machine that resumes. Give write access to the\n"
        "bucket (or folder) only to the principals that run skintune; bucket versioning or object lock help\n"
        "to see and undo changes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (see experiments/)")
    p.add_argument("--storage", default=None, help="results folder or URI (overrides the YAML's storage)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted experiment (unpickles its saved state: only from storage you trust)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the experiment and its search space and print the plan (trials, epochs, budget, resources, "
        "concurrency, where results go); starts nothing, prepares nothing",
    )
    p.add_argument(
        "--cluster",
        metavar="FILE",
        default=None,
        help="with --dry-run: count concurrency on this cluster-launcher YAML at its largest, not on this machine",
    )
    p.set_defaults(handler=_cmd_tune)


def _add_tensorboard(sub) -> None:
    p = sub.add_parser(
        "tensorboard",
        help="start TensorBoard on 127.0.0.1 for one experiment",
        description="Start TensorBoard on 127.0.0.1 over <storage>/<experiment>: every trial's scalars, the "
        "HParams dashboard, confusion matrices. Ctrl-C stops it.",
        epilog="example:\n  skintune tensorboard --storage results --experiment demo --port 6006",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--storage", default="~/skintune-results", help="results folder (default ~/skintune-results)")
    p.add_argument("--experiment", required=True, help="experiment name")
    p.add_argument("--port", type=int, default=6006)
    p.set_defaults(handler=_cmd_tensorboard)


def _add_retrain(sub) -> None:
    p = sub.add_parser(
        "retrain",
        help="retrain each arm of the comparison (by default MTL and the single-task baseline) with K seeds",
        description="Retrain each arm of the experiment's comparison (compare.arms: by default the search's best "
        "configuration and the single-task baseline; with arms: all also meta, site/age/sex as inputs, and mtl_meta, "
        "both) from scratch with K seeds, the same seeds, data, schedule and epochs for every arm; evaluate each on "
        "the held-out test split (metrics + per-image predictions) into retrain/<arm>/seed_<k>/. Finished runs are "
        "skipped, so a rerun continues.",
        epilog="examples:\n  skintune retrain --storage results --experiment demo --seeds 3\n"
        "  skintune retrain --experiment isic2019-mtl --baseline tuned --baseline-experiment isic2019-st",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_experiment_args(p)
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: retrain.seeds of the YAML)")
    p.add_argument(
        "--baseline",
        choices=["ablation", "tuned"],
        default=None,
        help="ablation: the search's best configuration with the site head and metadata inputs switched to each "
        "arm's (single-task: MTL's best with the site head off); tuned: each arm's own search's best trial, with "
        "the experiment's search's budget (default: the experiment's compare.baseline)",
    )
    p.add_argument(
        "--baseline-experiment",
        default=None,
        help="with --baseline tuned: another experiment's single-task search instead of this experiment's own",
    )
    p.set_defaults(handler=_cmd_retrain)


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="write the report: each arm (MTL, ...) vs single-task with paired statistics, the search, the data",
        description="Write <storage>/<experiment>/report/: report.html (self-contained), report.md, "
        "results.parquet, ci.json, arms.json and PNG plots: each retrained arm vs single-task on the test split "
        "(mean +- sd over seeds, two-level paired bootstrap CI, permutation p, Holm-adjusted over the arms when "
        "there are several, McNemar test, verdict), what each arm needs at inference, per-class recall with "
        "counts, per-site accuracy, confusion matrices, the search (objective over trials, parameter importances, "
        "each tuned arm's budget), the data and how to reproduce.",
        epilog="example:\n  skintune compare --storage results --experiment demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_experiment_args(p)
    p.set_defaults(handler=_cmd_compare)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write the best retrained MTL model (or --arm's) as a deployable bundle (safetensors + TorchScript)",
        description="Write the best retrained multi-task model (the seed with the best validation objective, or "
        "--seed; --arm meta or mtl_meta for a model with metadata inputs) as model.safetensors, "
        "model.torchscript.pt (traced, CPU), config.json, labels.json, "
        "metrics.json (with confidence intervals and calibration) and MODEL_CARD.md. The lesion head's temperature "
        "is fitted on the validation split (temperature scaling) and stored in config.json.",
        epilog="examples:\n  skintune export --storage results --experiment demo\n"
        "  skintune export --experiment isic2019-mtl --out /models/isic2019-v1 --seed 2\n"
        "  skintune export --storage results --experiment demo --arm mtl_meta --out meta-bundle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_experiment_args(p)
    p.add_argument("--out", default=None, help="bundle folder or URI (default <storage>/<experiment>/export)")
    p.add_argument("--seed", type=int, default=None, help="export this retrain seed instead of the best one")
    p.add_argument(
        "--arm",
        default="mtl",
        help="the retrained arm to export (retrain/<arm>/): mtl (default), meta, mtl_meta (metadata inputs: predict "
        "then takes --metadata or --site/--age/--sex) or single_task",
    )
    p.set_defaults(handler=_cmd_export)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images with an exported bundle: lesion and body-site probabilities",
        description="Print (or write as CSV/JSON) each image's lesion and site probabilities and top classes, "
        "with the same preprocessing as validation. Loads model.safetensors (default) or the TorchScript file; "
        "never unpickles. Lesion logits are divided by the bundle's temperature (fitted on the validation split at "
        "export) before the softmax. A model exported with metadata inputs (config.json metadata_inputs: site, "
        "age, sex) also takes them, from --metadata FILE.csv or from --site/--age/--sex; a field not given is "
        "missing for that image, predict says so, and the model takes its missing-value path (as trained with "
        "metadata_dropout). An image-only model ignores metadata, with a warning.",
        epilog="examples:\n  skintune predict --model results/demo/export data/synth-demo/ISIC_2019_Training_Input/"
        "ISIC_9000001.jpg\n  skintune predict --model bundle/ photos/*.jpg --output predictions.csv\n"
        "  skintune predict --model meta-bundle/ photos/*.jpg --metadata patients.csv   # image,site,age,sex\n"
        "  skintune predict --model meta-bundle/ lesion.jpg --site 'head/neck' --age 62 --sex male\n"
        "  skintune predict --model bundle/ test/*.jpg --format isic --tta 8 --output submission.csv\n\n"
        "metadata CSV: a header line with 'image' (the image's file name, with or without its suffix) and any of\n"
        "'site' (one of the model's sites, config.json metadata_sites), 'age' (years, 0-120) and 'sex'\n"
        "(female/male, f/m, any case); an empty cell or 'unknown' is missing. Every image needs a row.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help="folder written by `skintune export`")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--output", type=Path, default=None, help="write FILE.csv or FILE.json instead of printing")
    p.add_argument("--backend", choices=["safetensors", "torchscript"], default="safetensors")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--format",
        choices=["default", "isic"],
        default="default",
        help="isic: the ISIC challenge submission CSV (image, then the lesion classes in the ISIC 2019 order, UNK), "
        "written to --output FILE.csv or printed",
    )
    p.add_argument(
        "--tta", type=int, default=1, metavar="N", help="average over N flips/90-degree rotations (1-8; 1: none)"
    )
    meta = p.add_argument_group("metadata inputs (models exported with metadata_inputs)")
    meta.add_argument(
        "--metadata", type=Path, default=None, metavar="FILE.csv", help="per-image metadata: image, site, age, sex"
    )
    meta.add_argument("--site", default=None, metavar="NAME", help="body site of every image (a model site name)")
    meta.add_argument("--age", default=None, metavar="YEARS", help="patient age in years, for every image")
    meta.add_argument("--sex", default=None, metavar="female|male", help="patient sex, for every image")
    p.set_defaults(handler=_cmd_predict)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="run an exported model over another dataset: metrics with CIs, ISIC-format predictions.csv",
        description="External validation: run an exported model over any dataset that `skintune prepare` reads.\n\n"
        "reads:   --model, a `skintune export` folder: config.json (preprocessing, temperature), labels.json and\n"
        "         model.safetensors (or model.torchscript.pt); --root, the release in --format (with --option).\n"
        "         The dataset is prepared once, at the model's image size, into $SKINTUNE_CACHE/evaluate/<key>\n"
        "         (~/.cache/skintune by default); a rerun reuses it.\n"
        "mapping: a dataset class goes to the model class of the same name, else of the same ISIC 2019 name:\n"
        "         HAM10000 akiec, bcc, bkl, df, mel, nv, vasc -> AK, BCC, BKL, DF, MEL, NV, VASC;\n"
        "         PAD-UFES-20 ACK, BCC, MEL, NEV, SCC, SEK -> AK, BCC, MEL, NV, SCC, BKL;\n"
        "         ISIC 2020 melanoma -> MEL, nevus -> NV, seborrheic/lichenoid keratosis and solar lentigo -> BKL;\n"
        "         derm7pt BCC, NEV, MEL, SK -> BCC, NV, MEL, BKL. Classes that do not map are listed (metrics.json,\n"
        "         evaluate.md) and their images left out, never merged. Body sites map the same way.\n"
        "writes:  --out/predictions.csv, the ISIC challenge submission layout (image, then the model's classes in\n"
        "         the order MEL, NV, BCC, AK, BKL, DF, VASC, SCC, plus UNK = 0 for an ISIC 2019-vocabulary model);\n"
        "         metrics.json: balanced accuracy (the challenge's score of predictions.csv), macro AUC, accuracy,\n"
        "         per-class recall and the site head's accuracy, each with a lesion-grouped 95 % bootstrap CI;\n"
        "         confusion_matrix.png and evaluate.md.",
        epilog="examples:\n  skintune evaluate --model results/demo/export --format ham10000 --root /data/HAM10000 "
        "--out eval-ham\n  skintune evaluate --model bundle/ --format pad_ufes20 --root /data/pad --tta 8 "
        "--out eval-pad\n  skintune evaluate --model bundle/ --format isic2019 --root data/synth-b "
        "--split test --out eval-b",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help="folder written by `skintune export`")
    p.add_argument("--format", required=True, help="dataset format, as for `skintune prepare`")
    p.add_argument("--root", required=True, type=Path, help="the unpacked release folder")
    p.add_argument("--out", required=True, type=Path, help="folder for predictions.csv, metrics.json, the PNG, .md")
    p.add_argument(
        "--option", action="append", type=_parse_option, metavar="KEY=VALUE", help="adapter option, repeatable"
    )
    p.add_argument(
        "--split",
        choices=["all", "train", "val", "test"],
        default="all",
        help="all images (default), or that part of prepare's default split (seed 0, 15 %% val, 15 %% test)",
    )
    p.add_argument("--tta", type=int, default=1, metavar="N", help="test-time views, 1 (off, default) to 8")
    p.add_argument("--backend", choices=["safetensors", "torchscript"], default="safetensors")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--workers", type=int, default=None, help="prepare's processes (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out instead of failing")
    p.set_defaults(handler=_cmd_evaluate)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run synth -> prepare -> tune -> retrain -> compare -> export on the synthetic default",
        description="The whole pipeline on the synthetic default (experiments/demo.yaml; --smoke: "
        "experiments/smoke.yaml, a minute or two). Every stage resumes, so rerunning continues a stopped demo. "
        "By default it compares two arms, MTL (the body site as an auxiliary target) and single-task; --arms all "
        "compares four: mtl, meta (site, age and sex as inputs), mtl_meta (both) and single_task, each against "
        "single-task, as the experiment demo-arms (each arm an ablation of the one search's best configuration: "
        "the same search, twice the retraining).",
        epilog="examples:\n  skintune demo --storage results\n  skintune demo --storage /tmp/st --smoke\n"
        "  skintune demo --storage results --arms all      # the four-arm comparison (results/demo-arms)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--storage", default="results", help="results folder (default ./results)")
    p.add_argument("--smoke", action="store_true", help="the tiny configuration used by the tests")
    p.add_argument(
        "--arms",
        choices=["two", "all"],
        default="two",
        help="two: MTL vs single-task (default); all: mtl, meta, mtl_meta and single_task, each vs single-task",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the demo experiment's plan and where it is; run nothing"
    )
    p.set_defaults(handler=_cmd_demo)


def _add_experiment_args(p) -> None:
    p.add_argument("--storage", default="~/skintune-results", help="results folder (default ~/skintune-results)")
    p.add_argument("--experiment", required=True, help="experiment name (the YAML's name:)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skintune",
        description="Tune multi-task (lesion + body site) skin-lesion classifiers with Ray Train, Ray Tune and "
        "Optuna; compare with a single-task baseline; export the winner.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_synth,
        _add_prepare,
        _add_train,
        _add_tune,
        _add_retrain,
        _add_compare,
        _add_export,
        _add_predict,
        _add_evaluate,
        _add_demo,
        _add_tensorboard,
        add_check_cluster,
        add_submit,
        add_jobs,
    ):
        add(sub)
    for name in RAY_COMMANDS:  # also after the command: `skintune tune --config X --verbose`
        sub.choices[name].add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by the steps that make an experiment
    set_verbose(args.verbose)
    try:
        args.handler(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"skintune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skintune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
