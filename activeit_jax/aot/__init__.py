"""Ahead-of-time compilation of a run's programs for TPU topologies that are not attached.

`compile_run` builds every program a run executes (`aot.programs`: the train step, evaluation
decoding, the scorer's scoring and decoding calls) from abstract shapes with the run's own
shardings, compiles each for a named target (`aot.targets`: `v5e:4x4`, `v4-32`, ... through
libtpu's TPU compiler, on a CPU host) and reports per device what it needs (`aot.analysis`:
HBM, FLOPs, bytes, collectives, roofline time); where a program does not fit, `aot.search`
compiles smaller batches (or larger slices) to say what does. `activeit-jax compile` is its
command line; `aot.report` prints the table and writes the JSON.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from activeit_jax import partitioning
from activeit_jax.aot import programs as programs_lib, search, targets
from activeit_jax.aot.analysis import ProgramReport, compile_and_analyse
from activeit_jax.core.errors import UsageError

PROGRAMS = ("train_step", "eval_decode", "score", "decode")


def make_target_mesh(target: targets.Target, axis_sizes: Any) -> Any:
    """The mesh the run would build (`partitioning.make_mesh` of its axis sizes) over the
    target's devices."""
    from activeit_jax import partitioning
    devices = targets.target_devices(target)
    try:
        return partitioning.make_mesh(axis_sizes, devices)
    except ValueError as err:
        raise UsageError(f"mesh {dict(axis_sizes)} on {target.topology}: {err}") from None


