"""Device mesh and the logical-axis -> mesh-axis rules table (t5x style).

Every parameter and main activation in `activeit_jax.models` is annotated with *logical* axis
names (`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `vocab`, `relpos_buckets`, `layers`).
One rules table maps those names onto the three *mesh* axes:

  data   pure data parallelism (batch split, parameters replicated),
  fsdp   data parallelism that also shards parameters (ZeRO-3 / FSDP): the batch is split
         over `data` x `fsdp`, the parameters' `embed` dimension over `fsdp`,
  model  tensor parallelism (Megatron style: heads, mlp and vocab split).

Changing the parallelism is therefore a config change (`configs/partitioning.gin`: mesh sizes
and rules), not a code change.

How the rules resolve: for each array, the rules are scanned in order and a logical name takes
the first mesh axis (or tuple of axes) that no other dimension of the same array has taken yet.
So `batch -> (data, fsdp)` must come before `embed -> fsdp`: an activation
`(batch, length, embed)` then shards its batch on data x fsdp and leaves embed whole, while a
parameter `(embed, mlp)` (no batch) shards embed on fsdp and mlp on model.

Typical use::

    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    shardings = partitioning.params_shardings(model, mesh)
    params = jax.jit(model.init_params, out_shardings=shardings)(rng)
    with partitioning.mesh_context(mesh, model.logical_axis_rules):
        logits = jax.jit(model.logits)(params, batch)

Sharded dimensions must divide evenly: with `heads -> model`, both the query heads and the
key/value heads (grouped-query attention) must be multiples of the `model` axis size; map
`heads` to None (or shrink `model`) otherwise.

Activation constraints (`nn.with_logical_constraint`) are active only while a mesh is set
(`mesh_context` / `jax.set_mesh`); outside one they are no-ops, so the same model code runs
unsharded on one device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Mesh axis names, outermost first. `model` is innermost so that tensor-parallel groups are
# neighbouring devices (fastest links on GPU hosts and TPU slices).
MESH_AXES: tuple[str, ...] = ("data", "fsdp", "model")

LogicalRules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]

# Logical axis name -> mesh axis (or axes, or None = replicated). Order matters: see the module
# docstring. Mirrors t5x's standard rules with an extra FSDP axis.
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("embed", "fsdp"),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
)


@gin.register
@dataclasses.dataclass(frozen=True)
class PartitioningConfig:
    """Mesh sizes and logical axis rules, bound from `configs/partitioning.gin`.

    Attributes:
      axis_sizes: mesh axis name -> size; one axis may be -1 (= all remaining devices).
      logical_axis_rules: (logical name, mesh axis / tuple of axes / None) pairs, in priority
        order.
    """
    axis_sizes: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "model": 1})
    logical_axis_rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES

    def make_mesh(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
        """The mesh described by `axis_sizes` over `devices` (default: all devices)."""
        return make_mesh(self.axis_sizes, devices)


def normalize_rules(rules: LogicalRules | None) -> tuple[tuple[str, Any], ...]:
    """Turns rules from gin/JSON (lists) into the tuple-of-tuples form flax expects.

    Args:
      rules: (logical, mesh) pairs; the mesh side may be a string, a list/tuple of strings or
        None. None means `DEFAULT_LOGICAL_AXIS_RULES`.

    Returns:
      A hashable tuple of (logical, mesh) pairs.
    """
    if rules is None:
        return DEFAULT_LOGICAL_AXIS_RULES
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"a logical axis rule must be a (logical, mesh) pair, got {rule!r}")
        logical, mesh_axes = rule
        if isinstance(mesh_axes, list):
            mesh_axes = tuple(mesh_axes)
        out.append((str(logical), mesh_axes))
    return tuple(out)


def resolve_axis_sizes(axis_sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fills in the single -1 entry and checks the product equals `num_devices`.

    Args:
      axis_sizes: mesh axis -> size (-1 allowed once). Axes of `MESH_AXES` that are missing
        get size 1; unknown axis names are an error.
      num_devices: the number of devices the mesh must cover.

    Returns:
      {axis: size} for every axis in `MESH_AXES`, in that order.
    """
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    sizes = {axis: int(axis_sizes.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {fill}")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices cannot be split into {sizes}: "
                             f"{num_devices} is not a multiple of {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, "
                         f"but {num_devices} are given")
    return sizes


def make_mesh(axis_sizes: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ("data", "fsdp", "model") mesh.

    Args:
      axis_sizes: mesh axis -> size; one may be -1 to take the remaining devices. Default
        `{"data": -1, "fsdp": 1, "model": 1}` (pure data parallelism).
      devices: the devices to use (default `jax.devices()`); `device_grid` places them
        (topology-aware, and across hosts with the data axis on the slow links).

    Returns:
      A `jax.sharding.Mesh` whose axes are all `AxisType.Auto`, so XLA propagates shardings
      from the constraints (the pjit model the logical rules are written for).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes(axis_sizes or {"data": -1}, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    return Mesh(device_grid(shape, devices), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _granule_key(device: Any) -> int:
    """The unit behind the slow links: the TPU slice (multi-slice, DCN), else the host."""
    if getattr(device, "platform", None) == "tpu":
        return int(getattr(device, "slice_index", 0) or 0)
    return int(getattr(device, "process_index", 0))


def _single_granule_grid(shape: tuple[int, ...], devices: Sequence[Any]) -> np.ndarray:
    try:
        # Topology-aware placement (TPU ICI rings, GPU NVLink islands) when JAX knows it.
        from jax.experimental import mesh_utils
        return mesh_utils.create_device_mesh(shape, devices=list(devices))
    except (ValueError, NotImplementedError, AssertionError):
        return np.asarray(devices, dtype=object).reshape(shape)


def device_grid(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    """Arranges `devices` as a (data, fsdp, model) array with the slow links on `data`.

    The devices are grouped into *granules* joined by the slower network: hosts (processes)
    on GPU / CPU, slices on multi-slice TPU (one TPU slice, even across several hosts, is one
    ICI domain and one granule). With one granule the topology-aware
    `mesh_utils.create_device_mesh` places the devices. With G > 1 granules of equal size and
    `data % G == 0`, granule g holds data rows `g * data/G ... (g+1) * data/G - 1` and the
    whole fsdp x model block of each of them (`create_hybrid_device_mesh` layout): only the
    data-parallel gradient all-reduce crosses hosts, fsdp gathers and tensor-parallel
    collectives stay on the fast links. Otherwise (e.g. a model axis larger than a host) the
    devices are sorted by (granule, id) and reshaped, so the axes still follow the host order.

    Args:
      shape: (data, fsdp, model) sizes, product = len(devices).
      devices: the devices.

    Returns:
      An object array of devices of that shape.
    """
    shape = tuple(int(s) for s in shape)
    groups: dict[int, list[Any]] = {}
    for device in devices:
        groups.setdefault(_granule_key(device), []).append(device)
    if len(groups) == 1:
        return _single_granule_grid(shape, devices)
    granules = [groups[key] for key in sorted(groups)]
    count = len(granules)
    if shape[0] % count == 0 and len({len(g) for g in granules}) == 1:
        inner = (shape[0] // count,) + shape[1:]
        return np.concatenate([_single_granule_grid(inner, g) for g in granules], axis=0)
    ordered = sorted(devices, key=lambda d: (_granule_key(d), d.id))
    return np.asarray(ordered, dtype=object).reshape(shape)


def local_mesh(axis_sizes: Mapping[str, int] | None = None) -> Mesh:
    """A mesh over this process's own devices (`jax.local_devices()`).

    Embarrassingly parallel work (the scorer) runs one such mesh per host, with no cross-host
    collectives; equals `make_mesh` in a single-process run.
    """
    return make_mesh(axis_sizes, devices=jax.local_devices())


def spans_processes(mesh: Mesh) -> bool:
    """True when `mesh` holds devices of other processes (not fully addressable here)."""
    me = jax.process_index()
    return any(d.process_index != me for d in mesh.devices.flat)


def local_mesh_like(mesh: Mesh) -> Mesh:
    """This process's share of a multi-host mesh: the same fsdp and model sizes, `data` filled
    with the remaining local devices."""
    sizes = {"data": -1, "fsdp": mesh.shape["fsdp"], "model": mesh.shape["model"]}
    return local_mesh(sizes)


def logical_to_mesh_specs(logical_axes: Any, rules: LogicalRules | None = None) -> Any:
    """Maps a pytree of logical `PartitionSpec`s to mesh-axis `PartitionSpec`s.

    Args:
      logical_axes: pytree whose leaves are `PartitionSpec`s of logical names (e.g. from
        `model.params_logical_axes()`).
      rules: the rules table (default `DEFAULT_LOGICAL_AXIS_RULES`).

    Returns:
      The same pytree with mesh-axis `PartitionSpec` leaves.
    """
    return nn.logical_to_mesh(logical_axes, normalize_rules(rules))


def logical_to_shardings(logical_axes: Any, mesh: Mesh,
                         rules: LogicalRules | None = None) -> Any:
    """Maps a pytree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`.

    Args:
      logical_axes: pytree of logical `PartitionSpec`s.
      mesh: the device mesh.
      rules: the rules table (default `DEFAULT_LOGICAL_AXIS_RULES`).

    Returns:
      The same pytree with `NamedSharding` leaves.
    """
    specs = logical_to_mesh_specs(logical_axes, rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def params_shardings(model: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
    """`NamedSharding`s for the parameters of a model wrapper.

    Args:
      model: an `EncoderDecoderModel` / `DecoderOnlyModel` (anything with
        `params_logical_axes()`).
      mesh: the device mesh.
      rules: the rules table; default the model's own `logical_axis_rules`.

    Returns:
      Pytree of `NamedSharding`, same structure as the model's params.
    """
    if rules is None:
        rules = getattr(model, "logical_axis_rules", None)
    return logical_to_shardings(model.params_logical_axes(), mesh, rules)


def shard_params(params: Any, shardings: Any) -> Any:
    """Places a params pytree (numpy or jax arrays) onto devices with the given shardings."""
    return jax.device_put(params, shardings)


def batch_spec(ndim: int = 2, rules: LogicalRules | None = None) -> PartitionSpec:
    """Mesh `PartitionSpec` of a batch feature `[batch, length, ...]` under `rules`.

    The one place that decides how batches are split: training, evaluation and scoring
    batches all take their shardings from here, so changing the `batch` (or `length`) rule
    moves every batch alike. With the default rules: `PartitionSpec(("data", "fsdp"), None,
    ...)`, the batch over data x fsdp and every other dimension replicated.

    Args:
      ndim: rank of the feature (1 for per-row values `[B]`, 2 for token arrays `[B, T]`).
      rules: the rules table (default `DEFAULT_LOGICAL_AXIS_RULES`).

    Returns:
      A `PartitionSpec` of `ndim` entries.
    """
    logical = PartitionSpec("batch", *(["length"] if ndim >= 2 else []), *([None] * (ndim - 2)))
    return nn.logical_to_mesh_axes(logical, normalize_rules(rules))


def data_sharding(mesh: Mesh, ndim: int = 2, rules: LogicalRules | None = None) -> NamedSharding:
    """Sharding of a batch feature `[batch, length, ...]` (`batch_spec` on `mesh`).

    Args:
      mesh: the device mesh.
      ndim: rank of the feature (2 for token arrays `[B, T]`).
      rules: the rules table (default `DEFAULT_LOGICAL_AXIS_RULES`).

    Returns:
      A `NamedSharding` for `[B, T, ...]` arrays.
    """
    return NamedSharding(mesh, batch_spec(ndim, rules))


def batch_shardings(mesh: Mesh, batch: Mapping[str, Any],
                    rules: LogicalRules | None = None) -> dict[str, NamedSharding]:
    """`data_sharding` of every feature of a batch (numpy arrays or shapes' owners).

    Args:
      mesh: the device mesh.
      batch: feature name -> array (only its rank is read).
      rules: the rules table (default `DEFAULT_LOGICAL_AXIS_RULES`).

    Returns:
      feature name -> `NamedSharding`.
    """
    return {name: data_sharding(mesh, np.ndim(value), rules) for name, value in batch.items()}


def microbatch_sharding(mesh: Mesh, ndim: int, rules: LogicalRules | None = None
                        ) -> NamedSharding:
    """Sharding of a batch feature split into microbatches `[M, B/M, ...]`: the microbatch
    axis whole, the rest as `data_sharding` of the `[B/M, ...]` feature."""
    return NamedSharding(mesh, PartitionSpec(None, *batch_spec(ndim - 1, rules)))


def batch_shard_count(mesh: Mesh, rules: LogicalRules | None = None) -> int:
    """Into how many pieces `data_sharding` splits the batch dimension on `mesh` (the product
    of the sizes of the mesh axes the `batch` rule names): a batch must be a multiple."""
    axes = batch_spec(1, rules)[0]
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[axis] for axis in axes)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh,
                rules: LogicalRules | None = None) -> dict[str, jax.Array]:
    """Places every `[B, ...]` feature of a host batch on the mesh, split along the batch."""
    return {name: jax.device_put(value, data_sharding(mesh, np.ndim(value), rules))
            for name, value in batch.items()}


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: LogicalRules | None = None) -> Iterator[Mesh]:
    """Sets `mesh` as the current mesh and `rules` as flax's logical axis rules.

    Trace (jit) model functions inside this context so that their
    `nn.with_logical_constraint` annotations become sharding constraints on `mesh`.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(normalize_rules(rules)):
        yield mesh
