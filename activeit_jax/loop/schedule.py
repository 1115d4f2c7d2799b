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

from typing import Sequence


def check_schedule(num_iterations: int, tasks_per_iteration: int | None = None,
                   sizes: Sequence[int] | None = None, growth_factor: float | None = None
                   ) -> None:
    """Checks what can be checked before the initial-set size is known.

    Args:
      num_iterations, tasks_per_iteration, sizes, growth_factor: as `train_set_sizes`.

    Raises:
      ValueError: contradictory or impossible settings (the message names them).
    """
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    if sizes is not None and growth_factor is not None:
        raise ValueError("give train_set_sizes or growth_factor, not both")
    if tasks_per_iteration is not None and tasks_per_iteration < 1:
        raise ValueError(f"tasks_per_iteration must be >= 1, got {tasks_per_iteration}")
    if growth_factor is not None and growth_factor <= 1:
        raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        if len(sizes) != num_iterations - 1:
            raise ValueError(f"train_set_sizes has {len(sizes)} entries; num_iterations "
                             f"{num_iterations} needs {num_iterations - 1} (one per iteration "
                             f"after iteration 0)")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"train_set_sizes must increase, got {sizes}")


def train_set_sizes(initial: int, num_iterations: int, tasks_per_iteration: int | None = None,
                    sizes: Sequence[int] | None = None, growth_factor: float | None = None
                    ) -> list[int]:
    """The training-set size after every iteration.

    Args:
      initial: tasks in the initial (iteration 0) training set, >= 1; 0 (zero-shot iteration
        0) with an explicit `tasks_per_iteration` or `sizes`.
      num_iterations: iterations including iteration 0, >= 1.
      tasks_per_iteration: fixed increment; None = `initial`.
      sizes: explicit sizes after iterations 1 .. num_iterations - 1.
      growth_factor: multiply the size by this (> 1) every iteration.

    Returns:
      [num_iterations] sizes; element 0 is `initial`.

    Raises:
      ValueError: contradictory or impossible settings (the message names them).
    """
    check_schedule(num_iterations, tasks_per_iteration, sizes, growth_factor)
    zero_shot_ok = tasks_per_iteration is not None or sizes is not None
    if initial < 0 or (initial == 0 and not zero_shot_ok):
        raise ValueError(f"the initial training set must hold >= 1 task, got {initial} (a "
                         "zero-shot iteration 0 needs tasks_per_iteration or train_set_sizes)")
    if sizes is not None:
        out = [initial, *(int(s) for s in sizes)]
    elif growth_factor is not None:
        out = [int(round(initial * growth_factor ** i)) for i in range(num_iterations)]
    else:
        step = initial if tasks_per_iteration is None else int(tasks_per_iteration)
        out = [initial + i * step for i in range(num_iterations)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ValueError(f"training-set sizes must grow: iteration {i} has {out[i]} after "
                             f"{out[i - 1]} (sizes {out})")
    return out


def tasks_to_add(initial: int, num_iterations: int, tasks_per_iteration: int | None = None,
                 sizes: Sequence[int] | None = None, growth_factor: float | None = None
                 ) -> list[int]:
    """Tasks selected at each iteration: [num_iterations] counts, element 0 = `initial`.

    Same arguments as `train_set_sizes`, whose consecutive differences these are.
    """
    totals = train_set_sizes(initial, num_iterations, tasks_per_iteration, sizes, growth_factor)
    return [totals[0]] + [b - a for a, b in zip(totals, totals[1:])]
