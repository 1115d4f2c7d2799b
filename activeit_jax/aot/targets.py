"""Compilation targets: the chips (HBM, peak bf16 FLOP/s, HBM bandwidth) and their devices.

A target is named like a TPU topology (`v5e:4x4`, `v4:2x2x4`, `v5p:2x2x4`, `v6e:2x4`: chips
along each torus axis) or like a Cloud TPU accelerator type (`v5e-16`, `v4-32`, `v5p-32`,
`v6e-8`; v4 and v5p count TensorCores, two per chip, v5e and v6e count chips). Its devices come
from `jax.experimental.topologies.get_topology_desc` and libtpu's TPU compiler: compile-only
devices, nothing is attached. v4 and v5p are described as "megacore" chips (one JAX device per
chip, both TensorCores), as a TPU VM runs them.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

from activeit_jax.core.errors import UsageError

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip (= one JAX device of the target).

    Attributes:
      name: "v4", "v5e", "v5p", "v6e", "h100".
      hbm_bytes: memory per chip, the budget a program's bytes are checked against.
      peak_flops: dense bf16 FLOP/s per chip.
      hbm_bandwidth: bytes/s between HBM and the chip.
      source: where the three numbers are published.
    """
    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    source: str


# Published per-chip figures (dense bf16; the GPU's without sparsity).
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GIB, 275e12, 1200e9,
               "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB HBM2, 1200 GBps"),
    "v5e": Chip("v5e", 16 * GIB, 197e12, 819e9,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB HBM2, 819 GBps"),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 2765e9,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GB HBM2e, 2765 GBps"),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1640e9,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GB HBM, 1640 GBps"),
    "h100": Chip("h100", 80 * 10**9, 989e12, 3.35e12,
                 "NVIDIA H100 SXM datasheet: 989 TFLOPS dense bf16, 80 GB HBM3, 3.35 TB/s"),
}

# Torus dimensions of each TPU generation, and its chip configuration.
_TPU_DIMS = {"v4": 3, "v5p": 3, "v5e": 2, "v6e": 2}
_CHIP_CONFIG = {"v4": "megacore", "v5p": "megacore", "v5e": "default", "v6e": "default"}
# Accelerator-type names that count TensorCores (2 per chip) instead of chips.
_COUNTS_CORES = ("v4", "v5p")
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class Target:
    """A compilation target: a chip and how many, and its topology name.

    Attributes:
      chip: the chip's figures.
      topology: the topology name libtpu understands ("v5e:4x4"), or "h100:N" for GPUs.
      num_chips: devices of the target.
    """
    chip: Chip
    topology: str
    num_chips: int

    @property
    def platform(self) -> str:
        return "gpu" if self.chip.name == "h100" else "tpu"

    def with_chips(self, num_chips: int) -> "Target":
        """The same generation with `num_chips` chips (the default topology of that count)."""
        return parse_target(f"{self.chip.name}:{default_shape(self.chip.name, num_chips)}")


def default_shape(generation: str, num_chips: int) -> str:
    """The usual slice shape of `num_chips` chips (a power of two) of a TPU generation:
    v5e/v6e 2-D (1x1, 1x2, 2x2, 2x4, 4x4, 4x8, ...), v4/v5p 3-D (2x2x1, 2x2x2, 2x2x4, 2x4x4,
    4x4x4, ...): the smallest axis doubles, the last of equal ones first."""
    if num_chips < 1 or num_chips & (num_chips - 1):
        raise UsageError(f"a {generation} slice needs a power-of-two chip count, got {num_chips}")
    if generation not in _TPU_DIMS:
        raise UsageError(f"no TPU topology for {generation!r}")
    if _TPU_DIMS[generation] == 2:
        shape = [1, 1]
    else:
        shape = [2, 2, 1] if num_chips >= 4 else [1, 1, 1]
    while math.prod(shape) < num_chips:
        smallest = min(shape)
        axis = max(i for i, size in enumerate(shape) if size == smallest)
        shape[axis] *= 2
    return "x".join(str(s) for s in shape)


def parse_target(name: str) -> Target:
    """Parses a target name (see the module docstring; GPUs: "h100:8").

    Raises:
      UsageError: an unknown generation or a malformed shape.
    """
    text = name.strip().lower()
    match = re.fullmatch(r"([a-z0-9]+?)(?:lite(?:pod)?)?([:-])(.+)", text)
    if not match:
        raise UsageError(f"--topology {name!r}: expected e.g. v5e:4x4, v4:2x2x4, v5p-32, "
                         f"v6e-8 or h100:8")
    generation, sep, rest = match.groups()
    generation = _ALIASES.get(generation, generation)
    if generation == "v5" and "lite" in text:
        generation = "v5e"
    if generation not in CHIPS:
        raise UsageError(f"--topology {name!r}: unknown chip {generation!r}; known: "
                         f"{sorted(CHIPS)}")
    if generation == "h100":
        if not rest.isdigit() or int(rest) < 1:
            raise UsageError(f"--topology {name!r}: a GPU target is h100:NUM_GPUS")
        return Target(CHIPS["h100"], f"h100:{int(rest)}", int(rest))
    if sep == "-":
        if not rest.isdigit():
            raise UsageError(f"--topology {name!r}: expected {generation}-NUMBER")
        count = int(rest) // (2 if generation in _COUNTS_CORES else 1)
        shape = default_shape(generation, max(count, 1))
    else:
        shape = rest
    dims = [int(d) for d in shape.split("x")] if re.fullmatch(r"\d+(x\d+)*", shape) else []
    if len(dims) != _TPU_DIMS[generation] or min(dims) < 1:
        raise UsageError(f"--topology {name!r}: a {generation} topology has "
                         f"{_TPU_DIMS[generation]} dimensions, e.g. "
                         f"{default_shape(generation, 16)}")
    return Target(CHIPS[generation], f"{generation}:{shape}", math.prod(dims))


def target_devices(target: Target) -> list[Any]:
    """The compile-only devices of `target` (libtpu for TPUs; see `gpu_devices` for GPUs).

    Raises:
      UsageError: libtpu is not installed (`pip install -e .[tpu]`), or the topology is not
        one libtpu knows.
    """
    if target.platform == "gpu":
        return gpu_devices(target)
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        raise UsageError("compiling for a TPU needs libtpu: pip install -e '.[tpu]' "
                         "(it installs the jax[tpu] the TPU VMs run)")
    from jax.experimental import topologies
    try:
        topology = topologies.get_topology_desc(
            topology_name=target.topology, platform="tpu",
            chip_config_name=_CHIP_CONFIG[target.chip.name])
    except Exception as err:  # libtpu's own error types
        raise UsageError(f"libtpu cannot describe topology {target.topology!r}: "
                         f"{str(err).splitlines()[0]}") from None
    return list(topology.devices)


def gpu_devices(target: Target) -> Sequence[Any]:
    """Compile-only GPU devices: JAX 0.10 has none without a GPU plugin and a GPU (see
    `GPU_UNAVAILABLE`), so this raises with the reason."""
    raise UsageError(GPU_UNAVAILABLE)


GPU_UNAVAILABLE = ("compiling for a GPU without one is not available: "
                   "jax.experimental.topologies.get_topology_desc(platform='cuda') needs the "
                   "CUDA PJRT plugin (jax-cuda12-plugin), see docs/scale_out.md")
