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
    return calls


def test_explicit_values_start_jax_without_cluster_detection(initialize_calls):
    config = distributed.resolve_config("h:1", 2, 1, environ={})
    distributed.initialize(config, on_tpu_vm=False, environ=SLURM_STEP)
    assert initialize_calls == [dict(coordinator_address="h:1", num_processes=2, process_id=1,
                                     cluster_detection_method="deactivate")]


@pytest.mark.parametrize("env, local_device_ids", [
    # One task per node (launch/slurm.py): every GPU of the node, not only GPU SLURM_LOCALID.
    ({**SLURM_STEP, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [0, 1, 2, 3]),
    # One task per GPU: JAX's own choice.
    ({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "16", "CUDA_VISIBLE_DEVICES": "2"}, None)])
def test_a_detected_slurm_step_lets_jax_read_the_cluster(initialize_calls, env,
                                                         local_device_ids):
    distributed.initialize(distributed.resolve_config(environ=env), on_tpu_vm=False, environ=env)
    assert initialize_calls == [dict(coordinator_address=None,
                                     local_device_ids=local_device_ids)]


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
