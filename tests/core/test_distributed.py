"""Multi-host configuration: explicit values, then ACTIVEIT_* variables, then the cluster that
jax.distributed.initialize() detects itself (SLURM, Open MPI, Cloud TPU)."""
from __future__ import annotations

import pytest

from activeit_jax.core import distributed

SLURM_STEP = {"SLURM_JOB_ID": "4711", "SLURM_STEP_NODELIST": "n[10-13]", "SLURM_NTASKS": "4",
              "SLURM_PROCID": "3", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "4",
              "SLURM_STEP_NUM_NODES": "4"}


def test_cluster_variables_are_left_to_jax_and_activeit_variables_are_read():
    config = distributed.resolve_config(environ=SLURM_STEP)
    assert (config.coordinator_address, config.num_processes, config.process_id) == (
        None, None, None)
    env = {**SLURM_STEP, "ACTIVEIT_COORDINATOR": "10.0.0.1:999", "ACTIVEIT_NUM_PROCESSES": "2",
           "ACTIVEIT_PROCESS_ID": "0"}
    config = distributed.resolve_config(environ=env)
    assert (config.coordinator_address, config.num_processes, config.process_id) == (
        "10.0.0.1:999", 2, 0)
    assert config.is_multi_process
    assert distributed.resolve_config(process_id=1, environ=env).process_id == 1  # flag wins


@pytest.mark.parametrize("env, on_tpu_vm, expected", [
    (SLURM_STEP, False, "slurm"),
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, False, None),  # sbatch
    ({**SLURM_STEP, "SLURM_NTASKS": "1"}, False, None),
    ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911",
      "OMPI_COMM_WORLD_SIZE": "2"}, False, "ompi"),
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://h:1", "OMPI_COMM_WORLD_SIZE": "1"}, False, None),
    ({}, True, "tpu"),
    ({}, False, None)])
def test_cluster_environment(env, on_tpu_vm, expected):
    assert distributed.cluster_environment(env, on_tpu_vm) == expected


@pytest.fixture
def initialize_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kwargs: calls.append(kwargs))
    # The watchdog needs a real coordination service; here only the start-up call is checked.
    monkeypatch.setattr(distributed, "_start_watchdog", lambda timeout_s: None)
    return calls


# JAX's heartbeat for the default peer timeout (60 s): later than our watchdog.
HEARTBEAT = distributed.jax_heartbeat_timeout_s(distributed.DEFAULT_PEER_TIMEOUT_S)


def test_explicit_values_start_jax_without_cluster_detection(initialize_calls):
    config = distributed.resolve_config("h:1", 2, 1, environ={})
    distributed.initialize(config, on_tpu_vm=False, environ=SLURM_STEP)
    assert initialize_calls == [dict(coordinator_address="h:1", num_processes=2, process_id=1,
                                     cluster_detection_method="deactivate",
                                     heartbeat_timeout_seconds=HEARTBEAT)]


@pytest.mark.parametrize("env, local_device_ids", [
    # One task per node (launch/slurm.py): every GPU of the node, not only GPU SLURM_LOCALID.
    ({**SLURM_STEP, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [0, 1, 2, 3]),
    # One task per GPU: JAX's own choice.
    ({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "16", "CUDA_VISIBLE_DEVICES": "2"}, None)])
def test_a_detected_slurm_step_lets_jax_read_the_cluster(initialize_calls, env,
                                                         local_device_ids):
    distributed.initialize(distributed.resolve_config(environ=env), on_tpu_vm=False, environ=env)
    assert initialize_calls == [dict(coordinator_address=None,
                                     local_device_ids=local_device_ids,
                                     heartbeat_timeout_seconds=HEARTBEAT)]


def test_no_cluster_and_one_process_start_nothing(initialize_calls):
    distributed.initialize(distributed.resolve_config(environ={}), on_tpu_vm=False, environ={})
    distributed.initialize(distributed.resolve_config(num_processes=1, environ={}),
                           on_tpu_vm=True, environ={})
    assert initialize_calls == []


def test_single_process_needs_nothing():
    config = distributed.resolve_config(environ={})
    assert not config.is_multi_process and config.coordinator_address is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_processes=2, process_id=0), "coordinator"),
    (dict(num_processes=2, process_id=2, coordinator_address="h:1"), "outside"),
    (dict(num_processes=2, process_id=0, coordinator_address="no-port"), "host:port"),
    (dict(num_processes=0), ">= 1")])
