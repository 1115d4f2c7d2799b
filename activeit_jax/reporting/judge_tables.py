"""Win / Tie / Lose / Error tables of a run's pairwise-judge files: per judge, one table per run
(seed) and the mean with its spread across seeds.

Each iteration directory may hold judge files (`layout.judge_file`): one of an unnamed judge
(shown as "judge") and one per named judge (`judge.JudgeConfig.name`, e.g. "gpt-4" and
"gpt-3.5-turbo"). A file compares the directory's model (strategy, iteration) with the
reference strategy's model at the same iteration, or at the iteration its name gives
("@iter_{j}": the fully trained model against every iteration of random).

The paper's Self-Instruct tables are one comparison of the 252 test instructions per row, so
each seed gets its own table (`Items` = the instructions judged). Across seeds a table gives
the mean and the sample standard deviation (ddof = 1) of each count and of the win rate, with
the number of seeds: never a sum over seeds, which would read like one run of five times the
size. The Error column counts the replies the judge's parser could not read; each of them is
a tie for the winner and the win rate ("unrelated reply = Equal") and is listed, raw text and
all, under the tables (the full text stays in the judge file, the judge's journal).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import numpy as np

from activeit_jax import layout
from activeit_jax.core import io_utils
from activeit_jax.loop import judge

UNNAMED = "judge"
HEADER = ("Strategy", "Seed", "Iteration", "Versus", "Items", "Win", "Tie", "Lose", "Error",
          "Win %")
SEED_HEADER = tuple(h for h in HEADER if h != "Seed")
MEAN_HEADER = ("Strategy", "Iteration", "Versus", "Seeds", "Items", "Win", "Tie", "Lose",
               "Error", "Win %")
UNPARSED_HEADER = ("Seed", "Strategy", "Iteration", "Versus", "Item", "Reply")
MAX_REPLY_CHARS = 300  # of a raw reply shown in the report (the judge file keeps it whole)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One judge file read back.

    Attributes:
      judge: the judge's label (`UNNAMED` for an unnamed judge).
      seed, strategy, iteration: the compared model (model A).
      reference, reference_iteration: the model it was compared with (model B).
      summary: the totals.
      unparsed: (item id, raw reply) of every reply the parser could not read.
    """
    judge: str
    seed: int
    strategy: str
    iteration: int
    reference: str
    reference_iteration: int
    summary: judge.JudgeSummary
    unparsed: tuple[tuple[str, str], ...] = ()

    @property
    def versus(self) -> str:
        """The reference, with its iteration where it is not the compared model's."""
        if self.reference_iteration == self.iteration:
            return self.reference
        return f"{self.reference} @ iter {self.reference_iteration}"


@dataclasses.dataclass(frozen=True)
class Section:
    """One table of the report: a title, a note under it, the header and the rows."""
    title: str
    note: str
    header: tuple[str, ...]
    rows: list[list[Any]]


def parse_file_name(name: str) -> tuple[str, str] | None:
    """(reference strategy, judge label) of a judge results file name, or None for another
    file."""
    parsed = layout.parse_judge_file(name)
    if parsed is None:
        return None
    reference, judge_name = parsed
    return reference, judge_name or UNNAMED


def read_comparisons(iterations: Iterable[Any]) -> list[Comparison]:
    """Reads every judge file of a run.

    Args:
      iterations: iteration directories with `.path`, `.strategy`, `.seed` and `.iteration`
        (`results.discover_run`), in report order.

    Returns:
      One `Comparison` per file, in the iterations' order, then by judge, reference and the
      reference's iteration.
    """
    found = []
    for it in iterations:
        here = []
        for name in os.listdir(it.path):
            parsed = parse_file_name(name)
            if parsed is None:
                continue
            reference, label = parsed
            at = layout.judge_reference_iteration(name)
            here.append((label, reference, it.iteration if at is None else at, name))
        # By judge, then reference and its iteration (a number: iter_10 after iter_2).
        for label, reference, at, name in sorted(here):
            records = io_utils.read_jsonl(os.path.join(it.path, name))
            unparsed = tuple((str(r["id"]), str(r.get("reply", "")))
                             for r in judge.unparsed_records(records))
            found.append(Comparison(label, it.seed, it.strategy, it.iteration, reference, at,
                                    judge.summarize(records), unparsed))
    return found


