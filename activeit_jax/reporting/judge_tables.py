"""Win / Tie / Lose tables of a run's pairwise-judge files: one table per judge.

Each iteration directory may hold judge files (`layout.judge_file`): one of an unnamed judge
(shown as "judge") and one per named judge (`judge.JudgeConfig.name`, e.g. "gpt-4" and
"gpt-3.5-turbo").
A table has one row per (strategy, seed, iteration, reference) and, when several seeds were
judged, one "all" row per (strategy, iteration, reference) with the counts summed over seeds.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from activeit_jax import layout
from activeit_jax.loop import judge

UNNAMED = "judge"
HEADER = ("Strategy", "Seed", "Iteration", "Versus", "Win", "Tie", "Lose", "Win %")


def parse_file_name(name: str) -> tuple[str, str] | None:
    """(reference strategy, judge label) of a judge results file name, or None for another
    file."""
    parsed = layout.parse_judge_file(name)
    if parsed is None:
        return None
    reference, judge_name = parsed
    return reference, judge_name or UNNAMED


def _row(strategy: str, seed: Any, iteration: int, reference: str,
         summary: judge.JudgeSummary) -> list[Any]:
    return [strategy, seed, iteration, reference, summary.win, summary.tie, summary.lose,
            f"{100 * summary.win_rate:.1f}"]


def judge_tables(iterations: Iterable[Any]) -> dict[str, list[list[Any]]]:
    """Reads every judge file of a run.

    Args:
      iterations: iteration directories with `.path`, `.strategy`, `.seed` and `.iteration`
        (`results.discover_run`).

    Returns:
      {judge label: rows of `HEADER`}, labels sorted; per-seed rows in the iterations' order,
      then the summed "all" rows.
    """
    rows: dict[str, list[list[Any]]] = {}
    totals: dict[str, dict[tuple[str, int, str], list[judge.JudgeSummary]]] = {}
    for it in iterations:
        for name in sorted(os.listdir(it.path)):
            parsed = parse_file_name(name)
            if parsed is None:
                continue
            reference, label = parsed
            summary = judge.summarize_results(os.path.join(it.path, name))
            rows.setdefault(label, []).append(_row(it.strategy, it.seed, it.iteration,
                                                   reference, summary))
            key = (it.strategy, it.iteration, reference)
            totals.setdefault(label, {}).setdefault(key, []).append(summary)
    for label, groups in totals.items():
        for (strategy, iteration, reference), parts in groups.items():
            if len(parts) > 1:
                summed = judge.JudgeSummary(win=sum(p.win for p in parts),
                                            tie=sum(p.tie for p in parts),
                                            lose=sum(p.lose for p in parts))
                rows[label].append(_row(strategy, "all", iteration, reference, summed))
    return {label: rows[label] for label in sorted(rows)}


def tables_markdown(tables: dict[str, Sequence[Sequence[Any]]]) -> str:
    """The tables as Markdown sections ("" when there are none)."""
    out = []
    for label, rows in tables.items():
        out.append(f"## Pairwise judge: {label} (strategy vs. reference)\n")
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "---|" * len(HEADER))
        out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)