def test_inconsistent_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.resolve_config(environ={}, **kwargs)


def test_malformed_environment_value_names_the_variable():
    with pytest.raises(ValueError, match="ACTIVEIT_NUM_PROCESSES"):
        distributed.resolve_config(environ={"ACTIVEIT_NUM_PROCESSES": "two"})


# ---------------------------------------------------------------- timeouts, barriers, watchdog

def test_timeouts_from_arguments_then_environment():
    env = {"ACTIVEIT_PEER_TIMEOUT": "30", "ACTIVEIT_BARRIER_TIMEOUT": "120.5"}
    config = distributed.resolve_config(environ=env)
    assert (config.peer_timeout_s, config.barrier_timeout_s) == (30.0, 120.5)
    config = distributed.resolve_config(environ=env, peer_timeout_s=5, barrier_timeout_s=7)
    assert (config.peer_timeout_s, config.barrier_timeout_s) == (5, 7)
    assert distributed.resolve_config(environ={}).peer_timeout_s is None


@pytest.mark.parametrize("kwargs, environ, message", [
    (dict(peer_timeout_s=0), {}, "peer_timeout_s"),
    (dict(barrier_timeout_s=-1), {}, "barrier_timeout_s"),
    ({}, {"ACTIVEIT_PEER_TIMEOUT": "soon"}, "ACTIVEIT_PEER_TIMEOUT")])
def test_bad_timeouts_are_rejected(kwargs, environ, message):
    with pytest.raises(ValueError, match=message):
        distributed.resolve_config(environ=environ, **kwargs)


def test_jax_heartbeat_fires_after_the_watchdog():
    for peer_timeout in (1, 10, 60, 600):
        assert distributed.jax_heartbeat_timeout_s(peer_timeout) > peer_timeout
    assert distributed.jax_heartbeat_timeout_s(10) >= 100  # never below JAX's default


def test_peer_watch_names_a_silent_peer():
    watch = distributed.PeerWatch(me=0, count=3, timeout_s=10, now=0.0)
    for t in range(0, 30, 2):  # peer 1 beats all along, peer 2 stops after t=4
        watch.observe(1, str(t), float(t))
        if t <= 4:
            watch.observe(2, str(t), float(t))
        verdict = watch.verdict(float(t))
        if t - 4 <= 10:
            assert verdict is None, t
        else:
            assert verdict.startswith("process 2 has sent no heartbeat for"), verdict
            assert "killed, crashed or frozen" in verdict
            return
    pytest.fail("the silent peer was never named")


def test_peer_watch_gives_an_exited_peer_the_timeout_to_let_this_one_finish():
    watch = distributed.PeerWatch(me=1, count=2, timeout_s=10, now=0.0)
    watch.observe(0, "1", 1.0)
    watch.observe(0, distributed.GOODBYE, 2.0)
    for t in (3.0, 11.0):  # an exited peer sends nothing more, which is not silence
        watch.observe(0, distributed.GOODBYE, t)
        assert watch.verdict(t) is None
    watch.observe(0, distributed.GOODBYE, 12.5)
    assert watch.verdict(12.5).startswith("process 0 exited 10 s ago (see its output)")
    assert watch.peer_exited()


def test_peer_watch_notices_an_unanswering_coordinator():
    watch = distributed.PeerWatch(me=1, count=2, timeout_s=10, now=0.0)
    watch.observe(0, "1", 1.0)
    assert watch.verdict(10.5) is None
    assert "coordination service has not answered for 12 s" in watch.verdict(13.0)


