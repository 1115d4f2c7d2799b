"""One process per run directory: an exclusive `fcntl.flock` on a lock file inside it.

Two `score` (or `train`, or `run`) processes writing one directory each append every task, so
the journals hold everything twice and the summary counts double. The first process to lock
the directory wins; a second one is refused with one line naming the directory and the
holder's pid and host. The lock belongs to the open file, so the operating system releases it
when the holder exits or is killed: a killed run never leaves a directory stuck, and the lock
file itself (left in place; removing it would let a third process lock a fresh inode while the
second still holds the old one) is only a note of the last holder.

Multi-host runs lock per host: process k of a job locks `LOCK_FILE` suffixed with its index
(process 0 takes the plain name, so a single-process run and a multi-host one still meet),
and the scorer locks each host's shard journal (`scoring.multihost.shard_dir`).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import Iterator

from activeit_jax.core.errors import ActiveITError

LOCK_FILE = ".activeit.lock"


class RunLockedError(ActiveITError):
    """Another live process holds the run directory."""


def lock_name(process_index: int = 0) -> str:
    """The lock file of JAX process `process_index` (process 0: `LOCK_FILE`)."""
    return LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.process{process_index}"


def _holder(fd: int) -> str:
    """What the holder wrote into the lock file ("pid N on HOST"), or "unknown"."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "an unknown process"


@contextlib.contextmanager
def hold(directory: str | os.PathLike, command: str, process_index: int = 0
         ) -> Iterator[str]:
    """Holds the exclusive lock of `directory` (created when absent) for the block.

    Args:
      directory: the run directory (or a host's shard directory).
      command: what is running, for the refusal message ("score", "train", "run").
      process_index: this JAX process's index in a multi-host job (0 otherwise).

    Yields:
      The lock file's path.

    Raises:
      RunLockedError: another process holds the lock (its pid and host named).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, lock_name(process_index))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{directory} is in use by another process ({_holder(fd)}); two {command} "
                "runs in one directory would both write every result: wait for it to end, "
                "or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command}: pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
