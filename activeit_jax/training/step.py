"""The jitted, sharded train step: batch placement, microbatch accumulation, loss and grads."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from activeit_jax import partitioning
from activeit_jax.core.errors import ActiveITError, UsageError
from activeit_jax.data import prompts
from activeit_jax.models import TrainableModel
from activeit_jax.training import state as ts

PyTree = Any


def resolve_rules(model: TrainableModel, rules: Sequence[tuple[str, Any]] | None
                  ) -> tuple[tuple[str, Any], ...]:
    """`rules`, else the model's own `logical_axis_rules`, else the default table."""
    if rules is None:
        rules = getattr(model, "logical_axis_rules", None)
    return partitioning.normalize_rules(rules)


def put_batch(batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]
              ) -> dict[str, jax.Array]:
    """Places a global numpy batch (identical on every process) with its shardings."""
    return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx])
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# Train step.

def split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int,
                       mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] | None = None
                       ) -> dict[str, jax.Array]:
    """[B, ...] -> [M, B/M, ...] with microbatch m = rows m, m + M, m + 2M, ...

    The strided split keeps every microbatch spread over all batch shards (no data moves
    between devices); the loss is a sum over rows, so which rows go together does not matter.
    With `mesh`, each microbatch is constrained to the batch sharding of `rules`
    (`partitioning.microbatch_sharding`).
    """
    out = {}
    for key, x in batch.items():
        per = x.shape[0] // num_microbatches
        x = jnp.swapaxes(x.reshape((per, num_microbatches) + x.shape[1:]), 0, 1)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(
                x, partitioning.microbatch_sharding(mesh, x.ndim, rules))
        out[key] = x
    return out


def loss_and_grads(model: TrainableModel, params: PyTree, batch: Mapping[str, jax.Array],
                   dropout_rng: jax.Array | None, num_microbatches: int = 1,
                   mesh: Mesh | None = None, grad_shardings: PyTree | None = None,
                   rules: Sequence[tuple[str, Any]] | None = None
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
      rules: the logical-axis rules whose `batch` rule places the microbatches.

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
    micro = split_microbatches(batch, num_microbatches, mesh, rules)

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


def make_train_step(model: TrainableModel, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, mesh: Mesh,
                    state_shardings: ts.TrainState, batch_sharding: Mapping[str, NamedSharding],
                    num_microbatches: int = 1, use_dropout: bool = True,
                    donate: bool = True,
                    rules: Sequence[tuple[str, Any]] | None = None) -> Callable:
    """The jitted `train_step(state, batch, rng) -> (state, metrics)` with explicit shardings.

    The update uses the token-weighted mean gradient (grads of summed losses / total target
    tokens over all microbatches). Metrics (replicated scalars): loss, num_tokens, grad_norm,
    learning_rate (the rate this update used). `batch_sharding` comes from
    `partitioning.batch_shardings` with the same `rules` (they place the microbatches).
    """
    grad_shardings = state_shardings.params

    def step_fn(state: ts.TrainState, batch, rng):
        dropout_rng = jax.random.fold_in(rng, state.step) if use_dropout else None
        loss_sum, num_tokens, grads = loss_and_grads(
            model, state.params, batch, dropout_rng, num_microbatches, mesh, grad_shardings,
            rules)
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


class TrainingDivergedError(ActiveITError):
    """The loss or the gradient norm of a step is not finite."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
    """Stops a run at the first step whose loss or gradient norm is NaN or infinite, before
    such parameters reach a checkpoint or `best/`.

    Args:
      step: the global step the metrics belong to (1-based).
      metrics: the train step's metrics (device or host scalars).

    Raises:
      TrainingDivergedError: naming the step and the values.
    """
    values = {k: float(np.asarray(jax.device_get(metrics[k])))
              for k in ("loss", "grad_norm") if k in metrics}
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} {v}" for k, v in values.items())
        raise TrainingDivergedError(
            f"training diverged at step {step}: {shown}; nothing of this step was saved "
            "(causes: a vocabulary larger than the model's embedding, non-finite initial "
            "weights, a learning rate too high)")


# ----------------------------------------------------------------------------------------------
# Evaluation.


def check_settings(config: Any) -> None:
    """Checks each `TrainConfig` value on its own (types, ranges, names); called when the
    config is built, so a bad gin value fails before any run directory is touched.

    Raises:
      UsageError: naming the field and the value.
    """
    for name, low in (("num_epochs", 1), ("batch_size", 1), ("num_microbatches", 1),
                      ("warmup_steps", 0), ("seed", 0), ("max_source_length", 2),
                      ("max_target_length", 2), ("num_pos_examples", 0),
                      ("eval_batch_size", 1), ("save_every_steps", 0), ("max_to_keep", 1),
                      ("log_every_steps", 0)):
        _check_int(name, getattr(config, name), low)
    for name in ("max_instances_per_task", "max_eval_instances_per_task",
                 "max_val_instances_per_task", "max_decode_length"):
        if getattr(config, name, None) is not None:
            _check_int(name, getattr(config, name), 1)
    for name in ("learning_rate", "weight_decay", "adam_b1", "adam_b2", "adam_eps"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (name == "learning_rate" and value == 0):
            raise UsageError(f"TrainConfig.{name} must be a number "
                             f"{'> 0' if name == 'learning_rate' else '>= 0'}, got {value!r}")
    for name, known in (("schedule", ts.SCHEDULES), ("optimizer", ts.OPTIMIZERS),
                        ("selection_metric", SELECTION_METRICS)):
        if getattr(config, name) not in known:
            raise UsageError(f"TrainConfig.{name} must be one of {list(known)}, got "
                             f"{getattr(config, name)!r}")
    try:
        prompts.check_prompt_format(getattr(config, "prompt_format", prompts.AUTO),
                                    allow_auto=True)
    except ValueError as err:
        raise UsageError(f"TrainConfig.{err}") from None


SELECTION_METRICS = tuple(f"{m}{s}" for m in ("rougeL", "exact_match")
                          for s in ("", "_cls", "_gen"))


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"TrainConfig.{name} must be an integer >= {low}, got {value!r}")


def validate_config(config: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None
                    ) -> None:
    """Checks a `TrainConfig` against the mesh: batch sizes divide by the number of batch
    shards (`partitioning.batch_shard_count` under `rules`: data x fsdp by default) and
    microbatches. (The deprecated `model_kind` is checked against the model:
    `models.check_declared_kind`.)"""
    shards = partitioning.batch_shard_count(mesh, rules)
    per = config.num_microbatches * shards
    if config.num_microbatches < 1 or config.batch_size % per:
        raise UsageError(
            f"batch_size {config.batch_size} must be divisible by num_microbatches "
            f"({config.num_microbatches}) x the batch's mesh shards ({shards}: data*fsdp "
            f"under the default rules) = {per}")
    if config.eval_batch_size % shards:
        raise UsageError(f"eval_batch_size {config.eval_batch_size} must be divisible by the "
                         f"batch's mesh shards ({shards}: data*fsdp under the default rules)")
