"""Multi-host start-up: `jax.distributed.initialize` driven by flags, environment or SLURM.

One JAX process runs per host (TPU VM worker, GPU node, or a local CPU process in tests). The
coordinator address, process count and process id come, in order of precedence, from explicit
arguments (flags / gin at the entry point), then from our own environment variables
(`ACTIVEIT_COORDINATOR`, `ACTIVEIT_NUM_PROCESSES`, `ACTIVEIT_PROCESS_ID`), then from SLURM
(`SLURM_NTASKS`, `SLURM_PROCID`, the first host of `SLURM_JOB_NODELIST`). On Cloud TPU VMs
`jax.distributed.initialize()` with no arguments discovers everything itself.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Mapping

import jax

from activeit_jax.core import xla_defaults

logger = logging.getLogger(__name__)

DEFAULT_PORT = 12355


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where this process sits in a multi-host job.

    Attributes:
      coordinator_address: "host:port" of process 0's coordinator service.
      num_processes: number of JAX processes (hosts) in the job.
      process_id: this process's rank, 0 .. num_processes - 1.
      local_device_count: CPU only: how many virtual CPU devices this process exposes.
      cpu_collectives: CPU only: the cross-process collectives implementation ("gloo").
    """
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_count: int | None = None
    cpu_collectives: str | None = None

    @property
    def is_multi_process(self) -> bool:
        return (self.num_processes or 1) > 1


def first_slurm_host(nodelist: str) -> str:
    """Returns the first host of a SLURM node list ("node[03-05,9],gpu1" -> "node03").

    Args:
      nodelist: the value of SLURM_JOB_NODELIST.

    Returns:
      The first host name, with its zero padding kept.
    """
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    match = re.fullmatch(r"(.*?)\[([^\]]+)\](.*)", first)
    if not match:
        return first
    prefix, ranges, suffix = match.groups()
    start = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{start}{suffix}"


def resolve_config(coordinator_address: str | None = None,
                   num_processes: int | None = None,
                   process_id: int | None = None,
                   local_device_count: int | None = None,
                   cpu_collectives: str | None = None,
                   environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Fills unset fields from ACTIVEIT_* variables, then from SLURM variables.

    Args:
      coordinator_address, num_processes, process_id: explicit values (win over environment).
      local_device_count, cpu_collectives: CPU-only settings, passed through.
      environ: the environment to read (defaults to os.environ; tests pass a dict).

    Returns:
      The resolved config. Fields nobody set stay None (single process, or TPU auto-detect).

    Raises:
      ValueError: on an inconsistent or malformed setting.
    """
    env = os.environ if environ is None else environ
    coordinator = coordinator_address or env.get("ACTIVEIT_COORDINATOR")
    count = num_processes if num_processes is not None else _int_or_none(
        env, "ACTIVEIT_NUM_PROCESSES")
    rank = process_id if process_id is not None else _int_or_none(env, "ACTIVEIT_PROCESS_ID")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        count = count if count is not None else _int_or_none(env, "SLURM_NTASKS")
        rank = rank if rank is not None else _int_or_none(env, "SLURM_PROCID")
        if coordinator is None and env.get("SLURM_JOB_NODELIST"):
            port = env.get("ACTIVEIT_COORDINATOR_PORT", str(DEFAULT_PORT))
            coordinator = f"{first_slurm_host(env['SLURM_JOB_NODELIST'])}:{port}"
    if count is not None and count < 1:
        raise ValueError(f"num_processes must be >= 1, got {count}")
    if rank is not None and count is not None and not 0 <= rank < count:
        raise ValueError(f"process_id {rank} is outside 0..{count - 1}")
    if count is not None and count > 1 and (coordinator is None or rank is None):
        raise ValueError("a multi-process run needs a coordinator address and a process id "
                         "(flags, ACTIVEIT_COORDINATOR / ACTIVEIT_PROCESS_ID, or SLURM)")
    if coordinator is not None and not re.fullmatch(r"[^\s:]+:\d+", coordinator):
        raise ValueError(f"coordinator address must be host:port, got {coordinator!r}")
    return DistributedConfig(coordinator, count, rank, local_device_count, cpu_collectives)


def initialize(config: DistributedConfig, on_tpu_vm: bool | None = None) -> None:
    """Starts JAX's distributed runtime for `config`; a no-op for a single process.

    Must run before anything touches a JAX backend (the first `jax.devices()` call).

    Args:
      config: from `resolve_config`.
      on_tpu_vm: force TPU auto-detection on/off; by default on when a TPU chip is attached
        to this host (`xla_defaults.tpu_chips_attached`). Not from `TPU_WORKER_HOSTNAMES`:
        `xla_defaults.quiet_tpu_probe` sets it on machines without a TPU to keep libtpu quiet.
    """
    if config.local_device_count:
        jax.config.update("jax_num_cpu_devices", config.local_device_count)
    if config.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    if on_tpu_vm is None:
        on_tpu_vm = xla_defaults.tpu_chips_attached()
    if not config.is_multi_process:
        if on_tpu_vm and config.num_processes is None:
            jax.distributed.initialize()  # multi-worker TPU slices discover their peers.
        return
    logger.info("jax.distributed.initialize(coordinator=%s, num_processes=%d, process_id=%d)",
                config.coordinator_address, config.num_processes, config.process_id)
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes,
                               process_id=config.process_id)


def _int_or_none(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") \
            from error


def is_primary() -> bool:
    """True in process 0, the one process that writes files shared by all hosts."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
