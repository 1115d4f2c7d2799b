"""How sure a report is: spread over seeds, paired differences against random, verdicts.

Every figure the report aggregates over seeds is given as mean, sample standard deviation
(ddof = 1) and n (`summarize`). Each strategy is compared with `random` at the same iteration
by *paired* differences -- the paper's seeds draw the split (initial and validation tasks, so
the pool), and a strategy and random of the same seed start from the same tasks and are tested
on the same test tasks, so their difference cancels what the seed shares:

- seed mode (the two strategies share >= 2 seeds): one difference per seed, of the split's
  mean ROUGE-L over test tasks (per category: overall, classification, generative);
- task mode (one shared seed, e.g. the demo): one difference per test task of that seed,
  paired by task. Its interval covers the test-set noise of this one seed only: another seed
  would select other tasks, a spread this mode does not see.

For the mean difference two 95% intervals are computed:

- the t-interval, mean +- t(0.975, n - 1) sd / sqrt(n) (`t_interval`);
- a percentile bootstrap (`bootstrap_interval`): `BOOTSTRAP_RESAMPLES` resamples of the n
  differences with replacement, drawn by numpy's default_rng(`BOOTSTRAP_SEED`), the interval
  between the 2.5th and 97.5th percentiles of the resampled means (numpy's linear
  interpolation).

The verdict reads the t-interval: "better" when its lower end is above 0, "worse" when its upper
end is below 0, else "within noise" (an interval that touches 0 is within noise). Why t: with
the 3-5 seeds these runs have, the bootstrap is crude -- 3 differences have only 10 distinct
resampled means, and the percentile interval ignores that the sd itself is estimated from 3
values (it is about as wide as mean +- 1.6 sd / sqrt(3) where t asks 4.3), so it claims far
more than 95%. The t-interval is exact for normally distributed differences and keeps its
width honest for small n; the bootstrap is shown beside it as a distribution-free check, and
the two agree as n grows. The same rule holds in task mode (n = number of test tasks).

`paired_sample_size` turns an observed mean difference and paired sd into the number of seeds
(or test tasks) a two-sided paired t-test at level 0.05 needs for 80% power: the smallest n with
n >= ((t(0.975, n-1) + t(0.80, n-1)) sd / |d|)^2 (the normal-approximation formula
((1.96 + 0.84) sd / d)^2 with t quantiles, solved by iteration).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from activeit_jax import layout
from activeit_jax.loop import iteration_metrics
from activeit_jax.reporting import results

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
REFERENCE = "random"
POWER = 0.80
BETTER, WORSE, WITHIN_NOISE, NOT_ENOUGH = "better", "worse", "within noise", "n/a"
SEED_UNIT, TASK_UNIT = "seed", "task"
# Strategies not compared with random: fully_trained trains on every pool task, another budget.
NOT_COMPARED = ("fully_trained",)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof = 1; None for n < 2) and n of some values."""
    mean: float | None
    sd: float | None
    n: int


def summarize(values: Iterable[float | None]) -> Summary:
    """Mean, sample sd and n of the values that are not None.

    Args:
      values: e.g. one ROUGE-L per seed.

    Returns:
      The `Summary` (mean None when no value is given).
    """
    vals = np.asarray([float(v) for v in values if v is not None], np.float64)
    if vals.size == 0:
        return Summary(None, None, 0)
    sd = float(np.std(vals, ddof=1)) if vals.size > 1 else None
    return Summary(float(vals.mean()), sd, int(vals.size))


