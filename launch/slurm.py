#!/usr/bin/env python3
"""SLURM launcher: writes an sbatch script (one task per node, all GPUs of a node per task) and
submits it. Inside the `srun` step, `jax.distributed.initialize()` reads the SLURM variables
itself (`activeit_jax.core.distributed`: rank, task count, the first node as coordinator, a port
derived from the job id or `JAX_COORDINATOR_PORT`), so the job command needs no coordinator
flags.

Example (4 nodes x 8 GPUs):
  python launch/slurm.py --nodes=4 --gpus_per_node=8 --partition=gpu \
      --job="score --gin_file=configs/experiments/alpaca_llama7b.gin" --dry_run
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CommandRunner  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--job_name", default="activeit-jax")
    parser.add_argument("--job", required=True, help="activeit-jax subcommand and flags")
    parser.add_argument("--repo_dir", default=os.getcwd())
    parser.add_argument("--script", default="activeit_job.sbatch", help="sbatch file to write")
    parser.add_argument("--dry_run", action="store_true")
    return parser


def sbatch_script(args) -> str:
    """The sbatch file's text."""
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={args.job_name}",
             f"#SBATCH --nodes={args.nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --gpus-per-node={args.gpus_per_node}",
             f"#SBATCH --time={args.time}",
             "#SBATCH --output=%x-%j.out"]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    lines += ["set -euo pipefail",
              f"cd {args.repo_dir}",
              f"srun .venv/bin/activeit-jax {args.job}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    text = sbatch_script(args)
    if args.dry_run:
        print(text)
    else:
        with open(args.script, "w", encoding="utf-8") as handle:
            handle.write(text)
    CommandRunner(args.dry_run)(["sbatch", args.script])
    return 0


if __name__ == "__main__":
    sys.exit(main())
