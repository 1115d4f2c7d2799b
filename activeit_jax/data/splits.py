"""Seeded experiment splits: initial training tasks, validation tasks, the pool, the test set.

NIV2 (Active-IT): from the official train split, 34 classification + 34 generation tasks are
held out for validation, 68 further tasks form the initial training set, and every remaining
train task is the pool the active loop selects from (620 with all 756 train tasks). The test
set is the official test split.

Self-Instruct: 500 initial tasks, the rest is the pool (cut into 13 output-length chunks).

Scaling rule for partial data: the counts are parameters. When they are not given and fewer
tasks are available than the paper had (756 NIV2 train tasks; 52,002 Alpaca-scale
instructions for Self-Instruct), every count is scaled by `available / paper_total`, rounded,
and kept >= 1 (`scaled_quotas`). Explicit counts are never scaled: if they do not fit, a
`SplitError` says so. A split that leaves no pool task raises `EmptyPoolError`.

Every choice is a seeded SHA-256 ordering of sorted task names (`hashing.stable_shuffle`), so
the same seed gives the same split on every machine.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from activeit_jax.data import labels as labels_lib
from activeit_jax.data.errors import EmptyPoolError, SplitError
from activeit_jax.data.hashing import stable_shuffle
from activeit_jax.data.niv2 import Task

PAPER_NIV2_TRAIN_TASKS = 756
PAPER_SELF_INSTRUCT_TASKS = 52_002


@dataclasses.dataclass(frozen=True)
class NIV2Quotas:
    """How many train-split tasks go to each role (the rest is the pool)."""
    num_initial: int = 68
    num_val_cls: int = 34
    num_val_gen: int = 34


@dataclasses.dataclass(frozen=True)
class SelfInstructQuotas:
    """How many Self-Instruct tasks start the training set (the rest is the pool)."""
    num_initial: int = 500


PAPER_NIV2_QUOTAS = NIV2Quotas()
PAPER_SELF_INSTRUCT_QUOTAS = SelfInstructQuotas()


def _scale(count: int, available: int, paper_total: int) -> int:
    return max(1, round(count * available / paper_total))


def scaled_quotas(quotas: NIV2Quotas | SelfInstructQuotas, available: int,
                  paper_total: int) -> tuple[NIV2Quotas | SelfInstructQuotas, str]:
    """Scales paper quotas down to the available number of tasks (see module docstring).

    Args:
      quotas: the paper's counts.
      available: tasks available (train-split tasks read, or Self-Instruct items).
      paper_total: the number the paper's counts were made for.

    Returns:
      (quotas to use, a one-line note saying what was done).
    """
    fields = dataclasses.asdict(quotas)
    paper = "/".join(str(v) for v in fields.values())
    if available >= paper_total:
        return quotas, f"paper quotas {paper} ({available} tasks available)"
    scaled = type(quotas)(**{k: _scale(v, available, paper_total) for k, v in fields.items()})
    new = "/".join(str(v) for v in dataclasses.asdict(scaled).values())
    return scaled, (f"quotas {new} = paper {paper} scaled by {available}/{paper_total} "
                    f"available tasks (rounded, >= 1)")


@dataclasses.dataclass(frozen=True)
class ExperimentSplit:
    """Task names per role.

    Attributes:
      kind: "niv2" or "self_instruct".
      seed: the seed the split was drawn with.
      initial: the first training set.
      validation: validation tasks (NIV2: cls then gen, each sorted by name).
      pool: candidates for selection.
      test: evaluation tasks.
      chunks: Self-Instruct only: the pool cut into output-length chunks (shortest first).
      note: how the quotas were chosen.
    """
    kind: str
    seed: int
    initial: tuple[str, ...]
    validation: tuple[str, ...]
    pool: tuple[str, ...]
    test: tuple[str, ...] = ()
    chunks: tuple[tuple[str, ...], ...] = ()
    note: str = ""

    ROLES = ("initial", "validation", "pool", "test")

    def roles(self) -> dict[str, tuple[str, ...]]:
        """{role: names} for the four roles."""
        return {role: getattr(self, role) for role in self.ROLES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `from_dict` inverts it."""
        return {"kind": self.kind, "seed": self.seed, "note": self.note,
                **{role: list(names) for role, names in self.roles().items()},
                "chunks": [list(chunk) for chunk in self.chunks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentSplit":
        """Rebuilds a split written by `to_dict`."""
        return cls(kind=data["kind"], seed=int(data["seed"]), note=data.get("note", ""),
                   **{role: tuple(data.get(role, ())) for role in cls.ROLES},
                   chunks=tuple(tuple(chunk) for chunk in data.get("chunks", ())))


def _unique_names(tasks: Sequence[Task], what: str) -> list[str]:
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise SplitError(f"duplicate task names in {what}: {duplicates[:5]}")
    return sorted(names)


def _draw_initial(candidates: Sequence[str], num_initial: int, seed: int, too_few: str,
                  no_pool: str) -> tuple[list[str], list[str]]:
    """Draws the initial training set from `candidates`; the rest, in order, is the pool.

    Args:
      candidates: task names not taken by another role.
      num_initial: size of the initial set.
      seed: the split seed.
      too_few / no_pool: the messages of the two ways this can fail.

    Returns:
      (initial names sorted, pool names in candidate order).

    Raises:
      SplitError: fewer candidates than `num_initial`.
      EmptyPoolError: nothing left for the pool.
    """
    if num_initial > len(candidates):
        raise SplitError(too_few)
    initial = sorted(stable_shuffle(candidates, seed, "initial")[:num_initial])
    chosen = set(initial)
    pool = [n for n in candidates if n not in chosen]
    if not pool:
        raise EmptyPoolError(no_pool)
    return initial, pool


def split_niv2(train_tasks: Sequence[Task], test_tasks: Sequence[Task] = (), seed: int = 42,
               quotas: NIV2Quotas | None = None) -> ExperimentSplit:
    """Draws the NIV2 experiment split from the train-split tasks.

    Validation first (stratified: `num_val_cls` classification tasks and `num_val_gen`
    generation tasks), then the initial set (uniformly from the rest), then the pool (all the
    rest).

    Args:
      train_tasks: the tasks of the official train split (with labels).
      test_tasks: the tasks of the official test split (kept as the test role).
      seed: the seed.
      quotas: counts; None applies the paper's 68/34/34, scaled down by `scaled_quotas` when
        fewer than 756 train tasks are available.

    Returns:
      ExperimentSplit with kind "niv2"; every role sorted by name (validation: cls then gen).

    Raises:
      SplitError: explicit quotas ask for more cls/gen tasks than exist.
      EmptyPoolError: nothing is left for the pool.
    """
    names = _unique_names(train_tasks, "the train split")
    labels = {task.name: task.label for task in train_tasks}
    if quotas is None:
        quotas, note = scaled_quotas(PAPER_NIV2_QUOTAS, len(names), PAPER_NIV2_TRAIN_TASKS)
    else:
        note = f"explicit quotas {quotas.num_initial}/{quotas.num_val_cls}/{quotas.num_val_gen}"
    cls_names = [n for n in names if labels[n] == labels_lib.CLS]
    gen_names = [n for n in names if labels[n] == labels_lib.GEN]
    for kind, wanted, have in (("classification", quotas.num_val_cls, cls_names),
                               ("generation", quotas.num_val_gen, gen_names)):
        if wanted > len(have):
            raise SplitError(f"validation needs {wanted} {kind} tasks but the train split has "
                             f"only {len(have)} ({len(names)} tasks in all; {note}); lower the "
                             f"validation quota")
    val_cls = sorted(stable_shuffle(cls_names, seed, "validation:cls")[:quotas.num_val_cls])
    val_gen = sorted(stable_shuffle(gen_names, seed, "validation:gen")[:quotas.num_val_gen])
    taken = set(val_cls) | set(val_gen)
    rest = [n for n in names if n not in taken]
    initial, pool = _draw_initial(
        rest, quotas.num_initial, seed,
        too_few=f"the initial set needs {quotas.num_initial} tasks but only {len(rest)} are "
                f"left after validation ({note})",
        no_pool=f"no task left for the pool: {len(names)} train tasks, {quotas.num_initial} "
                f"initial + {len(taken)} validation ({note})")
    test = tuple(sorted(task.name for task in test_tasks))
    overlap = set(test) & set(names)
    if overlap:
        raise SplitError(f"tasks in both the train and the test split: {sorted(overlap)[:5]}")
    return ExperimentSplit(kind="niv2", seed=seed, initial=tuple(initial),
                           validation=tuple(val_cls + val_gen), pool=tuple(pool), test=test,
                           note=note)


def split_self_instruct(tasks: Sequence[Task], test_tasks: Sequence[Task] = (), seed: int = 42,
                        quotas: SelfInstructQuotas | None = None,
                        chunks: Sequence[Sequence[str]] | None = None) -> ExperimentSplit:
    """Draws the Self-Instruct split: `num_initial` random tasks, the rest is the pool.

    Args:
      tasks: the Self-Instruct tasks.
      test_tasks: optional evaluation tasks (e.g. the 252 user-oriented instructions).
      seed: the seed.
      quotas: None applies 500, scaled down when fewer than 52,002 tasks are available.
      chunks: optional output-length chunks of *all* tasks; they are restricted to the pool.

    Returns:
      ExperimentSplit with kind "self_instruct" (no validation role).

    Raises:
      SplitError: an explicit initial count does not fit.
      EmptyPoolError: nothing is left for the pool.
    """
    names = _unique_names(tasks, "the Self-Instruct file")
    if quotas is None:
        quotas, note = scaled_quotas(PAPER_SELF_INSTRUCT_QUOTAS, len(names),
                                     PAPER_SELF_INSTRUCT_TASKS)
    else:
        note = f"explicit quota {quotas.num_initial}"
    initial, pool = _draw_initial(
        names, quotas.num_initial, seed,
        too_few=f"the initial set needs {quotas.num_initial} tasks but the file has "
                f"{len(names)} ({note})",
        no_pool=f"no task left for the pool: {len(names)} tasks, {quotas.num_initial} initial "
                f"({note})")
    pool_set = set(pool)
    pool_chunks = tuple(tuple(n for n in chunk if n in pool_set) for chunk in (chunks or ()))
    return ExperimentSplit(kind="self_instruct", seed=seed, initial=tuple(initial),
                           validation=(), pool=tuple(pool),
                           test=tuple(sorted(t.name for t in test_tasks)), chunks=pool_chunks,
                           note=note)