def _counts(summary: judge.JudgeSummary) -> list[Any]:
    return [summary.n, summary.win, summary.tie, summary.lose, summary.error,
            f"{100 * summary.win_rate:.1f}"]


def judge_tables(iterations: Iterable[Any]) -> dict[str, list[list[Any]]]:
    """{judge label: one row of `HEADER` per comparison (one seed each)}, labels sorted; no
    row sums seeds."""
    rows: dict[str, list[list[Any]]] = {}
    for c in read_comparisons(iterations):
        rows.setdefault(c.judge, []).append(
            [c.strategy, c.seed, c.iteration, c.versus, *_counts(c.summary)])
    return {label: rows[label] for label in sorted(rows)}


def _mean_sd(values: Sequence[float], digits: int) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"


def mean_rows(comparisons: Sequence[Comparison]) -> list[list[Any]]:
    """Rows of `MEAN_HEADER`: per (strategy, iteration, versus), the mean ± sample sd over
    seeds of each count and of the win rate (%), and the number of seeds."""
    groups: dict[tuple[str, int, str], list[judge.JudgeSummary]] = {}
    for c in comparisons:
        groups.setdefault((c.strategy, c.iteration, c.versus), []).append(c.summary)
    rows = []
    for (strategy, iteration, versus), parts in groups.items():
        cells: list[Any] = [strategy, iteration, versus, len(parts)]
        for field in ("n", "win", "tie", "lose", "error"):
            cells.append(_mean_sd([getattr(p, field) for p in parts], 1))
        cells.append(_mean_sd([100 * p.win_rate for p in parts], 1))
        rows.append(cells)
    return rows


def judge_sections(iterations: Iterable[Any]) -> list[Section]:
    """The report's judge tables: per judge, one table per seed, the mean over seeds (with
    two seeds or more) and the unparsed replies (when there are any).

    Args:
      iterations: as `read_comparisons`.

    Returns:
      The sections, judges sorted by label.
    """
    comparisons = read_comparisons(iterations)
    sections = []
    for label in sorted({c.judge for c in comparisons}):
        mine = [c for c in comparisons if c.judge == label]
        seeds = sorted({c.seed for c in mine})
        for seed in seeds:
            rows = [[c.strategy, c.iteration, c.versus, *_counts(c.summary)]
                    for c in mine if c.seed == seed]
            sections.append(Section(
                f"Pairwise judge: {label}, seed {seed} (strategy vs. reference)",
                "One run: each row judges the test items once (Items). Error: unparsed "
                "replies, counted as Equal in Win %.", SEED_HEADER, rows))
        if len(seeds) > 1:
            sections.append(Section(
                f"Pairwise judge: {label}, mean over {len(seeds)} seeds (strategy vs. "
                f"reference)",
                "Mean ± sample standard deviation across the seeds' tables (not a sum: each "
                "seed is one run).", MEAN_HEADER, mean_rows(mine)))
        unparsed = [[c.seed, c.strategy, c.iteration, c.versus, item, _clip(reply)]
                    for c in mine for item, reply in c.unparsed]
        if unparsed:
            sections.append(Section(
                f"Pairwise judge: {label}, unparsed replies (the Error column)",
                f"The judge's raw replies (first {MAX_REPLY_CHARS} characters; the judge "
                "files keep them whole).", UNPARSED_HEADER, unparsed))
    return sections


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REPLY_CHARS else text[:MAX_REPLY_CHARS] + "…"


def _md_cell(cell: Any) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def tables_markdown(sections: Sequence[Section]) -> str:
    """The sections as Markdown ("" when there are none)."""
    out = []
    for section in sections:
        out.append(f"## {section.title}\n")
        if section.note:
            out.append(f"{section.note}\n")
        out.append("| " + " | ".join(section.header) + " |")
        out.append("|" + "---|" * len(section.header))
        out += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |"
                for row in section.rows]
        out.append("")
    return "\n".join(out)
