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

A program too big for the chip does not compile: the TPU compiler stops with
RESOURCE_EXHAUSTED ("the total memory required for HLO temporaries (29.42G) exceeds available
HBM (15.75G)"). That is a verdict, not an error: the report then carries the compiler's message
and its two figures, and no work or time.
"""
from __future__ import annotations

import dataclasses
import re
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
    out_of_memory: str | None = None
    required_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """HBM the program needs: arguments + outputs not aliased to them + temporaries +
        code (out of memory: what the compiler said was required)."""
        if self.out_of_memory is not None:
            return self.required_bytes
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def fits(self) -> bool:
        return self.out_of_memory is None and self.total_bytes <= self.hbm_bytes

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


_SIZE = re.compile(r"([0-9.]+)([KMGT]?)i?B?\b")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def out_of_memory_report(program: Program, message: str, chip: Chip, seconds: float
                         ) -> ProgramReport:
    """The report of a program the compiler refused for lack of HBM (see the module
    docstring): the first size in its message is what it needed."""
    line = next((part.strip() for part in message.splitlines() if "memory" in part.lower()),
                message.strip().splitlines()[0] if message.strip() else "out of memory")
    sizes = [float(n) * _UNITS[u] for n, u in _SIZE.findall(line.split(":", 1)[-1])
             if u or "." in n]
    return ProgramReport(
        program=program.name, shape=dict(program.shape), argument_bytes=0, output_bytes=0,
        alias_bytes=0, temp_bytes=0, code_bytes=0, hbm_bytes=int(chip.hbm_bytes),
        xla_flops=0.0, xla_bytes_accessed=0.0, flops=0.0, bytes_accessed=0.0, collectives={},
        loops=[], roofline_seconds=0.0, bound="-", compile_seconds=seconds,
        out_of_memory=line, required_bytes=int(sizes[0]) if sizes else 0)


def is_out_of_memory(err: BaseException) -> bool:
    """A compilation refused because the program does not fit the chip's memory."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def compile_and_analyse(program: Program, mesh: Any, chip: Chip) -> ProgramReport:
    """`compile_program` then `analyse` (`out_of_memory_report` when it does not fit)."""
    start = time.perf_counter()
    try:
        compiled, seconds = compile_program(program, mesh)
    except Exception as err:  # jax.errors.JaxRuntimeError, raised by the TPU compiler
        if not is_out_of_memory(err):
            raise
        return out_of_memory_report(program, str(err), chip, time.perf_counter() - start)
    return analyse(program, compiled, chip, seconds)
