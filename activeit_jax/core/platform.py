"""The platform a program is compiled for, read where a model makes a per-platform choice.

`jax.default_backend()` names the devices of *this* machine. A program compiled ahead of time
for other devices (`activeit-jax compile` on a CPU host, for a TPU topology) must make the
choices of its target instead, e.g. `models.layers` attends a CPU batch a few rows at a time
(a `lax.map`), which on a TPU would only serialise the work. The target is the platform of the
mesh the program is traced under (`partitioning.mesh_context` / `jax.set_mesh`, which every
jitted program of the project enters to trace); without a mesh it is the default backend.
"""
from __future__ import annotations

import jax


def target_platform() -> str:
    """The platform ("cpu", "tpu", "gpu", ...) of the program being traced.

    Returns:
      The platform of the devices of the current mesh (`jax.set_mesh`, entered by
      `partitioning.mesh_context`), else `jax.default_backend()`.
    """
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = getattr(device, "platform", None)
    return str(platform) if platform else jax.default_backend()
