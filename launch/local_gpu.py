#!/usr/bin/env python3
"""Local multi-GPU launcher (one box, e.g. 8 x H100).

Two modes:
  * one process sees every GPU (default; JAX shards over all local devices), or
  * `--processes=N`: N processes, one GPU group each, joined by `jax.distributed` through a
    coordinator on 127.0.0.1 — the same code path as a multi-node cluster, useful to test it.

Example:
  python launch/local_gpu.py --gpus=8 --processes=8 --job="score --gin_file=..." --dry_run
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CommandRunner  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs on this machine")
    parser.add_argument("--processes", type=int, default=1, help="JAX processes to start")
    parser.add_argument("--port", type=int, default=12355, help="coordinator port (loopback)")
    parser.add_argument("--job", required=True, help="activeit-jax subcommand and flags")
    parser.add_argument("--python", default=".venv/bin/python")
    parser.add_argument("--dry_run", action="store_true")
    return parser


def process_commands(args) -> list[tuple[dict[str, str], list[str]]]:
    """(environment, argv) of every process to start."""
    if args.gpus % args.processes:
        raise SystemExit(f"--gpus={args.gpus} is not divisible by --processes={args.processes}")
    per_process = args.gpus // args.processes
    argv = [args.python, "-m", "activeit_jax.main", *shlex.split(args.job)]
    commands = []
    for rank in range(args.processes):
        env = {"CUDA_VISIBLE_DEVICES": ",".join(
            str(g) for g in range(rank * per_process, (rank + 1) * per_process))}
        if args.processes > 1:
            env.update({"ACTIVEIT_COORDINATOR": f"127.0.0.1:{args.port}",
                        "ACTIVEIT_NUM_PROCESSES": str(args.processes),
                        "ACTIVEIT_PROCESS_ID": str(rank)})
        commands.append((env, argv))
    return commands


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = process_commands(args)
    runner = CommandRunner(dry_run=True)  # prints each command in shell form
    if args.dry_run:
        for env, command in commands:
            runner(command, env=env)
        return 0
    for env, command in commands:
        runner(command, env=env)  # prints only
    procs = [subprocess.Popen(command, env={**os.environ, **env}) for env, command in commands]
    codes = [proc.wait() for proc in procs]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
