"""Results tables, learning curves and a self-contained HTML report of an active-loop run.

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
(`activeit_jax.judge_tables`).
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import logging
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from activeit_jax import io_utils, judge_tables, selection
from activeit_jax.data.errors import DataError

log = logging.getLogger(__name__)

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
    from activeit_jax.data import prepared
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
    from activeit_jax import records
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


def _seeds(rows: Sequence[ResultRow]) -> list[int]:
    return sorted({s for r in rows for vals in r.values.values() for s in vals})


def _categories(rows: Sequence[ResultRow]) -> list[tuple[str, str]]:
    """Categories with at least one value (Classification is absent for Self-Instruct)."""
    return [(c, title) for c, title in CATEGORIES
            if any(v is not None for r in rows for v in r.values.get(c, {}).values())]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _table_cells(rows: Sequence[ResultRow], split: str) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of one split's table (shared by Markdown and HTML)."""
    seeds, categories = _seeds(rows), _categories(rows)
    header = ["Strategy", "Iteration", "#Tasks"]
    for _, title in categories:
        header += [f"{title} seed {s}" for s in seeds] + [f"{title} mean ± std"]
    body = []
    for row in rows:
        if row.split != split:
            continue
        cells = [row.strategy, str(row.iteration), row.tasks_label()]
        for category, _ in categories:
            cells += [_fmt(row.values.get(category, {}).get(s)) for s in seeds]
            mean, std, _ = row.stats(category)
            cells.append(_fmt_mean_std(mean, std))
        body.append(cells)
    return header, body


def results_markdown(rows: Sequence[ResultRow]) -> str:
    """The results table as Markdown: one table per split, ROUGE-L (2 decimals)."""
    parts = []
    for split, title in SPLITS:
        header, body = _table_cells(rows, split)
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
    seeds = _seeds(rows)
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


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # pyplot-free: no global backend state
    return Figure(figsize=(width, height))


def _save(fig, fmt: str) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "activeit-jax"}):
        fig.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight", metadata=metadata)
    return buffer.getvalue()


def _colors(strategies: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    return {name: cmap(k % 10) for k, name in enumerate(strategies)}


def _curve_points(rows: Sequence[ResultRow], split: str, strategy: str,
                  category: str) -> list[tuple[float, float, float | None]]:
    """(mean number of training tasks, mean ROUGE-L, std) per iteration, iteration 0 first."""
    points = []
    for row in rows:
        if row.split != split or row.strategy not in (strategy, INITIAL):
            continue
        mean, std, _ = row.stats(category)
        sizes = [n for n in row.num_train_tasks.values() if n is not None]
        if mean is None or not sizes:
            continue
        points.append((row.iteration, float(np.mean(sizes)), mean, std))
    return [(x, y, s) for _, x, y, s in sorted(points)]


def plot_learning_curves(rows: Sequence[ResultRow], colors: Mapping[str, Any] | None = None
                         ) -> tuple[bytes, bytes]:
    """ROUGE-L vs number of training tasks: a panel per (split, category).

    Args:
      rows: from `collect_results`.
      colors: strategy -> matplotlib color (default: tab10 in `strategy_order`).

    Returns:
      (PNG bytes, SVG bytes).
    """
    splits = [(s, t) for s, t in SPLITS if any(r.split == s for r in rows)]
    categories = _categories(rows)
    strategies = [s for s in strategy_order(r.strategy for r in rows) if s != INITIAL]
    if not splits or not categories:
        return _placeholder("no per-task metrics found")
    colors = colors or _colors(strategies)
    fig = _figure(4.2 * len(categories), 3.4 * len(splits))
    axes = fig.subplots(len(splits), len(categories), squeeze=False)
    for i, (split, split_title) in enumerate(splits):
        for j, (category, title) in enumerate(categories):
            ax = axes[i][j]
            for strategy in strategies:
                points = _curve_points(rows, split, strategy, category)
                if not points:
                    continue
                xs = np.array([p[0] for p in points])
                ys = np.array([p[1] for p in points])
                sd = np.array([0.0 if p[2] is None else p[2] for p in points])
                if strategy == "fully_trained":
                    y, s = ys[-1], sd[-1]
                    ax.axhline(y, color=colors[strategy], linestyle="--", label=strategy)
                    if s > 0:
                        ax.axhspan(y - s, y + s, color=colors[strategy], alpha=0.12)
                    continue
                ax.plot(xs, ys, marker="o", markersize=3, color=colors[strategy],
                        label=strategy)
                if np.any(sd > 0):
                    ax.fill_between(xs, ys - sd, ys + sd, color=colors[strategy], alpha=0.18)
            ax.set_title(f"{split_title}: {title}", fontsize=10)
            ax.set_xlabel("number of training tasks")
            ax.set_ylabel("ROUGE-L")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5),
                   bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, "png"), _save(fig, "svg")


