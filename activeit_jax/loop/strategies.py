"""Selection strategies: a registry of rankings of candidate tasks, most wanted first.

`activeit_jax.loop.selection` splits each iteration's budget into quota groups and takes the top
of each group's ranking; this module owns the rankings.

Strategies (`get_strategy(name, ...)`; all break ties by task name, ascending):

| name                 | ranking                                                          |
|----------------------|------------------------------------------------------------------|
| `random`             | a seeded permutation (no scores needed)                          |
| `prompt_uncertainty` | prompt_uncertainty, highest first                                |
| `high_perplexity`    | highest first; variant (`perplexity_variant`): "reference" (the  |
| `low_perplexity`     | default) ranks every task by perplexity, as the reference code   |
|                      | does; "paper_text" ranks classification tasks by mean token      |
|                      | entropy and generative tasks by perplexity, as the paper's text  |
|                      | describes the two baselines (`low_perplexity`: lowest first)     |
| `uncertainty`        | ours, not the paper's: `high_perplexity` under "paper_text"      |
|                      | (kept as its own name so that runs started with it resume)       |
| `ambiguous`          | Task Map category training (paper, Figure 3): the tasks of that  |
| `easy`               | category first, in the order of `category_selection` ("rank":    |
| `difficult`          | the reference code's ranking, the default; "random": a seeded    |
|                      | draw), then the nearest categories as a fill (see "Task Map      |
|                      | categories" below)                                               |
| `fully_trained`      | every pool task (ignores `num_tasks` and quotas)                 |

A strategy with variants records the one it ran in `Selection.variant` (`selected_tasks.json`
"variant").

A score that is NaN ranks after every finite score, whatever the direction. The rng a
ranking gets is seeded by `selection.select` (stable across machines and runs).

Entropy-for-classification rankings (the "paper_text" perplexity variant and `uncertainty`):
with the "niv2" quota each label group holds one kind of task, so each is ranked on its own
score. Where a candidate set mixes both labels (quota "none", or the fill step), each label is
ranked on its own and the two rankings are merged by rank fraction ((rank + 1/2) / size of that
label's list, classification first on a tie), because entropy and perplexity are not on one
scale. The entropy is the scorer's (`activeit_jax.scoring`; docs/paper_settings.md defines it).

Task Map categories (`ambiguous`, `easy`, `difficult`): the category of a task is the one the
scorer stored with the previous iteration's scores (`scores.jsonl` "category", computed by
`activeit_jax.scoring.taskmap.categorize` over the remaining pool, i.e. that iteration's Task Map).
Neither the paper nor the reference code says how tasks are chosen inside a category. Inside
each quota group the tasks of the category come first, ordered by `category_selection`:

- "rank" (default): the reference code's deterministic rankings (`TLAL_utils.py`
  `PI_Std_Select`), computed over the category's tasks of the group. `ambiguous`: prompt
  uncertainty, highest first (its "Mean"/"High" ranking, so Ambiguous is the top-PU
  selection); `easy` and `difficult`: its "SumRank" -- the position in the ascending
  prompt-uncertainty order plus the position in the probability order (descending for
  `easy`, the "ReverseSTD" option; ascending for `difficult`), smallest sum first, ties by
  name. So `easy` prefers certain, probable tasks and `difficult` certain, improbable ones.
- "random": a seeded uniform draw (ours).

The other tasks follow in the order of the nearest categories:

| category    | fill order when the category runs short                                 |
|-------------|-------------------------------------------------------------------------|
| `ambiguous` | easy and difficult tasks by prompt uncertainty, highest first (closest  |
|             | to the Ambiguous threshold)                                             |
| `easy`      | difficult tasks by prediction probability, highest first; then          |
|             | ambiguous tasks by prompt uncertainty, lowest first                     |
| `difficult` | easy tasks by prediction probability, lowest first; then ambiguous      |
|             | tasks by prompt uncertainty, lowest first                               |

Every task taken from outside the category is logged, listed in `Selection.category_fill` and
counted in a note, so `selected_tasks.json` says how pure each draw was.

gin is not read here; the loop (`LoopConfig`) and `activeit_jax/commands/select.py` choose the
strategy and its variant at the edge.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

# Keys of a `scores.jsonl` record (one line per task, written by the scorer).
TASK_KEY = "task"
PU_KEY = "prompt_uncertainty"
PROB_KEY = "prediction_probability"
PPL_KEY = "perplexity"
ENTROPY_KEY = "entropy"
CATEGORY_KEY = "category"
TASK_MAP_CATEGORIES = ("ambiguous", "easy", "difficult")  # activeit_jax.scoring.taskmap.CATEGORIES


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One task of the selectable pool.

    Attributes:
      name: unique task name (as in `scores.jsonl` "task").
      label: "cls" or "gen" (needed by the "niv2" quota).
      chunk: output-length chunk id 0..12 (needed by the "self_instruct" quota).
    """
    name: str
    label: str | None = None
    chunk: int | None = None


