"""Task selection for the active loop: a registry of strategies, and per-iteration quotas.

A *strategy* ranks a set of candidate tasks (most wanted first); `select_tasks` splits the
budget `num_tasks` into quota groups, takes the top of each group's own ranking, and fills a
group that runs short from the rest of the pool (recording that it did).

Strategies and their registry: `activeit_jax.loop.strategies` (re-exported here).

Quotas (`quota=`):
- `"none"`: the strategy ranks the whole pool; the top `num_tasks` are taken.
- `"niv2"`: the classification / generative ratio is kept every iteration: `num_tasks` is split
  by `label_ratio` (default 24 "cls" : 44 "gen", i.e. exactly 24 + 44 of 68) with
  largest-remainder rounding; each label's tasks are chosen by the strategy from that label's
  sub-pool. When a sub-pool has fewer tasks than its quota, the missing ones are filled from
  the remaining tasks of the other labels (ranked by the same strategy) and recorded in
  `Selection.groups[*].shortfall` and `Selection.filled`.
- `"self_instruct"`: tasks carry an output-length chunk id (0..12); `num_tasks` is split over
  the chunks present in the pool in proportion to their sizes (largest-remainder rounding, so
  the total is exact), and the strategy chooses inside each chunk.

Randomness is stable across machines and runs: group number `k` (0-based, in the group order
above; the fill step uses `k = number of groups`) draws from
`np.random.default_rng([seed, iteration, k])`, always over candidates sorted by name, so the pool
order never matters and Python's `hash()` is never used.

gin is not read here; `activeit_jax/commands/select.py` binds the settings at the edge.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from activeit_jax.core import records
from activeit_jax.data.errors import RecordError
from activeit_jax.loop.strategies import (  # noqa: F401 (re-exported: one import site)
    CATEGORY_FILL,
    CATEGORY_KEY,
    ENTROPY_KEY,
    PPL_KEY,
    PROB_KEY,
    PU_KEY,
    TASK_KEY,
    TASK_MAP_CATEGORIES,
    VARIANTS,
    RankFn,
    Strategy,
    TaskInfo,
    category_ranking,
    check_variants,
    get_strategy,
    has_variants,
    list_strategies,
    register_strategy,
    required_score_keys,
)

log = logging.getLogger(__name__)

QUOTAS = ("none", "niv2", "self_instruct")
# 24 of 68: int(68 * 0.356) classification tasks, Active-IT's reproduce.sh --fix_cls_gen_ratio.
DEFAULT_LABEL_RATIO: dict[str, int] = {"cls": 24, "gen": 44}
NUM_CHUNKS = 13


# ----------------------------------------------------------------------------- quotas


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Splits `total` into integer parts proportional to `weights`, summing exactly to `total`.

    Each part is floor(total * w / sum(w)); the leftover units go to the largest remainders,
    ties to the earlier group. Integer arithmetic only.

    Args:
      total: the non-negative integer to split.
      weights: non-negative integers, not all zero.

    Returns:
      One integer per weight.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    weights = [int(w) for w in weights]
    if any(w < 0 for w in weights) or sum(weights) == 0:
        raise ValueError(f"weights must be non-negative and not all zero, got {weights}")
    denominator = sum(weights)
    parts = [total * w // denominator for w in weights]
    remainders = [total * w % denominator for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:total - sum(parts)]:
        parts[i] += 1
    return parts


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """What one quota group asked for and got.

    Attributes:
      group: "all", a label ("cls", "gen") or "chunk_<id>".
      available: candidates in the group's sub-pool.
      target: the group's quota.
      taken: tasks chosen from its own sub-pool (min(target, available)).
      shortfall: target - taken, filled from other groups.
    """
    group: str
    available: int
    target: int
    taken: int
    shortfall: int


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of `select_tasks`.

    Attributes:
      tasks: the chosen task names (group by group in rank order, then the fill).
      strategy, quota, seed, iteration, num_tasks: the request.
      groups: one record per quota group.
      filled: names taken to cover group shortfalls (a subset of `tasks`).
      notes: human-readable remarks (shortfalls, pool smaller than `num_tasks`, ...).
      category_fill: category strategies only: chosen tasks outside the strategy's Task Map
        category (taken from the nearest categories because the category ran short).
      variant: the variant of a strategy with variants (`VARIANTS`), else None.
    """
    tasks: tuple[str, ...]
    strategy: str
    quota: str
    seed: int
    iteration: int
    num_tasks: int
    groups: tuple[GroupRecord, ...]
    filled: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    category_fill: tuple[str, ...] = ()
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The selected-tasks file's object (`layout.SELECTED_FILE`, read back by
        `read_task_list` and `reporting.results`)."""
        return {
            "strategy": self.strategy, "quota": self.quota, "seed": self.seed,
            "iteration": self.iteration, "num_tasks": self.num_tasks,
            "tasks": list(self.tasks),
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "filled": list(self.filled), "notes": list(self.notes),
            "category_fill": list(self.category_fill), "variant": self.variant,
        }


def _rng(seed: int, iteration: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(iteration), int(stream)])


def label_quota(num_tasks: int, label_ratio: Mapping[str, int] | None = None
                ) -> dict[str, int]:
    """How the "niv2" quota splits `num_tasks` over the labels: {label: tasks}, in
    proportion to `label_ratio` (None = the paper's 24 : 44) by largest remainder."""
    ratio = dict(DEFAULT_LABEL_RATIO if label_ratio is None else label_ratio)
    return dict(zip(ratio, largest_remainder(num_tasks, list(ratio.values()))))


def _groups(pool: Sequence[TaskInfo], num_tasks: int, quota: str,
            label_ratio: Mapping[str, int]) -> list[tuple[str, list[TaskInfo], int]]:
    """Returns [(group name, sub-pool, target)] for a quota."""
    if quota == "none":
        return [("all", list(pool), num_tasks)]
    if quota == "niv2":
        labels = list(label_ratio)
        unknown = sorted({t.label for t in pool if t.label not in label_ratio}, key=str)
        if unknown:
            raise ValueError(f"quota 'niv2' needs every task's label in {labels}; "
                             f"found {unknown}")
        return [(label, [t for t in pool if t.label == label], target)
                for label, target in label_quota(num_tasks, label_ratio).items()]
    if quota == "self_instruct":
        missing = [t.name for t in pool if t.chunk is None]
        if missing:
            raise ValueError(f"quota 'self_instruct' needs a chunk id on every task; "
                             f"{len(missing)} lack one (e.g. {missing[0]!r})")
        chunks = sorted({int(t.chunk) for t in pool})
        members = {c: [t for t in pool if int(t.chunk) == c] for c in chunks}
        targets = largest_remainder(num_tasks, [len(members[c]) for c in chunks]) if chunks \
            else []
        return [(f"chunk_{c}", members[c], target) for c, target in zip(chunks, targets)]
    raise ValueError(f"unknown quota {quota!r}; expected one of {QUOTAS}")


def select(strategy: str, scores: Sequence[Mapping[str, Any]] | None,
           pool: Sequence[TaskInfo], num_tasks: int, quota: str = "none", seed: int = 0,
           iteration: int = 0, label_ratio: Mapping[str, int] | None = None,
           on_missing_score: str = "error",
           perplexity_variant: str = VARIANTS["perplexity"][1],
           category_selection: str = VARIANTS["category"][1]) -> Selection:
    """Chooses the next tasks from `pool`; the full record (see `select_tasks` for the names).

    Args:
      strategy: a registered strategy name.
      scores: `scores.jsonl` records (a dict per task with "task" and the score keys) or None
        for strategies that need no scores. Records of tasks outside the pool are ignored; a
        repeated task keeps its last record.
      pool: the remaining (not yet trained on) tasks to choose from; names must be unique.
      num_tasks: how many tasks to choose (ignored by `fully_trained`).
      quota: "none", "niv2" or "self_instruct" (see the module docstring).
      seed: run seed (>= 0).
      iteration: the active-learning iteration being selected (>= 0).
      label_ratio: label -> weight for the "niv2" quota (default {"cls": 24, "gen": 44}).
      on_missing_score: for strategies that need scores, "error" raises when a pool task has
        no score record; "drop" leaves such tasks out of the candidates (noted).
      perplexity_variant: "reference" or "paper_text" (high / low perplexity; `VARIANTS`).
      category_selection: "rank" or "random" (the Task Map category strategies).

    Returns:
      The `Selection`. If the pool has fewer tasks than `num_tasks`, all are chosen (noted).
    """
    spec = get_strategy(strategy, perplexity_variant, category_selection)
    if num_tasks < 0:
        raise ValueError(f"num_tasks must be >= 0, got {num_tasks}")
    if seed < 0 or iteration < 0:
        raise ValueError(f"seed and iteration must be >= 0, got {seed}, {iteration}")
    if on_missing_score not in ("error", "drop"):
        raise ValueError(f"on_missing_score must be 'error' or 'drop', got {on_missing_score!r}")
    names = [t.name for t in pool]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate task names in the pool: {dupes[:5]}")
    label_ratio = dict(DEFAULT_LABEL_RATIO if label_ratio is None else label_ratio)
    notes: list[str] = []

    by_task: dict[str, Mapping[str, Any]] = {}
    for record in scores or ():
        by_task[str(record[TASK_KEY])] = record
    candidates = sorted(pool, key=lambda t: t.name)
    if spec.needs_scores:
        if scores is None:
            raise ValueError(f"strategy {strategy!r} needs scores")
        # A record whose score the strategy reads is null (an adaptive run's entropy, a
        # hand-edited file) counts as no score, not as a ranking error.
        # (The Task Map category has its own check, `_category_of`.)
        numbers = [k for k in spec.score_keys if k != CATEGORY_KEY]
        missing = [t.name for t in candidates if t.name not in by_task
                   or any(by_task[t.name].get(k) is None for k in numbers)]
        if missing and on_missing_score == "error":
            raise ValueError(f"strategy {strategy!r}: {len(missing)} pool task(s) have no "
                             f"score or a null {'/'.join(numbers)}, e.g. {missing[:3]}")
        if missing:
            notes.append(f"dropped {len(missing)} pool task(s) without a score")
            missing_set = set(missing)
            candidates = [t for t in candidates if t.name not in missing_set]

    if spec.selects_all:
        chosen = spec.rank(candidates, by_task, _rng(seed, iteration, 0))
        notes.append(f"{strategy}: took all {len(chosen)} pool tasks")
        return Selection(tuple(chosen), strategy, quota, seed, iteration, num_tasks,
                         (GroupRecord("all", len(candidates), len(chosen), len(chosen), 0),),
                         (), tuple(notes), variant=spec.variant)

    budget = num_tasks
    if num_tasks > len(candidates):
        notes.append(f"pool has {len(candidates)} task(s), fewer than num_tasks={num_tasks}: "
                     f"taking all")
        budget = len(candidates)
    groups = _groups(candidates, budget, quota, label_ratio)
    chosen: list[str] = []
    records: list[GroupRecord] = []
    for k, (group, members, target) in enumerate(groups):
        ranking = spec.rank(members, by_task, _rng(seed, iteration, k)) if members else []
        taken = ranking[:target]
        chosen += taken
        shortfall = target - len(taken)
        records.append(GroupRecord(group, len(members), target, len(taken), shortfall))
        if shortfall:
            notes.append(f"group {group!r} had {len(members)} task(s) for a quota of {target}; "
                         f"{shortfall} filled from other groups")
        notes += _category_notes(spec, group, taken, by_task)
    filled: list[str] = []
    missing_total = budget - len(chosen)
    if missing_total > 0:
        chosen_set = set(chosen)
        rest = [t for t in candidates if t.name not in chosen_set]
        filled = spec.rank(rest, by_task, _rng(seed, iteration, len(groups)))[:missing_total]
        chosen += filled
        notes += _category_notes(spec, "fill", filled, by_task)
    outside = (tuple(n for n in chosen if by_task[n].get(CATEGORY_KEY) != spec.category)
               if spec.category else ())
    return Selection(tuple(chosen), strategy, quota, seed, iteration, num_tasks,
                     tuple(records), tuple(filled), tuple(notes), outside, spec.variant)


def _category_notes(spec: Strategy, group: str, taken: Sequence[str],
                    by_task: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A note (also logged) when a category strategy took tasks outside its category."""
    if spec.category is None:
        return []
    outside = [n for n in taken if by_task[n].get(CATEGORY_KEY) != spec.category]
    if not outside:
        return []
    sources = sorted({str(by_task[n].get(CATEGORY_KEY)) for n in outside})
    note = (f"group {group!r}: category {spec.category!r} had {len(taken) - len(outside)} "
            f"task(s) for {len(taken)} places; {len(outside)} filled from the nearest "
            f"categories ({', '.join(sources)})")
    log.warning("selection %s: %s", spec.name, note)
    return [note]


def select_tasks(strategy: str, scores: Sequence[Mapping[str, Any]] | None,
                 pool: Sequence[TaskInfo], num_tasks: int, quota: str = "none", seed: int = 0,
                 iteration: int = 0, label_ratio: Mapping[str, int] | None = None,
                 on_missing_score: str = "error",
                 perplexity_variant: str = VARIANTS["perplexity"][1],
                 category_selection: str = VARIANTS["category"][1]) -> list[str]:
    """Chooses the next tasks from `pool`; same arguments as `select`.

    Returns:
      The chosen task names.
    """
    return list(select(strategy, scores, pool, num_tasks, quota, seed, iteration, label_ratio,
                       on_missing_score, perplexity_variant, category_selection).tasks)


# ----------------------------------------------------------------------------- file helpers


def _task_info(record: Any, path: str | os.PathLike | None = None, where: str = ""
               ) -> TaskInfo:
    if isinstance(record, str):
        return TaskInfo(record)
    name = record.get("name", record.get(TASK_KEY)) if isinstance(record, Mapping) else None
    if not isinstance(name, str) or not name:
        raise RecordError(f"expected a task name or an object with a 'name' or 'task', got "
                          f"{record!r:.80}", path, where or None)
    chunk = record.get("chunk")
    try:
        chunk = None if chunk is None else int(chunk)
    except (TypeError, ValueError):
        raise RecordError(f"expected an integer chunk id, got {chunk!r}", path,
                          f"{where}: chunk" if where else "chunk") from None
    label = record.get("label")
    if label is not None and label not in records.LABELS:
        raise RecordError(f"expected a label in {list(records.LABELS)} or null, got "
                          f"{label!r:.40}", path, f"{where}: label" if where else "label")
    return TaskInfo(name, label, chunk)


def _read_records(path: str | os.PathLike) -> list[tuple[str, Any]]:
    return records.read_records(path, "pool file")


def read_pool(path: str | os.PathLike) -> list[TaskInfo]:
    """Reads a pool file.

    Accepted forms: JSONL of {"name" (or "task"), "label"?, "chunk"?} records; a JSON list of
    such records or of names; a JSON object whose "tasks" (or "pool") is such a list; a text
    file with one task name per line.

    Returns:
      The tasks, in file order.
    """
    return [_task_info(r, path, where) for where, r in _read_records(path)]


def read_task_list(path: str | os.PathLike) -> list[str]:
    """Reads task names from a `selected_tasks.json` ({"tasks": [...]}), a JSON list, a JSONL of
    records with "name"/"task", or a text file with one name per line."""
    return [_task_info(r, path, where).name for where, r in _read_records(path)]


def pool_from_scores(scores: Sequence[Mapping[str, Any]]) -> list[TaskInfo]:
    """A pool built from score records (their "task", "label" and optional "chunk")."""
    seen: dict[str, TaskInfo] = {}
    for record in scores:
        seen[str(record[TASK_KEY])] = _task_info(record)
    return list(seen.values())
