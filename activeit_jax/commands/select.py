r"""`activeit-jax select`: pick the next tasks of an iteration from a scored pool.

    activeit-jax select --scores=RUN/seed_0/iter_0/scores.jsonl --pool=pool.jsonl \
        --strategy=prompt_uncertainty --num_tasks=68 --quota=niv2 --seed=0 --iteration=1 \
        --exclude=RUN/seed_0/iter_0/selected_tasks.json \
        --out=RUN/seed_0/prompt_uncertainty/iter_1/selected_tasks.json

Settings come from, in order of precedence: the command-line flag, a gin binding of
`selection_settings` (e.g. `--gin.selection_settings.strategy="'ambiguous'"` or a gin file),
the defaults of `selection_settings`. `--out` ending in `.txt` gets one name per line;
anything else gets the `selected_tasks.json` object (`Selection.to_json()`).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import gin
from absl import flags, logging

from activeit_jax.commands import common
from activeit_jax.core import io_utils, records
from activeit_jax.core.errors import UsageError
from activeit_jax.data.errors import RecordError
from activeit_jax.loop import selection

_SCORES = flags.DEFINE_string("scores", None, "scores.jsonl of the pool (from `score`).")
_POOL = flags.DEFINE_string(
    "pool", None, "pool file: JSONL/JSON records {name, label, chunk} or names one per line. "
    "Default: the tasks of --scores.")
_EXCLUDE = flags.DEFINE_multi_string(
    "exclude", [], "task lists (selected_tasks.json or text) already trained on; removed from "
    "the pool. Repeatable.")
_STRATEGY = flags.DEFINE_string("strategy", None, "selection strategy; one of "
                                + ", ".join(selection.list_strategies()) + ".")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "number of tasks to select.")
_QUOTA = flags.DEFINE_enum("quota", None, list(selection.QUOTAS),
                           "per-iteration quota: none, niv2 (cls/gen ratio) or self_instruct "
                           "(output-length chunks).")
_SEED = flags.DEFINE_integer("seed", None, "run seed.")
_ITERATION = flags.DEFINE_integer("iteration", None, "active-learning iteration being selected.")
_OUT = flags.DEFINE_string("out", None, "output file (written atomically).")
common.define_gin_flags()


@gin.configurable
def selection_settings(strategy: str = "prompt_uncertainty", num_tasks: int = 68,
                       quota: str = "none", seed: int = 0, iteration: int = 0,
                       label_ratio: Mapping[str, int] | None = None,
                       on_missing_score: str = "error") -> dict[str, Any]:
    """Gin-bound selection settings (the edge); see `selection.select` for their meaning."""
    return dict(strategy=strategy, num_tasks=num_tasks, quota=quota, seed=seed,
                iteration=iteration, label_ratio=label_ratio, on_missing_score=on_missing_score)


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuses settings `selection.select` cannot use, before any file is read or written.

    Raises:
      UsageError: naming the setting.
    """
    if settings["strategy"] not in selection.list_strategies():
        raise UsageError(f"--strategy: unknown strategy {settings['strategy']!r}; known: "
                         f"{', '.join(selection.list_strategies())}")
    if settings["quota"] not in selection.QUOTAS:
        raise UsageError(f"--quota must be one of {list(selection.QUOTAS)}, got "
                         f"{settings['quota']!r}")
    for key in ("num_tasks", "seed", "iteration"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"--{key} must be an integer >= 0, got {value!r}")
    if settings["on_missing_score"] not in ("error", "drop"):
        raise UsageError("selection_settings.on_missing_score must be 'error' or 'drop', got "
                         f"{settings['on_missing_score']!r}")


def main(argv: list[str]) -> None:
    common.check_args(argv, ("out",))
    if not _SCORES.value and not _POOL.value:
        raise UsageError("give --scores and/or --pool")
    common.parse_gin_from_flags()
    settings = selection_settings()
    for key, flag in (("strategy", _STRATEGY), ("num_tasks", _NUM_TASKS), ("quota", _QUOTA),
                      ("seed", _SEED), ("iteration", _ITERATION)):
        if flag.value is not None:
            settings[key] = flag.value

    check_settings(settings)
    scores = records.read_score_records(_SCORES.value) if _SCORES.value else None
    if _SCORES.value and not scores:
        raise RecordError("no score records", _SCORES.value)
    pool = selection.read_pool(_POOL.value) if _POOL.value else \
        selection.pool_from_scores(scores or [])
    excluded: set[str] = set()
    for path in _EXCLUDE.value:
        excluded.update(selection.read_task_list(path))
    if excluded:
        before = len(pool)
        pool = [task for task in pool if task.name not in excluded]
        logging.info("excluded %d already-trained task(s) from the pool", before - len(pool))

    try:
        result = selection.select(scores=scores, pool=pool, **settings)
    except ValueError as err:  # select documents its ValueErrors as problems of the input
        raise UsageError(f"cannot select from {_SCORES.value or _POOL.value}: {err}") from None
    for note in result.notes:
        logging.warning("%s", note)
    for group in result.groups:
        logging.info("group %s: %d/%d taken from %d available (shortfall %d)", group.group,
                     group.taken, group.target, group.available, group.shortfall)
    if _OUT.value.endswith(".txt"):
        io_utils.atomic_write_text(_OUT.value, "".join(f"{t}\n" for t in result.tasks))
    else:
        io_utils.atomic_write_json(_OUT.value, result.to_json())
    print(json.dumps({"out": _OUT.value, "strategy": result.strategy,
                      "num_selected": len(result.tasks)}))
