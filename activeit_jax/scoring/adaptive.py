"""Adaptive perturbation budget: score every task with K0 perturbations, spend more only where
the selection is still undecided.

Prompt uncertainty is a mean over perturbations, and a selection only asks which tasks rank
in the top m. Most tasks are far from that boundary after a few perturbations, so the policy
(`run_policy`) goes:

1. every task gets its first ``K0`` perturbations (the first K0 of the same deterministic
   sequence full-K scoring uses: `PromptBuilder.perturbed_instructions` draws them in order);
2. per task, ``m_k = mean_x |p_k(x) - p_0(x)|`` are i.i.d. draws over perturbations, so
   ``PU = mean_k m_k`` has a standard error ``sqrt((1 - k/K) s^2 / k)`` with respect to the
   full-K value (finite-population correction: 0 once k = K); while a task has fewer than 5
   perturbations, ``s^2`` is the relative variance pooled over all tasks times its PU^2 (a
   2-draw variance is too noisy to trust);
3. the boundary is the midpoint between the m-th and (m+1)-th estimate (per label group with a
   quota); a task whose interval ``PU +- z SE`` contains it is *undecided* and gets
   ``growth`` times as many perturbations (at most K); repeat until none is undecided.

With K0 = K nothing is estimated: the result equals exact scoring. `run_policy` only sees
p values through a callback, so the same code replays the policy on a saved
``prompts.jsonl`` (`replay_from_prompts`, identical to a live run given the deterministic
perturbation order) and drives a live `RowScorer` (`score_adaptive`); `score_pool_adaptive`
writes `score_pool`'s files from it (`activeit-jax score --adaptive_k0=K0`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from activeit_jax import layout, partitioning
from activeit_jax.core import io_utils, run_lock
from activeit_jax.core.errors import UsageError
from activeit_jax.models import BaseModel
from activeit_jax.scoring import journal
from activeit_jax.scoring.formulas import prompt_uncertainty, sequence_probability
from activeit_jax.scoring.planning import PromptBuilder, SkippedTask, check_prompts_render
from activeit_jax.scoring.row_scorer import RowScorer

# fetch(requests) -> p: requests maps a task to its perturbation range [lo, hi) (1-based, 0
# is the unperturbed prompt, only requested with lo = 0); the answer maps it to p [n, hi - lo].
Fetch = Callable[[Mapping[str, tuple[int, int]]], Mapping[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class AdaptiveConfig:
    """Attributes:
      initial_perturbations: K0, perturbations every task gets.
      num_select: m, the size of the selection whose boundary matters.
      z: width of the confidence interval in standard errors.
      growth: an undecided task's perturbation count is multiplied by this each round.
      quota: label -> tasks selected among that label (e.g. {"cls": 24, "gen": 44}); None =
        one top-m over all tasks.
    """
    initial_perturbations: int
    num_select: int
    z: float = 2.0
    growth: float = 2.0
    quota: Mapping[str, int] | None = None

    def __post_init__(self):
        # The flags' names (`activeit-jax score --adaptive_*`) are in the messages.
        for name, flag in (("initial_perturbations", "adaptive_k0"),
                           ("num_select", "adaptive_select")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"AdaptiveConfig.{name} (--{flag}) must be an integer >= 1, "
                                 f"got {value!r}")
        for name, low in (("z", 0.0), ("growth", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value <= low:
                raise UsageError(f"AdaptiveConfig.{name} must be a finite number > {low:g}, "
                                 f"got {value!r}")
        if self.quota is not None and (not isinstance(self.quota, Mapping) or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 0
                for v in self.quota.values())):
            raise UsageError(f"AdaptiveConfig.quota must map labels to integers >= 0, got "
                             f"{self.quota!r}")


def check_supported(config: Any) -> None:
    """Refuses the `ScoreConfig` settings the adaptive budget does not support, before any
    file is written.

    Raises:
      UsageError: save_prompts or compute_entropy is on (each task gets a different number
        of perturbations, so prompts.jsonl and the entropy baseline would not be those of
        full scoring).
    """
    for field, flag in (("save_prompts", "save_prompts"), ("compute_entropy", "entropy")):
        if getattr(config, field):
            raise UsageError(f"the adaptive budget (--adaptive_k0) does not support "
                             f"ScoreConfig.{field} (--{flag}); score without one of them")


@dataclasses.dataclass
class AdaptiveResult:
    """Attributes:
      p: task -> p [n, 1 + k_task] (column 0 = unperturbed).
      prompt_uncertainty: task -> PU estimate from its k_task perturbations.
      selected: the top-m tasks by the estimates (per quota group when given).
      rows_scored / rows_full: rows scored vs rows of full-K scoring (originals included).
      rounds: rounds run after the first.
    """
    p: dict[str, np.ndarray]
    prompt_uncertainty: dict[str, float]
    selected: list[str]
    rows_scored: int
    rows_full: int
    rounds: int

    @property
    def fraction_scored(self) -> float:
        return self.rows_scored / max(self.rows_full, 1)


# Below this many perturbations a task's own variance estimate is too noisy; the pooled one
# (relative variance over all tasks) stands in.
_OWN_VARIANCE_FROM = 5


def _per_perturbation(p: np.ndarray) -> np.ndarray:
    """m_k = mean_x |p_k(x) - p_0(x)|, k = 1..k: i.i.d. draws over perturbations."""
    return np.mean(np.abs(p[:, 1:] - p[:, :1]), axis=0)


def pooled_relative_variance(ps: Sequence[np.ndarray]) -> float | None:
    """Mean over tasks (>= 2 perturbations, PU > 0) of var(m_k) / PU^2; None if none."""
    values = []
    for p in ps:
        m = _per_perturbation(p)
        if len(m) >= 2 and m.mean() > 0:
            values.append(np.var(m, ddof=1) / m.mean() ** 2)
    return float(np.mean(values)) if values else None


def standard_error(p: np.ndarray, num_perturbations: int,
                   pooled: float | None = None) -> float:
    """Standard error of a task's PU estimate w.r.t. its full-K value.

    Args:
      p: [n, 1 + k]; column 0 unperturbed.
      num_perturbations: K, the full budget.
      pooled: relative variance pooled over tasks (`pooled_relative_variance`), used while
        the task has fewer than 5 perturbations of its own; None = its own only.
    """
    k = p.shape[1] - 1
    if k >= num_perturbations:
        return 0.0
    m = _per_perturbation(p)
    if k < _OWN_VARIANCE_FROM and pooled is not None:
        variance = pooled * float(m.mean()) ** 2
    elif k >= 2:
        variance = float(np.var(m, ddof=1))
    else:
        return math.inf
    return float(math.sqrt((1.0 - k / num_perturbations) * variance / k))


def select_top(estimates: Mapping[str, float], num_select: int,
               labels: Mapping[str, str] | None = None,
               quota: Mapping[str, int] | None = None) -> list[str]:
    """The tasks with the highest estimates (ties by name), per label with a quota."""
    def top(names, m):
        return sorted(names, key=lambda t: (-estimates[t], t))[:m]
    if quota is None:
        return top(list(estimates), num_select)
    groups = collections.defaultdict(list)
    for name in estimates:
        groups[(labels or {}).get(name, "gen")].append(name)
    return [t for label, m in sorted(quota.items()) for t in top(groups[label], m)]


def _boundaries(estimates, labels, config) -> dict[str, float]:
    """Per group, the midpoint between the last selected and the first left-out estimate."""
    groups = collections.defaultdict(list)
    for name, value in estimates.items():
        groups[(labels or {}).get(name, "gen") if config.quota else None].append(value)
    out = {}
    for group, values in groups.items():
        m = config.quota.get(group, 0) if config.quota else config.num_select
        values = sorted(values, reverse=True)
        if m <= 0 or m >= len(values):
            out[group] = math.nan  # everything or nothing selected: no boundary
        else:
            out[group] = 0.5 * (values[m - 1] + values[m])
    return out


def run_policy(tasks: Sequence[str], num_perturbations: int, fetch: Fetch,
               config: AdaptiveConfig, labels: Mapping[str, str] | None = None
               ) -> AdaptiveResult:
    """Runs the adaptive policy (module docstring) over `tasks`.

    Args:
      tasks: task names.
      num_perturbations: K, the full budget.
      fetch: p values of perturbation ranges (see `Fetch`).
      config: the policy.
      labels: task -> label, for `config.quota`.

    Returns:
      The `AdaptiveResult`.
    """
    k0 = min(config.initial_perturbations, num_perturbations)
    p = {t: np.asarray(v, np.float64) for t, v in fetch({t: (0, k0 + 1) for t in tasks}).items()}
    rounds = 0
    while True:
        estimates = {t: prompt_uncertainty(p[t]) for t in tasks}
        bounds = _boundaries(estimates, labels, config)
        pooled = pooled_relative_variance(list(p.values()))
        requests = {}
        for t in tasks:
            k = p[t].shape[1] - 1
            bound = bounds[(labels or {}).get(t, "gen") if config.quota else None]
            if k >= num_perturbations or math.isnan(bound):
                continue
            if abs(estimates[t] - bound) <= config.z * standard_error(p[t], num_perturbations,
                                                                     pooled):
                requests[t] = (k + 1, min(num_perturbations, math.ceil(k * config.growth)) + 1)
        if not requests:
            break
        rounds += 1
        for t, extra in fetch(requests).items():
            p[t] = np.concatenate([p[t], np.asarray(extra, np.float64)], axis=1)
    rows = sum(v.size for v in p.values())
    full = sum(v.shape[0] * (1 + num_perturbations) for v in p.values())
    return AdaptiveResult(p=p, prompt_uncertainty=estimates,
                          selected=select_top(estimates, config.num_select, labels,
                                              config.quota),
                          rows_scored=rows, rows_full=full, rounds=rounds)


def read_prompt_probabilities(path: str) -> dict[str, np.ndarray]:
    """task -> p [n, 1 + K] from a `prompts.jsonl` (instances in first-seen order)."""
    cells: dict[str, dict[str, dict[int, float]]] = collections.defaultdict(dict)
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                cells[row["task"]].setdefault(str(row["instance"]), {})[
                    int(row["perturbation"])] = float(row["p"])
    out = {}
    for task, instances in cells.items():
        width = 1 + max(max(ks) for ks in instances.values())
        out[task] = np.asarray([[ks[k] for k in range(width)] for ks in instances.values()])
    return out


def replay_from_prompts(p_full: Mapping[str, np.ndarray], config: AdaptiveConfig,
                        labels: Mapping[str, str] | None = None
                        ) -> tuple[AdaptiveResult, list[str]]:
    """The policy replayed on saved p values (`read_prompt_probabilities`).

    Returns:
      (the adaptive result, the full-K selection with the same quota).
    """
    num_perturbations = min(v.shape[1] for v in p_full.values()) - 1

    def fetch(requests):
        return {t: p_full[t][:, lo:hi] for t, (lo, hi) in requests.items()}

    result = run_policy(sorted(p_full), num_perturbations, fetch, config, labels)
    exact = {t: prompt_uncertainty(v[:, :num_perturbations + 1]) for t, v in p_full.items()}
    return result, select_top(exact, config.num_select, labels, config.quota)


def score_adaptive(scorer: Any, builder: Any, tasks: Sequence[Any],
                   config: AdaptiveConfig) -> AdaptiveResult:
    """The policy live: plans each task's (1+K) prompts, decodes the originals, then scores
    only the perturbation ranges the policy asks for with `scorer` (a `RowScorer`).

    Args:
      scorer: a `RowScorer`.
      builder: the `PromptBuilder` of the run (its config's K is the full budget).
      tasks: data-layer tasks with instances.
      config: the policy.
    """
    plans = {task.name: builder.plan(i, task) for i, task in enumerate(tasks)}
    plans = {name: plan for name, plan in plans.items() if plan.instances}
    originals = [ids[0] for plan in plans.values() for ids in plan.source_ids]
    generated = iter(scorer.decode_async(originals).result())
    for plan in plans.values():
        for _ in plan.instances:
            text = builder.prediction_text(next(generated))
            plan.predictions.append(text)
            plan.target_ids.append(builder.encode_target(text))

    def fetch(requests):
        keys = [(t, i, k) for t, (lo, hi) in requests.items()
                for i in range(len(plans[t].instances)) for k in range(lo, hi)]
        rows = [(plans[t].source_ids[i][k], plans[t].target_ids[i]) for t, i, k in keys]
        logp, ntok, _ = scorer.score_async(rows).result()
        p = sequence_probability(logp, ntok)
        out, r = {}, 0
        for t, (lo, hi) in requests.items():
            n, width = len(plans[t].instances), hi - lo
            out[t] = p[r:r + n * width].reshape(n, width)
            r += n * width
        return out

    labels = {name: getattr(plan.task, "label", "gen") for name, plan in plans.items()}
    return run_policy(list(plans), builder.config.num_perturbations, fetch, config, labels)


def score_pool_adaptive(model: BaseModel, params, vocab, tasks, out_dir: str, config: Any,
                        policy: AdaptiveConfig, *, mesh=None,
                        run_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`score_pool` with the adaptive budget: the same output files (scores.jsonl with each
    task's `n_perturbations` = the perturbations it got, skipped.jsonl, Task Map, summary
    with the rows scored), single host, not resumable (a rerun recomputes everything).

    Args:
      model, params, vocab, tasks, out_dir, config, mesh, run_args: as `score_pool`
        (`config.save_prompts` and `compute_entropy` are not supported here).
      policy: the adaptive policy.

    Returns:
      The summary dict (also written to summary.json).

    Raises:
      UsageError: save_prompts or compute_entropy is set (`check_supported`).
      RunLockedError: another process is scoring into `out_dir`.
    """
    check_supported(config)
    mesh = mesh or partitioning.local_mesh({"data": -1, "fsdp": 1, "model": 1})
    args = {**(run_args or {}), **config.fingerprint_args(),
            "adaptive": dataclasses.asdict(policy)}
    check_prompts_render(vocab, config, model.decoder_only)
    with run_lock.hold(out_dir, "score"):  # one process per directory, as `score_pool`
        journal.prepare_run_dir(out_dir, args)
        return _score_and_write(model, params, vocab, tasks, out_dir, config, policy, mesh)


def _score_and_write(model, params, vocab, tasks, out_dir: str, config: Any,
                     policy: AdaptiveConfig, mesh) -> dict[str, Any]:
    """The body of `score_pool_adaptive`, holding the directory's lock."""
    scorer = RowScorer.from_config(model, params, mesh, config)
    builder = PromptBuilder(vocab, config, eos_id=scorer.eos_id)
    pool = list(enumerate(tasks))
    usable = [(i, t) for i, t in pool if not isinstance(t, SkippedTask) and t.instances]
    result = score_adaptive(scorer, builder, [t for _, t in usable], policy)
    records = []
    for index, task in usable:
        p = result.p[task.name]
        records.append({"index": index, "task": task.name,
                        "prompt_uncertainty": result.prompt_uncertainty[task.name],
                        "prediction_probability": float(p[:, 0].mean()),
                        "perplexity": float(np.mean(1.0 / p[:, 0])), "entropy": None,
                        "label": getattr(task, "label", "gen"), "n_instances": p.shape[0],
                        "n_perturbations": p.shape[1] - 1})
    scored = {i for i, _ in usable}
    skipped = [{"index": i, "task": t.name, "reason": getattr(t, "reason", "no instances")}
               for i, t in pool if i not in scored]
    for name, rows in ((layout.SCORES_FILE, records), (layout.SKIPPED_FILE, skipped)):
        with io_utils.atomic_open(os.path.join(out_dir, name)) as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return journal.finalize(out_dir, config, extra={
        "adaptive": {**dataclasses.asdict(policy), "rows_scored": result.rows_scored,
                     "rows_full": result.rows_full, "rounds": result.rounds,
                     "selected": result.selected},
        "score_padding": scorer.score_padding.as_dict(),
        "decode_padding": scorer.decode_padding.as_dict(),
        "num_compilations": scorer.num_compilations})
