"""An active-loop run directory read back: per-task metrics, iterations, results tables.

The run directory's names and layout are `activeit_jax.layout`'s; the per-task metrics contract
and the per-split means are `activeit_jax.loop.iteration_metrics`'s. Read back here:

- every iteration directory of every seed and strategy (`discover_run`), with the tasks it
  selected (`selection.Selection.to_json()`, an object with a "tasks" list; a bare JSON list of
  names is accepted too). The model of iteration i is trained on the union of the selected
  tasks of iterations 0..i; its size is the "number of training tasks". Iteration i >= 1 of a
  strategy selected from the scores of the iteration before it (iteration 0 for i = 1).
- the results table, computed from the per-task files; a stored per-split means file that
  disagrees is listed as a warning.

The report (`reporting.render`) draws and renders what this module reads.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from activeit_jax import layout
from activeit_jax.core import records
from activeit_jax.data import labels, prepared
from activeit_jax.data.errors import DataError
from activeit_jax.loop import iteration_metrics, selection
from activeit_jax.loop.iteration_metrics import derive_split_metrics, read_per_task

log = logging.getLogger(__name__)

__all__ = [
    'INITIAL', 'SPLITS', 'CATEGORIES', 'IterationDir', 'label_sources', 'label_source_line',
    'strategy_order',
    'discover_run', 'ResultRow', 'collect_results', 'categories_of', 'table_cells',
    'results_markdown', 'results_csv',
]
INITIAL = "initial"  # the "strategy" name of the shared iteration 0
_TITLES = {"val": "Validation", "test": "Test", "overall": "Overall", "cls": "Classification",
           "gen": "Generative"}
# (name, title) of the loop's evaluation splits and task categories, in table order.
SPLITS: tuple[tuple[str, str], ...] = tuple((s, _TITLES[s]) for s in iteration_metrics.SPLITS)
CATEGORIES: tuple[tuple[str, str], ...] = tuple((c, _TITLES[c])
                                                for c in iteration_metrics.CATEGORIES)


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


def _numbered(directory: str, parse: Callable[[str], int | None]) -> list[tuple[int, str]]:
    """(number, path) of the subdirectories whose name `parse` reads a number from, sorted."""
    found = []
    for name in os.listdir(directory):
        number = parse(name)
        if number is not None and os.path.isdir(os.path.join(directory, name)):
            found.append((number, os.path.join(directory, name)))
    return sorted(found)


def label_sources(run_dir: str | os.PathLike) -> dict[int, dict[str, int]]:
    """{seed: {"rule": n, "override": m, ...}}: where each seed's task labels came from, read
    from the summary of the seed's prepared split."""
    run_dir = os.fspath(run_dir)
    return {seed: prepared.stored_label_source_counts(layout.data_dir(run_dir, seed))
            for seed, _ in _numbered(run_dir, layout.parse_seed_name)
            if os.path.exists(os.path.join(layout.data_dir(run_dir, seed), layout.SPLITS_FILE))}


def label_source_line(run_dir: str | os.PathLike) -> str:
    """One line, for the top of every report, naming where the task labels came from: per
    source the number of tasks, and the label file's path and hash (every seed alike, or seed
    by seed); "" for a run without a prepared split."""
    run_dir = os.fspath(run_dir)
    texts: dict[int, str] = {}
    for seed, counts in label_sources(run_dir).items():
        file = prepared.stored_label_file(layout.data_dir(run_dir, seed)) or {}
        parts = [f"{n} from the {labels.LABEL_SOURCE_WORDS.get(k, k)}"
                 for k, n in counts.items()]
        where = ""
        if file.get("path"):
            where = f"; label file {file['path']} (sha256 {str(file.get('sha256'))[:12]})"
            if file.get("metric_labels"):
                where += (f", its CLS_GEN groups the scores of {file['metric_labels']} tasks "
                          f"({file.get('disagree', '?')} of them against DefHasLabel)")
        elif "override" not in counts:
            where = "; label_source: rule (activeit_jax/data/labels.py)"
        texts[seed] = ", ".join(parts) + where
    if not texts:
        return ""
    if len(set(texts.values())) == 1:
        return f"Task labels (cls / gen): {next(iter(texts.values()))} (every seed)."
    return "Task labels (cls / gen): " + "; ".join(f"seed {s}: {t}"
                                                    for s, t in texts.items()) + "."


