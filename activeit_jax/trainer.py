"""T5X-style fine-tuning on a device mesh: sharded train step, validation, best checkpoint.

`train_and_evaluate(model, train_tasks, val_tasks, vocab, config, out_dir)` is the whole job:

1. tokenise the training tasks (`train_data.encode_tasks`), batch them deterministically per
   epoch (`train_data.EpochBatcher`);
2. place the train state on a `("data", "fsdp", "model")` mesh: parameter shardings from the
   model's logical axes and the logical-axis rules, optimizer state following its parameters;
3. run a jitted train step with explicit in/out shardings; a global batch is split into
   microbatches accumulated with `lax.scan` (token-weighted: summed losses and gradients over
   all microbatches divided by the total number of target tokens, so accumulation equals the
   large batch);
4. after each epoch, greedy-decode the validation tasks and score ROUGE-L / exact match
   (`metrics.summarize`); the best epoch by `config.selection_metric` is written with
   `checkpoints.save_model` to `out_dir/best` and its parameters are returned at the end;
5. orbax `CheckpointManager` checkpoints (asynchronous, `max_to_keep`) at every epoch end and
   every `save_every_steps` steps hold the train state and the data position
   `(epoch, step_in_epoch)`; rerunning the same call after a kill resumes from the latest one
   and ends with the same parameters as an uninterrupted run.

Metrics (loss, learning rate, tokens/s, step time, evaluation scores) go to
`out_dir/metrics.jsonl` and TensorBoard event files in `out_dir/tensorboard`.

Multi-host (one process per host, `jax.distributed` started by the entry point): every process
runs this same function. The mesh spans all hosts with the data axis across them
(`partitioning.device_grid`), so only the gradient all-reduce crosses the slower links. Each
batch is a pure function of (seed, epoch, step), so every process derives the same global batch
and `put_batch` hands each device only its own rows (no host sends another's data). Orbax
writes the checkpoints (each process its shards, process 0 the metadata), `save_model` the
best parameters the same way; metrics.jsonl, TensorBoard, eval/, best.json and
train_summary.json are written by process 0 only. `out_dir` must be shared by the hosts.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from activeit_jax import io_utils, partitioning
from activeit_jax import metrics as metrics_lib
from activeit_jax import train_data
from activeit_jax import train_state as ts

PyTree = Any

CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
BEST_INFO_FILE = "best.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"


@gin.register
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a fine-tuning run (the reference setting is the default).

    Attributes:
      num_epochs: passes over the training set.
      batch_size: global batch (examples per optimizer step).
      num_microbatches: the global batch is split into this many microbatches whose gradients
        are accumulated (1 = no accumulation). `batch_size` must be divisible by
        `num_microbatches * (data * fsdp mesh size)`.
      learning_rate: peak learning rate.
      schedule: "constant", "linear" or "cosine" (decay to 0), after a linear warm-up.
      warmup_steps: warm-up steps from 0.
      optimizer: "adamw" or "adafactor".
      weight_decay: decoupled weight decay on matrices.
      adam_b1, adam_b2, adam_eps: AdamW hyper-parameters.
      max_grad_norm: global-norm gradient clipping (None or 0 = off).
      use_dropout: pass a dropout rng to `loss_fn` (the model's dropout rate applies).
      seed: one seed for instance sampling, epoch order, reference choice, dropout, init.
      max_source_length: source tokens (EOS included).
      max_target_length: target tokens (EOS included).
      max_instances_per_task: training instances per task (seeded shuffle, then the first).
      num_pos_examples: positive examples in each prompt.
      max_eval_instances_per_task: validation instances per task (the first in file order).
      eval_batch_size: rows per decoding batch.
      max_decode_length: decoding steps (defaults to `max_target_length`).
      selection_metric: validation score that picks the best epoch ("rougeL", "exact_match",
        or their `_cls` / `_gen` variants).
      mesh_shape: mesh axis sizes {"data", "fsdp", "model"}; one may be -1 (fill).
      logical_axis_rules: (logical name, mesh axis or None) pairs; None = the model's own
        `logical_axis_rules`, else `partitioning.DEFAULT_LOGICAL_AXIS_RULES`.
      save_every_steps: also checkpoint every this many steps (0 = epoch ends only).
      max_to_keep: checkpoints kept by the manager.
      async_checkpointing: write checkpoints in the background.
      log_every_steps: train metrics written every this many steps (and at epoch ends).
      pack: pack examples with `seqio.EncDecFeatureConverter(pack=True)`; the model must read
        segment ids (`model.supports_packing`).
      model_kind: "encoder_decoder" (Tk-Instruct prompts) or "decoder_only" (Alpaca prompts,
        loss on response tokens only; sequences of max_source_length + max_target_length
        tokens); None = from the model (`model.kind == "llama"` is decoder-only).
      tensorboard: write TensorBoard event files.
      progress_bar: show a tqdm bar with tokens/s and ETA.
    """
    num_epochs: int = 8
    batch_size: int = 128
    num_microbatches: int = 1
    learning_rate: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 50
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    use_dropout: bool = True
    seed: int = 42
    max_source_length: int = 1024
    max_target_length: int = 128
    max_instances_per_task: int | None = 200
    num_pos_examples: int = 2
    max_eval_instances_per_task: int | None = 100
    eval_batch_size: int = 64
    max_decode_length: int | None = None
    selection_metric: str = "rougeL"
    mesh_shape: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "model": 1})
    logical_axis_rules: Sequence[tuple[str, Any]] | None = None
    save_every_steps: int = 0
    max_to_keep: int = 2
    async_checkpointing: bool = True
    log_every_steps: int = 10
    pack: bool = False
    model_kind: str | None = None
    tensorboard: bool = True
    progress_bar: bool = True


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """The pieces of a training run that gin files bind (`train_job.*`).

    Attributes:
      model: a model wrapper (`%MODEL` of `configs/models/*.gin`); None = the checkpoint's.
      config: the run settings (`@TrainConfig()`).
      vocabulary: the seqio vocabulary (`%VOCABULARY` of `configs/pools/*.gin`).
      niv2_dir: NIV2 root for task names.
      init_checkpoint: initial weights (a `checkpoints.save_model` directory).
      partitioning: a `partitioning.PartitioningConfig`; its mesh sizes and rules replace the
        TrainConfig's.
      allow_random_init: train from random weights when there is no checkpoint (tiny configs).
    """
    model: Any = None
    config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    vocabulary: Any = None
    niv2_dir: str | None = None
    init_checkpoint: str | None = None
    partitioning: Any = None
    allow_random_init: bool = False

    def resolved_config(self) -> TrainConfig:
        """`config` with the mesh sizes and rules of `partitioning` when given."""
        if self.partitioning is None:
            return self.config
        return dataclasses.replace(self.config,
                                   mesh_shape=dict(self.partitioning.axis_sizes),
                                   logical_axis_rules=tuple(
                                       self.partitioning.logical_axis_rules))