def _placeholder(text: str) -> tuple[bytes, bytes]:
    fig = _figure(5, 2)
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return _save(fig, "png"), _save(fig, "svg")


def _load_scores(path: str | None, cache: dict[str, dict[str, dict[str, Any]]]
                 ) -> dict[str, dict[str, Any]]:
    if path is None or not os.path.exists(path):
        return {}
    if path not in cache:
        from activeit_jax import records
        cache[path] = {r["task"]: r for r in records.read_score_records(path,
                                                                        allow_nonfinite=True)}
    return cache[path]


def selected_uncertainty(iterations: Sequence[IterationDir],
                         cache: dict[str, dict[str, dict[str, Any]]] | None = None
                         ) -> dict[str, dict[int, dict[int, float]]]:
    """Mean prompt uncertainty of the tasks selected at each iteration (the paper's Figure 2).

    Each selected task is looked up in the scores.jsonl the selection was made from; tasks
    without a (finite) score there are left out of the mean.

    Returns:
      strategy -> iteration -> seed -> mean prompt uncertainty.
    """
    cache = {} if cache is None else cache
    out: dict[str, dict[int, dict[int, float]]] = {}
    for it in iterations:
        if it.strategy == INITIAL or not it.selected:
            continue
        scores = _load_scores(it.selection_scores, cache)
        values = [float(scores[t][selection.PU_KEY]) for t in it.selected
                  if t in scores and scores[t].get(selection.PU_KEY) is not None]
        values = [v for v in values if math.isfinite(v)]
        if values:
            out.setdefault(it.strategy, {}).setdefault(it.iteration, {})[it.seed] = \
                float(np.mean(values))
    return out


def plot_selected_uncertainty(data: Mapping[str, Mapping[int, Mapping[int, float]]],
                              colors: Mapping[str, Any] | None = None) -> bytes:
    """Line plot of `selected_uncertainty` (mean over seeds, +-std error bars); PNG bytes."""
    from matplotlib.ticker import MaxNLocator
    if not data:
        return _placeholder("no selection scores found")[0]
    strategies = strategy_order(data)
    colors = colors or _colors(strategies)
    fig = _figure(6, 3.8)
    ax = fig.subplots()
    for strategy in strategies:
        iterations = sorted(data[strategy])
        means = [float(np.mean(list(data[strategy][i].values()))) for i in iterations]
        stds = [float(np.std(list(data[strategy][i].values()), ddof=1))
                if len(data[strategy][i]) > 1 else 0.0 for i in iterations]
        ax.errorbar(iterations, means, yerr=stds, marker="o", markersize=3, capsize=3,
                    color=colors[strategy], label=strategy)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean prompt uncertainty of selected tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, "png")


