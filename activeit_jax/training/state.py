"""Train state (params + optax state + step), optimizers, learning-rate schedules, shardings.

The train state is a plain pytree so that orbax saves and restores it without custom handlers
and jit places it with one `NamedSharding` per leaf. Optimizer-state shardings follow the
parameter they belong to (`optax.tree_utils.tree_map_params`), so AdamW moments are sharded like
their parameters and Adafactor's factored row/column statistics like the matching parameter
dimensions.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from activeit_jax.models import layer_layout

PyTree = Any

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adafactor")


@flax.struct.dataclass
class TrainState:
    """What one optimisation step reads and writes.

    Attributes:
      step: int32 scalar, number of optimizer updates applied so far.
      params: the model parameters (plain pytree, as `model.init_params` returns).
      opt_state: the optax state of `optimizer` for `params`.
    """
    step: jax.Array
    params: PyTree
    opt_state: PyTree


def create_train_state(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0 (call under jit to place it with `state_shardings`)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def make_schedule(kind: str, learning_rate: float, warmup_steps: int = 0,
                  total_steps: int | None = None) -> optax.Schedule:
    """A learning-rate schedule with linear warm-up from 0 (as HF `get_*_schedule_with_warmup`).

    Args:
      kind: "constant" (warm-up, then `learning_rate`), "linear" (warm-up, then a linear decay
        to 0 at `total_steps`) or "cosine" (warm-up, then a cosine decay to 0 at
        `total_steps`, as Stanford Alpaca).
      learning_rate: the peak rate.
      warmup_steps: steps of linear increase from 0; the rate at step s < warmup_steps is
        `learning_rate * s / warmup_steps` (step 0 has rate 0).
      total_steps: total optimizer steps; required for "linear" and "cosine".

    Returns:
      step -> learning rate.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if kind == "constant":
        after = optax.constant_schedule(learning_rate)
    else:
        if total_steps is None or total_steps <= 0:
            raise ValueError(f"the {kind} schedule needs total_steps > 0")
        decay_steps = max(total_steps - warmup_steps, 1)
        after = (optax.linear_schedule(learning_rate, 0.0, decay_steps) if kind == "linear"
                 else optax.cosine_decay_schedule(learning_rate, decay_steps))
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def decay_mask(params: PyTree) -> PyTree:
    """True for matrices (weight decay applies), False for vectors (layer-norm scales, biases)."""
    return jax.tree.map(lambda p: np.ndim(p) >= 2, params)


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   max_grad_norm: float | None = 1.0,
                   adafactor_kwargs: Mapping[str, Any] | None = None,
                   stacked_layers: bool = False) -> optax.GradientTransformation:
    """AdamW or Adafactor with an optional global-norm gradient clip before it.

    Args:
      name: "adamw" or "adafactor".
      schedule: step -> learning rate.
      weight_decay: decoupled weight decay (matrices only, see `decay_mask`).
      b1, b2, eps: AdamW moments and epsilon.
      max_grad_norm: clip gradients to this global norm first; None or <= 0 disables.
      adafactor_kwargs: extra keyword arguments of `optax.adafactor`.
      stacked_layers: the params hold stacked layers (a scanned model, `scan_layers`):
        the optimizer then treats each layer's slice as its own parameter
        (`per_layer_slices`), as it does for the per-layer layout.

    Returns:
      The gradient transformation.
    """
    if name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                          mask=decay_mask)
    elif name == "adafactor":
        kwargs = dict(adafactor_kwargs or {})
        if weight_decay:
            kwargs.setdefault("weight_decay_rate", weight_decay)
            kwargs.setdefault("weight_decay_mask", decay_mask)
        opt = optax.adafactor(learning_rate=schedule, **kwargs)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if stacked_layers:
        opt = per_layer_slices(opt)
    if max_grad_norm is not None and max_grad_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), opt)
    return opt


