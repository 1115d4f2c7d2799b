"""The active loop's multi-host rules, in one place: who writes which file, where all wait.

A TPU slice runs the loop as one process per host. Every process runs the whole loop --
training, evaluation and scoring are collective over one global mesh -- and decides what to
skip from the files of the run directory. Three rules keep the processes in step:

1. One writer. A file that every host reads is written by process 0 only (`is_writer`);
   the others compute the same content (the same seeds, the same collective results) and
   do not write it.
2. Barriers after writes. Every process reaches every barrier in the same order; a file
   written by the writer is visible to all once its barrier has passed (`write_once`).
3. Process 0 decides. Whether a stage is skipped (its file exists) is process 0's answer,
   handed to every process (`exists`): a process that looks itself may already see the file
   process 0 wrote right after deciding (a slower host looking later), or not yet see one
   (a network filesystem's cache), and take another path than the others.

Barriers of the loop are bounded (`--barrier_timeout`, default 30 minutes: they only wait
while process 0 writes files); the last one (`done`) waits for process 0's judge and report as
long as process 0 lives. A process that is killed, crashes or exits with an error is noticed
by the others' watchdog (`core.distributed`, `--peer_timeout`): each prints one line and
exits, even from inside a collective. Restarting every process with the same command resumes.

Who writes what in a run directory (names: `activeit_jax.layout`; barriers by name)::

    file (RUN/...)                        written by                      then all wait at
    ----------------------------------    ------------------------------  ------------------
    temp files of killed writes           removed by process 0 at start   (the lock)
    run lock                              each process its own file       --
                                          (`core.run_lock.lock_name`)
    loop_config.json                      process 0                       activeit_loop_config
    seed_{s}/data/ (the split)            process 0; every process draws  activeit_run_prepared
                                          the same split
    .../selected_tasks.json               process 0                       activeit_loop_select,
                                                                          activeit_loop_selected
    .../train/ step checkpoints           every process its shards        (orbax)
    .../train/ metrics, run args, best    process 0 (`training.run_dir`)  the trainer's own
    info, summary; train/best/            (`models.checkpoints`)          activeit_save_model_*
    .../eval_{split}/                     process 0 (`training.evaluation`) activeit_loop_metrics
    .../per_task_metrics.jsonl,           process 0                       activeit_loop_metrics
      metrics_{split}.json
    .../scoring/shards/host{k}-of-{n}/    process k: its share of the pool the scorer's own
    .../scoring/ (merged files)           process 0 (`scoring.multihost`) activeit_score_*
    .../scores.jsonl, task_map.png        process 0 (copies)              activeit_loop_scores
    .../DONE (train/checkpoints/ deleted) process 0                       activeit_loop_done
    .../judge_vs_*.jsonl                  process 0 (the only one with    --
                                          judge clients; the others only
                                          help evaluate missing predictions)
    report/                               process 0                       activeit_run_done

Terminal output of the loop (the label counts, the judge's tallies, the report's path) is
printed by process 0 only. The trainer and the scorer keep their own barriers (named above;
`core.distributed.barrier` without a limit, as they wait for other hosts' computation).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, TypeVar

import jax

from activeit_jax.core import distributed, io_utils, run_lock

T = TypeVar("T")


def is_writer() -> bool:
    """True in process 0, the one process that writes the files every host reads."""
    return distributed.is_primary()


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (a no-op for one process), at
    most `--barrier_timeout` seconds.

    Raises:
      core.distributed.HostSyncError: the others did not arrive in time (one line).
    """
    distributed.barrier(name, distributed.barrier_timeout_s())


def wait_for_writer(name: str) -> None:
    """A barrier that waits as long as process 0 lives: its judge and report can take hours.
    (A process that is gone is the watchdog's business.)"""
    distributed.barrier(name, None)


def exists(path: str | os.PathLike, bounded: bool = True) -> bool:
    """Whether `path` exists, as process 0 sees it, in every process (rule 3).

    Every process must make the same sequence of calls.

    Args:
      path: the file or directory.
      bounded: the others wait for process 0's answer at most `--barrier_timeout` seconds;
        False: as long as process 0 lives (after the loop, process 0 judges in between).

    Raises:
      core.distributed.HostSyncError: process 0's answer did not come in time.
    """
    name = f"exists {os.path.basename(os.fspath(path))}"
    return distributed.share_from_primary(
        name, lambda: "1" if os.path.exists(path) else "0",
        distributed.barrier_timeout_s() if bounded else None) == "1"


def write_once(barrier_name: str, write: Callable[[], object]) -> None:
    """Runs `write` in process 0 only, then waits for every process at `barrier_name`.

    Every process must make the same sequence of calls; `write` may look at files itself
    (it runs after the previous barrier), the other processes must not.
    """
    if is_writer():
        write()
    barrier(barrier_name)


def on_writer(make: Callable[[], T]) -> T | None:
    """`make()` in process 0, None in the others (what only the writer needs: the judge's
    clients, which must fail early when an API key is missing)."""
    return make() if is_writer() else None


@contextlib.contextmanager
def run_directory(run_dir: str | os.PathLike) -> Iterator[None]:
    """Holds this process's lock of `run_dir` (another `run` on it is refused); process 0
    removes the temp files a killed atomic write left anywhere in the run."""
    with run_lock.hold(run_dir, "run", jax.process_index()):
        if is_writer():
            io_utils.remove_stale_temp_files(run_dir, recursive=True)
        yield
