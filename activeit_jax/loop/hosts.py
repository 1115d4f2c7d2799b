"""The active loop's multi-host rules, in one place: who writes which file, where all wait.

A TPU slice runs the loop as one process per host. Every process runs the whole loop --
training, evaluation and scoring are collective over one global mesh -- and decides what to
skip from the files of the run directory. Three rules keep the processes in step:

1. One writer. A file that every host reads is written by process 0 only (`is_writer`);
   the others compute the same content (the same seeds, the same collective results) and
   do not write it.
2. Barriers after writes. Every process reaches every barrier in the same order; a file
   written by the writer is visible to all once its barrier has passed (`write_once`).
3. Decide after a barrier. Whether a stage is skipped (`os.path.exists`) is decided right
   after a barrier, so that every process decides alike.

Who writes what in a run directory (names: `activeit_jax.layout`; barriers by name)::

    file (RUN/...)                        written by                      then all wait at
    ----------------------------------    ------------------------------  ------------------
    temp files of killed writes           removed by process 0 at start   (the lock)
    run lock                              each process its own file       --
                                          (`core.run_lock.lock_name`)
    loop_config.json                      process 0                       activeit_loop_config
    seed_{s}/data/ (the split)            process 0; every process draws  activeit_run_prepare,
                                          the same split                  activeit_run_prepared
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
    report/                               process 0                       --

Terminal output of the loop (the label counts, the judge's tallies, the report's path) is
printed by process 0 only.
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
    """Waits until every process reaches the barrier `name` (a no-op for one process)."""
    distributed.barrier(name)


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