@gin.configurable(module="activeit_jax.trainer")
def train_job(model: Any = None, config: TrainConfig | None = None, vocabulary: Any = None,
              niv2_dir: str | None = None, init_checkpoint: str | None = None,
              partitioning: Any = None, allow_random_init: bool = False) -> TrainJob:
    """gin face of `TrainJob`, called only by the entry points (train, evaluate, run)."""
    return TrainJob(model=model, config=config or TrainConfig(), vocabulary=vocabulary,
                    niv2_dir=niv2_dir, init_checkpoint=init_checkpoint,
                    partitioning=partitioning, allow_random_init=allow_random_init)


@dataclasses.dataclass
class TrainResult:
    """What `train_and_evaluate` returns.

    Attributes:
      best_checkpoint_dir: `out_dir/best` (a `checkpoints.save_model` directory).
      best_epoch: 0-based epoch of the best validation score (the last epoch when there is no
        validation set).
      best_metrics: the validation summary of that epoch (`metrics.summarize` flat keys +
        groups); empty without validation.
      history: one record per finished epoch: {"epoch", "step", **flat scores}.
      final_step: optimizer steps taken.
      params: the best parameters, placed on the mesh (None when stopped early).
      completed: False when `stop_after_steps` stopped the run early.
    """
    best_checkpoint_dir: str | None
    best_epoch: int | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    final_step: int
    params: PyTree | None = None
    completed: bool = True


# ----------------------------------------------------------------------------------------------
# Mesh and rules.

def resolve_rules(model: Any, rules: Sequence[tuple[str, Any]] | None
                  ) -> tuple[tuple[str, Any], ...]:
    """`rules`, else the model's own `logical_axis_rules`, else the default table."""
    if rules is None:
        rules = getattr(model, "logical_axis_rules", None)
    return partitioning.normalize_rules(rules)


def batch_shardings(mesh: Mesh, batch: Mapping[str, Any]) -> dict[str, NamedSharding]:
    """Batch dimension over ("data", "fsdp"), other dimensions replicated, per feature."""
    return {k: ts.batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


def put_batch(batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]
              ) -> dict[str, jax.Array]:
    """Places a global numpy batch (identical on every process) with its shardings."""
    return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx])
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# Train step.

def split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int,
                       mesh: Mesh | None = None) -> dict[str, jax.Array]:
    """[B, ...] -> [M, B/M, ...] with microbatch m = rows m, m + M, m + 2M, ...

    The strided split keeps every microbatch spread over all batch shards (no data moves
    between devices); the loss is a sum over rows, so which rows go together does not matter.
    """
    out = {}
    for key, x in batch.items():
        per = x.shape[0] // num_microbatches
        x = jnp.swapaxes(x.reshape((per, num_microbatches) + x.shape[1:]), 0, 1)
        if mesh is not None:
            spec = PartitionSpec(None, ts.BATCH_MESH_AXES, *([None] * (x.ndim - 2)))
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        out[key] = x
    return out


