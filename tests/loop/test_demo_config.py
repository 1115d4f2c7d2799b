"""The SmolLM2 demo's configs (configs/demo.gin, configs/demo_accelerator.gin): the model and
its tokenizer come from the converted checkpoint, iteration 0 is zero-shot (the train stage
hands back the base checkpoint), and the zero-shot schedule is checked."""
from __future__ import annotations

import pytest

from activeit_jax.loop import schedule, stages as loop_stages


def _bindings(checkpoint) -> list[str]:
    return [f'SMOLLM2_CHECKPOINT = "{checkpoint}"']


def test_demo_takes_model_and_tokenizer_from_the_checkpoint(parse_experiment,
                                                            smollm2_checkpoint, tmp_path):
    exp = parse_experiment("demo.gin", _bindings(smollm2_checkpoint))
    assert exp.model.decoder_only and exp.model.config.num_layers == 30
    assert exp.model.config.bos_id is None  # SmolLM2's tokenizer adds no BOS
    assert exp.vocabulary.chat_template and exp.vocabulary.end_of_turn_id == 2
    assert exp.quotas.num_initial == 0 and exp.loop.tasks_per_iteration == 6
    assert exp.init_checkpoint == str(smollm2_checkpoint)
    assert exp.train_config.prompt_format == exp.score_config.prompt_format == "auto"
    stages = loop_stages.build_stages(exp)
    # Zero-shot iteration 0: nothing to train, the model is the base checkpoint as installed.
    assert stages.train([], [], str(tmp_path / "train")) == str(smollm2_checkpoint)
    assert not (tmp_path / "train").exists()


def test_accelerator_demo_is_a_larger_run(parse_experiment, smollm2_checkpoint):
    cpu = parse_experiment("demo.gin", _bindings(smollm2_checkpoint))
    big = parse_experiment("demo_accelerator.gin", _bindings(smollm2_checkpoint))
    assert big.loop.num_iterations > cpu.loop.num_iterations
    assert big.score_config.num_instances > cpu.score_config.num_instances
    assert big.score_config.num_perturbations > cpu.score_config.num_perturbations
    assert big.train_config.num_epochs >= cpu.train_config.num_epochs


def test_zero_shot_iteration_needs_an_explicit_schedule(parse_experiment, smollm2_checkpoint):
    assert schedule.tasks_to_add(0, 3, 6) == [0, 6, 6]
    with pytest.raises(ValueError, match="zero-shot iteration 0"):
        schedule.tasks_to_add(0, 3)
    with pytest.raises(ValueError, match="tasks_per_iteration"):
        parse_experiment("demo.gin", _bindings(smollm2_checkpoint)
                         + ["LoopConfig.tasks_per_iteration = None"])


def test_experiment_without_model_or_checkpoint_says_what_is_missing(parse_experiment):
    with pytest.raises(ValueError, match="experiment.model is required without "
                                         "experiment.init_checkpoint"):
        parse_experiment("demo.gin", ["SMOLLM2_CHECKPOINT = None"])
