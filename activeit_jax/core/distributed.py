"""Multi-host start-up: `jax.distributed.initialize` driven by flags, environment or the cluster.

One JAX process runs per host (TPU VM worker, GPU node, or a local CPU process in tests). The
coordinator address, process count and process id come from explicit arguments (flags / gin at
the entry point), then from our own environment variables (`ACTIVEIT_COORDINATOR`,
`ACTIVEIT_NUM_PROCESSES`, `ACTIVEIT_PROCESS_ID`). Without them, a cluster that JAX recognises
(`cluster_environment`: a SLURM job step, an Open MPI launch, a Cloud TPU VM) starts
`jax.distributed.initialize()` with no arguments, and JAX reads the cluster itself (its SLURM
reader, `JAX_COORDINATOR_PORT` for the port, ...).

Once the processes have joined, they keep in step through JAX's coordination service (the
key-value store and barriers process 0 serves), never through device collectives:

- `barrier(name, timeout_s)`: every process waits for the others; a barrier that does not
  complete in time raises `HostSyncError`, one line naming the barrier, the wait and the remedy.
- `share_from_primary(name, make)`: process 0's value (whether a file exists, say) for every
  process, so that all take the same branch even while process 0 already writes the next file.
- A watchdog (`PeerWatch`, two daemon threads per process) publishes a heartbeat every few
  seconds and reads the others'. When a peer falls silent for `peer_timeout_s` (killed,
  crashed, frozen), or exits while this process still runs, or process 0's service stops
  answering, it prints one line (`activeit-jax: error: ...`, with the barrier it waited at)
  and ends this process with status 1: a collective in flight (a gloo all-reduce inside a
  jitted step) never returns when its peer dies, and JAX's own heartbeat (set to fire later,
  `jax_heartbeat_timeout_s`) would abort with a C++ stack trace instead.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from typing import Callable, Iterator, Mapping

import jax

from activeit_jax.core import xla_defaults
from activeit_jax.core.errors import ActiveITError

# A peer silent this long is declared gone. Generous: a process whose Python thread is starved
# for this long (the heartbeat is a Python thread) would be taken for dead.
DEFAULT_PEER_TIMEOUT_S = 60.0
# How long a barrier of the loop waits for the others while process 0 writes a shared file.
DEFAULT_BARRIER_TIMEOUT_S = 1800.0
# "No limit" for the coordination service (milliseconds must fit an int32): a barrier that
# waits for long work of other processes (a host's share of the pool, the judge) is bounded by
# the watchdog instead, which ends it when a peer is gone.
UNBOUNDED_S = 7 * 24 * 3600.0
GOODBYE = "exited"
RESTART = "stop every process and start all of them again with the same command (the run " \
          "resumes where it stopped)"


class HostSyncError(ActiveITError):
    """A barrier (or process 0's shared decision) did not complete: a process is gone, stuck
    or took another path."""

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
      peer_timeout_s: seconds without a heartbeat of another process before this one gives
        up with one line (None: `DEFAULT_PEER_TIMEOUT_S`).
      barrier_timeout_s: seconds a bounded barrier waits (`barrier_timeout_s()`; None:
        `DEFAULT_BARRIER_TIMEOUT_S`).
    """
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_count: int | None = None
    cpu_collectives: str | None = None
    peer_timeout_s: float | None = None
    barrier_timeout_s: float | None = None

    @property
    def is_multi_process(self) -> bool:
        return (self.num_processes or 1) > 1


def resolve_config(coordinator_address: str | None = None,
                   num_processes: int | None = None,
                   process_id: int | None = None,
                   local_device_count: int | None = None,
                   cpu_collectives: str | None = None,
                   environ: Mapping[str, str] | None = None,
                   peer_timeout_s: float | None = None,
                   barrier_timeout_s: float | None = None) -> DistributedConfig:
    """Fills unset fields from the ACTIVEIT_* variables (a cluster's own variables are JAX's
    to read: `initialize`).

    Args:
      coordinator_address, num_processes, process_id: explicit values (win over environment).
      local_device_count, cpu_collectives: CPU-only settings, passed through.
      peer_timeout_s, barrier_timeout_s: explicit values (win over `ACTIVEIT_PEER_TIMEOUT` /
        `ACTIVEIT_BARRIER_TIMEOUT`, in seconds).
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
    timeouts = {}
    for name, value, variable in (("peer_timeout_s", peer_timeout_s, "ACTIVEIT_PEER_TIMEOUT"),
                                  ("barrier_timeout_s", barrier_timeout_s,
                                   "ACTIVEIT_BARRIER_TIMEOUT")):
        value = value if value is not None else _float_or_none(env, variable)
        if value is not None and not 0 < value <= UNBOUNDED_S:
            raise ValueError(f"{name} must be a number of seconds in (0, {UNBOUNDED_S:.0f}], "
                             f"got {value}")
        timeouts[name] = value
    return DistributedConfig(coordinator, count, rank, local_device_count, cpu_collectives,
                             **timeouts)


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
    """Starts JAX's distributed runtime, then this process's watchdog: with `config`'s values
    when it names several processes, else through JAX's own detection when
    `cluster_environment` finds a cluster; a no-op for a single process.

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
    peer_timeout = config.peer_timeout_s or DEFAULT_PEER_TIMEOUT_S
    _STATE.barrier_timeout_s = config.barrier_timeout_s or DEFAULT_BARRIER_TIMEOUT_S
    heartbeat = jax_heartbeat_timeout_s(peer_timeout)
    if config.is_multi_process:
        logger.info("jax.distributed.initialize(coordinator=%s, num_processes=%d, "
                    "process_id=%d)", config.coordinator_address, config.num_processes,
                    config.process_id)
        # Explicit values are the whole story: no cluster variable may change them.
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes,
                                   process_id=config.process_id,
                                   cluster_detection_method="deactivate",
                                   heartbeat_timeout_seconds=heartbeat)
        _start_watchdog(peer_timeout)
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
                               local_device_ids=local_ids,
                               heartbeat_timeout_seconds=heartbeat)
    if jax.process_count() > 1:
        _start_watchdog(peer_timeout)


