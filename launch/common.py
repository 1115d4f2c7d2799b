"""Shared pieces of the launchers: running (or, with --dry_run, printing) shell commands."""
from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Sequence


class CommandRunner:
    """Runs commands, or only prints them when `dry_run` is set.

    Every command is printed first as one copy-pasteable shell line, so a dry run shows
    exactly what a real run would execute.
    """

    def __init__(self, dry_run: bool, stream=None):
        self.dry_run = dry_run
        self.stream = stream or sys.stdout
        self.history: list[list[str]] = []

    def __call__(self, argv: Sequence[str], check: bool = True, env: dict | None = None) -> int:
        argv = [str(a) for a in argv]
        self.history.append(argv)
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        print(f"{'[dry-run] ' if self.dry_run else '+ '}{prefix}{shlex.join(argv)}",
              file=self.stream, flush=True)
        if self.dry_run:
            return 0
        import os
        completed = subprocess.run(argv, check=False, env={**os.environ, **(env or {})})
        if check and completed.returncode != 0:
            raise SystemExit(f"command failed with exit code {completed.returncode}: "
                             f"{shlex.join(argv)}")
        return completed.returncode


def remote_job_command(repo_dir: str, job: str, install: bool, extras: str | None = None
                       ) -> str:
    """The shell snippet run on each worker: enter the code, bootstrap once, run the job.

    Args:
      repo_dir: the code's directory on the worker.
      job: the activeit-jax subcommand and its flags.
      install: bootstrap the pinned runtime environment (`make venv`: requirements.lock, no
        test packages) first.
      extras: setup.py extra with the accelerator runtime to add ("tpu", "cuda12"), since the
        pinned lock holds the CPU wheels; the lock's versions stay (a constraint).
    """
    steps = [f"cd {shlex.quote(repo_dir)}"]
    if install:
        steps.append("make venv")
        if extras:
            steps.append(f".venv/bin/pip install --quiet -c requirements.lock -e '.[{extras}]'")
    steps.append(f".venv/bin/activeit-jax {job}")
    return " && ".join(steps)