def compile_run(model: Any, train_config: Any, score_config: Any | None, topology: str, *,
                which: Sequence[str] = PROGRAMS, search_compiles: int = 5,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Compiles the programs of a run for `topology` and reports each.

    Args:
      model: the model wrapper.
      train_config: the `TrainConfig` with the run's mesh sizes and rules.
      score_config: the `ScoreConfig` (None: no scorer programs).
      topology: target name (`targets.parse_target`).
      which: the programs to compile (`PROGRAMS`).
      search_compiles: compilations allowed per program that does not fit to find what does
        (0: no search).
      progress: called with one line per compilation.

    Returns:
      A JSON-ready dict: target, mesh, programs (`ProgramReport.as_dict()`, plus "advice"
      where a program does not fit).
    """
    from activeit_jax.training import step as train_step
    unknown = sorted(set(which) - set(PROGRAMS))
    if unknown:
        raise UsageError(f"--programs: unknown {unknown}; known: {list(PROGRAMS)}")
    target = targets.parse_target(topology)
    mesh = make_target_mesh(target, train_config.mesh_shape)
    train_step.validate_config(train_config, mesh)
    built = programs_lib.run_programs(model, train_config, score_config, mesh, which)
    reports = []
    for index, program in enumerate(built, 1):
        progress(f"[{index}/{len(built)}] compiling {program.label} for {target.topology} ...")
        report = compile_and_analyse(program, mesh, target.chip)
        progress(f"[{index}/{len(built)}] {program.label}: {report.total_bytes / 2**30:.2f} "
                 f"GiB of {report.hbm_bytes / 2**30:.0f} per device, "
                 f"{'fits' if report.fits else 'DOES NOT FIT'} "
                 f"({report.compile_seconds:.1f} s to compile)")
        entry = report.as_dict()
        if not report.fits and search_compiles > 0:
            occurrence = [p.name for p in built[:index]].count(program.name) - 1
            entry["advice"] = _advise(program, occurrence, mesh, target, model, train_config,
                                      score_config, search_compiles, progress)
        reports.append(entry)
    return {"target": {"topology": target.topology, "chip": target.chip.name,
                       "num_chips": target.num_chips, "hbm_bytes": target.chip.hbm_bytes,
                       "peak_flops": target.chip.peak_flops,
                       "hbm_bandwidth": target.chip.hbm_bandwidth,
                       "source": target.chip.source},
            "mesh": dict(mesh.shape), "programs": reports}


def _advise(program: programs_lib.Program, occurrence: int, mesh: Any, target: targets.Target,
            model: Any, train_config: Any, score_config: Any, budget: int,
            progress: Callable[[str], None]) -> dict[str, Any]:
    """What fits instead of `program` (see `search`), as a dict with a one-line "text"."""
    advice = search.largest_rows(program, mesh, target, budget, progress)
    out: dict[str, Any] = {"rows": advice.rows, "probes": advice.probes}
    if advice.rows is not None:
        out["text"] = _rows_text(program, advice.rows, train_config, mesh)
        if program.name == "train_step":
            out.update(_verify_microbatches(program, advice.rows, model, train_config, mesh,
                                            target, progress))
            if out.get("num_microbatches"):
                out["text"] += (f"; at batch_size {program.shape['rows']}: num_microbatches "
                                f"{out['num_microbatches']} "
                                f"({'fits' if out['microbatches_fit'] else 'still too big'}"
                                ", compiled)")
        return out
    def build(bigger: targets.Target):
        """The same program (the `occurrence`-th of its name) on a bigger slice."""
        bigger_mesh = make_target_mesh(bigger, train_config.mesh_shape)
        train_step.validate_config(train_config, bigger_mesh)  # batch sizes still divide
        same = programs_lib.run_programs(model, train_config, score_config, bigger_mesh,
                                         (program.name,))
        return same[min(occurrence, len(same) - 1)], bigger_mesh

    from activeit_jax.training import step as train_step
    chips, probes = search.smallest_slice(build, target, max(budget - len(advice.probes), 1),
                                          progress)
    out["probes"] += probes
    out["chips"] = chips
    tried = [n for kind, n, _ in probes if kind == "chips"]
    if chips is None and not tried:
        out["text"] = (f"does not fit at any batch on {target.topology}; no larger slice "
                       f"tried (the batch sizes do not divide its mesh)")
    elif chips is None:
        out["text"] = (f"does not fit at any batch on {target.topology}, nor on {max(tried)} "
                       f"{target.chip.name} chips with this mesh")
    else:
        out["text"] = (f"does not fit at any batch on {target.topology}; the smallest "
                       f"{target.chip.name} slice that fits is {target.with_chips(chips).topology}"
                       f" ({chips} chips, mesh {dict(train_config.mesh_shape)})")
    return out


def _rows_text(program: programs_lib.Program, rows: int, train_config: Any, mesh: Any) -> str:
    shape = program.shape
    if program.name == "train_step":
        return (f"fits at batch_size {rows} (num_microbatches "
                f"{train_config.num_microbatches})")
    if program.name == "eval_decode":
        return f"fits at eval_batch_size {rows}"
    length = shape.get("source", shape.get("sequence", shape.get("length")))
    if program.name == "score":
        return (f"fits at {rows} rows of {length}: ScoreConfig.batch_tokens <= {rows * length}"
                f" or batch_size <= {rows}")
    return f"fits at {rows} rows of {length}: ScoreConfig.decode_batch_size <= {rows}"


def _verify_microbatches(program: programs_lib.Program, rows: int, model: Any,
                         train_config: Any, mesh: Any, target: targets.Target,
                         progress: Callable[[str], None]) -> dict[str, Any]:
    """The microbatch count that keeps the configured batch with microbatches of the rows
    that fit, compiled to check it."""
    batch = program.shape["rows"]
    per_microbatch = rows // train_config.num_microbatches
    shards = partitioning.batch_shard_count(mesh, program.rules)
    count = math.ceil(batch / max(per_microbatch, 1))
    while count <= batch and batch % (count * shards):
        count += 1
    if count > batch or count == train_config.num_microbatches:
        return {}
    config = dataclasses.replace(train_config, num_microbatches=count)
    progress(f"  train_step: checking batch_size {batch} with num_microbatches {count}")
    report = compile_and_analyse(programs_lib.train_program(model, config, mesh), mesh,
                                 target.chip)
    return {"num_microbatches": count, "microbatches_fit": report.fits,
            "microbatches_report": report.as_dict()}


__all__ = ["PROGRAMS", "ProgramReport", "compile_run", "make_target_mesh"]
