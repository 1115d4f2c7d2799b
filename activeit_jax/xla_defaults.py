"""XLA settings the command line applies before JAX starts (see `apply`).

Kept in one place, imported by `activeit_jax.main` and the benchmarks before `jax`: XLA reads
`XLA_FLAGS` once, when the first backend starts.
"""
from __future__ import annotations

import os

# XLA's CPU backend (jaxlib 0.10) hands row reductions to YNNPACK fusions that materialise
# every broadcast operand at full size (the RMS norm and GELU constants of a [64, 512, 512]
# MLP activation become 64 MB tensors). Without them a T5 (width 256, 4 + 4 layers) scores a
# 64 x 512 batch in 1.9 s instead of 2.5 s; a width-64 model trains about 5% slower. A flag of
# the CPU backend only: accelerators ignore it. Revisit when the pinned jaxlib changes.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_REDUCE",)


def apply(environ: dict | None = None) -> None:
    """Appends `CPU_FLAGS` to `XLA_FLAGS` unless the user already chose that setting, or set
    `ACTIVEIT_JAX_XLA_DEFAULTS=0`. Call before `jax` is imported."""
    environ = os.environ if environ is None else environ
    if environ.get("ACTIVEIT_JAX_XLA_DEFAULTS", "1") == "0":
        return
    current = environ.get("XLA_FLAGS", "")
    extra = [flag for flag in CPU_FLAGS if flag.split("=", 1)[0] not in current]
    if extra:
        environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