# ----------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;
color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}
details{margin:0.3em 0}summary{cursor:pointer}
.warn{color:#a33}
"""


def _html_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    lines = ["<table>", f"<tr>{head}</tr>"]
    for cells in body:
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                     + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _score_cell(record: Mapping[str, Any] | None, key: str) -> str:
    if not record or record.get(key) is None:
        return "–"
    value = record[key]
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def render_html(run_dir: str, iterations: Sequence[IterationDir], rows: Sequence[ResultRow],
                curves_png: bytes, uncertainty_png: bytes, warnings: Sequence[str],
                max_listed: int = 300) -> str:
    """The self-contained report page (inline CSS, images as data URIs, no external links).

    Args:
      run_dir: shown in the title.
      iterations, rows: from `discover_run` and `collect_results`.
      curves_png, uncertainty_png: the plots.
      warnings: lines shown in a "Warnings" section.
      max_listed: most tasks listed per iteration (the rest are counted).

    Returns:
      The HTML text.
    """
    title = f"activeit-jax report: {os.path.basename(os.path.abspath(run_dir))}"
    strategies = strategy_order(it.strategy for it in iterations)
    seeds = sorted({it.seed for it in iterations})
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f"<p>Seeds: {html.escape(', '.join(map(str, seeds)) or '–')}. Strategies: "
           f"{html.escape(', '.join(strategies) or '–')}.</p>"]
    sources = label_sources(run_dir)
    if sources:
        out.append("<p>Task labels (classification / generative) by source: " + html.escape(
            "; ".join(f"seed {seed}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                      for seed, counts in sources.items())) + ".</p>")
    out.append("<h2>Results (ROUGE-L, mean over tasks)</h2>")
    for split, split_title in SPLITS:
        header, body = _table_cells(rows, split)
        if body:
            out.append(f"<h3>{html.escape(split_title)}</h3>")
            out.append(_html_table(header, body))
    if not rows:
        out.append("<p>No per-task metrics found.</p>")
    out.append("<h2>Learning curves</h2>")
    out.append(_img(curves_png, "ROUGE-L vs number of training tasks"))
    out.append("<h2>Prompt uncertainty of the selected tasks</h2>")
    out.append(_img(uncertainty_png, "mean prompt uncertainty of selected tasks per iteration"))
    for label, judge_rows in judge_tables.judge_tables(iterations).items():
        out.append(f"<h2>Pairwise judge: {html.escape(label)} (strategy vs. reference)</h2>")
        out.append(_html_table(list(judge_tables.HEADER), judge_rows))
    out.append("<h2>Iterations</h2>")
    cache: dict[str, dict[str, dict[str, Any]]] = {}
    score_keys = (selection.PU_KEY, selection.PROB_KEY, selection.PPL_KEY, "entropy",
                  selection.CATEGORY_KEY, "label")
    for strategy in strategies:
        out.append(f"<h3>{html.escape(strategy)}</h3>")
        for it in iterations:
            if it.strategy != strategy:
                continue
            n_sel = "?" if it.selected is None else str(len(it.selected))
            out.append(f"<details><summary>seed {it.seed}, iteration {it.iteration}: "
                       f"{n_sel} task(s) selected, {it.num_train_tasks or '?'} training "
                       f"task(s)</summary>")
            task_map = os.path.join(it.path, TASK_MAP_FILE)
            if os.path.exists(task_map):
                with open(task_map, "rb") as handle:
                    out.append("<p>Task Map of this model's scores of the remaining pool:</p>")
                    out.append(_img(handle.read(), f"task map seed {it.seed} {strategy} "
                                                   f"iteration {it.iteration}"))
            if it.selected:
                scores = _load_scores(it.selection_scores, cache)
                body = [[name] + [_score_cell(scores.get(name), k) for k in score_keys]
                        for name in it.selected[:max_listed]]
                out.append(_html_table(["Selected task", "PU", "Probability", "Perplexity",
                                        "Entropy", "Category", "Label"], body))
                if len(it.selected) > max_listed:
                    out.append(f"<p>... and {len(it.selected) - max_listed} more.</p>")
            out.append("</details>")
    if warnings:
        out.append("<h2>Warnings</h2><ul>")
        out += [f'<li class="warn">{html.escape(w)}</li>' for w in warnings]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- entry


REPORT_FILES = ("results.md", "results.csv", "curves.png", "curves.svg",
                "selected_uncertainty.png", "report.html")


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
                 ) -> dict[str, str]:
    """Writes every report file of a run, each atomically.

    Args:
      run_dir: the run directory (layout in the module docstring).
      out_dir: where to write; default RUN/report.

    Returns:
      File name (`REPORT_FILES`) -> path written.

    Raises:
      DataError: `run_dir` is missing or holds no iteration of a run.
    """
    run_dir = os.fspath(run_dir)
    out_dir = os.fspath(out_dir) if out_dir is not None else os.path.join(run_dir, REPORT_DIR)
    iterations = discover_run(run_dir)
    if not iterations:  # a typo'd path must not get an empty report that looks like a result
        raise DataError("not a run directory: no seed_<s>/iter_<i>/ inside (the layout "
                        "`activeit-jax run` writes)", run_dir)
    warnings: list[str] = []
    rows = collect_results(iterations, warnings)
    for line in warnings:
        log.warning("%s", line)
    colors = _colors([s for s in strategy_order(it.strategy for it in iterations)
                      if s != INITIAL])  # one color per strategy across figures
    curves_png, curves_svg = plot_learning_curves(rows, colors)
    uncertainty_png = plot_selected_uncertainty(selected_uncertainty(iterations), colors)
    judge_markdown = judge_tables.tables_markdown(judge_tables.judge_tables(iterations))
    judge_markdown = "\n" + judge_markdown if judge_markdown else ""
    contents: dict[str, str | bytes] = {
        "results.md": "# Results\n\n" + results_markdown(rows) + judge_markdown,
        "results.csv": results_csv(rows),
        "curves.png": curves_png,
        "curves.svg": curves_svg,
        "selected_uncertainty.png": uncertainty_png,
        "report.html": render_html(run_dir, iterations, rows, curves_png, uncertainty_png,
                                   warnings),
    }
    paths = {}
    for name in REPORT_FILES:
        path = os.path.join(out_dir, name)
        data = contents[name]
        if isinstance(data, bytes):
            with io_utils.atomic_open(path, "wb") as handle:
                handle.write(data)
        else:
            io_utils.atomic_write_text(path, data)
        paths[name] = path
    return paths