def test_give_up_message_is_one_line_with_the_barrier_and_the_remedy():
    line = distributed.give_up_message("process 1 has sent no heartbeat for 11 s", (
        "activeit_loop_select", 100.0), 142.0, me=0, count=2, timeout_s=10)
    assert "\n" not in line and line.startswith("activeit-jax: error: process 0 of 2: ")
    assert "while waiting 42 s at barrier 'activeit_loop_select'" in line
    assert "start all of them again with the same command" in line
    assert "--peer_timeout=10 s" in line
    assert "during a computation" in distributed.give_up_message("x", None, 0.0, 1, 2, 60)


class _FakeClient:
    """The coordination service's client as `barrier` / `share_from_primary` use it."""

    def __init__(self, error=None):
        self.error, self.store, self.barriers = error, {}, []

    def wait_at_barrier(self, name, timeout_ms):
        self.barriers.append((name, timeout_ms))
        if self.error:
            raise RuntimeError(self.error)

    def key_value_set(self, key, value, allow_overwrite=False):
        self.store[key] = value

    def blocking_key_value_get(self, key, timeout_ms):
        if self.error:
            raise RuntimeError(self.error)
        return self.store[key]


@pytest.fixture
def two_processes(monkeypatch):
    """This process as process `index` of two, with a fake coordination service."""
    def become(index, client):
        monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
        monkeypatch.setattr(distributed.jax, "process_index", lambda: index)
        monkeypatch.setattr(distributed, "_client", lambda: client)
        monkeypatch.setattr(distributed, "_STATE", distributed._ProcessState(
            barrier_timeout_s=3.0))
    return become


def test_barrier_timeout_is_one_line_naming_barrier_wait_and_remedy(two_processes):
    from activeit_jax.core.errors import ActiveITError
    client = _FakeClient("DEADLINE_EXCEEDED: Barrier timed out. Id: x::0.\nmore details")
    two_processes(1, client)
    with pytest.raises(distributed.HostSyncError) as caught:
        distributed.barrier("activeit_loop_select", distributed.barrier_timeout_s())
    message = str(caught.value)
    assert isinstance(caught.value, ActiveITError) and "\n" not in message
    assert message.startswith("process 1 of 2 waited 0 s at barrier 'activeit_loop_select'")
    assert "did not all arrive within 3 s" in message and "--barrier_timeout" in message
    assert "start all of them again with the same command" in message
    assert client.barriers == [("activeit_loop_select", 3000)]


def test_unbounded_barrier_leaves_the_limit_to_the_watchdog(two_processes):
    client = _FakeClient()
    two_processes(0, client)
    distributed.barrier("activeit_run_done")
    assert client.barriers == [("activeit_run_done", int(distributed.UNBOUNDED_S * 1000))]
    assert client.barriers[0][1] < 2 ** 31  # the service takes an int32 of milliseconds


def test_shared_decisions_are_process_0s_in_call_order(two_processes, tmp_path):
    from activeit_jax.loop import hosts
    client = _FakeClient()
    present = tmp_path / "DONE"
    two_processes(0, client)
    present.write_text("")
    assert hosts.exists(present) is True
    assert hosts.exists(tmp_path / "absent") is False
    assert client.store == {"activeit/shared/0": "1", "activeit/shared/1": "0"}
    present.unlink()  # process 1 looks later: it must still follow process 0's answer
    two_processes(1, client)
    assert hosts.exists(present) is True
    assert hosts.exists(tmp_path / "absent") is False


def test_single_process_needs_no_service(tmp_path):
    from activeit_jax.loop import hosts
    assert hosts.exists(tmp_path) and not hosts.exists(tmp_path / "absent")
    hosts.barrier("alone")  # a no-op
    hosts.wait_for_writer("alone")
