"""The two parameter layouts of a layer stack, and exact conversion between them.

A stack of `n` layers keeps its parameters either per layer (`layers_0/...`, ...,
`layers_{n-1}/...`, the layout of Hugging Face names and of every checkpoint written before
`scan_layers`) or stacked (`layers/...`, each leaf with a leading axis of size `n`, logical
name `layers`), the layout `nn.scan` wants (`layers.layer_stack`). The config's
`scans_layers` (its `scan_layers`, or by default the size rule) says which one a model uses;
converting is stacking or slicing, hence bit-exact both ways.

Stacks: LLaMA has one at the root of the params; T5 one under `encoder` and one under
`decoder` (the shared relative position bias, norms, embedding and head are not per layer).

The conversions work on nested dicts whose leaves are arrays (NumPy or jax) or anything else
given `stack` / `unstack` functions (shapes, shardings: `checkpoints.restore_params` uses
that to restore a checkpoint of the other layout directly onto the mesh).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from activeit_jax.models.layers import STACKED_LAYERS
from activeit_jax.models.llama import LlamaConfig
from activeit_jax.models.t5 import T5Config

Params = Any


def layer_stacks(config: Any) -> list[tuple[tuple[str, ...], int]]:
    """(path of the subtree holding the stack, number of layers) for each stack of a model.

    Args:
      config: a `T5Config` or `LlamaConfig`.
    """
    if isinstance(config, T5Config):
        return [(("encoder",), config.num_encoder_layers),
                (("decoder",), config.num_decoder_layers)]
    if isinstance(config, LlamaConfig):
        return [((), config.num_layers)]
    raise TypeError(f"no layer stacks known for {type(config).__name__}")


def scans_layers(config: Any) -> bool:
    """Whether a model config asks for the stacked layout (False for configs without
    layer stacks)."""
    return bool(getattr(config, "scans_layers", False))


def is_stacked_path(path: Sequence[Any]) -> bool:
    """Whether a leaf at `path` (keys, or `jax.tree_util` key entries) lies in a stacked
    layer subtree, i.e. has a leading `layers` axis."""
    return any(getattr(k, "key", k) == STACKED_LAYERS for k in path)


def per_layer_dims(path: Sequence[Any], leaf: Any) -> int:
    """The rank of one layer's slice of the leaf at `path` (its own rank per layer)."""
    return np.ndim(leaf) - (1 if is_stacked_path(path) else 0)


def stacked_location(path: tuple[str, ...], config: Any
                     ) -> tuple[tuple[str, ...], int] | None:
    """Where a per-layer parameter path lives in the stacked layout: (stacked leaf's path,
    index on its leading axis), or None for a parameter outside every stack.

    Example: `("encoder", "layers_3", "mlp", "wo", "kernel")` ->
    `(("encoder", "layers", "mlp", "wo", "kernel"), 3)`.
    """
    for prefix, num_layers in layer_stacks(config):
        n = len(prefix)
        if len(path) > n and tuple(path[:n]) == prefix and path[n].startswith("layers_"):
            index = path[n][len("layers_"):]
            if index.isdigit() and int(index) < num_layers:
                return (*prefix, STACKED_LAYERS, *path[n + 1:]), int(index)
    return None


def params_are_stacked(params: Mapping[str, Any], config: Any) -> bool | None:
    """True for the stacked layout, False for per-layer, None when `params` has neither
    (another model's tree)."""
    found = set()
    for path, num_layers in layer_stacks(config):
        node = _subtree(params, path)
        if node is None:
            return None
        if STACKED_LAYERS in node:
            found.add(True)
        elif num_layers == 0 or f"layers_{0}" in node:
            found.add(False)
        else:
            return None
    return found.pop() if len(found) == 1 else None


def _subtree(tree: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any] | None:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree if isinstance(tree, Mapping) else None


def _map_leaves(fn: Callable[..., Any], *trees: Any) -> Any:
    """Maps over nested dicts (leaves: anything that is not a Mapping)."""
    first = trees[0]
    if isinstance(first, Mapping):
        return {k: _map_leaves(fn, *(t[k] for t in trees)) for k in first}
    return fn(*trees)


