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


def apply(environ: dict | None = None, *, compiles_for_this_machine: bool = True) -> None:
    """Appends `CPU_FLAGS` (and on a CPU-only machine `CPU_ONLY_MACHINE_FLAGS`) to
    `XLA_FLAGS`, each unless the user already set that flag, or set
    `ACTIVEIT_JAX_XLA_DEFAULTS=0`. Call before `jax` is imported.

    Args:
      environ: the environment to change (default `os.environ`).
      compiles_for_this_machine: False for a command that compiles programs for other devices
        (`activeit-jax compile`, for a TPU topology, on a CPU host): `XLA_FLAGS` become the
        debug options of every program it compiles, so only `CPU_FLAGS` (read by the CPU
        backend alone) are added, never the machine-wide `CPU_ONLY_MACHINE_FLAGS`.
    """
    environ = os.environ if environ is None else environ
    if environ.get("ACTIVEIT_JAX_XLA_DEFAULTS", "1") == "0":
        return
    cpu_only = compiles_for_this_machine and cpu_only_machine(environ)
    flags = CPU_FLAGS + (CPU_ONLY_MACHINE_FLAGS if cpu_only else ())
    current = environ.get("XLA_FLAGS", "")
    extra = [flag for flag in flags if flag.split("=", 1)[0] not in current]
    if extra:
        environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


# PCI vendor id of Google's TPU chips (what JAX's own TPU detection reads, too).
_GOOGLE_PCI_VENDOR = "0x1ae0"


def tpu_chips_attached(pci_root: str = "/sys/bus/pci/devices") -> bool:
    """True when this machine has a TPU chip (a PCI device of Google's vendor id)."""
    try:
        names = os.listdir(pci_root)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(pci_root, name, "vendor"), encoding="ascii") as handle:
                if handle.read().strip().lower() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


# What libtpu reads when it cannot ask a TPU VM's metadata server. Without them, loading it on a
# machine with no TPU (JAX probing its backends, or compiling for a TPU topology) prints
# "WARNING: could not determine TPU accelerator type / worker hostnames" and an INVALID_ARGUMENT
# trace to stderr. One local host of one chip only describes this machine; a topology that a
# program is compiled for is given by name and is not changed by them. The lockfile libtpu
# takes (/tmp/libtpu_lockfile) guards a TPU against two processes; without one, it would only
# stop two compilations (two commands, or a test and the command it starts) from running at
# once.
QUIET_TPU_PROBE = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1",
                   "TPU_STDERR_LOG_LEVEL": "3", "TPU_MIN_LOG_LEVEL": "3",
                   "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def quiet_tpu_probe(environ: dict | None = None, attached: bool | None = None) -> None:
    """Sets `QUIET_TPU_PROBE`'s variables (each unless already set) when libtpu is installed and
    no TPU chip is attached, so libtpu stays silent. Call before `jax` is imported.

    Args:
      environ: the environment to change (default `os.environ`).
      attached: whether a TPU chip is attached (default: `tpu_chips_attached()`).
    """
    environ = os.environ if environ is None else environ
    if importlib.util.find_spec("libtpu") is None:
        return
    if tpu_chips_attached() if attached is None else attached:
        return  # a TPU VM: its metadata server describes the slice
    for name, value in QUIET_TPU_PROBE.items():
        environ.setdefault(name, value)
