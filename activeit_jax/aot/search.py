"""Where a program does not fit: the largest batch that does, or the smallest slice, found by
compiling (a bounded bisection; every probe is a real compilation for the target)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from activeit_jax.aot.analysis import ProgramReport, compile_and_analyse
from activeit_jax.aot.programs import Program
from activeit_jax.aot.targets import Target


@dataclasses.dataclass
class Advice:
    """What fits instead.

    Attributes:
      rows: the largest row count found to fit (None: not even the smallest).
      report: that program's report.
      chips: the smallest chip count of the same generation found to fit at the configured
        rows (None: not searched, or none up to the bound).
      probes: [(rows or chips, fits)] in the order compiled.
    """
    rows: int | None = None
    report: ProgramReport | None = None
    chips: int | None = None
    probes: list[tuple[str, int, bool]] = dataclasses.field(default_factory=list)


def largest_rows(program: Program, mesh: Any, target: Target, max_compiles: int = 5,
                 progress: Callable[[str], None] = lambda _: None) -> Advice:
    """Bisects the row count over multiples of `program.rows_step` below the configured rows.

    Args:
      program: a program that does not fit (its `resize` rebuilds it at other rows).
      mesh: the target's mesh.
      target: the target (its chip's HBM).
      max_compiles: the most compilations.
      progress: called with a line per compilation.
    """
    advice = Advice()
    if program.resize is None:
        return advice
    step = max(program.rows_step, 1)
    low, high = 0, program.shape["rows"] // step  # fits at low * step (0: unknown), not high
    for _ in range(max_compiles):
        if high - low <= 1:
            break
        mid = (low + high) // 2 if low else 1
        rows = mid * step
        progress(f"  {program.name}: trying {rows} rows")
        report = compile_and_analyse(program.resize(rows), mesh, target.chip)
        advice.probes.append(("rows", rows, report.fits))
        if report.fits:
            low, advice.rows, advice.report = mid, rows, report
        else:
            high = mid
    return advice


def smallest_slice(build: Callable[[Target], tuple[Program, Any]], target: Target,
                   max_compiles: int = 3, progress: Callable[[str], None] = lambda _: None
                   ) -> tuple[int | None, list[tuple[str, int, bool]]]:
    """Doubles the chips of `target`'s generation until the program fits (bounded).

    Args:
      build: target -> (program at the configured rows, its mesh).
      target: the target that was too small.
      max_compiles: the most compilations (slices tried: 2x, 4x, ... the chips).
      progress: called with a line per compilation.

    Returns:
      (the chip count that fits, or None; the probes).
    """
    probes = []
    chips = target.num_chips
    for _ in range(max_compiles):
        chips *= 2
        bigger = target.with_chips(chips)
        progress(f"  trying {bigger.topology} ({chips} chips)")
        try:
            program, mesh = build(bigger)
        except ValueError:  # the mesh sizes do not divide this slice (a UsageError)
            continue
        report = compile_and_analyse(program, mesh, bigger.chip)
        probes.append(("chips", chips, report.fits))
        if report.fits:
            return chips, probes
    return None, probes