def _array_stack(leaves: list[Any]) -> Any:
    if all(isinstance(x, np.ndarray) for x in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _array_unstack(leaf: Any, num_layers: int) -> list[Any]:
    return [leaf[i] for i in range(num_layers)]


def to_stacked(params: Params, config: Any,
               stack: Callable[[list[Any]], Any] = _array_stack) -> Params:
    """Per-layer params -> stacked params (other entries unchanged, not copied).

    Args:
      params: nested dict in the per-layer layout of `config`'s model.
      config: the model config (gives the stacks and their depths).
      stack: list of the `n` per-layer leaves -> one stacked leaf (default: `np.stack` for
        NumPy leaves, `jnp.stack` otherwise).

    Returns:
      The params in the stacked layout.
    """
    out = dict(params)
    for path, num_layers in layer_stacks(config):
        node = dict(_subtree(out, path) or {})
        names = [f"layers_{i}" for i in range(num_layers)]
        missing = [n for n in names if n not in node]
        if missing:
            raise ValueError(f"{'/'.join(path + (missing[0],))} is missing: not per-layer "
                             "params of this config")
        per_layer = [node.pop(n) for n in names]
        node[STACKED_LAYERS] = _map_leaves(lambda *leaves: stack(list(leaves)), *per_layer)
        out = _replace(out, path, node)
    return out


def to_per_layer(params: Params, config: Any,
                 unstack: Callable[[Any, int], list[Any]] = _array_unstack) -> Params:
    """Stacked params -> per-layer params (the inverse of `to_stacked`).

    Args:
      params: nested dict in the stacked layout of `config`'s model.
      config: the model config.
      unstack: (stacked leaf, n) -> the `n` per-layer leaves (default: index the leading
        axis).

    Returns:
      The params in the per-layer layout.
    """
    out = dict(params)
    for path, num_layers in layer_stacks(config):
        node = dict(_subtree(out, path) or {})
        if STACKED_LAYERS not in node:
            raise ValueError(f"{'/'.join(path + (STACKED_LAYERS,))} is missing: not stacked "
                             "params of this config")
        split = _map_leaves(lambda leaf: unstack(leaf, num_layers), node.pop(STACKED_LAYERS))
        for i in range(num_layers):
            node[f"layers_{i}"] = _map_leaves(lambda leaves, i=i: leaves[i], split)
        out = _replace(out, path, node)
    return out


def _replace(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    if not path:
        return dict(value)
    out = dict(tree)
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
    return out


def convert_layout(params: Params, config: Any) -> Params:
    """`params` in the layout `config.scans_layers` asks for, from either layout (unchanged
    when it already is in that layout).

    Raises:
      ValueError: `params` is in neither layout of this config.
    """
    stacked = params_are_stacked(params, config)
    if stacked is None:
        raise ValueError("params are in neither the stacked nor the per-layer layout of "
                         f"{type(config).__name__}")
    if stacked == config.scans_layers:
        return params
    return to_stacked(params, config) if config.scans_layers else to_per_layer(params, config)


def with_scan_layers(config: Any, scan_layers: bool | None) -> Any:
    """`config` with `scan_layers` replaced (None: the size rule)."""
    return dataclasses.replace(config, scan_layers=scan_layers)


# -- shapes and shardings of the other layout (restoring across layouts) --------------------

def other_layout_abstract(abstract: Params, config: Any) -> Params:
    """The `jax.ShapeDtypeStruct` tree of the layout `config` does not use, from the one of
    the layout it does use (shardings dropped)."""
    if config.scans_layers:
        return to_per_layer(abstract, config, lambda leaf, n: [
            jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)] * n)
    return to_stacked(abstract, config, lambda leaves: jax.ShapeDtypeStruct(
        (len(leaves), *leaves[0].shape), leaves[0].dtype))


def other_layout_shardings(shardings: Params, config: Any) -> Params:
    """Shardings for the other layout's leaves derived from this layout's: a per-layer leaf
    takes its stacked leaf's `PartitionSpec` without the `layers` entry, a stacked leaf its
    layers' spec with the `layers` axis unsharded. Non-`NamedSharding`s are reused."""
    from jax.sharding import NamedSharding, PartitionSpec

    def drop_first(sharding: Any, n: int) -> list[Any]:
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
        return [sharding] * n

    def add_first(leaves: list[Any]) -> Any:
        sharding = leaves[0]
        if isinstance(sharding, NamedSharding):
            return NamedSharding(sharding.mesh, PartitionSpec(None, *tuple(sharding.spec)))
        return sharding

    if config.scans_layers:
        return to_per_layer(shardings, config, drop_first)
    return to_stacked(shardings, config, add_first)
