#!/usr/bin/env python3
"""Cloud TPU VM launcher: create or reuse a TPU VM (or queued resource), copy the code, install,
run the same activeit-jax command on every worker, stream the logs, delete when asked.

Example (a v4-32 slice, 4 workers):
  python launch/tpu_vm.py --name=activeit --zone=us-central2-b --accelerator_type=v4-32 \
      --version=tpu-ubuntu2204-base --job="score --gin_file=configs/experiments/niv2_t5_large.gin" \
      --dry_run

On TPU VMs `jax.distributed.initialize()` discovers the workers itself, so the same command
runs on all of them (`--worker=all`) with no coordinator flags.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CommandRunner, remote_job_command  # noqa: E402

# Relative to the remote home directory (ssh starts there), so no tilde needs expanding.
REMOTE_DIR = "activeit-jax"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="TPU VM (or queued resource) name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None, help="gcloud project (default: gcloud's)")
    parser.add_argument("--accelerator_type", default="v4-8")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU software version")
    parser.add_argument("--queued", action="store_true",
                        help="create through a queued resource (waits for capacity)")
    parser.add_argument("--spot", action="store_true", help="spot / preemptible capacity")
    parser.add_argument("--reuse", action="store_true", help="use an existing VM, create nothing")
    parser.add_argument("--job", default=None,
                        help="activeit-jax subcommand and flags to run on all workers")
    parser.add_argument("--skip_install", action="store_true")
    parser.add_argument("--delete", action="store_true", help="delete the VM when done")
    parser.add_argument("--source", default=".", help="local repository to copy")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    return parser


def _scope(args) -> list[str]:
    scope = [f"--zone={args.zone}"]
    if args.project:
        scope.append(f"--project={args.project}")
    return scope


def plan(args, run: CommandRunner) -> None:
    """Issues the gcloud commands for `args` through `run` (which may be a dry run)."""
    scope = _scope(args)
    if not args.reuse:
        if args.queued:
            create = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name,
                      f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
                      f"--runtime-version={args.version}", *scope]
        else:
            create = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name,
                      f"--accelerator-type={args.accelerator_type}",
                      f"--version={args.version}", *scope]
        if args.spot:
            create.append("--spot")
        run(create)
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *scope, "--worker=all"]
    run([*ssh, f"--command=mkdir -p {REMOTE_DIR}"])
    # git archive ships exactly the committed tree: no venv, no run outputs.
    archive = "/tmp/activeit-jax-src.tar.gz"
    run(["git", "-C", args.source, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"])
    run(["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:{archive}",
         *scope, "--worker=all"])
    run([*ssh, f"--command=tar -xzf {archive} -C {REMOTE_DIR}"])
    if args.job:
        job = remote_job_command(REMOTE_DIR, args.job, install=not args.skip_install,
                                 extras="tpu")
        # Output of every worker streams back, prefixed by gcloud with the worker id.
        run([*ssh, f"--command={job}"])
    if args.delete:
        if args.queued:
            run(["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *scope,
                 "--quiet", "--force"])
        else:
            run(["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *scope, "--quiet"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan(args, CommandRunner(args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
