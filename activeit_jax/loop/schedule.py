"""How many tasks the active loop adds at each iteration.

An experiment gives its schedule in one of three ways (`LoopConfig` fields of the same names):

- ``tasks_per_iteration = k``: a fixed increment; the training set after iteration i holds
  ``initial + i * k`` tasks (Active-IT's NIV2 runs: 68 initial, 68 per iteration).
  None = as many as the initial set.
- ``train_set_sizes = (s_1, ..., s_{N-1})``: the training-set size after each iteration
  i = 1 .. N-1, given as a list (the paper's Self-Instruct runs report 1,000 / 2,000 / 4,000 /
  8,000 / 16,000 training tasks).
- ``growth_factor = g``: the training set is multiplied by g at every iteration, sizes
  ``round(initial * g**i)`` (g = 2 doubles it: 500 initial -> 1,000 ... 16,000).

An initial set of 0 tasks (a zero-shot iteration 0: the base model as it is) needs an explicit
`tasks_per_iteration` or `train_set_sizes`.

At most one of `train_set_sizes` and `growth_factor` may be set; either overrides
`tasks_per_iteration`. Sizes are totals (initial tasks included), not increments, so the
learning-curve x-axis is exactly the list. Every size must exceed the previous one. When the pool
runs out first, the selection takes what is left and says so (`selection.select`).
"""
from __future__ import annotations

import math
from typing import Sequence

from activeit_jax.core.errors import UsageError

# Beyond this a float no longer holds every integer: no training set is that large.
_MAX_SIZE = 2 ** 53


def check_schedule(num_iterations: int, tasks_per_iteration: int | None = None,
                   sizes: Sequence[int] | None = None, growth_factor: float | None = None
                   ) -> None:
    """Checks what can be checked before the initial-set size is known.

    Args:
      num_iterations, tasks_per_iteration, sizes, growth_factor: as `train_set_sizes`.

    Raises:
      UsageError (a ValueError): contradictory or impossible settings (the message names
        them).
    """
    if num_iterations < 1:
        raise UsageError(f"num_iterations must be >= 1, got {num_iterations}")
    if sizes is not None and growth_factor is not None:
        raise UsageError("give train_set_sizes or growth_factor, not both")
    if tasks_per_iteration is not None and tasks_per_iteration < 1:
        raise UsageError(f"tasks_per_iteration must be >= 1, got {tasks_per_iteration}")
    if growth_factor is not None and not (growth_factor > 1 and math.isfinite(growth_factor)):
        raise UsageError(f"growth_factor must be > 1 (and finite), got {growth_factor}")
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        if len(sizes) != num_iterations - 1:
            raise UsageError(f"train_set_sizes has {len(sizes)} entries; num_iterations "
                             f"{num_iterations} needs {num_iterations - 1} (one per iteration "
                             f"after iteration 0)")
        if any(s < 1 for s in sizes):
            raise UsageError(f"train_set_sizes must be >= 1, got {sizes}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise UsageError(f"train_set_sizes must increase, got {sizes}")


def train_set_sizes(initial: int, num_iterations: int, tasks_per_iteration: int | None = None,
                    sizes: Sequence[int] | None = None, growth_factor: float | None = None,
                    pool_size: int | None = None) -> list[int]:
    """The training-set size after every iteration.

    Args:
      initial: tasks in the initial (iteration 0) training set, >= 1; 0 (zero-shot iteration
        0) with an explicit `tasks_per_iteration` or `sizes`.
      num_iterations: iterations including iteration 0, >= 1.
      tasks_per_iteration: fixed increment; None = `initial`.
      sizes: explicit sizes after iterations 1 .. num_iterations - 1.
      growth_factor: multiply the size by this (> 1) every iteration.
      pool_size: the tasks the iterations after 0 can select from (None = not checked):
        every iteration adds at least one, so at most `pool_size + 1` iterations. Checked
        before the schedule is built (num_iterations=10**9 builds no list of 10^9 sizes).

    Returns:
      [num_iterations] sizes; element 0 is `initial`.

    Raises:
      UsageError (a ValueError): contradictory or impossible settings (the message names
        them).
    """
    check_schedule(num_iterations, tasks_per_iteration, sizes, growth_factor)
    if pool_size is not None and num_iterations - 1 > pool_size:
        raise UsageError(f"num_iterations={num_iterations}: every iteration after iteration 0 "
                         f"adds at least one task and the pool holds {pool_size}, so at most "
                         f"{pool_size + 1} iterations")
    zero_shot_ok = tasks_per_iteration is not None or sizes is not None
    if initial < 0 or (initial == 0 and not zero_shot_ok):
        raise UsageError(f"the initial training set must hold >= 1 task, got {initial} (a "
                         "zero-shot iteration 0 needs tasks_per_iteration or train_set_sizes)")
    if sizes is not None:
        out = [initial, *(int(s) for s in sizes)]
    elif growth_factor is not None:
        out = [_grown(initial, growth_factor, i) for i in range(num_iterations)]
    else:
        step = initial if tasks_per_iteration is None else int(tasks_per_iteration)
        out = [initial + i * step for i in range(num_iterations)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise UsageError(f"training-set sizes must grow: iteration {i} has {out[i]} after "
                             f"{out[i - 1]} (sizes {out})")
    return out


def _grown(initial: int, growth_factor: float, iteration: int) -> int:
    """round(initial * growth_factor ** iteration), refused past `_MAX_SIZE` (a float
    overflow otherwise)."""
    try:
        size = initial * growth_factor ** iteration
    except OverflowError:
        size = math.inf
    if not size <= _MAX_SIZE:
        raise UsageError(f"growth_factor={growth_factor}: the training set after iteration "
                         f"{iteration} would hold more than 2^53 tasks")
    return int(round(size))


def tasks_to_add(initial: int, num_iterations: int, tasks_per_iteration: int | None = None,
                 sizes: Sequence[int] | None = None, growth_factor: float | None = None,
                 pool_size: int | None = None) -> list[int]:
    """Tasks selected at each iteration: [num_iterations] counts, element 0 = `initial`.

    Same arguments as `train_set_sizes`, whose consecutive differences these are.
    """
    totals = train_set_sizes(initial, num_iterations, tasks_per_iteration, sizes, growth_factor,
                             pool_size)
    return [totals[0]] + [b - a for a, b in zip(totals, totals[1:])]