@dataclasses.dataclass(frozen=True)
class Interval:
    """A confidence interval [low, high] of a mean; method "t" or "bootstrap"."""
    low: float
    high: float
    method: str

    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile (scipy, a dependency of jax)."""
    from scipy import stats
    return float(stats.t.ppf(probability, dof))


def t_interval(diffs: Sequence[float], level: float = CONFIDENCE) -> Interval | None:
    """mean +- t((1 + level) / 2, n - 1) * sd / sqrt(n); None for fewer than 2 values.

    Args:
      diffs: the paired differences, shape [n].
      level: the confidence level.
    """
    d = np.asarray(diffs, np.float64)
    if d.size < 2:
        return None
    half = t_quantile((1.0 + level) / 2.0, d.size - 1) * float(np.std(d, ddof=1)) / math.sqrt(
        d.size)
    mean = float(d.mean())
    return Interval(mean - half, mean + half, "t")


def bootstrap_interval(diffs: Sequence[float], level: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                       ) -> Interval | None:
    """Percentile bootstrap of the mean; None for fewer than 2 values.

    Draws `resamples` x n indices at once with `np.random.default_rng(seed).integers(0, n)`,
    averages each resample and takes the (1 - level) / 2 and (1 + level) / 2 percentiles
    (numpy's default linear interpolation).

    Args:
      diffs: the paired differences, shape [n].
      level: the confidence level.
      resamples: number of resamples.
      seed: the rng seed (fixed: the same run gives the same report).
    """
    d = np.asarray(diffs, np.float64)
    if d.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    low, high = np.percentile(means, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return Interval(float(low), float(high), "bootstrap")


def verdict(interval: Interval | None) -> str:
    """"better" (interval above 0), "worse" (below 0), "within noise" (contains or touches 0),
    "n/a" (no interval)."""
    if interval is None:
        return NOT_ENOUGH
    if interval.low > 0.0:
        return BETTER
    if interval.high < 0.0:
        return WORSE
    return WITHIN_NOISE


def paired_sample_size(mean_diff: float | None, sd: float | None, level: float = CONFIDENCE,
                       power: float = POWER, limit: int = 100_000) -> int | None:
    """Pairs (seeds or tasks) a two-sided paired t-test needs to detect `mean_diff` with
    `power`, given the paired sd: the smallest n >= 2 with
    n >= ((t((1 + level) / 2, n - 1) + t(power, n - 1)) * sd / |mean_diff|)^2.

    Returns:
      n, or None when it is undefined (no sd, or a zero difference) or above `limit`.
    """
    if mean_diff is None or sd is None or mean_diff == 0.0 or not math.isfinite(sd):
        return None
    if sd == 0.0:
        return 2
    ratio = sd / abs(mean_diff)

    def enough(n: int) -> bool:
        return n >= ((t_quantile((1.0 + level) / 2.0, n - 1) + t_quantile(power, n - 1))
                     * ratio) ** 2

    # n - requirement(n) grows with n (the t quantiles shrink): bisect for the first n.
    if not enough(limit):
        return None
    low, high = 2, limit
    while low < high:
        mid = (low + high) // 2
        if enough(mid):
            high = mid
        else:
            low = mid + 1
    return low


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One strategy against the reference at one iteration, one split and one category.

    Attributes:
      split, strategy, iteration, category: the cell ("val"/"test"; "overall"/"cls"/"gen").
      reference: the strategy compared with (random).
      unit: "seed" (one difference per shared seed) or "task" (per test task of one seed).
      units: the seeds, or the task names, of the differences, in order.
      diffs: strategy minus reference, ROUGE-L points, one per unit.
      num_train_tasks: the training-set size label of the strategy's row.
      t: the t-interval; bootstrap: the percentile bootstrap (None for n < 2).
      verdict: from `t` (`verdict`).
    """
    split: str
    strategy: str
    iteration: int
    category: str
    reference: str
    unit: str
    units: tuple[Any, ...]
    diffs: tuple[float, ...]
    num_train_tasks: str
    t: Interval | None
    bootstrap: Interval | None
    verdict: str

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def summary(self) -> Summary:
        return summarize(self.diffs)

    def pairs_needed(self) -> int | None:
        """Seeds (seed mode) or test tasks (task mode) for 80% power at the observed
        difference and paired sd (`paired_sample_size`)."""
        s = self.summary
        return paired_sample_size(s.mean, s.sd)


def _compare(split: str, strategy: str, iteration: int, category: str, unit: str,
             pairs: Sequence[tuple[Any, float, float]], tasks_label: str) -> Comparison:
    diffs = tuple(float(a) - float(b) for _, a, b in pairs)
    t = t_interval(diffs)
    return Comparison(split, strategy, iteration, category, REFERENCE, unit,
                      tuple(u for u, _, _ in pairs), diffs, tasks_label, t,
                      bootstrap_interval(diffs), verdict(t))


def compare_to_reference(rows: Sequence[Any], per_task: Mapping[tuple, Mapping[str, Any]]
                         ) -> list[Comparison]:
    """Every strategy (but random and `NOT_COMPARED`) against random, per split, iteration
    >= 1 and category.

    Args:
      rows: `results.collect_results` rows (per-seed category means).
      per_task: (split, strategy, iteration, seed) -> {task: per-task record}, as
        `read_per_task_scores` returns; used in task mode.

    Returns:
      The comparisons in row order, categories in `results.CATEGORIES` order. Seed mode when the
      strategy and random share >= 2 seeds at that iteration, else task mode on their one
      shared seed (paired by task name; a category's tasks by the records' "label").
    """
    reference = {(r.split, r.iteration): r for r in rows if r.strategy == REFERENCE}
    out = []
    for row in rows:
        if row.iteration < 1 or row.strategy in (REFERENCE, *NOT_COMPARED):
            continue
        ref = reference.get((row.split, row.iteration))
        if ref is None:
            continue
        for category, _ in results.CATEGORIES:
            ours, theirs = row.values.get(category, {}), ref.values.get(category, {})
            seeds = sorted(s for s in ours if s in theirs and ours[s] is not None
                           and theirs[s] is not None)
            if len(seeds) >= 2:
                pairs = [(s, ours[s], theirs[s]) for s in seeds]
                out.append(_compare(row.split, row.strategy, row.iteration, category,
                                    SEED_UNIT, pairs, row.tasks_label()))
                continue
            shared = sorted(s for s in row.num_train_tasks if s in ref.num_train_tasks)
            if not shared:
                continue
            seed = shared[0]
            a = per_task.get((row.split, row.strategy, row.iteration, seed), {})
            b = per_task.get((row.split, REFERENCE, row.iteration, seed), {})
            pairs = [(name, a[name]["rouge_l"], b[name]["rouge_l"]) for name in sorted(a)
                     if name in b and (category == "overall"
                                       or a[name].get("label") == category)]
            if pairs:
                out.append(_compare(row.split, row.strategy, row.iteration, category,
                                    TASK_UNIT, pairs, row.tasks_label()))
    return out


def read_per_task_scores(iterations: Sequence[Any]) -> dict[tuple, dict[str, Any]]:
    """(split, strategy, iteration, seed) -> {task: per-task record} of every iteration that
    has per-task metrics (`iteration_metrics.read_per_task`; a missing file reads as none)."""
    out: dict[tuple, dict[str, Any]] = {}
    for it in iterations:
        for split, _ in results.SPLITS:
            records = iteration_metrics.read_per_task(it.path, split)
            if records:
                out[(split, it.strategy, it.iteration, it.seed)] = {
                    str(r["task"]): r for r in records}
    return out


# ----------------------------------------------------------------------------- text output


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _fmt_interval(interval: Interval | None) -> str:
    return "–" if interval is None else f"[{interval.low:+.2f}, {interval.high:+.2f}]"


COMPARISON_HEADER = ("Strategy", "Iteration", "#Tasks", "Category", "Paired by", "n",
                     "Mean difference ± sd", "95% CI (t)", "95% CI (bootstrap)", "Verdict",
                     "n for 80% power")


def comparison_cells(comparisons: Sequence[Comparison], split: str) -> list[list[str]]:
    """Text cells (`COMPARISON_HEADER`) of one split's comparisons."""
    titles = dict(results.CATEGORIES)
    body = []
    for c in comparisons:
        if c.split != split:
            continue
        s = c.summary
        needed = c.pairs_needed()
        spread = _fmt(s.mean, signed=True) + ("" if s.sd is None else f" ± {s.sd:.2f}")
        body.append([c.strategy, str(c.iteration), c.num_train_tasks,
                     titles.get(c.category, c.category),
                     "seed" if c.unit == SEED_UNIT else "test task (1 seed)", str(c.n),
                     spread, _fmt_interval(c.t), _fmt_interval(c.bootstrap), c.verdict,
                     "–" if needed is None else f"{needed} {c.unit}s"])
    return body


def method_note(comparisons: Sequence[Comparison]) -> str:
    """One paragraph saying how the intervals were made and which one the verdict reads."""
    units = sorted({c.unit for c in comparisons})
    parts = [f"Differences are the strategy's ROUGE-L minus {REFERENCE}'s at the same "
             "iteration, in points."]
    if SEED_UNIT in units:
        parts.append("Paired by seed: a seed draws the split, so both strategies start from "
                     "the same tasks and are tested on the same test tasks; one difference "
                     "per seed of the mean over test tasks.")
    if TASK_UNIT in units:
        parts.append("Paired by test task (one seed): one difference per test task; this "
                     "interval covers the test-set noise of this seed only, not the spread "
                     "between seeds (another seed selects other tasks).")
    parts.append(f"95% intervals of the mean difference: t (mean ± t(0.975, n−1)·sd/√n) and "
                 f"percentile bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples, "
                 f"numpy default_rng({BOOTSTRAP_SEED})). The verdict reads the t-interval: "
                 "better / worse when it excludes 0 above / below, within noise when it "
                 "contains or touches 0. With a few seeds the bootstrap is too narrow (3 "
                 "differences give only 10 distinct resampled means and their spread "
                 "ignores that the sd is itself estimated), so it is shown as a check only. "
                 "n for 80% power: seeds (or test tasks) a paired t-test at 0.05 would need "
                 "to detect the observed difference given its paired sd, "
                 "the smallest n ≥ ((t(0.975, n−1) + t(0.8, n−1))·sd/|d|)².")
    return " ".join(parts)


def comparisons_markdown(comparisons: Sequence[Comparison]) -> str:
    """Markdown: per split a table of strategy vs random, then the method note."""
    parts = []
    for split, title in results.SPLITS:
        body = comparison_cells(comparisons, split)
        if not body:
            continue
        parts.append(f"## {title}: each strategy vs {REFERENCE} (paired)\n")
        parts.append("| " + " | ".join(COMPARISON_HEADER) + " |")
        parts.append("|" + "|".join(["---"] * 5 + ["---:"] * 4 + ["---", "---:"]) + "|")
        parts += ["| " + " | ".join(cells) + " |" for cells in body]
        parts.append("")
    if not parts:
        return ""
    parts.append(method_note(comparisons) + "\n")
    return "\n".join(parts)


COMPARISON_CSV_HEADER = (
    "split", "strategy", "iteration", "num_train_tasks", "category", "reference", "unit", "n",
    "mean_diff", "sd_diff", "t_low", "t_high", "bootstrap_low", "bootstrap_high", "verdict",
    "pairs_needed_80pct_power", "units", "diffs")


def comparisons_csv(comparisons: Sequence[Comparison]) -> str:
    """Every comparison as CSV (full precision; `units` / `diffs` joined by ';')."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COMPARISON_CSV_HEADER)
    num = results.csv_number
    for c in comparisons:
        s = c.summary
        needed = c.pairs_needed()
        writer.writerow([
            c.split, c.strategy, c.iteration, c.num_train_tasks, c.category, c.reference,
            c.unit, c.n, num(s.mean), num(s.sd),
            num(c.t.low if c.t else None), num(c.t.high if c.t else None),
            num(c.bootstrap.low if c.bootstrap else None),
            num(c.bootstrap.high if c.bootstrap else None), c.verdict,
            "" if needed is None else needed, ";".join(map(str, c.units)),
            ";".join(repr(d) for d in c.diffs)])
    return buffer.getvalue()


def add_comparison_columns(results_csv: str, comparisons: Sequence[Comparison]) -> str:
    """`results.csv` with, per category, the difference vs random, its 95% t-interval and the
    verdict appended to each row ({category}_diff_vs_random, {category}_ci_low,
    {category}_ci_high, {category}_verdict; empty where the row has no comparison), and the
    pairing unit (`ci_unit`: seed / task)."""
    rows = list(csv.reader(io.StringIO(results_csv)))
    if not rows:
        return results_csv
    header, body = rows[0], rows[1:]
    index = {name: k for k, name in enumerate(header)}
    by_key = {(c.split, c.strategy, str(c.iteration), c.category): c for c in comparisons}
    extra_header = ["ci_unit"]
    for category, _ in results.CATEGORIES:
        extra_header += [f"{category}_diff_vs_{REFERENCE}", f"{category}_ci_low",
                         f"{category}_ci_high", f"{category}_verdict"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header + extra_header)
    for line in body:
        key = (line[index["split"]], line[index["strategy"]], line[index["iteration"]])
        cells, unit = [], ""
        for category, _ in results.CATEGORIES:
            c = by_key.get((*key, category))
            if c is None:
                cells += ["", "", "", ""]
                continue
            unit = c.unit
            cells += [repr(float(c.summary.mean)), "" if c.t is None else repr(c.t.low),
                      "" if c.t is None else repr(c.t.high), c.verdict]
        writer.writerow(line + [unit] + cells)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- per-task scores


PER_TASK_CSV_HEADER = ("split", "task", "label", "strategy", "iteration", "num_train_tasks",
                       "seed", "rouge_l", "exact_match", "n_instances")


def per_task_csv(iterations: Sequence[Any], per_task: Mapping[tuple, Mapping[str, Any]]
                 ) -> str:
    """Every per-task test (and validation) score of every model: one line per split, task,
    strategy, iteration and seed -- a file to sort and filter (which tasks move)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_TASK_CSV_HEADER)
    sizes = {(it.strategy, it.iteration, it.seed): it.num_train_tasks for it in iterations}
    for (split, strategy, iteration, seed), records in sorted(
            per_task.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3])):
        for name in sorted(records):
            r = records[name]
            size = sizes.get((strategy, iteration, seed))
            writer.writerow([split, name, r.get("label", ""), strategy, iteration,
                             "" if size is None else size, seed, repr(float(r["rouge_l"])),
                             "" if r.get("exact_match") is None
                             else repr(float(r["exact_match"])),
                             "" if r.get("n_instances") is None else r["n_instances"]])
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class TaskTable:
    """Per-task mean ROUGE-L (over seeds) at one iteration, for the report.

    Attributes:
      split, iteration: the cell.
      header: column titles.
      rows: one per task: [task, label, iteration-0 mean, a mean per strategy, a difference
        vs random per compared strategy], sorted by the first difference (largest gain first).
    """
    split: str
    iteration: int
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def task_table(per_task: Mapping[tuple, Mapping[str, Any]], strategies: Sequence[str],
               split: str = "test") -> TaskTable | None:
    """Which test tasks move: every task's mean ROUGE-L over seeds at the last iteration that
    random and another strategy both reached, next to iteration 0 and the difference of each
    strategy vs random; None when there is no such iteration."""
    compared = [s for s in strategies if s not in (results.INITIAL, REFERENCE, *NOT_COMPARED)]
    reached = {(s, i) for (sp, s, i, _) in per_task if sp == split}
    common = [i for (s, i) in reached if s == REFERENCE and i >= 1
              and any((c, i) in reached for c in compared)]
    if not common:
        return None
    iteration = max(common)
    shown = [REFERENCE] + [s for s in compared if (s, iteration) in reached]

    def means(strategy: str, it: int) -> dict[str, tuple[float, str]]:
        values: dict[str, list[float]] = {}
        labels: dict[str, str] = {}
        for (sp, s, i, _), records in per_task.items():
            if sp == split and s == strategy and i == it:
                for name, r in records.items():
                    values.setdefault(name, []).append(float(r["rouge_l"]))
                    labels[name] = str(r.get("label", ""))
        return {name: (float(np.mean(v)), labels[name]) for name, v in values.items()}

    columns = {s: means(s, iteration) for s in shown}
    zero = means(results.INITIAL, 0)
    names = sorted(set().union(*[set(c) for c in columns.values()]))
    diffs = [s for s in shown if s != REFERENCE]
    lines = []
    for name in names:
        ref = columns[REFERENCE].get(name)
        label = next((c[name][1] for c in columns.values() if name in c), "")
        cells = [name, label, _fmt(zero[name][0]) if name in zero else "–"]
        cells += [_fmt(columns[s][name][0]) if name in columns[s] else "–" for s in shown]
        delta = [columns[s][name][0] - ref[0] if (ref and name in columns[s]) else None
                 for s in diffs]
        cells += [_fmt(d, signed=True) for d in delta]
        lines.append((delta[0] if delta and delta[0] is not None else -math.inf, cells))
    lines.sort(key=lambda x: (-x[0], x[1][0]))
    header = (("Task", "Label", "Iteration 0") + tuple(shown)
              + tuple(f"{s} − {REFERENCE}" for s in diffs))
    return TaskTable(split, iteration, header, tuple(tuple(c) for _, c in lines))


def task_table_markdown(table: TaskTable | None) -> str:
    """The per-task table as Markdown (empty string for None)."""
    if table is None:
        return ""
    n_seeds_note = "mean over seeds"
    parts = [f"## Per test task at iteration {table.iteration} (ROUGE-L, {n_seeds_note}; "
             f"sorted by the first difference; every seed in {layout.PER_TASK_SCORES_CSV})\n",
             "| " + " | ".join(table.header) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(table.header) - 2)) + "|"]
    parts += ["| " + " | ".join(cells) + " |" for cells in table.rows]
    return "\n".join(parts) + "\n"
