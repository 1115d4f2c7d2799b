"""Compile one program for a target and read what it needs: memory, work, collectives, time.

Per device (the numbers of the SPMD-partitioned executable):

- memory (`compiled.memory_analysis()`): arguments, outputs, temporaries and generated code;
  outputs aliased to donated arguments (the train state) are counted once. Their sum is the
  HBM the program needs, compared with the chip's (`targets.CHIPS`);
- work (`compiled.cost_analysis()`): FLOPs and bytes accessed, as XLA counts them (every loop
  body once), and scaled by the loop weights `hlo.count` reads from the optimized HLO (the
  microbatch loop, decoding steps, scanned layers);
- collectives in the optimized HLO: count and bytes per kind;
- a roofline time: the larger of FLOPs / peak bf16 FLOP/s and bytes / HBM bandwidth, the
  time the chip needs at best (no overlap loss, no collective time).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from activeit_jax import partitioning
from activeit_jax.aot import hlo
from activeit_jax.aot.programs import Program
from activeit_jax.aot.targets import Chip


@dataclasses.dataclass
class ProgramReport:
    """What compiling one program found (bytes, FLOPs and seconds per device)."""
    program: str
    shape: dict[str, int]
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int
    xla_flops: float
    xla_bytes_accessed: float
    flops: float
    bytes_accessed: float
    collectives: dict[str, dict[str, float]]
    loops: list[dict[str, Any]]
    roofline_seconds: float
    bound: str
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        """HBM the program needs: arguments + outputs not aliased to them + temporaries +
        code."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(total_bytes=self.total_bytes, fits=self.fits)
        return out


def compile_program(program: Program, mesh: Any) -> tuple[Any, float]:
    """Lowers and compiles `program` on `mesh` (under its rules); (executable, seconds)."""
    start = time.perf_counter()
    with partitioning.mesh_context(mesh, program.rules):
        compiled = program.fn.lower(*program.args).compile()
    return compiled, time.perf_counter() - start


def analyse(program: Program, compiled: Any, chip: Chip, compile_seconds: float = 0.0
            ) -> ProgramReport:
    """The `ProgramReport` of a compiled program on `chip`."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older jax: one dict per executable
        cost = cost[0] if cost else {}
    counts = hlo.count(compiled.as_text(), program.loop_bounds.get("decode", 1))
    xla_flops = float(cost.get("flops", 0.0))
    xla_bytes = float(cost.get("bytes accessed", 0.0))
    flops = xla_flops * _ratio(counts.flops, counts.flops_once)
    moved = xla_bytes * _ratio(counts.bytes, counts.bytes_once)
    compute_s, memory_s = flops / chip.peak_flops, moved / chip.hbm_bandwidth
    return ProgramReport(
        program=program.name, shape=dict(program.shape),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes), hbm_bytes=int(chip.hbm_bytes),
        xla_flops=xla_flops, xla_bytes_accessed=xla_bytes, flops=flops, bytes_accessed=moved,
        collectives=counts.collectives,
        loops=[{"trips": loop.trips, "known": loop.known} for loop in counts.loops],
        roofline_seconds=max(compute_s, memory_s),
        bound="compute" if compute_s >= memory_s else "memory",
        compile_seconds=compile_seconds)


def _ratio(weighted: float, once: float) -> float:
    return weighted / once if once > 0 else 1.0


def compile_and_analyse(program: Program, mesh: Any, chip: Chip) -> ProgramReport:
    """`compile_program` then `analyse`."""
    compiled, seconds = compile_program(program, mesh)
    return analyse(program, compiled, chip, seconds)
