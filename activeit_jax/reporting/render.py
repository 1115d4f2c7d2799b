"""Learning curves, uncertainty plots and a self-contained HTML report of an active-loop run.

`activeit_jax.reporting.results` reads the run directory back into iterations and results
tables; this module draws and renders them into the report directory (`write_report`; names in
`activeit_jax.layout`): the results table as Markdown and as CSV (rows: strategy x iteration /
number of training tasks, for each split; columns: Overall / Classification / Generative
ROUGE-L per seed, mean and sample std (ddof=1, empty for one seed)), the learning curves as PNG
and SVG (ROUGE-L vs number of training tasks, mean line and +-std band per strategy;
`fully_trained` as a dashed horizontal line), the mean prompt uncertainty of each iteration's
selected tasks (mean +- std over seeds; the paper's Figure 2) and one self-contained HTML page
with everything (images as base64 data URIs). With judge files, the Markdown and the HTML add,
per judge, a Win / Tie / Lose / Error table per seed and their mean ± sd across seeds
(`activeit_jax.reporting.judge_tables`).

Every report also says how sure it is and what it measured: results.md and report.html open
with the model, its checkpoint, the pool, the prompt format and the main settings
(`activeit_jax.reporting.provenance`), and compare each strategy with random at each iteration
by paired differences with 95% intervals and a verdict (`activeit_jax.reporting.statistics`;
also in results.csv's last columns and, in full, comparisons.csv), and list every test task's
score (per_task_scores.csv: one line per task, model and seed; the HTML and Markdown show the
last common iteration, sorted by the difference).
"""
from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from activeit_jax import layout
from activeit_jax.core import io_utils, records
from activeit_jax.data.errors import DataError
from activeit_jax.loop import selection
from activeit_jax.reporting import judge_tables, provenance, statistics
from activeit_jax.reporting.results import (
    INITIAL,
    SPLITS,
    IterationDir,
    ResultRow,
    categories_of,
    collect_results,
    discover_run,
    label_source_line,
    results_csv,
    results_markdown,
    strategy_order,
    table_cells,
)

log = logging.getLogger(__name__)


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
    categories = categories_of(rows)
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
                max_listed: int = 300,
                measured: Sequence[tuple[str, str]] = (),
                comparisons: Sequence[statistics.Comparison] = (),
                task_table: statistics.TaskTable | None = None) -> str:
    """The self-contained report page (inline CSS, images as data URIs, no external links).

    Args:
      run_dir: shown in the title.
      iterations, rows: from `discover_run` and `collect_results`.
      curves_png, uncertainty_png: the plots.
      warnings: lines shown in a "Warnings" section.
      max_listed: most tasks listed per iteration (the rest are counted).
      measured: `provenance.describe_run` rows (model, checkpoint, pool, prompt, settings).
      comparisons: `statistics.compare_to_reference` (each strategy vs random, paired).
      task_table: `statistics.task_table` (per-task test scores at the last iteration).

    Returns:
      The HTML text.
    """
    title = f"activeit-jax report: {os.path.basename(os.path.abspath(run_dir))}"
    strategies = strategy_order(it.strategy for it in iterations)
    seeds = sorted({it.seed for it in iterations})
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f"<p>{html.escape(label_source_line(run_dir) or 'Task labels: no prepared split.')}"
           "</p>",
           f"<p>Seeds: {html.escape(', '.join(map(str, seeds)) or '–')}. Strategies: "
           f"{html.escape(', '.join(strategies) or '–')}.</p>"]
    if measured:
        out.append(provenance.provenance_html(measured))
    out += _results_html(rows, comparisons)
    out.append("<h2>Learning curves</h2>")
    out.append(_img(curves_png, "ROUGE-L vs number of training tasks"))
    out.append("<p>Line: mean over seeds; band: ± one sample standard deviation over seeds "
               "(no band with one seed).</p>")
    if task_table is not None:
        out.append(f"<h2>Per test task at iteration {task_table.iteration} (which tasks "
                   "move)</h2>")
        out.append("<p>ROUGE-L per test task, mean over seeds, sorted by the first "
                   "difference (largest gain first); every seed and iteration in "
                   f"{layout.PER_TASK_SCORES_CSV}.</p>")
        out.append(_html_table(task_table.header, task_table.rows))
    out.append("<h2>Prompt uncertainty of the selected tasks</h2>")
    out.append(_img(uncertainty_png, "mean prompt uncertainty of selected tasks per iteration"))
    for section in judge_tables.judge_sections(iterations):
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        out.append(f"<p>{html.escape(section.note)}</p>")
        out.append(_html_table(section.header, section.rows))
    out += _iterations_html(iterations, strategies, max_listed)
    if warnings:
        out.append("<h2>Warnings</h2><ul>")
        out += [f'<li class="warn">{html.escape(w)}</li>' for w in warnings]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _results_html(rows: Sequence[ResultRow],
                  comparisons: Sequence[statistics.Comparison]) -> list[str]:
    """The results tables per split, then each strategy against random (paired)."""
    out = ["<h2>Results (ROUGE-L, mean over tasks)</h2>"]
    out.append("<p>Per seed: the mean ROUGE-L over the split's tasks; mean ± std: over seeds "
               "(sample standard deviation, ddof = 1; none for one seed), n seeds per row."
               "</p>")
    for split, split_title in SPLITS:
        header, body = table_cells(rows, split)
        if body:
            out.append(f"<h3>{html.escape(split_title)}</h3>")
            out.append(_html_table(header, body))
    if not rows:
        out.append("<p>No per-task metrics found.</p>")
    for split, split_title in SPLITS:
        body = statistics.comparison_cells(comparisons, split)
        if body:
            out.append(f"<h2>{html.escape(split_title)}: each strategy vs "
                       f"{statistics.REFERENCE} (paired)</h2>")
            out.append(_html_table(statistics.COMPARISON_HEADER, body))
    if comparisons:
        out.append(f"<p>{html.escape(statistics.method_note(comparisons))}</p>")
    return out


