"""XLA settings the command line applies before JAX starts (see `apply`).

Kept in one place, imported by `activeit_jax.main` and the benchmarks before `jax`: XLA reads
`XLA_FLAGS` once, when the first backend starts.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os

# XLA's CPU backend (jaxlib 0.10) hands dots and row reductions to YNNPACK fusions by
# default. The reductions materialise every broadcast operand at full size (the RMS norm and
# GELU constants of a [64, 512, 512] MLP activation become 64 MB tensors), and its dots run the
# thin GEMMs of a narrow model ([32768, 256] x [256, 512]) at 170-210 GFLOP/s where XLA's own
# Eigen dots reach 250-330 on this project's 2-core AVX-512 CI machine. An empty list turns
# every YNNPACK fusion off: a T5 (width 256, 4 + 4 layers) scores a 64 x 512 batch in 1.55 s
# (1.92 s with only the reductions off, 2.5 s with both on); training steps of the tiny and
# small T5 and greedy decoding are unchanged within noise. A flag of the CPU backend only:
# accelerators ignore it. Revisit when the pinned jaxlib changes.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)

# The tree reduction rewriter splits every long row reduction (a softmax's max and sum over
# the keys, an RMS norm's mean) into a reduce-window of 32 and a second reduce: two passes and
# a materialised [B, H, T, S] select instead of one fused pass, at a third of the memory
# bandwidth. Without it the same batch scores in 1.45-1.50 s (1.96 -> 1.60 s at 39 x 824),
# the tiny T5's forward pass is 30% faster, and PU still agrees with PyTorch to 1e-5 (a
# vectorised reduction keeps 16 partial sums). `xla_disable_hlo_passes` is not a CPU-only
# flag, so it is applied only where JAX can find no accelerator (see `cpu_only_machine`).
CPU_ONLY_MACHINE_FLAGS = ("--xla_disable_hlo_passes=tree_reduction_rewriter",)

_ACCELERATOR_PLATFORMS = ("cuda", "gpu", "rocm", "tpu")


def cpu_only_machine(environ: dict) -> bool:
    """True when JAX will run on the CPU: `JAX_PLATFORMS` names only cpu, or it is unset and
    no accelerator plugin (a `jax_plugins` entry point, e.g. jax-cuda12-plugin, or libtpu) is
    installed."""
    platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",")
                 if p.strip()]
    if platforms:
        return all(p == "cpu" for p in platforms)
    if importlib.util.find_spec("libtpu") is not None:
        return False
    plugins = importlib.metadata.entry_points(group="jax_plugins")
    return not any(any(name in plugin.name.lower() for name in _ACCELERATOR_PLATFORMS)
                   for plugin in plugins)


def apply(environ: dict | None = None) -> None:
    """Appends `CPU_FLAGS` (and on a CPU-only machine `CPU_ONLY_MACHINE_FLAGS`) to
    `XLA_FLAGS`, each unless the user already set that flag, or set
    `ACTIVEIT_JAX_XLA_DEFAULTS=0`. Call before `jax` is imported."""
    environ = os.environ if environ is None else environ
    if environ.get("ACTIVEIT_JAX_XLA_DEFAULTS", "1") == "0":
        return
    flags = CPU_FLAGS + (CPU_ONLY_MACHINE_FLAGS if cpu_only_machine(environ) else ())
    current = environ.get("XLA_FLAGS", "")
    extra = [flag for flag in flags if flag.split("=", 1)[0] not in current]
    if extra:
        environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
