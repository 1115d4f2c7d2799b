"""Every program a run executes, as jitted functions over abstract arguments on a mesh.

Nothing is allocated: parameters, optimizer state and batches are `jax.ShapeDtypeStruct`s
carrying the shardings the run gives them (`partitioning` and the train state's rules), and the
functions are the run's own (`training.step.make_train_step`, `training.evaluation.
make_decode_fn`, the scorer's jitted calls). A `Program` is lowered and compiled by
`aot.analysis`; its `resize` rebuilds it at another batch size (the search for the largest
batch that fits).

Which programs (`run_programs`):
  train_step   the optimizer step at `TrainConfig.batch_size` rows of the longest length
               (microbatches, optimizer, dropout and clipping as configured);
  eval_decode  greedy decoding of an evaluation batch (`eval_batch_size` rows,
               `max_decode_length` steps);
  score        the scorer's call at the planner's shapes for the longest source bucket (its
               full row count at the token budget) and at the most rows the budget allows
               (`batch_size` rows, the longest bucket that still gets them), targets at their
               longest bucket (`scoring.batching.rows_for`);
  decode       the scorer's greedy decoding at the same two planner shapes of its buckets.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from activeit_jax import partitioning
from activeit_jax.scoring import batching
from activeit_jax.training import inputs as train_data, state as ts, step as train_step

PyTree = Any

# Only the shapes of a schedule matter to the compiled step; any positive horizon will do.
_SCHEDULE_STEPS = 1000


@dataclasses.dataclass
class Program:
    """One jitted function and the abstract arguments it is compiled for.

    Attributes:
      name: "train_step", "eval_decode", "score", "decode".
      fn: the jitted function (explicit in/out shardings).
      args: abstract arguments (`jax.ShapeDtypeStruct` pytrees with shardings).
      rules: logical axis rules to trace under (with the mesh).
      shape: what the batch is: {"rows": B, "source": S, ...} (for the report).
      loop_bounds: trip counts of loops XLA cannot count, by kind ("decode": decoding steps).
      resize: rebuilds the program with another row count (None: fixed).
      rows_step: row counts `resize` accepts are multiples of this.
    """
    name: str
    fn: Callable
    args: tuple
    rules: tuple
    shape: dict[str, int]
    loop_bounds: dict[str, int] = dataclasses.field(default_factory=dict)
    resize: Callable[[int], "Program"] | None = None
    rows_step: int = 1

    @property
    def label(self) -> str:
        return self.name + "[" + "x".join(str(v) for v in self.shape.values()) + "]"


def abstract(tree: PyTree, shardings: PyTree) -> PyTree:
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves (arrays or structs) with `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                        tree, shardings)


def _batch_structs(batch: Mapping[str, np.ndarray], mesh: Mesh,
                   rules: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    shardings = partitioning.batch_shardings(mesh, batch, rules)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
            for k, v in batch.items()}


def _full_length_examples(rows: int, source: int, target: int
                          ) -> list[train_data.EncodedExample]:
    """`rows` examples of the longest lengths (their token values do not matter)."""
    example = train_data.EncodedExample(
        task_name="aot", label="gen", instance_id="0", inputs=(3,) * source,
        targets=((3,) * target,), references=("",))
    return [example] * rows


def train_batch(model: Any, config: Any, rows: int) -> dict[str, np.ndarray]:
    """A training batch of `rows` full-length rows, built by the trainer's own batcher (so
    packing and length buckets give the features and shapes the run gets)."""
    batcher = train_data.EpochBatcher(
        _full_length_examples(rows, config.max_source_length, config.max_target_length),
        rows, config.seed, source_length=config.max_source_length,
        target_length=config.max_target_length, builder=model.batch_builder(), pack=config.pack,
        length_buckets_per_octave=config.length_buckets_per_octave)
    return batcher.batch(0, 0)


def train_program(model: Any, config: Any, mesh: Mesh, rows: int | None = None) -> Program:
    """The optimizer step of `config` (`TrainConfig`) on `mesh`, at `rows` (default
    `config.batch_size`) rows per step."""
    rows = int(rows or config.batch_size)
    rules = train_step.resolve_rules(model, config.logical_axis_rules)
    optimizer, schedule = ts.optimizer_from_config(config, model, _SCHEDULE_STEPS)
    params_shapes = model.abstract_params()
    param_specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), rules)
    state_sh = ts.train_state_shardings(mesh, optimizer, params_shapes, param_specs)
    state = ts.abstract_train_state(optimizer, params_shapes, state_sh)
    batch = _batch_structs(train_batch(model, config, rows), mesh, rules)
    with partitioning.mesh_context(mesh, rules):
        fn = train_step.make_train_step(
            model, optimizer, schedule, mesh=mesh, state_shardings=state_sh,
            batch_sharding={k: v.sharding for k, v in batch.items()},
            num_microbatches=config.num_microbatches, use_dropout=config.use_dropout,
            rules=rules)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=ts.replicated(mesh))
    return Program("train_step", fn, (state, batch, rng), rules,
                   {"rows": rows, **_lengths(batch)},
                   resize=lambda r: train_program(model, config, mesh, r),
                   rows_step=config.num_microbatches * partitioning.batch_shard_count(mesh, rules))


def _lengths(batch: Mapping[str, Any]) -> dict[str, int]:
    """{"source": S, "target": T} (encoder-decoder) or {"length": T} (decoder-only)."""
    if "encoder_input_tokens" in batch:
        return {"source": batch["encoder_input_tokens"].shape[1],
                "target": batch["decoder_target_tokens"].shape[1]}
    return {"length": batch["decoder_input_tokens"].shape[1]}


def _params(model: Any, mesh: Mesh, rules: tuple) -> PyTree:
    return abstract(model.abstract_params(), partitioning.params_shardings(model, mesh, rules))


def eval_decode_program(model: Any, config: Any, mesh: Mesh, rows: int | None = None
                        ) -> Program:
    """Greedy decoding of one evaluation batch (`eval_batch_size` rows by default)."""
    from activeit_jax.training import evaluation
    rows = int(rows or config.eval_batch_size)
    rules = train_step.resolve_rules(model, config.logical_axis_rules)
    steps = config.max_decode_length or config.max_target_length
    (feats, _), = train_data.eval_batches(
        _full_length_examples(rows, config.max_source_length, config.max_target_length),
        rows, config.max_source_length, model.batch_builder())
    batch = _batch_structs(feats, mesh, rules)
    params = _params(model, mesh, rules)
    fn = evaluation.make_decode_fn(
        model, mesh=mesh, params_shardings=jax.tree.map(lambda p: p.sharding, params),
        batch_sharding={k: v.sharding for k, v in batch.items()}, max_decode_length=steps)
    shape = {"rows": rows, "source": batch[_decode_feature(batch)].shape[1], "steps": steps}
    return Program("eval_decode", fn, (params, batch), rules, shape,
                   loop_bounds={"decode": steps},
                   resize=lambda r: eval_decode_program(model, config, mesh, r),
                   rows_step=partitioning.batch_shard_count(mesh, rules))


def _decode_feature(batch: Mapping[str, Any]) -> str:
    return "encoder_input_tokens" if "encoder_input_tokens" in batch else "decoder_input_tokens"


def planner_shapes(buckets: Sequence[int], token_budget: int | None, max_rows: int,
                   multiple: int) -> list[tuple[int, int]]:
    """(rows, padded length) of the planner's two extreme full batches over `buckets`: the
    longest bucket at its full row count, and the most rows (`max_rows`) at the longest
    bucket that still gets them (`batching.rows_for`, the scorer's budget rule)."""
    budget = token_budget or max_rows * buckets[-1]
    full = [(batching.rows_for(b, budget, max_rows, multiple), b) for b in buckets]
    longest = full[-1]
    most = max(full, key=lambda rb: (rb[0], rb[1]))
    return [longest] if most == longest else [longest, most]


def scorer_programs(model: Any, score_config: Any, mesh: Mesh, rules: tuple
                    ) -> list[Program]:
    """The scorer's scoring and decoding calls at the planner's shapes (`planner_shapes`)."""
    from activeit_jax.scoring.row_scorer import RowScorer
    params = _params(model, mesh, rules)
    scorer = RowScorer.from_config(model, params, mesh, score_config)
    dp = partitioning.batch_shard_count(mesh, rules)
    programs = []
    for rows, length in planner_shapes(scorer.score_buckets[0], scorer.token_budget,
                                       scorer.batch_size, dp):
        programs.append(_score_program(scorer, params, mesh, rules, rows, length))
    for rows, length in planner_shapes(scorer.decode_source_buckets, scorer.token_budget,
                                       scorer.decode_batch_size, dp):
        programs.append(_scorer_decode_program(scorer, params, mesh, rules, rows, length))
    return programs


def _score_program(scorer: Any, params: PyTree, mesh: Mesh, rules: tuple, rows: int,
                   length: int) -> Program:
    """The scoring call at `rows` x `length` along the planner's first dimension (any other,
    T5's target, at its longest bucket), with the model's own batch builder."""
    builder = scorer.builder
    shape = (length, *(buckets[-1] for buckets in scorer.score_buckets[1:]))
    batch = builder.score_batch([([3], [3, builder.ids.eos])] * rows, shape)
    structs = _batch_structs(batch, mesh, rules)
    return Program("score", scorer.jitted("score"), (params, structs), rules,
                   {"rows": rows, **dict(zip(builder.score_dims, shape))},
                   resize=lambda r: _score_program(scorer, params, mesh, rules, r, length),
                   rows_step=partitioning.batch_shard_count(mesh, rules))


def _scorer_decode_program(scorer: Any, params: PyTree, mesh: Mesh, rules: tuple, rows: int,
                           length: int) -> Program:
    batch = scorer.builder.decode_batch([[3]] * rows, length)
    structs = _batch_structs(batch, mesh, rules)
    steps = scorer.max_decode_length
    return Program("decode", scorer.jitted("decode"), (params, structs), rules,
                   {"rows": rows, "source": length, "steps": steps},
                   loop_bounds={"decode": steps},
                   resize=lambda r: _scorer_decode_program(scorer, params, mesh, rules, r,
                                                           length),
                   rows_step=partitioning.batch_shard_count(mesh, rules))


def run_programs(model: Any, train_config: Any, score_config: Any | None, mesh: Mesh,
                 which: Sequence[str] = ("train_step", "eval_decode", "score", "decode")
                 ) -> list[Program]:
    """The programs of a run (see the module docstring), those named in `which`."""
    rules = train_step.resolve_rules(model, train_config.logical_axis_rules)
    programs = []
    if "train_step" in which:
        programs.append(train_program(model, train_config, mesh))
    if "eval_decode" in which:
        programs.append(eval_decode_program(model, train_config, mesh))
    if score_config is not None and ("score" in which or "decode" in which):
        programs += [p for p in scorer_programs(model, score_config, mesh, rules)
                     if p.name in which]
    return programs
