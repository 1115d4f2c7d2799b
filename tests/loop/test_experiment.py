"""`experiment` in gin is the `loop.experiment.Experiment` dataclass: its gin parameters are
the dataclass's fields, every binding users' files make keeps working, and resolving twice
changes nothing."""
from __future__ import annotations

import dataclasses
import inspect

import gin
import pytest

from activeit_jax.commands import run
from activeit_jax.loop import experiment as experiment_lib

# The parameters `experiment` took before it became the dataclass (gin files bind these).
BOUND_BEFORE = (
    "model", "vocabulary", "niv2_dir", "train_config", "score_config", "loop", "init_checkpoint",
    "quotas", "max_instances_per_task", "on_bad_task", "partitioning", "pool",
    "self_instruct_file", "self_instruct_test_file", "self_instruct_max_items",
    "self_instruct_num_validation", "select_epoch_on_validation", "judge", "judge_reference",
    "judge_seed", "label_overrides")


def test_gin_parameters_are_the_dataclass_fields():
    fields = [f.name for f in dataclasses.fields(experiment_lib.Experiment)]
    assert set(BOUND_BEFORE) <= set(fields)
    run._register_configurables()
    # gin takes its parameters (and their defaults) from the dataclass's constructor.
    experiment = gin.get_configurable(run.EXPERIMENT)
    assert issubclass(experiment, experiment_lib.Experiment)
    assert gin.get_configurable("experiment") is experiment
    assert list(inspect.signature(experiment_lib.Experiment).parameters) == fields
    gin.clear_config()
    try:
        assert experiment() == experiment_lib.Experiment()
        for k, name in enumerate(fields):  # each binding lands in its field
            gin.bind_parameter(f"experiment.{name}", f"value {k}")
        spec = experiment()
        assert [getattr(spec, name) for name in fields] == [
            f"value {k}" for k in range(len(fields))]
        with pytest.raises(ValueError, match="no_such_field"):
            gin.parse_config(["experiment.no_such_field = 1"])
    finally:
        gin.clear_config()


def test_resolving_a_resolved_experiment_changes_nothing(parse_experiment):
    exp = parse_experiment("demo_tiny.gin", [])
    assert type(exp) is experiment_lib.Experiment  # not gin's subclass
    assert experiment_lib.resolve(exp) == exp
    assert exp.select_epoch_on_validation is True  # NIV2: Tk-Instruct's best epoch
    assert exp.judge is None and exp.label_overrides is None
    assert exp.label_source == experiment_lib.RULE  # unset: our rule


def test_an_unfilled_required_binding_is_named(parse_experiment):
    with pytest.raises(ValueError, match="experiment.init_checkpoint is required"):
        parse_experiment("demo_tiny.gin", ["experiment.init_checkpoint = %gin.REQUIRED"])