# rank(candidates, scores, rng) -> every candidate name, most wanted first.
RankFn = Callable[[Sequence[TaskInfo], Mapping[str, Mapping[str, Any]], np.random.Generator],
                  list[str]]


# Where the paper's text and the reference code differ, a strategy comes in variants:
# kind -> (variants, the default). "perplexity": high / low perplexity (reference: perplexity for
# every task; paper_text: entropy for classification tasks); "category": the order inside a
# Task Map category (rank: the reference code's rankings; random: our seeded draw).
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "perplexity": (("reference", "paper_text"), "reference"),
    "category": (("rank", "random"), "rank"),
}


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A registered selection strategy (one variant of it, for a strategy with variants).

    Attributes:
      name: registry name.
      rank: the ranking function (see `RankFn`).
      needs_scores: whether `rank` reads `scores.jsonl` records.
      selects_all: whether the strategy takes the whole pool (fully trained baseline).
      score_keys: the score fields `rank` reads (the loop turns on the scorer's optional
        ones, e.g. entropy, when a configured strategy reads them).
      category: the Task Map category the strategy draws from (None: not a category one).
      variant_kind: the `VARIANTS` kind the strategy has variants of (None: it has none).
      variant: which of them this is (None: no variants).
    """
    name: str
    rank: RankFn
    needs_scores: bool = True
    selects_all: bool = False
    score_keys: tuple[str, ...] = ()
    category: str | None = None
    variant_kind: str | None = None
    variant: str | None = None


# name -> variant (None for a strategy without variants) -> the strategy.
_REGISTRY: dict[str, dict[str | None, Strategy]] = {}


def register_strategy(name: str, *, needs_scores: bool = True, selects_all: bool = False,
                      score_keys: Sequence[str] = (), category: str | None = None,
                      variant: tuple[str, str] | None = None
                      ) -> Callable[[RankFn], RankFn]:
    """Decorator that registers a ranking function under `name`.

    Args:
      needs_scores: whether the function reads scores (then `select_tasks` requires them).
      selects_all: the strategy takes every pool task regardless of `num_tasks` and quotas.
      score_keys: the score fields the function reads.
      category: the Task Map category a category strategy draws from.
      variant: (kind, variant) of `VARIANTS` when the function is one variant of `name`;
        every variant of the kind must be registered before the strategy is used.

    Returns:
      The decorator; it returns the function unchanged.

    Raises:
      ValueError: `name` (or that variant of it) is already registered, or the variant is not
        one of `VARIANTS`.
    """
    kind, value = variant if variant is not None else (None, None)
    if kind is not None and (kind not in VARIANTS or value not in VARIANTS[kind][0]):
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")

    def decorator(fn: RankFn) -> RankFn:
        entry = _REGISTRY.setdefault(name, {})
        if value in entry or (entry and next(iter(entry.values())).variant_kind != kind):
            raise ValueError(f"selection strategy {name!r} is already registered")
        entry[value] = Strategy(name, fn, needs_scores, selects_all, tuple(score_keys),
                                category, kind, value)
        return fn
    return decorator


def check_variants(perplexity_variant: str, category_selection: str) -> None:
    """Raises ValueError unless both are known variants (`VARIANTS`)."""
    for kind, value in (("perplexity", perplexity_variant), ("category", category_selection)):
        if value not in VARIANTS[kind][0]:
            setting = "perplexity_variant" if kind == "perplexity" else "category_selection"
            raise ValueError(f"{setting} must be one of {list(VARIANTS[kind][0])}, got "
                             f"{value!r}")


def get_strategy(name: str, perplexity_variant: str = VARIANTS["perplexity"][1],
                 category_selection: str = VARIANTS["category"][1]) -> Strategy:
    """Returns the registered strategy `name` in the chosen variant.

    Args:
      name: registry name (KeyError listing the known names otherwise).
      perplexity_variant: "reference" or "paper_text" (`high_perplexity`, `low_perplexity`).
      category_selection: "rank" or "random" (`ambiguous`, `easy`, `difficult`).

    Returns:
      The strategy (its `variant` says which one, None for a strategy without variants).
    """
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown selection strategy {name!r}; known: "
                       f"{', '.join(sorted(_REGISTRY))}") from None
    if None in entry:
        return entry[None]
    check_variants(perplexity_variant, category_selection)
    kind = next(iter(entry.values())).variant_kind
    return entry[perplexity_variant if kind == "perplexity" else category_selection]


def list_strategies() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_REGISTRY)


def has_variants(name: str, kind: str) -> bool:
    """Whether strategy `name` comes in variants of `kind` ("perplexity" or "category")."""
    return any(s.variant_kind == kind for s in _REGISTRY.get(name, {}).values())


def required_score_keys(strategies: Iterable[str],
                        perplexity_variant: str = VARIANTS["perplexity"][1],
                        category_selection: str = VARIANTS["category"][1]) -> set[str]:
    """The score fields any of `strategies` (in the chosen variants) reads (e.g.
    {"prompt_uncertainty", "entropy"})."""
    return {key for name in strategies
            for key in get_strategy(name, perplexity_variant, category_selection).score_keys}


# ----------------------------------------------------------------------------- strategies


def _score(scores: Mapping[str, Mapping[str, Any]], task: str, key: str) -> float:
    record = scores.get(task)
    if record is None or key not in record or record[key] is None:
        raise KeyError(f"task {task!r} has no {key!r} score")
    return float(record[key])


def _ranked_by(names: Iterable[str], scores: Mapping[str, Mapping[str, Any]], key: str,
               descending: bool) -> list[str]:
    """Sorts names by a score (NaN last), ties by name."""
    def sort_key(name: str) -> tuple[bool, float, str]:
        value = _score(scores, name, key)
        if math.isnan(value):
            return (True, 0.0, name)
        return (False, -value if descending else value, name)
    return sorted(names, key=sort_key)


@register_strategy("random", needs_scores=False)
def rank_random(candidates, scores, rng):
    """A seeded permutation of the candidates (sorted by name first)."""
    del scores
    names = sorted(task.name for task in candidates)
    return [names[i] for i in rng.permutation(len(names))]


@register_strategy("prompt_uncertainty", score_keys=(PU_KEY,))
def rank_prompt_uncertainty(candidates, scores, rng):
    """Highest prompt uncertainty first."""
    del rng
    return _ranked_by((t.name for t in candidates), scores, PU_KEY, descending=True)


@register_strategy("high_perplexity", score_keys=(PPL_KEY,), variant=("perplexity", "reference"))
def rank_high_perplexity(candidates, scores, rng):
    """Highest perplexity first (every task; the reference code's HighPerplexity)."""
    del rng
    return _ranked_by((t.name for t in candidates), scores, PPL_KEY, descending=True)


@register_strategy("low_perplexity", score_keys=(PPL_KEY,), variant=("perplexity", "reference"))
def rank_low_perplexity(candidates, scores, rng):
    """Lowest perplexity first (every task; the reference code's LowPerplexity)."""
    del rng
    return _ranked_by((t.name for t in candidates), scores, PPL_KEY, descending=False)


def _ranked_by_label(candidates: Sequence[TaskInfo], scores: Mapping[str, Mapping[str, Any]],
                     strategy: str, descending: bool) -> list[str]:
    """Classification tasks by entropy, generative ones by perplexity; a mixed set is merged
    by rank fraction (module docstring)."""
    unlabeled = [t for t in candidates if t.label not in ("cls", "gen")]
    if unlabeled:
        raise ValueError(f"strategy {strategy!r} needs each task's label (cls/gen); "
                         f"{unlabeled[0].name!r} has {unlabeled[0].label!r}")
    rankings = [_ranked_by([t.name for t in candidates if t.label == label], scores, key,
                           descending)
                for label, key in (("cls", ENTROPY_KEY), ("gen", PPL_KEY))]
    keyed = [(Fraction(2 * rank + 1, 2 * len(ranking)), order, name)
             for order, ranking in enumerate(rankings) for rank, name in enumerate(ranking)]
    return [name for _, _, name in sorted(keyed)]


@register_strategy("high_perplexity", score_keys=(PPL_KEY, ENTROPY_KEY),
                   variant=("perplexity", "paper_text"))
def rank_high_perplexity_paper_text(candidates, scores, rng):
    """The paper's text: classification tasks by entropy, generative ones by perplexity,
    highest first."""
    del rng
    return _ranked_by_label(candidates, scores, "high_perplexity", descending=True)


@register_strategy("low_perplexity", score_keys=(PPL_KEY, ENTROPY_KEY),
                   variant=("perplexity", "paper_text"))
def rank_low_perplexity_paper_text(candidates, scores, rng):
    """The paper's text: classification tasks by entropy, generative ones by perplexity,
    lowest first."""
    del rng
    return _ranked_by_label(candidates, scores, "low_perplexity", descending=False)


@register_strategy("uncertainty", score_keys=(PPL_KEY, ENTROPY_KEY))
def rank_uncertainty(candidates, scores, rng):
    """Ours: `high_perplexity` under the "paper_text" variant (classification tasks by
    entropy, generative ones by perplexity, highest first)."""
    del rng
    return _ranked_by_label(candidates, scores, "uncertainty", descending=True)


# category -> [(categories filled from, score key, descending)], nearest first.
CATEGORY_FILL: dict[str, tuple[tuple[tuple[str, ...], str, bool], ...]] = {
    "ambiguous": ((("easy", "difficult"), PU_KEY, True),),
    "easy": ((("difficult",), PROB_KEY, True), (("ambiguous",), PU_KEY, False)),
    "difficult": ((("easy",), PROB_KEY, False), (("ambiguous",), PU_KEY, False)),
}


def _category_of(scores: Mapping[str, Mapping[str, Any]], task: str) -> str:
    value = scores.get(task, {}).get(CATEGORY_KEY)
    if value not in TASK_MAP_CATEGORIES:
        raise ValueError(f"task {task!r} has Task Map category {value!r}; expected one of "
                         f"{TASK_MAP_CATEGORIES} (scores written by the scorer carry it)")
    return value


def category_ranking(category: str, names: Sequence[str],
                     scores: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The reference code's ranking of one category's tasks (`category_selection = "rank"`).

    Args:
      category: "ambiguous", "easy" or "difficult".
      names: the category's tasks.
      scores: task -> score record (prompt_uncertainty, prediction_probability).

    Returns:
      `names`, most wanted first: ambiguous by prompt uncertainty, highest first; easy /
      difficult by the sum of the position in the ascending prompt-uncertainty order and the
      position in the descending (easy) / ascending (difficult) probability order, smallest
      first; ties by name (NaN scores take the last positions of their order).
    """
    if category == "ambiguous":
        return _ranked_by(names, scores, PU_KEY, descending=True)
    by_pu = _ranked_by(names, scores, PU_KEY, descending=False)
    by_prob = _ranked_by(names, scores, PROB_KEY, descending=category == "easy")
    position = {name: k for k, name in enumerate(by_pu)}
    for k, name in enumerate(by_prob):
        position[name] += k
    return sorted(names, key=lambda name: (position[name], name))


def _category_strategy(category: str, selection_rule: str) -> RankFn:
    def rank(candidates, scores, rng):
        names = sorted(t.name for t in candidates)
        of = {name: _category_of(scores, name) for name in names}
        inside = [name for name in names if of[name] == category]
        if selection_rule == "rank":
            order = category_ranking(category, inside, scores)
        else:
            order = [inside[i] for i in rng.permutation(len(inside))]
        for fill_from, key, descending in CATEGORY_FILL[category]:
            order += _ranked_by([n for n in names if of[n] in fill_from], scores, key,
                                descending)
        return order
    how = ("ranked as the reference code ranks" if selection_rule == "rank"
           else "a seeded random draw among")
    rank.__doc__ = (f"The {category!r} tasks ({how} them), then the nearest categories "
                    f"({CATEGORY_FILL[category]}).")
    return rank


for _category in TASK_MAP_CATEGORIES:
    for _rule in VARIANTS["category"][0]:
        register_strategy(_category, score_keys=(CATEGORY_KEY, PU_KEY, PROB_KEY),
                          category=_category, variant=("category", _rule))(
            _category_strategy(_category, _rule))


@register_strategy("fully_trained", needs_scores=False, selects_all=True)
def rank_fully_trained(candidates, scores, rng):
    """Every candidate, by name (the strategy takes the whole pool)."""
    del scores, rng
    return sorted(task.name for task in candidates)