def loss_and_grads(model: Any, params: PyTree, batch: Mapping[str, jax.Array],
                   dropout_rng: jax.Array | None, num_microbatches: int = 1,
                   mesh: Mesh | None = None, grad_shardings: PyTree | None = None
                   ) -> tuple[jax.Array, jax.Array, PyTree]:
    """Summed token loss, token count and the gradient of the summed loss over a batch.

    Args:
      model: has `loss_fn(params, batch, dropout_rng) -> (mean loss, aux)` with
        `aux["loss_sum"]` and `aux["num_tokens"]`.
      params: parameters.
      batch: features, leading dimension B (divisible by `num_microbatches`).
      dropout_rng: None for deterministic; microbatch m uses `fold_in(dropout_rng, m)`.
      num_microbatches: M; gradients are accumulated over M microbatches with `lax.scan`.
      mesh: places the microbatches (optional).
      grad_shardings: shardings of the accumulator (the parameters'), optional.

    Returns:
      (loss_sum, num_tokens, grads of loss_sum); divide both by num_tokens for the
      token-weighted mean loss and its gradient.
    """
    def one(mb, rng):
        def f(p):
            _, aux = model.loss_fn(p, mb, dropout_rng=rng)
            return aux["loss_sum"].astype(jnp.float32), aux
        (loss_sum, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        return loss_sum, jnp.asarray(aux["num_tokens"], jnp.float32), grads

    if num_microbatches <= 1:
        return one(batch, dropout_rng)
    micro = split_microbatches(batch, num_microbatches, mesh)

    def body(carry, xs):
        index, mb = xs
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
        loss_sum, num_tokens, grads = one(mb, rng)
        acc_loss, acc_tokens, acc_grads = carry
        acc_grads = jax.tree.map(jnp.add, acc_grads, grads)
        if grad_shardings is not None:
            acc_grads = jax.lax.with_sharding_constraint(acc_grads, grad_shardings)
        return (acc_loss + loss_sum, acc_tokens + num_tokens, acc_grads), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if grad_shardings is not None:
        zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
    (loss_sum, num_tokens, grads), _ = jax.lax.scan(
        body, init, (jnp.arange(num_microbatches), micro))
    return loss_sum, num_tokens, grads


def make_train_step(model: Any, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, mesh: Mesh,
                    state_shardings: ts.TrainState, batch_sharding: Mapping[str, NamedSharding],
                    num_microbatches: int = 1, use_dropout: bool = True,
                    donate: bool = True) -> Callable:
    """The jitted `train_step(state, batch, rng) -> (state, metrics)` with explicit shardings.

    The update uses the token-weighted mean gradient (grads of summed losses / total target
    tokens over all microbatches). Metrics (replicated scalars): loss, num_tokens, grad_norm,
    learning_rate (the rate this update used).
    """
    grad_shardings = state_shardings.params

    def step_fn(state: ts.TrainState, batch, rng):
        dropout_rng = jax.random.fold_in(rng, state.step) if use_dropout else None
        loss_sum, num_tokens, grads = loss_and_grads(
            model, state.params, batch, dropout_rng, num_microbatches, mesh, grad_shardings)
        denom = jnp.maximum(num_tokens, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = ts.TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": loss_sum / denom, "num_tokens": num_tokens,
                   "grad_norm": optax.global_norm(grads),
                   "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
        return new_state, metrics

    return jax.jit(step_fn,
                   in_shardings=(state_shardings, dict(batch_sharding), ts.replicated(mesh)),
                   out_shardings=(state_shardings, ts.replicated(mesh)),
                   donate_argnums=(0,) if donate else ())


# ----------------------------------------------------------------------------------------------
# Evaluation.

def make_decode_fn(model: Any, *, mesh: Mesh, params_shardings: PyTree,
                   batch_sharding: Mapping[str, NamedSharding], max_decode_length: int
                   ) -> Callable:
    """Jitted `decode(params, batch) -> int32 [B, max_decode_length]` (greedy, replicated)."""
    def decode(params, batch):
        return model.greedy_decode(params, batch, max_decode_length)
    return jax.jit(decode, in_shardings=(params_shardings, dict(batch_sharding)),
                   out_shardings=ts.replicated(mesh))


def decode_tokens(vocab: Any, ids: Sequence[int],
                  special_ids: train_data.SpecialIds | None = None) -> str:
    """Text of generated ids up to the first EOS (or padding)."""
    special = special_ids or train_data.SpecialIds()
    out = []
    for i in ids:
        i = int(i)
        if i in (special.eos, special.pad):
            break
        out.append(i)
    return vocab.decode(out)


def evaluate(model: Any, params: PyTree, examples: Sequence[train_data.EncodedExample],
             vocab: Any, *, mesh: Mesh, rules: Sequence[tuple[str, Any]],
             params_shardings: PyTree, batch_size: int, source_length: int,
             target_length: int, max_decode_length: int,
             model_kind: str = train_data.ENCODER_DECODER,
             decode_fn: Callable | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy-decodes `examples` and scores them (Tk-Instruct ROUGE-L / exact match).

    Returns:
      (summary from `metrics.summarize`, one prediction record per example:
      {"task", "id", "prediction", "references"}).
    """
    if not examples:
        return {}, []
    special = train_data.SpecialIds.of(model)
    batches = train_data.eval_batches(examples, batch_size, source_length, target_length,
                                      model_kind, special)
    shardings = batch_shardings(mesh, batches[0][0])
    if decode_fn is None:
        decode_fn = make_decode_fn(model, mesh=mesh, params_shardings=params_shardings,
                                   batch_sharding=shardings,
                                   max_decode_length=max_decode_length)
    predictions: list[str] = []
    with partitioning.mesh_context(mesh, rules):
        for feats, real in batches:
            out = np.asarray(jax.device_get(decode_fn(params, put_batch(feats, shardings))))
            predictions += [decode_tokens(vocab, row, special) for row in out[:real]]
    summary = metrics_lib.summarize(
        predictions, [ex.references for ex in examples], [ex.task_name for ex in examples],
        [ex.label for ex in examples])
    records = [{"task": ex.task_name, "id": ex.instance_id, "prediction": pred,
                "references": list(ex.references)}
               for ex, pred in zip(examples, predictions)]
    return summary, records


def evaluate_checkpoint(checkpoint_dir: str, tasks: Sequence[Any], vocab: Any,
                        config: TrainConfig, out_dir: str | None = None, *,
                        model: Any = None, devices: Sequence[Any] | None = None
                        ) -> dict[str, Any]:
    """Loads a `save_model` checkpoint and evaluates it on `tasks` (Tk-Instruct metrics).

    Args:
      checkpoint_dir: a checkpoint directory (e.g. a training run's `best/`).
      tasks: the evaluation tasks; each contributes its first `max_eval_instances_per_task`.
      vocab: the model's seqio vocabulary.
      config: lengths, `eval_batch_size`, `max_eval_instances_per_task`, mesh and rules.
      out_dir: when given, writes `metrics.json` (overall / cls / gen / per_task),
        `per_task_metrics.jsonl` (one line per task) and `predictions.jsonl`, atomically.
      model: the wrapper to use (default: the checkpoint's config).
      devices: devices of the mesh (default: all).

    Returns:
      The `metrics.summarize` dict.
    """
    from activeit_jax import checkpoints
    mesh = partitioning.make_mesh(config.mesh_shape, devices=devices)
    _validate_config(dataclasses.replace(config, num_microbatches=1,
                                         batch_size=config.eval_batch_size), mesh)
    if model is None:
        model = checkpoints.read_model(checkpoint_dir, config.logical_axis_rules)
    rules = resolve_rules(model, config.logical_axis_rules)
    params_sh = partitioning.params_shardings(model, mesh, rules)
    params = checkpoints.restore_params(checkpoint_dir, model, params_sh)
    examples = encode_eval_tasks(tasks, vocab, config, model)
    summary, records = evaluate(
        model, params, examples, vocab, mesh=mesh, rules=rules, params_shardings=params_sh,
        batch_size=config.eval_batch_size, source_length=config.max_source_length,
        target_length=config.max_target_length,
        max_decode_length=config.max_decode_length or config.max_target_length,
        model_kind=model_kind_of(model, config))
    if out_dir is not None and jax.process_index() == 0:
        labels = {ex.task_name: ex.label for ex in examples}
        io_utils.atomic_write_json(os.path.join(out_dir, "metrics.json"), dict(summary))
        io_utils.atomic_write_text(os.path.join(out_dir, "per_task_metrics.jsonl"), "".join(
            _json_line({"task": task, "label": labels[task], **scores})
            for task, scores in summary.get("per_task", {}).items()))
        io_utils.atomic_write_text(os.path.join(out_dir, "predictions.jsonl"),
                                   "".join(_json_line(r) for r in records))
    return summary


# ----------------------------------------------------------------------------------------------
# Metrics output.

class MetricsWriter:
    """metrics.jsonl (one record per write, fsynced) + TensorBoard scalars; process 0 only."""

    def __init__(self, out_dir: str, *, tensorboard: bool = True,
                 keep_until_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(out_dir, METRICS_FILE)
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        io_utils.truncate_partial_tail(self.path)
        if os.path.exists(self.path):
            # A resumed run repeats the steps after its checkpoint: drop their old records.
            records = io_utils.read_jsonl(self.path)
            limit = -1 if keep_until_step is None else keep_until_step
            kept = [r for r in records if r.get("step", 0) <= limit]
            if len(kept) != len(records):
                io_utils.atomic_write_text(
                    self.path, "".join(_json_line(r) for r in kept))
        if tensorboard:
            import tensorflow as tf  # only the summary writer is used.
            self._tb = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard"))

    def write(self, step: int, kind: str, scalars: Mapping[str, Any]) -> None:
        """Appends `{"step", "kind", **scalars}`; numbers also go to TensorBoard `kind/name`."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind}
        record.update({k: _to_python(v) for k, v in scalars.items()})
        io_utils.append_jsonl_line(self.path, record)
        if self._tb is not None:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2
            # `tf.summary.scalar` needs the tensorboard package; the scalar summary it would
            # write is a float32 tensor tagged for the "scalars" plugin, written directly here.
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            with self._tb.as_default(step=int(step)):
                for key, value in record.items():
                    if key not in ("step", "kind") and isinstance(value, (int, float)) \
                            and not isinstance(value, bool):
                        tf.summary.write(f"{kind}/{key}", tf.constant(float(value), tf.float32),
                                         metadata=metadata)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _to_python(value: Any) -> Any:
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _json_line(record: Mapping[str, Any]) -> str:
    import json
    return json.dumps(record, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------
# Checkpoints.

def _checkpoint_manager(directory: str, config: TrainConfig):
    import orbax.checkpoint as ocp
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.max_to_keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=config.async_checkpointing)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "data"))


def _save_checkpoint(manager: Any, state: ts.TrainState, position: Mapping[str, Any]) -> None:
    import orbax.checkpoint as ocp
    manager.save(int(position["global_step"]), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(position))), force=True)


def _restore_checkpoint(manager: Any, step: int, abstract_state: ts.TrainState
                        ) -> tuple[ts.TrainState, dict[str, Any]]:
    import orbax.checkpoint as ocp
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"])


def _save_best(out_dir: str, model: Any, params: PyTree, info: Mapping[str, Any],
               vocab: Any = None) -> str:
    """Writes `out_dir/best` with `checkpoints.save_model` (itself atomic: temp dir + rename;
    the vocabulary stored with it, so later commands need no --vocab) and `out_dir/best.json`
    (epoch, step, scores)."""
    from activeit_jax import checkpoints
    best = os.path.join(out_dir, BEST_SUBDIR)
    checkpoints.save_model(best, model, params, vocab)
    if jax.process_index() == 0:
        io_utils.atomic_write_json(os.path.join(out_dir, BEST_INFO_FILE), dict(info))
    return best


def _recover_best_dir(out_dir: str) -> None:
    """A kill between the two renames of `save_model` leaves only `best.old`: put it back."""
    best = os.path.join(out_dir, BEST_SUBDIR)
    if (jax.process_index() == 0 and not os.path.exists(best)
            and os.path.exists(best + ".old")):
        os.replace(best + ".old", best)


# ----------------------------------------------------------------------------------------------
# The job.

def model_kind_of(model: Any, config: TrainConfig) -> str:
    """`config.model_kind`, else decoder-only for LLaMA wrappers and encoder-decoder otherwise."""
    if config.model_kind is not None:
        return config.model_kind
    return (train_data.DECODER_ONLY if getattr(model, "kind", None) == "llama"
            else train_data.ENCODER_DECODER)


def encode_eval_tasks(tasks: Sequence[Any], vocab: Any, config: TrainConfig, model: Any
                      ) -> list[train_data.EncodedExample]:
    """Validation / test examples: the first `max_eval_instances_per_task` of each task."""
    return train_data.encode_tasks(
        tasks, vocab, max_instances_per_task=config.max_eval_instances_per_task,
        num_pos_examples=config.num_pos_examples, max_source_length=config.max_source_length,
        max_target_length=config.max_target_length, seed=None,
        model_kind=model_kind_of(model, config), special_ids=train_data.SpecialIds.of(model))


def _validate_config(config: TrainConfig, mesh: Mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    per = config.num_microbatches * shards
    if config.num_microbatches < 1 or config.batch_size % per:
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by num_microbatches "
            f"({config.num_microbatches}) x data*fsdp mesh size ({shards}) = {per}")
    if config.eval_batch_size % shards:
        raise ValueError(f"eval_batch_size {config.eval_batch_size} must be divisible by the "
                         f"data*fsdp mesh size ({shards})")
    if config.model_kind not in (None, train_data.ENCODER_DECODER, train_data.DECODER_ONLY):
        raise ValueError(f"unknown model_kind {config.model_kind!r}")


def _check_packing(model: Any, config: TrainConfig) -> None:
    if config.pack and not getattr(model, "supports_packing", False):
        raise NotImplementedError(
            f"pack=True needs a model that reads segment ids and positions "
            f"(encoder_segment_ids / decoder_segment_ids); {type(model).__name__} does not "
            f"(supports_packing is not set). Train with pack=False.")


def _initial_params(model: Any, init: Any, rng: jax.Array, mesh: Mesh,
                    params_shardings: PyTree, rules: Sequence[tuple[str, Any]]) -> PyTree:
    if init is None:
        with partitioning.mesh_context(mesh, rules):
            return jax.jit(model.init_params, out_shardings=params_shardings)(rng)
    if isinstance(init, (str, os.PathLike)):
        from activeit_jax import checkpoints
        return checkpoints.restore_params(os.fspath(init), model, params_shardings)
    return jax.device_put(init, params_shardings)


@dataclasses.dataclass(frozen=True)
class _TrainPrograms:
    """Optimizer, shardings and jitted functions of one (model, config, mesh, shapes)."""
    optimizer: optax.GradientTransformation
    params_shapes: PyTree
    state_sh: ts.TrainState
    batch_sh: dict[str, NamedSharding]
    create_state: Callable
    train_step: Callable


# Jitted programs are reused by later runs in the same process with the same model, optimizer
# settings, mesh and shapes (the active loop trains many times): no recompilation.
_PROGRAMS: dict[Any, Any] = {}
_MAX_PROGRAMS = 4


def _cached(key: Any, build: Callable[[], Any]) -> Any:
    if key in _PROGRAMS:
        _PROGRAMS[key] = _PROGRAMS.pop(key)  # most recently used last
    else:
        while len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = build()
    return _PROGRAMS[key]


def _train_programs(model: Any, config: TrainConfig, mesh: Mesh, rules: tuple, total_steps: int,
                    batch_shapes: tuple) -> _TrainPrograms:
    schedule_steps = None if config.schedule == "constant" else total_steps
    key = ("train", model, mesh, rules, schedule_steps, batch_shapes, config.optimizer,
           config.learning_rate, config.schedule, config.warmup_steps, config.weight_decay,
           config.adam_b1, config.adam_b2, config.adam_eps, config.max_grad_norm,
           config.num_microbatches, config.use_dropout, config.seed)

    def build() -> _TrainPrograms:
        schedule = ts.make_schedule(config.schedule, config.learning_rate, config.warmup_steps,
                                    total_steps)
        optimizer = ts.make_optimizer(
            config.optimizer, schedule, weight_decay=config.weight_decay, b1=config.adam_b1,
            b2=config.adam_b2, eps=config.adam_eps, max_grad_norm=config.max_grad_norm)
        params_shapes = jax.eval_shape(model.init_params, jax.random.PRNGKey(config.seed))
        param_specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), rules)
        state_sh = ts.train_state_shardings(mesh, optimizer, params_shapes, param_specs)
        batch_sh = {k: ts.batch_sharding(mesh, len(shape)) for k, shape in batch_shapes}
        with partitioning.mesh_context(mesh, rules):
            train_step = make_train_step(
                model, optimizer, schedule, mesh=mesh, state_shardings=state_sh,
                batch_sharding=batch_sh, num_microbatches=config.num_microbatches,
                use_dropout=config.use_dropout)
        create_state = jax.jit(lambda p: ts.create_train_state(p, optimizer),
                               out_shardings=state_sh)
        return _TrainPrograms(optimizer, params_shapes, state_sh, batch_sh, create_state,
                              train_step)

    return _cached(key, build)


