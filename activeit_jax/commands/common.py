"""Flags and helpers shared by several subcommands."""
from __future__ import annotations

from absl import flags

from activeit_jax.core import gin_utils
from activeit_jax.core.errors import UsageError


def define_gin_flags() -> None:
    """Defines `--gin_file` (repeatable) and `--gin_search_path` for a subcommand."""
    flags.DEFINE_multi_string("gin_file", [], "gin config file(s), parsed in order.")
    flags.DEFINE_multi_string("gin_search_path", [], "extra directories to look up gin files.")


def parse_gin_from_flags() -> None:
    """Parses `--gin_file` files and the `--gin.X=V` bindings captured from the command line."""
    gin_utils.parse_gin(flags.FLAGS.gin_file, gin_utils.COMMAND_LINE_BINDINGS,
                        flags.FLAGS.gin_search_path)


def check_args(argv: list[str], required: tuple[str, ...] = ()) -> None:
    """Rejects positional arguments and missing required flags (named in the message).

    Args:
      argv: what absl left after parsing flags (the program name first).
      required: names of flags that must be set.

    Raises:
      UsageError: with "unexpected arguments: ..." or "--NAME is required".
    """
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    for name in required:
        if not getattr(flags.FLAGS, name):
            raise UsageError(f"--{name} is required")


def parse_mesh(text: str) -> dict[str, int]:
    """Parses a `--mesh` flag: "data=4,model=2" -> {"data": 4, "model": 2}."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise UsageError(f"--mesh item {item!r} must look like AXIS=SIZE")
        axis, size = item.split("=", 1)
        try:
            out[axis.strip()] = int(size)
        except ValueError:
            raise UsageError(f"--mesh item {item!r}: SIZE must be an integer") from None
    return out


def define_distributed_flags() -> None:
    """Flags of a multi-host run (see `activeit_jax.core.distributed`; environment and SLURM
    variables fill whatever is not given)."""
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of JAX processes (hosts).")
    flags.DEFINE_integer("process_id", None, "This process's rank.")
    flags.DEFINE_integer("cpu_devices", None, "CPU only: virtual devices of this process.")
    flags.DEFINE_string("cpu_collectives", None, "CPU only: cross-process collectives "
                        "implementation (gloo) for multi-process CPU runs.")


def initialize_distributed_from_flags() -> None:
    """Starts `jax.distributed` from the flags of `define_distributed_flags` (no-op for one
    process). Call before anything touches a JAX device."""
    from activeit_jax.core import distributed
    config = distributed.resolve_config(
        coordinator_address=flags.FLAGS.coordinator_address,
        num_processes=flags.FLAGS.num_processes, process_id=flags.FLAGS.process_id,
        local_device_count=flags.FLAGS.cpu_devices,
        cpu_collectives=flags.FLAGS.cpu_collectives)
    distributed.initialize(config)


def quiet_library_logs() -> None:
    """Shows our INFO progress lines but only warnings from libraries (orbax logs every
    checkpoint read and write at INFO through absl)."""
    import logging

    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("activeit_jax").setLevel(logging.INFO)
