"""`activeit-jax compile`: compile every program of a run for a TPU slice, without the TPU.

    activeit-jax compile --gin_file=configs/experiments/niv2_t5_large.gin --topology=v4-8 \\
        --out=compile_v4-8.json
    activeit-jax compile --gin_file=configs/demo_tiny.gin --topology=v5e:2x2
    activeit-jax compile --gin_file=runs/finetune_self_instruct.gin --topology=v5p:2x2x4 \\
        --programs=train_step --gin.MESH_AXIS_SIZES='{"fsdp": -1}'

The same gin files and `--gin.X=V` bindings as `train` / `run` (the model `%MODEL`, the
`TrainConfig`, the `ScoreConfig`, the `PartitioningConfig`: the mesh is built from it as the run
builds it, over the target's devices). `--topology` names the target: a TPU topology
(`v5e:4x4`, `v4:2x2x4`, `v5p:2x2x4`, `v6e:2x4`) or an accelerator type (`v5e-16`, `v4-32`,
`v5p-32`, `v6e-8`). Needs libtpu (`pip install -e '.[tpu]'`); no TPU, weights or data: every
program is compiled from abstract shapes by libtpu's TPU compiler on this machine (a CPU).

Prints one progress line per compilation and a table per device: arguments / outputs /
temporaries and their total against the chip's HBM, fits or not, FLOPs and bytes moved (XLA's
cost analysis, loops weighted by their trip counts), roofline time (peak bf16 FLOP/s and HBM
bandwidth of the chip), collectives. A program that does not fit is compiled again at smaller
batches (or on larger slices) to say what fits (`--search_compiles`). `--out=FILE` writes it all as
JSON (atomically). See `activeit_jax.aot`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from absl import flags

# The run configs `import activeit_jax.commands.run` (it registers their `experiment`), so its
# flags are this command's too: `--out` (here: the JSON report) and the gin flags.
from activeit_jax.commands import common, run as run_command
from activeit_jax.core.errors import UsageError

FLAGS = flags.FLAGS

flags.DEFINE_string("topology", None, "Target: a TPU topology (v5e:4x4, v4:2x2x4, v5p:2x2x4, "
                    "v6e:2x4) or accelerator type (v5e-16, v4-32, v5p-32, v6e-8).")
flags.DEFINE_list("programs", ["train_step", "eval_decode", "score", "decode"],
                  "Programs to compile: train_step, eval_decode, score, decode.")
flags.DEFINE_integer("search_compiles", 5, "Compilations per program that does not fit, to "
                     "find the largest batch (or smallest slice) that does; 0 = none.")


def _binding(keys: tuple[str, ...]) -> Any:
    """The value bound to the first of `keys` that gin has (a `@X()` reference or a macro is
    evaluated), else None."""
    import gin
    for key in keys:
        try:
            value = gin.query_parameter(key)
        except ValueError:
            continue
        if isinstance(value, gin.config.ConfigurableReference):
            return value.scoped_configurable_fn()
        return value
    return None


def resolve_run(default_score: bool = True) -> tuple[Any, Any, Any]:
    """(model, TrainConfig with the partitioning's mesh and rules, ScoreConfig or None) of the
    parsed gin files: a run config's `experiment.*`, a training config's `train_job.*`, or the
    plain `%MODEL` / `TrainConfig` / `ScoreConfig` / `PartitioningConfig` bindings."""
    import dataclasses

    import gin

    from activeit_jax import partitioning, scoring
    from activeit_jax.training import config as train_config
    model = _binding(("experiment.model", "train_job.model", "MODEL/macro.value"))
    if model is None:
        raise UsageError("no model: include a configs/models/*.gin (it binds %MODEL) or a "
                         "run / training config that binds one")
    config = (_binding(("experiment.train_config", "train_job.config"))
              or gin.get_configurable(train_config.TrainConfig)())
    parts = (_binding(("experiment.partitioning", "train_job.partitioning"))
             or gin.get_configurable(partitioning.PartitioningConfig)())
    config = dataclasses.replace(config, mesh_shape=dict(parts.axis_sizes),
                                 logical_axis_rules=tuple(parts.logical_axis_rules))
    score = _binding(("experiment.score_config",))
    if score is None and default_score:
        score = gin.get_configurable(scoring.ScoreConfig)()
    return model, config, score


def main(argv: list[str]) -> None:
    common.check_args(argv, ("topology",))
    common.quiet_library_logs()
    run_command._register_configurables()
    import activeit_jax.data.configurables  # noqa: F401 (gin registrations)
    import activeit_jax.models  # noqa: F401
    from activeit_jax.training import config as _train_config  # noqa: F401
    common.parse_gin_from_flags()
    model, config, score = resolve_run()

    import jax
    # Nothing runs here: compiled executables for another machine are not worth caching.
    jax.config.update("jax_enable_compilation_cache", False)
    from activeit_jax import aot
    from activeit_jax.aot import report as report_lib
    result = aot.compile_run(model, config, score, FLAGS.topology, which=FLAGS.programs,
                             search_compiles=FLAGS.search_compiles,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    result["model"] = repr(model)
    # The repr leaves `scan_layers` out (run fingerprints); the layout changes compile time
    # and temporaries (docs/speed.md, "Scanning layers"), so the report names it.
    from activeit_jax.models import layer_layout
    result["scan_layers"] = layer_layout.scans_layers(getattr(model, "config", None))
    print(report_lib.table(result))
    if FLAGS.out:
        report_lib.write_json(FLAGS.out, result)
        print(f"report: {os.path.abspath(FLAGS.out)}")
