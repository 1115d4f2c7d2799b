"""An active-loop run directory read back: per-task metrics, iterations, results tables.

Run directory layout (what the active loop writes and this module reads)::

    RUN/
      seed_{s}/                         one per seed (s = 0, 1, ...)
        iter_0/                         iteration 0, shared by every strategy of seed s
          selected_tasks.json           the initial random task set
          per_task_metrics.jsonl        per-task evaluation of this iteration's model
          metrics_val.json              derived from per_task_metrics.jsonl (split "val")
          metrics_test.json             derived from per_task_metrics.jsonl (split "test")
          scores.jsonl                  this model's scores of the remaining pool (optional)
          task_map.png                  Task Map of those scores (optional)
        {strategy}/                     e.g. prompt_uncertainty, random, fully_trained
          iter_{i}/                     i = 1, 2, ...: same files as iter_0, where
                                        selected_tasks.json holds the tasks ADDED at iteration
                                        i, chosen from the previous iteration's scores.jsonl
                                        (iter_{i-1} of the same strategy, or seed_{s}/iter_0
                                        for i = 1)
            judge_vs_{other}[.{judge}].jsonl
                                        optional pairwise judge results, one file per judge
                                        (activeit_jax/judge.py, judge_tables.py)
      report/                           written by `activeit-jax report` (never read back)

- `selected_tasks.json`: `selection.Selection.to_json()` (an object with a "tasks" list); a
  bare JSON list of names is accepted too. The model of iteration i is trained on the union of
  the selected tasks of iterations 0..i; its size is the "number of training tasks".
- `per_task_metrics.jsonl`: one line per (split, task):
  `{"split": "val"|"test", "task": str, "label": "cls"|"gen", "rouge_l": float,
  "exact_match": float (optional), "n_instances": int (optional)}` with metrics in percent
  (0..100). A repeated (split, task) keeps its last line.
- `metrics_{split}.json` is *defined* as `derive_split_metrics` of that split's per-task lines:
  for "overall", "cls" and "gen", the unweighted mean over tasks of the per-task metric, and
  the number of tasks (`write_derived_metrics` writes it). The report's table is computed from
  the per-task files; a stored metrics file that disagrees is listed as a warning.

Report outputs (`write_report`): results.md, results.csv (rows: strategy x iteration / number of
training tasks, for each split; columns: Overall / Classification / Generative ROUGE-L per seed,
mean and sample std (ddof=1, empty for one seed)), curves.png / curves.svg (ROUGE-L vs number
of training tasks, mean line and +-std band per strategy; `fully_trained` as a dashed horizontal
line), selected_uncertainty.png (mean prompt uncertainty of each iteration's selected tasks,
mean +- std over seeds), report.html (everything above with images as base64 data URIs).
With judge files, results.md and report.html add one Win / Tie / Lose table per judge
(`activeit_jax.reporting.judge_tables`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from activeit_jax.core import io_utils, records
from activeit_jax.data import prepared
from activeit_jax.data.errors import DataError
from activeit_jax.loop import selection

log = logging.getLogger(__name__)

__all__ = [
    'INITIAL', 'SPLITS', 'CATEGORIES', 'PER_TASK_FILE', 'SELECTED_FILE', 'SCORES_FILE',
    'TASK_MAP_FILE', 'REPORT_DIR', 'METRIC_KEYS', 'read_per_task', 'derive_split_metrics',
    'write_derived_metrics', 'IterationDir', 'label_sources', 'strategy_order',
    'discover_run', 'ResultRow', 'collect_results', 'results_markdown', 'results_csv',
]
INITIAL = "initial"  # the "strategy" name of the shared iteration 0
SPLITS: tuple[tuple[str, str], ...] = (("val", "Validation"), ("test", "Test"))
CATEGORIES: tuple[tuple[str, str], ...] = (("overall", "Overall"), ("cls", "Classification"),
                                           ("gen", "Generative"))
PER_TASK_FILE = "per_task_metrics.jsonl"
SELECTED_FILE = "selected_tasks.json"
SCORES_FILE = "scores.jsonl"
TASK_MAP_FILE = "task_map.png"
REPORT_DIR = "report"
METRIC_KEYS = ("rouge_l", "exact_match")
_SEED_RE = re.compile(r"^seed_(\d+)$")
_ITER_RE = re.compile(r"^iter_(\d+)$")


# ----------------------------------------------------------------------------- metrics files


def read_per_task(iter_dir: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """The per-task lines of one split (last line wins for a repeated task), by task name."""
    by_task: dict[str, dict[str, Any]] = {}
    for record in io_utils.read_jsonl(os.path.join(iter_dir, PER_TASK_FILE)):
        if record.get("split") == split:
            by_task[str(record["task"])] = record
    return [by_task[name] for name in sorted(by_task)]


def derive_split_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `metrics_{split}.json` content of one split's per-task records.

    Args:
      records: per-task lines of one split ("task", "label", "rouge_l", optional
        "exact_match").

    Returns:
      {"n_tasks": N, "overall"|"cls"|"gen": {"rouge_l": mean or None, "exact_match": mean or
      None, "n_tasks": n}}: unweighted means over tasks; None where a category has no task
      (or, for exact_match, where a task lacks it).
    """
    out: dict[str, Any] = {"n_tasks": len(records)}
    for category, _ in CATEGORIES:
        members = [r for r in records if category == "overall" or r.get("label") == category]
        entry: dict[str, Any] = {"n_tasks": len(members)}
        for key in METRIC_KEYS:
            values = [r.get(key) for r in members]
            entry[key] = (float(np.mean([float(v) for v in values]))
                          if members and all(v is not None for v in values) else None)
        out[category] = entry
    return out