def _decode_program(model: Any, mesh: Mesh, rules: tuple, max_decode_length: int,
                    batch_shapes: tuple) -> Callable:
    key = ("decode", model, mesh, rules, max_decode_length, batch_shapes)

    def build() -> Callable:
        params_sh = partitioning.params_shardings(model, mesh, rules)
        batch_sh = {k: ts.batch_sharding(mesh, len(shape)) for k, shape in batch_shapes}
        return make_decode_fn(model, mesh=mesh, params_shardings=params_sh,
                              batch_sharding=batch_sh, max_decode_length=max_decode_length)

    return _cached(key, build)


def train_and_evaluate(model: Any, train_tasks: Sequence[Any], val_tasks: Sequence[Any],
                       vocab: Any, config: TrainConfig, out_dir: str, *,
                       init: Any = None, stop_after_steps: int | None = None,
                       devices: Sequence[Any] | None = None) -> TrainResult:
    """Fine-tunes `model` on `train_tasks`, validates each epoch, keeps the best epoch.

    Rerunning the same call with the same `out_dir` resumes from the latest checkpoint (train
    state + data position) and ends with the same parameters as an uninterrupted run; a run
    that already finished only reloads its best parameters.

    Args:
      model: an `EncoderDecoderModel` / `DecoderOnlyModel` (init_params, params_logical_axes,
        loss_fn, greedy_decode).
      train_tasks: `data.niv2.Task`s to train on.
      val_tasks: tasks to validate on after each epoch (may be empty: the last epoch is kept).
      vocab: the model's seqio vocabulary.
      config: the run settings.
      out_dir: run directory: checkpoints/ (orbax manager), best/ (`save_model` layout),
        best.json, metrics.jsonl, tensorboard/, eval/epoch_<k>_{predictions.jsonl,metrics.json},
        train_summary.json.
      init: initial parameters: None (random init from `config.seed`), a checkpoint directory
        (`checkpoints.restore_params` with `model`'s shapes), or a parameter pytree. Ignored
        when resuming.
      stop_after_steps: stop (as if killed) once the global step reaches this; for tests.
      devices: devices of the mesh (default: all).

    Returns:
      A `TrainResult`; `params` holds the best parameters placed on the mesh.
    """
    _check_packing(model, config)
    os.makedirs(out_dir, exist_ok=True)
    _recover_best_dir(out_dir)
    rules = resolve_rules(model, config.logical_axis_rules)
    mesh = partitioning.make_mesh(config.mesh_shape, devices=devices)
    _validate_config(config, mesh)
    max_decode = config.max_decode_length or config.max_target_length
    special = train_data.SpecialIds.of(model)
    model_kind = model_kind_of(model, config)

    examples = train_data.encode_tasks(
        train_tasks, vocab, max_instances_per_task=config.max_instances_per_task,
        num_pos_examples=config.num_pos_examples, max_source_length=config.max_source_length,
        max_target_length=config.max_target_length, seed=config.seed,
        model_kind=model_kind, special_ids=special)
    val_examples = encode_eval_tasks(val_tasks, vocab, config, model)
    batcher = train_data.EpochBatcher(
        examples, config.batch_size, config.seed, source_length=config.max_source_length,
        target_length=config.max_target_length, model_kind=model_kind, pack=config.pack,
        special_ids=special)
    steps_per_epoch = [batcher.steps_per_epoch(e) for e in range(config.num_epochs)]
    total_steps = sum(steps_per_epoch)
    data_fingerprint = train_data.fingerprint(examples)
    logging.info("training on %d examples from %d tasks: %d epochs x %s steps, batch %d",
                 len(examples), len(train_tasks), config.num_epochs, steps_per_epoch[0],
                 config.batch_size)

    base_rng = jax.random.PRNGKey(config.seed)
    sample = batcher.batch(0, 0)
    programs = _train_programs(model, config, mesh, rules, total_steps,
                               tuple((k, v.shape) for k, v in sorted(sample.items())))
    optimizer, state_sh, batch_sh = programs.optimizer, programs.state_sh, programs.batch_sh
    params_shapes = programs.params_shapes

    manager = _checkpoint_manager(os.path.join(out_dir, CHECKPOINT_SUBDIR), config)
    latest = manager.latest_step()
    if latest is not None:
        abstract = ts.abstract_train_state(optimizer, params_shapes, state_sh)
        state, position = _restore_checkpoint(manager, latest, abstract)
        if position.get("data_fingerprint") != data_fingerprint or \
                position.get("batch_size") != config.batch_size:
            raise ValueError(
                f"{out_dir} holds a checkpoint of a different run (training data or batch size "
                f"differ); use a new output directory or delete {CHECKPOINT_SUBDIR}/")
        logging.info("resuming from step %d (epoch %d, step %d in epoch)", latest,
                     position["epoch"], position["step_in_epoch"])
    else:
        params = _initial_params(model, init, jax.random.fold_in(base_rng, 1), mesh,
                                 state_sh.params, rules)
        state = programs.create_state(params)
        del params
        position = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_epoch": None,
                    "best_score": None, "best_metrics": {}, "history": [],
                    "data_fingerprint": data_fingerprint, "batch_size": config.batch_size}

    writer = MetricsWriter(out_dir, tensorboard=config.tensorboard,
                           keep_until_step=int(position["global_step"]) if latest is not None
                           else None)
    train_step = programs.train_step
    decode_fn = None
    step_rng = jax.random.fold_in(base_rng, 2)

    progress = _progress_bar(config, total_steps, int(position["global_step"]))
    stopped = False
    try:
        while position["epoch"] < config.num_epochs and not stopped:
            epoch = int(position["epoch"])
            window = _Window()
            while position["step_in_epoch"] < steps_per_epoch[epoch]:
                if stop_after_steps is not None and position["global_step"] >= stop_after_steps:
                    stopped = True
                    break
                batch = batcher.batch(epoch, int(position["step_in_epoch"]))
                window.add_tokens(*train_data.token_counts(batch))
                with partitioning.mesh_context(mesh, rules):
                    state, step_metrics = train_step(state, put_batch(batch, batch_sh),
                                                     step_rng)
                position["step_in_epoch"] += 1
                position["global_step"] += 1
                gstep = int(position["global_step"])
                end_of_epoch = position["step_in_epoch"] == steps_per_epoch[epoch]
                window.steps += 1
                if gstep % max(config.log_every_steps, 1) == 0 or end_of_epoch:
                    scalars = window.flush(jax.device_get(step_metrics))
                    scalars["epoch"] = epoch + position["step_in_epoch"] / steps_per_epoch[epoch]
                    writer.write(gstep, "train", scalars)
                    if progress is not None:
                        progress.set_postfix(loss=f"{scalars['loss']:.4f}",
                                             tok_s=f"{scalars['tokens_per_s']:.0f}")
                if progress is not None:
                    progress.update(1)
                if (config.save_every_steps and gstep % config.save_every_steps == 0
                        and not end_of_epoch):
                    _save_checkpoint(manager, state, position)
            if stopped:
                break

            # End of epoch: validate, keep the best, checkpoint.
            gstep = int(position["global_step"])
            record: dict[str, Any] = {"epoch": epoch, "step": gstep}
            if val_examples:
                if decode_fn is None:
                    eval_sample = train_data.eval_batches(
                        val_examples[:1], config.eval_batch_size, config.max_source_length,
                        config.max_target_length, model_kind, special)[0][0]
                    decode_fn = _decode_program(model, mesh, rules, max_decode,
                                                tuple((k, v.shape) for k, v in
                                                      sorted(eval_sample.items())))
                start = time.perf_counter()
                summary, predictions = evaluate(
                    model, state.params, val_examples, vocab, mesh=mesh, rules=rules,
                    params_shardings=state_sh.params, batch_size=config.eval_batch_size,
                    source_length=config.max_source_length,
                    target_length=config.max_target_length, max_decode_length=max_decode,
                    model_kind=model_kind, decode_fn=decode_fn)
                flat = metrics_lib.flat_scores(summary)
                record.update(flat)
                writer.write(gstep, "eval", {**flat, "epoch": epoch,
                                             "eval_seconds": time.perf_counter() - start})
                if jax.process_index() == 0:
                    _write_predictions(out_dir, epoch, predictions, summary)
                if config.selection_metric not in flat:
                    raise ValueError(f"selection_metric {config.selection_metric!r} not among "
                                     f"the validation scores {sorted(flat)}")
                score = flat[config.selection_metric]
                if position["best_score"] is None or score > position["best_score"]:
                    position["best_score"], position["best_epoch"] = score, epoch
                    position["best_metrics"] = {k: v for k, v in summary.items()
                                                if k != "per_task"}
                    _save_best(out_dir, model, state.params,
                               {"epoch": epoch, "step": gstep, "metrics": flat}, vocab)
            elif epoch == config.num_epochs - 1:
                position["best_epoch"] = epoch
                _save_best(out_dir, model, state.params, {"epoch": epoch, "step": gstep}, vocab)
            position["history"] = list(position["history"]) + [record]
            position["epoch"] = epoch + 1
            position["step_in_epoch"] = 0
            _save_checkpoint(manager, state, position)
    finally:
        if progress is not None:
            progress.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()

    best_dir = os.path.join(out_dir, BEST_SUBDIR)
    result = TrainResult(
        best_checkpoint_dir=best_dir if os.path.exists(best_dir) else None,
        best_epoch=position["best_epoch"], best_metrics=dict(position["best_metrics"]),
        history=list(position["history"]), final_step=int(position["global_step"]),
        completed=not stopped)
    if stopped:
        return result
    del state
    from activeit_jax import checkpoints
    result.params = checkpoints.restore_params(best_dir, model, state_sh.params)
    if jax.process_index() == 0:
        io_utils.atomic_write_json(os.path.join(out_dir, SUMMARY_FILE), {
            "best_checkpoint_dir": best_dir, "best_epoch": result.best_epoch,
            "best_metrics": result.best_metrics, "history": result.history,
            "final_step": result.final_step, "num_train_examples": len(examples),
            "num_val_examples": len(val_examples), "config": _config_dict(config)})
    return result


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["mesh_shape"] = dict(config.mesh_shape)
    out["logical_axis_rules"] = (None if config.logical_axis_rules is None
                                 else [list(r) for r in config.logical_axis_rules])
    return out


