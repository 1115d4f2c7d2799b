"""Multi-host start-up: `jax.distributed.initialize` driven by flags, environment or the cluster.

One JAX process runs per host (TPU VM worker, GPU node, or a local CPU process in tests). The
coordinator address, process count and process id come from explicit arguments (flags / gin at
the entry point), then from our own environment variables (`ACTIVEIT_COORDINATOR`,
`ACTIVEIT_NUM_PROCESSES`, `ACTIVEIT_PROCESS_ID`). Without them, a cluster that JAX recognises
(`cluster_environment`: a SLURM job step, an Open MPI launch, a Cloud TPU VM) starts
`jax.distributed.initialize()` with no arguments, and JAX reads the cluster itself (its SLURM
reader, `JAX_COORDINATOR_PORT` for the port, ...).
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


def resolve_config(coordinator_address: str | None = None,
                   num_processes: int | None = None,
                   process_id: int | None = None,
                   local_device_count: int | None = None,
                   cpu_collectives: str | None = None,
                   environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Fills unset fields from the ACTIVEIT_* variables (a cluster's own variables are JAX's
    to read: `initialize`).

    Args:
      coordinator_address, num_processes, process_id: explicit values (win over environment).
      local_device_count, cpu_collectives: CPU-only settings, passed through.
      environ: the environment to read (defaults to os.environ; tests pass a dict).

    Returns:
      The resolved config. Fields nobody set stay None (single process, or cluster detection).

    Raises:
      ValueError: on an inconsistent or malformed setting.
    """
    env = os.environ if environ is None else environ
    coordinator = coordinator_address or env.get("ACTIVEIT_COORDINATOR")
    count = num_processes if num_processes is not None else _int_or_none(
        env, "ACTIVEIT_NUM_PROCESSES")
    rank = process_id if process_id is not None else _int_or_none(env, "ACTIVEIT_PROCESS_ID")
    if count is not None and count < 1:
        raise ValueError(f"num_processes must be >= 1, got {count}")
    if rank is not None and count is not None and not 0 <= rank < count:
        raise ValueError(f"process_id {rank} is outside 0..{count - 1}")
    if count is not None and count > 1 and (coordinator is None or rank is None):
        raise ValueError("a multi-process run needs a coordinator address and a process id "
                         "(flags, or ACTIVEIT_COORDINATOR / ACTIVEIT_PROCESS_ID)")
    if coordinator is not None and not re.fullmatch(r"[^\s:]+:\d+", coordinator):
        raise ValueError(f"coordinator address must be host:port, got {coordinator!r}")
    return DistributedConfig(coordinator, count, rank, local_device_count, cpu_collectives)


def cluster_environment(environ: Mapping[str, str] | None = None,
                        on_tpu_vm: bool = False) -> str | None:
    """The multi-process cluster `jax.distributed.initialize()` will read by itself, or None.

    "slurm": inside an `srun` job step of several tasks (JAX's SLURM reader needs the step's
    variables); "ompi": a `mpirun` launch of several ranks (Open MPI); "tpu": a Cloud TPU VM
    (`on_tpu_vm`; a single-host slice initialises as one process).
    """
    env = os.environ if environ is None else environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
    if all(name in env for name in slurm) and (_int_or_none(env, "SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if ("OMPI_MCA_orte_hnp_uri" in env
            and (_int_or_none(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1):
        return "ompi"
    return "tpu" if on_tpu_vm else None


def _slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
    """Every GPU of this host when the SLURM step runs one task per node (our launcher's
    layout). JAX's SLURM reader assumes one task per GPU and would otherwise give this
    process only GPU number `SLURM_LOCALID`."""
    tasks, nodes = (_int_or_none(env, "SLURM_STEP_NUM_TASKS"),
                    _int_or_none(env, "SLURM_STEP_NUM_NODES"))
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if tasks is None or tasks != nodes or not visible:
        return None
    return list(range(len(visible)))


def initialize(config: DistributedConfig, on_tpu_vm: bool | None = None,
               environ: Mapping[str, str] | None = None) -> None:
    """Starts JAX's distributed runtime: with `config`'s values when it names several
    processes, else through JAX's own detection when `cluster_environment` finds a cluster;
    a no-op for a single process.

    Must run before anything touches a JAX backend (the first `jax.devices()` call).

    Args:
      config: from `resolve_config`.
      on_tpu_vm: force TPU auto-detection on/off; by default on when a TPU chip is attached
        to this host (`xla_defaults.tpu_chips_attached`). Not from `TPU_WORKER_HOSTNAMES`:
        `xla_defaults.quiet_tpu_probe` sets it on machines without a TPU to keep libtpu quiet.
      environ: the environment to read (defaults to os.environ; tests pass a dict).
    """
    env = os.environ if environ is None else environ
    if config.local_device_count:
        jax.config.update("jax_num_cpu_devices", config.local_device_count)
    if config.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    if config.is_multi_process:
        logger.info("jax.distributed.initialize(coordinator=%s, num_processes=%d, "
                    "process_id=%d)", config.coordinator_address, config.num_processes,
                    config.process_id)
        # Explicit values are the whole story: no cluster variable may change them.
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes,
                                   process_id=config.process_id,
                                   cluster_detection_method="deactivate")
        return
    if config.num_processes is not None:  # explicitly one process
        return
    if on_tpu_vm is None:
        on_tpu_vm = xla_defaults.tpu_chips_attached()
    cluster = cluster_environment(env, on_tpu_vm)
    if cluster is None:
        return
    local_ids = _slurm_local_device_ids(env) if cluster == "slurm" else None
    logger.info("jax.distributed.initialize(): %s cluster detected", cluster)
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               local_device_ids=local_ids)


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