def _iterations_html(iterations: Sequence[IterationDir], strategies: Sequence[str],
                     max_listed: int) -> list[str]:
    """One folded section per iteration: its Task Map and its selected tasks' scores."""
    out = ["<h2>Iterations</h2>"]
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
            task_map = os.path.join(it.path, layout.TASK_MAP_FILE)
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
    return out


# ----------------------------------------------------------------------------- entry


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
                 ) -> dict[str, str]:
    """Writes every report file of a run, each atomically.

    Args:
      run_dir: the run directory (`activeit_jax.layout`).
      out_dir: where to write; default the run's report directory.

    Returns:
      File name (`layout.REPORT_FILES`) -> path written.

    Raises:
      DataError: `run_dir` is missing or holds no iteration of a run.
    """
    run_dir = os.fspath(run_dir)
    out_dir = (os.fspath(out_dir) if out_dir is not None
               else os.path.join(run_dir, layout.REPORT_DIR))
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
    judge_markdown = judge_tables.tables_markdown(judge_tables.judge_sections(iterations))
    labels_line = label_source_line(run_dir)
    labels_line = labels_line + "\n\n" if labels_line else ""
    judge_markdown = "\n" + judge_markdown if judge_markdown else ""
    per_task = statistics.read_per_task_scores(iterations)
    comparisons = statistics.compare_to_reference(rows, per_task)
    task_table = statistics.task_table(per_task, strategy_order(it.strategy for it in iterations))
    measured = provenance.describe_run(run_dir, iterations)
    markdown = "\n".join(part for part in (
        provenance.provenance_markdown(measured), results_markdown(rows),
        statistics.comparisons_markdown(comparisons),
        statistics.task_table_markdown(task_table)) if part)
    contents: dict[str, str | bytes] = {
        layout.RESULTS_MD: "# Results\n\n" + labels_line + markdown + judge_markdown,
        layout.RESULTS_CSV: statistics.add_comparison_columns(results_csv(rows), comparisons),
        layout.COMPARISONS_CSV: statistics.comparisons_csv(comparisons),
        layout.PER_TASK_SCORES_CSV: statistics.per_task_csv(iterations, per_task),
        layout.CURVES_PNG: curves_png,
        layout.CURVES_SVG: curves_svg,
        layout.SELECTED_UNCERTAINTY_PNG: uncertainty_png,
        layout.REPORT_HTML: render_html(run_dir, iterations, rows, curves_png, uncertainty_png,
                                        warnings, measured=measured, comparisons=comparisons,
                                        task_table=task_table),
    }
    paths = {}
    for name in layout.REPORT_FILES:
        path = os.path.join(out_dir, name)
        data = contents[name]
        if isinstance(data, bytes):
            with io_utils.atomic_open(path, "wb") as handle:
                handle.write(data)
        else:
            io_utils.atomic_write_text(path, data)
        paths[name] = path
    return paths