def write_derived_metrics(iter_dir: str | os.PathLike) -> list[str]:
    """Writes `metrics_{split}.json` for each split found in `per_task_metrics.jsonl`.

    Returns:
      The paths written.
    """
    written = []
    records = io_utils.read_jsonl(os.path.join(iter_dir, PER_TASK_FILE))
    for split in sorted({str(r["split"]) for r in records}):
        metrics = {"split": split, **derive_split_metrics(read_per_task(iter_dir, split))}
        path = os.path.join(iter_dir, f"metrics_{split}.json")
        io_utils.atomic_write_json(path, metrics)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- run discovery


@dataclasses.dataclass(frozen=True)
class IterationDir:
    """One trained model of a run.

    Attributes:
      seed: run seed.
      strategy: strategy name, or `INITIAL` for the shared iteration 0.
      iteration: 0 for `INITIAL`, else >= 1.
      path: the iteration directory.
      selected: tasks added at this iteration (None when selected_tasks.json is missing).
      num_train_tasks: size of the union of selected tasks of iterations 0..i (None when any
        of them is missing).
      selection_scores: path of the scores.jsonl the selection was made from (None for
        iteration 0).
    """
    seed: int
    strategy: str
    iteration: int
    path: str
    selected: tuple[str, ...] | None
    num_train_tasks: int | None
    selection_scores: str | None