def _write_predictions(out_dir: str, epoch: int, predictions: Sequence[Mapping[str, Any]],
                       summary: Mapping[str, Any]) -> None:
    eval_dir = os.path.join(out_dir, "eval")
    io_utils.atomic_write_text(os.path.join(eval_dir, f"epoch_{epoch}_predictions.jsonl"),
                               "".join(_json_line(r) for r in predictions))
    io_utils.atomic_write_json(os.path.join(eval_dir, f"epoch_{epoch}_metrics.json"),
                               dict(summary))


class _Window:
    """Host-side timing between two metric writes."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0
        self.input_tokens = 0
        self.target_tokens = 0

    def add_tokens(self, inputs: int, targets: int) -> None:
        self.input_tokens += inputs
        self.target_tokens += targets

    def flush(self, step_metrics: Mapping[str, Any]) -> dict[str, float]:
        """Scalars of the last step + throughput since the previous flush (after a sync)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {k: float(np.asarray(v)) for k, v in step_metrics.items()}
        out["step_time_s"] = elapsed / max(self.steps, 1)
        out["tokens_per_s"] = (self.input_tokens + self.target_tokens) / elapsed
        out["target_tokens_per_s"] = self.target_tokens / elapsed
        self.reset()
        return out


def _progress_bar(config: TrainConfig, total: int, initial: int):
    if not config.progress_bar or jax.process_index() != 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
