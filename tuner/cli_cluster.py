"""The cluster subcommands of ``skintune``: ``check-cluster``, ``submit`` and ``jobs`` (see tuner/jobs.py and
tuner/cluster_config.py; docs/cluster.md walks through them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainables.errors import UserError


def _parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--env {key!r}: expected KEY=VALUE, e.g. AWS_PROFILE=lab")
    return key.strip(), value


def _cmd_submit(args: argparse.Namespace) -> None:
    from tuner import jobs

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    job_id = jobs.submit(args.address, command, env=dict(args.env or []), working_dir=not args.no_working_dir)
    print(f"submitted job {job_id} to {args.address}", flush=True)
    if args.no_wait:
        print(f"follow it: skintune jobs logs {job_id} --follow --address {args.address}")
        return
    try:
        details = jobs.follow(args.address, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (skintune jobs stop {job_id} ends it)", file=sys.stderr)
        raise
    print(jobs.finish(details, job_id))


def _cmd_jobs(args: argparse.Namespace) -> None:
    from tuner import jobs

    if args.action == "list":
        for job in jobs.list_jobs(args.address):
            print(f"{job.submission_id or job.job_id:<32} {job.status:<10} {job.entrypoint}")
        return
    if not args.job_id:
        raise UserError(f"`skintune jobs {args.action}` needs a JOB_ID (see `skintune jobs list`)")
    if args.action == "status":
        details = jobs.status(args.address, args.job_id)
        print(f"{args.job_id} {details.status}" + (f": {details.message}" if details.message else ""))
    elif args.action == "logs":
        if args.follow:
            print(jobs.finish(jobs.follow(args.address, args.job_id), args.job_id))
        else:
            print(jobs.logs(args.address, args.job_id), end="")
    else:
        stopped = jobs.stop(args.address, args.job_id)
        print(f"{args.job_id}: " + ("stop requested" if stopped else "already finished"))


def _cmd_check_cluster(args: argparse.Namespace) -> None:
    from tuner.cluster_config import validate_cluster_file

    print(validate_cluster_file(args.path)["text"])


def add_submit(sub) -> None:
    from tuner.jobs import default_address

    p = sub.add_parser(
        "submit",
        help="run a skintune command on a Ray cluster as a Ray Job (streams its logs)",
        description="Submit `skintune <command>` as a Ray Job with this project as the job's working_dir, then "
        "stream its logs until it ends (exit 0 on SUCCEEDED, 2 otherwise). The token for Ray's token "
        "authentication is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token and never printed. "
        "Results must go to shared storage (--storage s3://... or an absolute path the cluster shares).",
        epilog="examples:\n  ray dashboard cluster.yaml    # tunnel to the head's 127.0.0.1:8265, in another shell\n"
        "  skintune submit -- tune --config experiments/demo.yaml --storage s3://my-bucket/skintune\n"
        "  skintune submit --no-wait --env AWS_PROFILE=lab -- retrain --experiment demo --storage s3://b/st",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--address", default=default_address(), help="Jobs API address (default %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--env", action="append", type=_parse_env, metavar="KEY=VALUE", help="job env var, repeatable")
    p.add_argument(
        "--no-working-dir",
        action="store_true",
        help="do not upload this project: the cluster has skintune installed (cluster.yaml setup_commands)",
    )
    p.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the skintune command")
    p.set_defaults(handler=_cmd_submit)


def add_jobs(sub) -> None:
    from tuner.jobs import default_address

    p = sub.add_parser(
        "jobs",
        help="list the cluster's jobs; show one's status or logs; stop one",
        description="The rest of the Ray Jobs API: list, status, logs (--follow streams until the job ends), "
        "stop. Same address and token rules as `skintune submit`.",
        epilog="examples:\n  skintune jobs list\n  skintune jobs logs raysubmit_AbC123 --follow\n"
        "  skintune jobs stop raysubmit_AbC123 --address http://127.0.0.1:8265",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["list", "status", "logs", "stop"])
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="submission id (from submit or list)")
    p.add_argument("--address", default=default_address(), help="Jobs API address (default %(default)s)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    p.set_defaults(handler=_cmd_jobs)


def add_check_cluster(sub) -> None:
    p = sub.add_parser(
        "check-cluster",
        help="validate a Ray cluster-launcher YAML offline (Ray's schema and node-type checks)",
        description="Validate a cluster.yaml offline, without cloud credentials: Ray's JSON schema (unknown or "
        "misspelled keys, wrong types) and Ray's own node-type checks. Run it before `ray up`.",
        epilog="example:\n  skintune check-cluster cluster.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", type=Path, help="the cluster YAML")
    p.set_defaults(handler=_cmd_check_cluster)
