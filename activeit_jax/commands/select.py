r"""`activeit-jax select`: pick the next tasks of an iteration from a scored pool.

    activeit-jax select --scores=RUN/seed_0/iter_0/scores.jsonl --pool=pool.jsonl \
        --strategy=prompt_uncertainty --num_tasks=68 --quota=niv2 --seed=0 --iteration=1 \
        --exclude=RUN/seed_0/iter_0/selected_tasks.json \
        --out=RUN/seed_0/prompt_uncertainty/iter_1/selected_tasks.json

The settings are a `SelectConfig`, read from gin (`--gin.SelectConfig.strategy="'ambiguous'"`
or a gin file); `--strategy`, `--num_tasks`, `--quota`, `--seed`, `--iteration` and
`--on_missing_score` are shortcuts generated from its fields. A flag given wins over a gin
binding, which wins over the default; a flag and a `--gin.` binding of the same field are
refused. (`selection_settings.*`, the older gin name, still binds the same fields, with a
deprecation warning.) `--out` ending in `.txt` gets one name per line; anything else gets the
`selected_tasks.json` object (`Selection.to_json()`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Mapping

import gin
from absl import flags

from activeit_jax.commands import common
from activeit_jax.core import io_utils, records
from activeit_jax.core.errors import UsageError
from activeit_jax.data.errors import RecordError
from activeit_jax.loop import selection

logger = logging.getLogger(__name__)

_SCORES = flags.DEFINE_string("scores", None, "scores.jsonl of the pool (from `score`).")
_POOL = flags.DEFINE_string(
    "pool", None, "pool file: JSONL/JSON records {name, label, chunk} or names one per line. "
    "Default: the tasks of --scores.")
_EXCLUDE = flags.DEFINE_multi_string(
    "exclude", [], "task lists (selected_tasks.json or text) already trained on; removed from "
    "the pool. Repeatable.")
_OUT = flags.DEFINE_string("out", None, "output file (written atomically).")


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """What `select` picks; see `selection.select` for the meaning of each setting.

    Attributes:
      strategy: selection strategy, one of `selection.list_strategies()`.
      num_tasks: number of tasks to select.
      quota: per-iteration quota: none, niv2 (cls/gen ratio) or self_instruct (output-length
        chunks).
      seed: run seed.
      iteration: active-learning iteration being selected.
      label_ratio: label -> weight of the niv2 quota (None = {"cls": 24, "gen": 44}).
      on_missing_score: a pool task without a score record: "error" stops, "drop" leaves it
        out of the candidates.
      perplexity_variant: high / low perplexity: "reference" (perplexity for every task) or
        "paper_text" (entropy for classification tasks; the scores need the entropy).
      category_selection: inside a Task Map category: "rank" (the reference code's ranking)
        or "random" (a seeded draw).
    """
    strategy: str = "prompt_uncertainty"
    num_tasks: int = 68
    quota: str = "none"
    seed: int = 0
    iteration: int = 0
    label_ratio: Mapping[str, int] | None = None
    on_missing_score: str = "error"
    perplexity_variant: str = selection.VARIANTS["perplexity"][1]
    category_selection: str = selection.VARIANTS["category"][1]

    def __post_init__(self):
        check_settings(self)


@gin.configurable(module="activeit_jax.commands.select")
def selection_settings(strategy: str = "prompt_uncertainty", num_tasks: int = 68,
                       quota: str = "none", seed: int = 0, iteration: int = 0,
                       label_ratio: Mapping[str, int] | None = None,
                       on_missing_score: str = "error") -> dict[str, Any]:
    """Deprecated gin name of `SelectConfig` (its bindings still count); never called."""
    return dict(strategy=strategy, num_tasks=num_tasks, quota=quota, seed=seed,
                iteration=iteration, label_ratio=label_ratio, on_missing_score=on_missing_score)


def check_settings(config: SelectConfig) -> None:
    """Refuses settings `selection.select` cannot use, before any file is read or written.

    Raises:
      UsageError: naming the setting (its field and flag).
    """
    if config.strategy not in selection.list_strategies():
        raise UsageError(f"SelectConfig.strategy (--strategy): unknown strategy "
                         f"{config.strategy!r}; known: {', '.join(selection.list_strategies())}")
    if config.quota not in selection.QUOTAS:
        raise UsageError(f"SelectConfig.quota (--quota) must be one of {list(selection.QUOTAS)}, "
                         f"got {config.quota!r}")
    for key in ("num_tasks", "seed", "iteration"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"SelectConfig.{key} (--{key}) must be an integer >= 0, "
                             f"got {value!r}")
    if config.on_missing_score not in ("error", "drop"):
        raise UsageError("SelectConfig.on_missing_score must be 'error' or 'drop', got "
                         f"{config.on_missing_score!r}")
    try:
        selection.check_variants(config.perplexity_variant, config.category_selection)
    except ValueError as err:
        raise UsageError(f"SelectConfig.{err}") from None


SELECT_FLAGS = common.define_config_flags(
    SelectConfig, gin_module="activeit_jax.commands.select", skip=("label_ratio",),
    choices={"quota": selection.QUOTAS, "on_missing_score": ("error", "drop"),
             "perplexity_variant": selection.VARIANTS["perplexity"][0],
             "category_selection": selection.VARIANTS["category"][0]},
    help_texts={"strategy": "selection strategy; one of "
                + ", ".join(selection.list_strategies()) + "."},
    deprecated_selectors=("activeit_jax.commands.select.selection_settings",))
common.define_gin_flags()


def main(argv: list[str]) -> None:
    common.check_args(argv, ("out",))
    if not _SCORES.value and not _POOL.value:
        raise UsageError("give --scores and/or --pool")
    common.refuse_outputs_among_inputs(
        {"scores": _SCORES.value, "pool": _POOL.value, "exclude": _EXCLUDE.value},
        {"out": _OUT.value})
    common.parse_gin_from_flags()
    config = SELECT_FLAGS.build()
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
        logger.info("excluded %d already-trained task(s) from the pool", before - len(pool))

    try:
        result = selection.select(scores=scores, pool=pool, **dataclasses.asdict(config))
    except ValueError as err:  # select documents its ValueErrors as problems of the input
        raise UsageError(f"cannot select from {_SCORES.value or _POOL.value}: {err}") from None
    for note in result.notes:
        logger.warning("%s", note)
    for group in result.groups:
        logger.info("group %s: %d/%d taken from %d available (shortfall %d)", group.group,
                    group.taken, group.target, group.available, group.shortfall)
    if _OUT.value.endswith(".txt"):
        io_utils.atomic_write_text(_OUT.value, "".join(f"{t}\n" for t in result.tasks))
    else:
        io_utils.atomic_write_json(_OUT.value, result.to_json())
    print(json.dumps({"out": _OUT.value, "strategy": result.strategy,
                      "num_selected": len(result.tasks)}))