def optimizer_from_config(config: Any, model: Any, total_steps: int
                          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer a `TrainConfig` describes, for `model` (stacked-layer state when its
    layers are scanned), and its learning-rate schedule over `total_steps`.

    Args:
      config: a `training.config.TrainConfig`.
      model: the model wrapper (its `config.scan_layers` decides the layer layout).
      total_steps: optimizer steps of the run (the schedule's horizon).

    Returns:
      (optimizer, schedule): what the trainer and `activeit-jax compile` both build.
    """
    schedule = make_schedule(config.schedule, config.learning_rate, config.warmup_steps,
                             total_steps)
    return make_optimizer(
        config.optimizer, schedule, weight_decay=config.weight_decay, b1=config.adam_b1,
        b2=config.adam_b2, eps=config.adam_eps, max_grad_norm=config.max_grad_norm,
        stacked_layers=layer_layout.scans_layers(getattr(model, "config", None))), schedule


def per_layer_slices(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` applied to every layer's slice of the stacked parameters (leaves with a leading
    `layers` axis, `models.layer_layout`) and to the other parameters whole.

    Adafactor's clipping and parameter scale are block RMSs over a whole leaf, and its
    factoring and the weight-decay mask look at a leaf's rank: over a stacked leaf they would
    mix the layers. Mapped over the layers axis (`jax.vmap`), the update of each layer is the
    one the per-layer layout computes.
    """
    def init(params: PyTree) -> PyTree:
        if not any(hasattr(x, "shape") for x in jax.tree.leaves(params)):
            # Placeholders, not arrays: `optax.tree_utils.tree_map_params` locating the
            # parameter-shaped parts of the state (whose structure vmap does not change).
            return inner.init(params)
        return jax.vmap(inner.init)(params)

    vmapped = optax.GradientTransformation(init, jax.vmap(inner.update))

    def labels(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "stacked" if layer_layout.is_stacked_path(path) else "whole",
            params)

    return optax.multi_transform({"stacked": vmapped, "whole": inner}, labels)


# ----------------------------------------------------------------------------------------------
# Shardings of the state (the mesh, the logical-axis rules and every batch sharding live in
# `activeit_jax.partitioning`).

def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def opt_state_specs(optimizer: optax.GradientTransformation, params_shapes: PyTree,
                    param_specs: PyTree) -> PyTree:
    """Mesh `PartitionSpec`s for the optax state of `optimizer`, following the parameters.

    A state leaf with its parameter's shape takes the parameter's spec; a leaf whose shape is
    the parameter's with one dimension removed (Adafactor's row / column statistics) takes the
    spec without that dimension; anything else (counters, placeholders) is replicated.

    Args:
      optimizer: the transformation.
      params_shapes: parameters or their `jax.ShapeDtypeStruct`s.
      param_specs: mesh `PartitionSpec` per parameter (same structure).
    """
    state_shapes = jax.eval_shape(optimizer.init, params_shapes)

    def follow(leaf, param, spec):
        if isinstance(leaf, optax.MaskedNode):  # a leaf another part of the state holds
            return leaf
        spec = tuple(spec) + (None,) * (len(param.shape) - len(tuple(spec)))
        if tuple(leaf.shape) == tuple(param.shape):
            return PartitionSpec(*spec)
        if len(leaf.shape) == len(param.shape) - 1:
            for dim in range(len(param.shape)):
                if tuple(param.shape[:dim]) + tuple(param.shape[dim + 1:]) == tuple(leaf.shape):
                    return PartitionSpec(*(spec[:dim] + spec[dim + 1:]))
        return PartitionSpec()

    return optax.tree_utils.tree_map_params(
        optimizer, follow, state_shapes, params_shapes, param_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: (_is_spec(x) or isinstance(x, (jax.ShapeDtypeStruct,
                                                          optax.MaskedNode))))


def train_state_shardings(mesh: Mesh, optimizer: optax.GradientTransformation,
                          params_shapes: PyTree, param_specs: PyTree) -> TrainState:
    """`NamedSharding` per leaf of the `TrainState` (a TrainState of shardings)."""
    to_named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    params_sh = jax.tree.map(to_named, param_specs, is_leaf=_is_spec)
    opt_sh = jax.tree.map(to_named, opt_state_specs(optimizer, params_shapes, param_specs),
                          is_leaf=_is_spec)
    return TrainState(step=replicated(mesh), params=params_sh, opt_state=opt_sh)


def abstract_train_state(optimizer: optax.GradientTransformation, params_shapes: PyTree,
                         shardings: TrainState | None = None) -> TrainState:
    """`jax.ShapeDtypeStruct`s of the train state (with shardings when given), for restoring."""
    shapes = jax.eval_shape(lambda p: create_train_state(p, optimizer), params_shapes)
    if shardings is None:
        return shapes
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def count_params(params: PyTree) -> int:
    """Total number of parameter elements."""
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))