def jax_heartbeat_timeout_s(peer_timeout_s: float) -> int:
    """JAX's own heartbeat timeout for a watchdog of `peer_timeout_s`: later than the watchdog
    (which says what happened in one line) and never below JAX's default of 100 s."""
    return int(max(100.0, 2 * peer_timeout_s + 10.0))


def _int_or_none(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") \
            from error


def _float_or_none(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name} must be a number, got {value!r}") \
            from error


def is_primary() -> bool:
    """True in process 0, the one process that writes files shared by all hosts."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------
# Barriers and shared decisions, through the coordination service.

@dataclasses.dataclass
class _ProcessState:
    """What this process knows of the job beyond JAX: the configured barrier wait, the
    sequence number of the next shared decision, the barrier it waits at (for the watchdog's
    message) and its watchdog."""
    barrier_timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S
    shared_count: int = 0
    waiting_at: tuple[str, float] | None = None
    watchdog: "_Watchdog | None" = None
    giving_up: threading.Event = dataclasses.field(default_factory=threading.Event)


_STATE = _ProcessState()


def barrier_timeout_s() -> float:
    """The configured wait of a bounded barrier (`--barrier_timeout`)."""
    return _STATE.barrier_timeout_s


def _client():
    from jax._src import distributed as jax_distributed  # the client of jax.distributed
    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized, yet jax.process_count() > 1")
    return client


@contextlib.contextmanager
def _waiting_at(name: str) -> Iterator[float]:
    started = time.monotonic()
    _STATE.waiting_at = (name, started)
    try:
        yield started
    finally:
        _STATE.waiting_at = None


def _wait_if_giving_up() -> None:
    """Blocks for good once the watchdog is ending this process: it has printed what happened,
    and its shutdown of the client is what failed the caller's wait; a second line from the
    caller would only confuse."""
    if _STATE.giving_up.is_set():
        time.sleep(UNBOUNDED_S)


def _sync_error(name: str, started: float, timeout_s: float, error: Exception) -> HostSyncError:
    waited = time.monotonic() - started
    text = str(error)
    if "DEADLINE_EXCEEDED" in text or waited >= timeout_s:
        why = (f"the other processes did not all arrive within {timeout_s:g} s (a process "
               "died, hangs, or took another path; --barrier_timeout sets this wait)")
    else:
        why = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return HostSyncError(f"process {jax.process_index()} of {jax.process_count()} waited "
                         f"{waited:.0f} s at barrier {name!r}: {why}; {RESTART}")


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Waits until every process reaches the barrier `name` (a no-op for one process).

    Args:
      name: the barrier's name; every process passes the same barriers in the same order
        (a name may repeat).
      timeout_s: how long to wait; None waits as long as the other processes live (the
        watchdog ends this process when one is gone): for barriers that wait for long work of
        another process.

    Raises:
      HostSyncError: the barrier did not complete in time (one line: which barrier, how long,
        what to do).
    """
    if jax.process_count() == 1:
        return
    limit = UNBOUNDED_S if timeout_s is None else timeout_s
    with _waiting_at(name) as started:
        try:
            _client().wait_at_barrier(name, int(limit * 1000))
        except Exception as error:  # noqa: BLE001 (jaxlib raises its runtime error)
            _wait_if_giving_up()
            raise _sync_error(name, started, limit, error) from None


def share_from_primary(name: str, make: Callable[[], str], timeout_s: float | None = None
                       ) -> str:
    """`make()` computed in process 0 and handed to every process (one process: `make()`).

    Every process calls it in the same order (the n-th call of each process reads the n-th
    value of process 0). Process 0 does not wait; the others wait for its value, so a decision
    taken after it (skip a stage whose file exists) is the same everywhere even when process 0
    writes that file right after deciding.

    Args:
      name: what is decided, for messages.
      make: computes the value (a string) in process 0.
      timeout_s: how long the others wait for process 0 (None: as long as it lives).

    Raises:
      HostSyncError: process 0's value did not come in time.
    """
    if jax.process_count() == 1:
        return make()
    key = f"activeit/shared/{_STATE.shared_count}"
    _STATE.shared_count += 1
    if is_primary():
        value = make()
        _client().key_value_set(key, value)
        return value
    limit = UNBOUNDED_S if timeout_s is None else timeout_s
    with _waiting_at(name) as started:
        try:
            return _client().blocking_key_value_get(key, int(limit * 1000))
        except Exception as error:  # noqa: BLE001 (jaxlib raises its runtime error)
            _wait_if_giving_up()
            raise _sync_error(name, started, limit, error) from None


# ----------------------------------------------------------------------------------------------
# The watchdog: heartbeats through the coordination service's key-value store.

class PeerWatch:
    """The other processes as this one sees them; pure (the caller passes the clock).

    A peer's heartbeat is a counter it rewrites every few seconds, `GOODBYE` when it exits.
    `verdict` names the first peer that is gone: silent for `timeout_s` (killed, crashed,
    frozen), or exited `timeout_s` ago while this process still runs (it left the job, e.g.
    with an error, and will never reach the next barrier or collective); or process 0's
    service, which has not answered for `timeout_s`.
    """

    def __init__(self, me: int, count: int, timeout_s: float, now: float):
        self.me, self.timeout_s = me, timeout_s
        self.peers = [k for k in range(count) if k != me]
        self.value: dict[int, str | None] = {k: None for k in self.peers}
        self.changed = {k: now for k in self.peers}
        self.exited: dict[int, float] = {}
        self.answered = now

    def observe(self, peer: int, value: str | None, now: float) -> None:
        """Records `peer`'s heartbeat read at `now` (None: none published yet)."""
        self.answered = now
        if value != self.value[peer]:
            self.value[peer], self.changed[peer] = value, now
            if value == GOODBYE:
                self.exited.setdefault(peer, now)

    def verdict(self, now: float) -> str | None:
        """Why this process must give up at `now`, or None while every peer is alive."""
        if now - self.answered > self.timeout_s:
            return (f"process 0's coordination service has not answered for "
                    f"{now - self.answered:.0f} s (process 0 was killed or crashed)")
        for peer in self.peers:
            if peer in self.exited:
                if now - self.exited[peer] > self.timeout_s:
                    return (f"process {peer} exited {now - self.exited[peer]:.0f} s ago (see "
                            "its output) and this one cannot go on without it")
            elif now - self.changed[peer] > self.timeout_s:
                return (f"process {peer} has sent no heartbeat for "
                        f"{now - self.changed[peer]:.0f} s (killed, crashed or frozen)")
        return None

    def peer_exited(self) -> bool:
        return bool(self.exited)


class _Watchdog:
    """Two daemon threads: one publishes this process's heartbeat and reads the others' (a
    call to a dead coordinator may block), one judges `PeerWatch` every `interval_s`."""

    def __init__(self, client, me: int, count: int, timeout_s: float):
        self.client, self.me = client, me
        self.watch = PeerWatch(me, count, timeout_s, time.monotonic())
        self.interval_s = max(0.5, min(5.0, timeout_s / 6))
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def start(self) -> None:
        for target in (self._beat, self._judge):
            threading.Thread(target=target, name=f"activeit{target.__name__}", daemon=True).start()

    def _beat(self) -> None:
        beat = 0
        while not self.stopped.is_set():
            beat += 1
            try:
                self.client.key_value_set(f"activeit/alive/{self.me}", str(beat),
                                          allow_overwrite=True)
                for peer in self.watch.peers:
                    value = _try_get(self.client, f"activeit/alive/{peer}")
                    with self.lock:
                        self.watch.observe(peer, value, time.monotonic())
            except Exception:  # noqa: BLE001 (the service is gone: `answered` grows old)
                pass
            self.stopped.wait(self.interval_s)

    def _judge(self) -> None:
        while not self.stopped.wait(self.interval_s / 2):
            with self.lock:
                why = self.watch.verdict(time.monotonic())
            if why is not None and not self.stopped.is_set():
                _give_up(why, join_shutdown=self.watch.peer_exited())

    def stop(self, goodbye: bool) -> None:
        self.stopped.set()
        if goodbye:
            try:
                self.client.key_value_set(f"activeit/alive/{self.me}", GOODBYE,
                                          allow_overwrite=True)
            except Exception:  # noqa: BLE001 (process 0 already gone: nothing to tell)
                pass


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as error:  # noqa: BLE001
        if "NOT_FOUND" in str(error):
            return None  # not published yet
        raise


def give_up_message(why: str, waiting_at: tuple[str, float] | None, now: float,
                    me: int, count: int, timeout_s: float) -> str:
    """The watchdog's one line: who gave up, why, where this process was, what to do."""
    where = (f", while waiting {now - waiting_at[1]:.0f} s at barrier {waiting_at[0]!r}"
             if waiting_at else ", during a computation")
    return (f"activeit-jax: error: process {me} of {count}: {why}{where}; {RESTART} "
            f"(--peer_timeout={timeout_s:g} s sets this wait)")


def _give_up(why: str, join_shutdown: bool) -> None:
    """Prints the watchdog's line and ends this process with status 1 at once (the main thread
    may be blocked in a collective that never returns). A peer that exited waits in JAX's
    shutdown barrier: join it (briefly) so that the peer's exit stays clean."""
    watchdog = _STATE.watchdog
    timeout_s = watchdog.watch.timeout_s if watchdog else DEFAULT_PEER_TIMEOUT_S
    _STATE.giving_up.set()
    print(give_up_message(why, _STATE.waiting_at, time.monotonic(), jax.process_index(),
                          jax.process_count(), timeout_s), file=sys.stderr, flush=True)
    if join_shutdown:
        closing = threading.Thread(target=_quiet_shutdown, daemon=True)
        closing.start()
        closing.join(min(30.0, timeout_s))
    os._exit(1)


def _quiet_shutdown() -> None:
    try:
        _client().shutdown()
    except Exception:  # noqa: BLE001 (best effort on the way out)
        pass


def _start_watchdog(timeout_s: float) -> None:
    if _STATE.watchdog is not None:
        return
    _STATE.watchdog = _Watchdog(_client(), jax.process_index(), jax.process_count(), timeout_s)
    _STATE.watchdog.start()
    atexit.register(stop_watchdog)  # runs before JAX's own exit handler (registered earlier)


def stop_watchdog(goodbye: bool = True) -> None:
    """Stops this process's watchdog; with `goodbye`, tells the others it exits (they give up
    `peer_timeout_s` later unless they end too). Runs at exit."""
    if _STATE.watchdog is not None:
        _STATE.watchdog.stop(goodbye)
        _STATE.watchdog = None