def _numbered(directory: str, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(directory):
        match = pattern.match(name)
        if match and os.path.isdir(os.path.join(directory, name)):
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def label_sources(run_dir: str | os.PathLike) -> dict[int, dict[str, int]]:
    """{seed: {"rule": n, "override": m, ...}}: where each seed's task labels came from, read
    from the prepared split's summary (`RUN/seed_{s}/data/splits.json`)."""
    return {seed: prepared.stored_label_source_counts(os.path.join(path, "data"))
            for seed, path in _numbered(os.fspath(run_dir), _SEED_RE)
            if os.path.exists(os.path.join(path, "data", prepared.SPLITS_FILE))}


def _read_selected(path: str) -> tuple[str, ...] | None:
    file = os.path.join(path, SELECTED_FILE)
    return tuple(selection.read_task_list(file)) if os.path.exists(file) else None


def strategy_order(strategies: Iterable[str]) -> list[str]:
    """Display order: initial, random, the others alphabetically, fully_trained last."""
    def key(name: str) -> tuple[int, str]:
        rank = {INITIAL: 0, "random": 1, "fully_trained": 3}.get(name, 2)
        return (rank, name)
    return sorted(set(strategies), key=key)


def discover_run(run_dir: str | os.PathLike) -> list[IterationDir]:
    """Finds every iteration directory of a run (layout in the module docstring).

    Returns:
      The iterations, ordered by strategy (`strategy_order`), seed, iteration.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise DataError("run directory not found", run_dir)
    found: list[IterationDir] = []
    for seed, seed_dir in _numbered(run_dir, _SEED_RE):
        iter0 = os.path.join(seed_dir, "iter_0")
        initial = _read_selected(iter0) if os.path.isdir(iter0) else None
        if os.path.isdir(iter0):
            found.append(IterationDir(seed, INITIAL, 0, iter0, initial,
                                      None if initial is None else len(set(initial)), None))
        for name in sorted(os.listdir(seed_dir)):
            strategy_dir = os.path.join(seed_dir, name)
            if _ITER_RE.match(name) or not os.path.isdir(strategy_dir):
                continue
            union: set[str] | None = None if initial is None else set(initial)
            previous = iter0
            expected = 1
            for iteration, path in _numbered(strategy_dir, _ITER_RE):
                if iteration == 0:
                    log.warning("ignoring %s: iteration 0 is shared at %s", path, iter0)
                    continue
                selected = _read_selected(path)
                if iteration != expected or selected is None:
                    union = None  # a gap: the training-set size is unknown from here on
                if union is not None and selected is not None:
                    union |= set(selected)
                found.append(IterationDir(seed, name, iteration, path, selected,
                                          None if union is None else len(union),
                                          os.path.join(previous, SCORES_FILE)))
                previous, expected = path, iteration + 1
    order = {name: k for k, name in enumerate(strategy_order(d.strategy for d in found))}
    return sorted(found, key=lambda d: (order[d.strategy], d.seed, d.iteration))


# ----------------------------------------------------------------------------- results table


@dataclasses.dataclass
class ResultRow:
    """One row of the results table: a strategy at an iteration, on one split.

    Attributes:
      split: "val" or "test".
      strategy: strategy name (`INITIAL` for iteration 0).
      iteration: iteration number.
      num_train_tasks: seed -> number of training tasks.
      values: category ("overall", "cls", "gen") -> seed -> mean per-task ROUGE-L.
    """
    split: str
    strategy: str
    iteration: int
    num_train_tasks: dict[int, int | None] = dataclasses.field(default_factory=dict)
    values: dict[str, dict[int, float | None]] = dataclasses.field(default_factory=dict)

    def stats(self, category: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std (ddof=1; None for one seed), number of seeds) of a category."""
        vals = [v for v in self.values.get(category, {}).values() if v is not None]
        if not vals:
            return None, None, 0
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        return float(np.mean(vals)), std, len(vals)

    def tasks_label(self) -> str:
        counts = sorted({n for n in self.num_train_tasks.values() if n is not None})
        if not counts:
            return ""
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def collect_results(iterations: Sequence[IterationDir], warnings: list[str] | None = None
                    ) -> list[ResultRow]:
    """Builds the table rows from the per-task files of each iteration.

    Args:
      iterations: from `discover_run`.
      warnings: if given, receives a line per missing per-task file and per stored
        `metrics_{split}.json` that disagrees with the per-task file.

    Returns:
      Rows for each split, strategy and iteration that has per-task metrics for some seed.
    """
    rows: dict[tuple[str, str, int], ResultRow] = {}
    for it in iterations:
        if not os.path.exists(os.path.join(it.path, PER_TASK_FILE)):
            if warnings is not None:
                warnings.append(f"{it.path}: no {PER_TASK_FILE}")
            continue
        for split, _ in SPLITS:
            records = read_per_task(it.path, split)
            if not records:
                continue
            derived = derive_split_metrics(records)
            row = rows.setdefault((split, it.strategy, it.iteration),
                                  ResultRow(split, it.strategy, it.iteration))
            row.num_train_tasks[it.seed] = it.num_train_tasks
            for category, _ in CATEGORIES:
                row.values.setdefault(category, {})[it.seed] = derived[category]["rouge_l"]
            if warnings is not None:
                warnings.extend(_check_stored(it.path, split, derived))
    order = {name: k for k, name in enumerate(strategy_order(k[1] for k in rows))}
    split_order = {name: k for k, (name, _) in enumerate(SPLITS)}
    return [rows[k] for k in sorted(rows, key=lambda k: (split_order[k[0]], order[k[1]], k[2]))]


def _check_stored(path: str, split: str, derived: Mapping[str, Any]) -> list[str]:
    stored_path = os.path.join(path, f"metrics_{split}.json")
    if not os.path.exists(stored_path):
        return []
    stored = records.read_json(stored_path, "metrics file")
    problems = []
    for category, _ in CATEGORIES:
        a = (stored.get(category) or {}).get("rouge_l")
        b = derived[category]["rouge_l"]
        if (a is None) != (b is None) or (a is not None and not math.isclose(
                float(a), b, rel_tol=1e-9, abs_tol=1e-9)):
            problems.append(f"{stored_path}: {category} rouge_l {a} differs from the per-task "
                            f"mean {b}")
    return problems


def seeds_of(rows: Sequence[ResultRow]) -> list[int]:
    return sorted({s for r in rows for vals in r.values.values() for s in vals})


def categories_of(rows: Sequence[ResultRow]) -> list[tuple[str, str]]:
    """Categories with at least one value (Classification is absent for Self-Instruct)."""
    return [(c, title) for c, title in CATEGORIES
            if any(v is not None for r in rows for v in r.values.get(c, {}).values())]


def fmt_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def table_cells(rows: Sequence[ResultRow], split: str) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of one split's table (shared by Markdown and HTML)."""
    seeds, categories = seeds_of(rows), categories_of(rows)
    header = ["Strategy", "Iteration", "#Tasks", "n seeds"]
    for _, title in categories:
        header += [f"{title} seed {s}" for s in seeds] + [f"{title} mean ± std"]
    body = []
    for row in rows:
        if row.split != split:
            continue
        cells = [row.strategy, str(row.iteration), row.tasks_label(),
                 str(row.stats("overall")[2])]
        for category, _ in categories:
            cells += [fmt_value(row.values.get(category, {}).get(s)) for s in seeds]
            mean, std, _ = row.stats(category)
            cells.append(fmt_mean_std(mean, std))
        body.append(cells)
    return header, body


def results_markdown(rows: Sequence[ResultRow]) -> str:
    """The results table as Markdown: one table per split, ROUGE-L (2 decimals)."""
    parts = []
    for split, title in SPLITS:
        header, body = table_cells(rows, split)
        if not body:
            continue
        parts.append(f"## {title} ROUGE-L\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
        parts += ["| " + " | ".join(cells) + " |" for cells in body]
        parts.append("")
    return "\n".join(parts) if parts else "No per-task metrics found.\n"


def results_csv(rows: Sequence[ResultRow]) -> str:
    """The results table as CSV, full float precision (`repr`), empty cells for missing values.

    Columns: split, strategy, iteration, num_train_tasks, n_seeds, then for each category
    (overall, cls, gen): {category}_seed{s} for each seed, {category}_mean, {category}_std.
    """
    seeds = seeds_of(rows)
    header = ["split", "strategy", "iteration", "num_train_tasks", "n_seeds"]
    for category, _ in CATEGORIES:
        header += [f"{category}_seed{s}" for s in seeds] + [f"{category}_mean", f"{category}_std"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)

    def num(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    for row in rows:
        _, _, n_seeds = row.stats("overall")
        line: list[Any] = [row.split, row.strategy, row.iteration, row.tasks_label(), n_seeds]
        for category, _ in CATEGORIES:
            line += [num(row.values.get(category, {}).get(s)) for s in seeds]
            mean, std, _ = row.stats(category)
            line += [num(mean), num(std)]
        writer.writerow(line)
    return buffer.getvalue()
