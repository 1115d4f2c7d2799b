"""Multi-host configuration: explicit values, ACTIVEIT_* variables and SLURM, in that order."""
from __future__ import annotations

import pytest

from activeit_jax.core import distributed


@pytest.mark.parametrize("nodelist, first", [
    ("node07", "node07"), ("node[07-09]", "node07"), ("gpu[003,010-012],cpu1", "gpu003"),
    ("a1,b2", "a1"), ("rack1-n[5-6]-ib", "rack1-n5-ib")])
def test_first_slurm_host(nodelist, first):
    assert distributed.first_slurm_host(nodelist) == first


def test_slurm_environment_resolves_coordinator_count_and_rank():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n[10-13]"}
    config = distributed.resolve_config(environ=env)
    assert (config.coordinator_address, config.num_processes, config.process_id) == (
        "n10:12355", 4, 3)
    assert config.is_multi_process


def test_explicit_values_win_over_activeit_variables_which_win_over_slurm():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n1",
           "ACTIVEIT_COORDINATOR": "10.0.0.1:999", "ACTIVEIT_PROCESS_ID": "0"}
    config = distributed.resolve_config(environ=env)
    assert (config.coordinator_address, config.num_processes, config.process_id) == (
        "10.0.0.1:999", 2, 0)
    config = distributed.resolve_config(process_id=1, environ=env)
    assert config.process_id == 1


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
