"""The NIV2 experiment on SmolLM2-135M-Instruct (configs/experiments/niv2_smollm2*.gin) and the
adaptive perturbation budget in the loop's score stage (`experiment.adaptive_perturbations`)."""
from __future__ import annotations

import json
import os

import jax
import pytest

from activeit_jax import scoring
from activeit_jax.data import prepared as prepared_lib
from activeit_jax.loop import active_loop, experiment, stages as stages_lib
from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints
from activeit_jax.training.config import TrainConfig

STRATEGIES = ("prompt_uncertainty", "random", "uncertainty", "high_perplexity")


def _bindings(checkpoint) -> list[str]:
    return [f'SMOLLM2_CHECKPOINT = "{checkpoint}"']


def test_experiment_is_the_papers_on_smollm2(parse_experiment, smollm2_checkpoint):
    exp = parse_experiment("experiments/niv2_smollm2.gin", _bindings(smollm2_checkpoint))
    assert exp.model.kind == "llama" and exp.init_checkpoint == str(smollm2_checkpoint)
    assert tuple(exp.loop.strategies) == STRATEGIES
    # Zero-shot iteration 0; validation held out as the paper's 34 + 34 of 756, scaled.
    assert (exp.quotas.num_initial, exp.quotas.num_val_cls, exp.quotas.num_val_gen) == (0, 8, 8)
    assert exp.train_config.selection_metric == "rougeL_cls"
    assert exp.train_config.learning_rate == 5e-5
    assert dict(exp.loop.label_ratio) == {"cls": 24, "gen": 44}
    # The Uncertainty baseline reads the scorer's entropy.
    assert exp.score_config.compute_entropy


def test_cpu_preset_is_the_small_honest_run(parse_experiment, smollm2_checkpoint):
    exp = parse_experiment("experiments/niv2_smollm2_cpu.gin", _bindings(smollm2_checkpoint))
    assert len(exp.loop.seeds) >= 3
    assert {"prompt_uncertainty", "random"} <= set(exp.loop.strategies)
    assert exp.loop.num_iterations - 1 >= 2  # selection iterations after the zero-shot one
    # The adaptive budget decides the next selection of 8 with the reference's cls share.
    assert exp.adaptive.initial_perturbations == 2
    assert exp.adaptive.num_select == exp.loop.tasks_per_iteration == 8
    assert dict(exp.adaptive.quota) == {"cls": 3, "gen": 5}
    assert not exp.score_config.compute_entropy


def test_accelerator_preset_runs_every_strategy(parse_experiment, smollm2_checkpoint):
    exp = parse_experiment("experiments/niv2_smollm2_accelerator.gin",
                           _bindings(smollm2_checkpoint))
    cpu = parse_experiment("experiments/niv2_smollm2_cpu.gin", _bindings(smollm2_checkpoint))
    assert tuple(exp.loop.seeds) == (0, 1, 2, 3, 4)
    assert tuple(exp.loop.strategies) == STRATEGIES
    assert exp.loop.num_iterations >= 4  # zero-shot + 3 selections
    # Exact scoring with entropy (the Uncertainty baseline), longer prompts, more test answers.
    assert exp.adaptive is None and exp.score_config.compute_entropy
    assert exp.score_config.max_source_length > cpu.score_config.max_source_length
    assert (exp.train_config.max_eval_instances_per_task
            > cpu.train_config.max_eval_instances_per_task)


@pytest.mark.parametrize("extra, message", [
    (['LoopConfig.strategies = ("uncertainty", "random")'], "entropy"),
    (["LoopConfig.tasks_per_iteration = None", "NIV2Quotas.num_initial = 6"],
     "tasks_per_iteration"),
    (["experiment.adaptive_perturbations = -1"], ">= 1"),
])
def test_adaptive_budget_refuses_what_it_cannot_serve(parse_experiment, smollm2_checkpoint,
                                                      extra, message):
    with pytest.raises(ValueError, match=message):
        parse_experiment("demo.gin", _bindings(smollm2_checkpoint)
                         + ["experiment.adaptive_perturbations = 2"] + extra)


TINY = T5Config(vocab_size=1152, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                num_encoder_layers=1, num_decoder_layers=1)


def test_score_stage_spends_the_adaptive_budget(sample_data, vocab, tmp_path):
    model = EncoderDecoderModel(TINY)
    ckpt = str(tmp_path / "ckpt")
    checkpoints.save_model(ckpt, model, jax.device_get(model.init_params(jax.random.key(0))))
    loop = active_loop.LoopConfig(tasks_per_iteration=6, label_ratio={"cls": 2, "gen": 4})
    score_config = scoring.ScoreConfig(num_instances=2, num_perturbations=6,
                                       max_source_length=128, max_target_length=16,
                                       max_decode_length=16, batch_size=16)
    policy = experiment.adaptive_policy(2, 2.0, loop, score_config)
    assert policy.quota == {"cls": 2, "gen": 4} and policy.num_select == 6
    exp = experiment.Experiment(model=model, vocabulary=vocab,
                                niv2_dir=str(sample_data / "niv2"), train_config=TrainConfig(),
                                score_config=score_config, loop=loop, init_checkpoint=None,
                                quotas=None, max_instances_per_task=20, on_bad_task="error",
                                partitioning=None, adaptive=policy)
    data = prepared_lib.prepare_niv2(exp.niv2_dir, seed=0, max_instances_per_task=20)
    tasks = [data.tasks[name] for name in data.split.pool]
    stages = stages_lib.build_stages(exp)
    out = str(tmp_path / "scoring")
    stages.score(ckpt, tasks, out)
    with open(os.path.join(out, "scores.jsonl")) as handle:
        scores = [json.loads(line) for line in handle]
    assert {r["task"] for r in scores} == {t.name for t in tasks}
    # Every task got K0 = 2 perturbations at least, none more than K = 6.
    assert all(2 <= r["n_perturbations"] <= 6 for r in scores)
    with open(os.path.join(out, "summary.json")) as handle:
        adaptive = json.load(handle)["adaptive"]
    assert adaptive["initial_perturbations"] == 2 and adaptive["num_select"] == 6
    assert adaptive["rows_scored"] == sum(r["n_instances"] * (1 + r["n_perturbations"])
                                          for r in scores)
    # A finished stage is not redone.
    mtime = os.path.getmtime(os.path.join(out, "scores.jsonl"))
    stages.score(ckpt, tasks, out)
    assert os.path.getmtime(os.path.join(out, "scores.jsonl")) == mtime