def _read_selected(path: str) -> tuple[str, ...] | None:
    file = os.path.join(path, layout.SELECTED_FILE)
    return tuple(selection.read_task_list(file)) if os.path.exists(file) else None


def strategy_order(strategies: Iterable[str]) -> list[str]:
    """Display order: initial, random, the others alphabetically, fully_trained last."""
    def key(name: str) -> tuple[int, str]:
        rank = {INITIAL: 0, "random": 1, "fully_trained": 3}.get(name, 2)
        return (rank, name)
    return sorted(set(strategies), key=key)


def discover_run(run_dir: str | os.PathLike) -> list[IterationDir]:
    """Finds every iteration directory of a run (`activeit_jax.layout`).

    Returns:
      The iterations, ordered by strategy (`strategy_order`), seed, iteration.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise DataError("run directory not found", run_dir)
    found: list[IterationDir] = []
    for seed, seed_dir in _numbered(run_dir, layout.parse_seed_name):
        iter0 = layout.iteration_dir(run_dir, seed, None, 0)
        initial = _read_selected(iter0) if os.path.isdir(iter0) else None
        if os.path.isdir(iter0):
            found.append(IterationDir(seed, INITIAL, 0, iter0, initial,
                                      None if initial is None else len(set(initial)), None))
        for name in sorted(os.listdir(seed_dir)):
            strategy_dir = os.path.join(seed_dir, name)
            if layout.parse_iteration_name(name) is not None or not os.path.isdir(strategy_dir):
                continue
            union: set[str] | None = None if initial is None else set(initial)
            previous = iter0
            expected = 1
            for iteration, path in _numbered(strategy_dir, layout.parse_iteration_name):
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
                                          os.path.join(previous, layout.SCORES_FILE)))
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
        per-split means file that disagrees with the per-task file.

    Returns:
      Rows for each split, strategy and iteration that has per-task metrics for some seed.
    """
    rows: dict[tuple[str, str, int], ResultRow] = {}
    for it in iterations:
        if not os.path.exists(os.path.join(it.path, layout.PER_TASK_FILE)):
            if warnings is not None:
                warnings.append(f"{it.path}: no {layout.PER_TASK_FILE}")
            continue
        for split, _ in SPLITS:
            records = read_per_task(it.path, split, warnings)
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
    stored_path = layout.metrics_file(path, split)
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


def _seeds_of(rows: Sequence[ResultRow]) -> list[int]:
    return sorted({s for r in rows for vals in r.values.values() for s in vals})


def categories_of(rows: Sequence[ResultRow]) -> list[tuple[str, str]]:
    """(name, title) of the categories with at least one value (Classification is absent for
    Self-Instruct), for the tables here and the plots of `render`."""
    return [(c, title) for c, title in CATEGORIES
            if any(v is not None for r in rows for v in r.values.get(c, {}).values())]


def _fmt_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def table_cells(rows: Sequence[ResultRow], split: str) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of one split's table (shared by the Markdown here and the HTML
    of `render`)."""
    seeds, categories = _seeds_of(rows), categories_of(rows)
    header = ["Strategy", "Iteration", "#Tasks"]
    for _, title in categories:
        header += [f"{title} seed {s}" for s in seeds] + [f"{title} mean ± std"]
    body = []
    for row in rows:
        if row.split != split:
            continue
        cells = [row.strategy, str(row.iteration), row.tasks_label()]
        for category, _ in categories:
            cells += [_fmt_value(row.values.get(category, {}).get(s)) for s in seeds]
            mean, std, _ = row.stats(category)
            cells.append(_fmt_mean_std(mean, std))
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
    seeds = _seeds_of(rows)
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
