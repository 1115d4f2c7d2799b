"""The active loop's bookkeeping: quotas, deterministic selections, resume after a kill.

These tests drive `active_loop.run_loop` with the real data layer, selection and reports, and
with stand-in train / evaluate / score stages whose outputs are pure functions of their inputs
(a hash of the training set and the task). That isolates what the loop itself must get right;
the real trainer and scorer have their own resume tests, and `test_active_loop_e2e.py` runs
the real components through the `run` command.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from activeit_jax import layout
from activeit_jax.core import io_utils
from activeit_jax.data import prepared as prepared_lib, splits
from activeit_jax.loop import active_loop
from activeit_jax.reporting import render as reports, results as run_results
from tests import loop_testlib


class FakeStages(loop_testlib.FakeStagesBase):
    """The stand-in stages on the bundled NIV2 sample (6 initial, 2 + 2 validation)."""

    def __init__(self, niv2_dir: str, kill_at: int | None = None):
        super().__init__(kill_at)
        self.niv2_dir = niv2_dir

    def prepare(self, seed, out_dir):
        if os.path.exists(os.path.join(out_dir, "splits.json")):
            return prepared_lib.load_prepared(out_dir)
        data = prepared_lib.prepare_niv2(self.niv2_dir, seed=seed,
                                         quotas=splits.NIV2Quotas(6, 2, 2),
                                         max_instances_per_task=10)
        prepared_lib.write_prepared(data, out_dir)
        return prepared_lib.load_prepared(out_dir)


CONFIG = active_loop.LoopConfig(
    strategies=("prompt_uncertainty", "random", "high_perplexity"), seeds=(0, 1),
    num_iterations=3, tasks_per_iteration=6, quota="niv2", label_ratio={"cls": 2, "gen": 4})


def _tree(run_dir: str) -> dict[str, bytes]:
    """Every file under run_dir (path -> content), the report excluded."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, run_dir)
            if not rel.startswith("report"):
                with open(path, "rb") as handle:
                    out[rel] = handle.read()
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, sample_data):
    run_dir = str(tmp_path_factory.mktemp("loop") / "run")
    fake = FakeStages(str(sample_data / "niv2"))
    active_loop.run_loop(run_dir, CONFIG, fake.stages())
    return run_dir, fake


def _selected(run_dir, seed, strategy, iteration):
    path = os.path.join(layout.iteration_dir(run_dir, seed, strategy, iteration),
                        layout.SELECTED_FILE)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_every_iteration_is_trained_once_and_iteration_zero_is_shared(full_run):
    run_dir, fake = full_run
    trained = [d for stage, d in fake.calls if stage == "train"]
    # Per seed: iteration 0 once, then 2 iterations per strategy.
    assert len(trained) == len(set(trained)) == 2 * (1 + 3 * 2)
    for seed in (0, 1):
        assert os.path.join(run_dir, f"seed_{seed}", "iter_0", "train") in trained


def test_quota_holds_and_no_task_is_selected_twice(full_run):
    run_dir, _ = full_run
    for seed in (0, 1):
        prepared = prepared_lib.load_prepared(os.path.join(run_dir, f"seed_{seed}", "data"))
        for strategy in CONFIG.strategies:
            union = list(prepared.split.initial)
            for iteration in (1, 2):
                chosen = _selected(run_dir, seed, strategy, iteration)["tasks"]
                labels = [prepared.tasks[name].label for name in chosen]
                assert (labels.count("cls"), labels.count("gen")) == (2, 4)
                assert not set(chosen) & set(union)
                assert set(chosen) <= set(prepared.split.pool)
                union += chosen


def test_prompt_uncertainty_picks_the_highest_scores_of_the_previous_model(full_run):
    run_dir, _ = full_run
    prepared = prepared_lib.load_prepared(os.path.join(run_dir, "seed_0", "data"))
    for iteration in (1, 2):
        prev = layout.iteration_dir(run_dir, 0, "prompt_uncertainty", iteration - 1)
        scores = io_utils.read_jsonl(os.path.join(prev, layout.SCORES_FILE))
        chosen = _selected(run_dir, 0, "prompt_uncertainty", iteration)["tasks"]
        expected = []
        for label, count in (("cls", 2), ("gen", 4)):
            group = [r for r in scores if prepared.tasks[r["task"]].label == label]
            group.sort(key=lambda r: (-r["prompt_uncertainty"], r["task"]))
            expected += [r["task"] for r in group[:count]]
        assert sorted(chosen) == sorted(expected)


def test_selections_are_deterministic_under_the_seed(full_run, tmp_path, sample_data):
    run_dir, _ = full_run
    again = str(tmp_path / "again")
    active_loop.run_loop(again, CONFIG, FakeStages(str(sample_data / "niv2")).stages())
    assert _tree(again) == _tree(run_dir)
    # Different seeds draw different initial sets and random selections.
    assert (_selected(run_dir, 0, "random", 1)["tasks"]
            != _selected(run_dir, 1, "random", 1)["tasks"])


@pytest.mark.parametrize("kill_at", [1, 2, 3, 5, 8, 13, 20])
def test_kill_at_any_stage_then_resume_gives_the_same_run_directory(full_run, tmp_path,
                                                                    sample_data, kill_at):
    run_dir, _ = full_run
    resumed = str(tmp_path / "resumed")
    niv2 = str(sample_data / "niv2")
    with pytest.raises(KeyboardInterrupt):
        active_loop.run_loop(resumed, CONFIG, FakeStages(niv2, kill_at=kill_at).stages())
    finished_before = sum(1 for name in _tree(resumed) if name.endswith(layout.DONE_FILE))
    second = FakeStages(niv2)
    active_loop.run_loop(resumed, CONFIG, second.stages())
    assert _tree(resumed) == _tree(run_dir)
    # Finished iterations are not redone; the interrupted one is.
    total_trainings = 2 * (1 + 3 * 2)
    assert len([s for s, _ in second.calls if s == "train"]) == total_trainings - finished_before


def test_resuming_with_different_settings_is_refused(full_run):
    run_dir, fake = full_run
    changed = active_loop.LoopConfig(strategies=CONFIG.strategies, seeds=CONFIG.seeds,
                                     num_iterations=4, tasks_per_iteration=6, quota="niv2",
                                     label_ratio={"cls": 2, "gen": 4})
    with pytest.raises(ValueError, match="num_iterations"):
        active_loop.run_loop(run_dir, changed, fake.stages())


def test_results_table_equals_the_per_task_metric_files(full_run, tmp_path):
    run_dir, _ = full_run
    written = reports.write_report(run_dir, out_dir=str(tmp_path / "report"))
    with open(written["results.csv"], encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    checked = 0
    for row in rows:
        strategy, iteration = row["strategy"], int(row["iteration"])
        values = []
        for seed in (0, 1):
            it_dir = layout.iteration_dir(run_dir, seed, strategy, iteration) \
                if strategy != run_results.INITIAL else layout.iteration_dir(
                    run_dir, seed, None, 0)
            records = [r for r in io_utils.read_jsonl(os.path.join(it_dir, "per_task_metrics"
                                                                   ".jsonl"))
                       if r["split"] == row["split"]]
            values.append(np.mean([r["rouge_l"] for r in records]))
        assert float(row["overall_mean"]) == pytest.approx(np.mean(values), rel=1e-12)
        for seed, value in zip((0, 1), values):
            assert float(row[f"overall_seed{seed}"]) == pytest.approx(value, rel=1e-12)
        checked += 1
    assert checked == len(rows)


def test_fully_trained_reference_trains_on_the_whole_pool_once(tmp_path, sample_data):
    config = active_loop.LoopConfig(strategies=("fully_trained",), seeds=(0,),
                                    num_iterations=3, tasks_per_iteration=6, quota="niv2",
                                    label_ratio={"cls": 2, "gen": 4})
    fake = FakeStages(str(sample_data / "niv2"))
    run_dir = str(tmp_path / "ft")
    active_loop.run_loop(run_dir, config, fake.stages())
    prepared = prepared_lib.load_prepared(os.path.join(run_dir, "seed_0", "data"))
    chosen = _selected(run_dir, 0, "fully_trained", 1)["tasks"]
    assert sorted(chosen) == sorted(prepared.split.pool)
    assert not os.path.exists(layout.iteration_dir(run_dir, 0, "fully_trained", 2))


def test_paper_experiment_config_is_the_paper_setting(parse_experiment, sample_data):
    exp = parse_experiment("experiments/niv2_t5_large.gin", [
        'NIV2_DIR = "/niv2"', f'get_vocabulary.path = "{sample_data}/vocab/sample_spm.model"',
        'experiment.init_checkpoint = "/ckpt"', 'experiment.label_source = "rule"'])
    assert exp.model.config.d_model == 1024 and exp.model.config.num_encoder_layers == 24
    assert exp.model.config.dtype == "bfloat16"
    assert (exp.quotas.num_initial, exp.quotas.num_val_cls, exp.quotas.num_val_gen) == (
        68, 34, 34)
    assert (exp.loop.tasks_per_iteration, dict(exp.loop.label_ratio)) == (
        68, {"cls": 24, "gen": 44})
    assert (exp.score_config.num_instances, exp.score_config.num_perturbations,
            exp.score_config.perturbation, dict(exp.score_config.perturbation_options)) == (
        10, 20, "drop", {"rate": 0.2})
    tc = exp.train_config
    assert (tc.learning_rate, tc.warmup_steps, tc.batch_size, tc.num_epochs) == (
        5e-5, 50, 128, 8)
    assert (tc.max_source_length, tc.max_target_length) == (1024, 128)


def test_demo_config_runs_three_iterations_of_two_strategies(parse_experiment):
    exp = parse_experiment("demo_tiny.gin", [])
    assert tuple(exp.loop.strategies) == ("prompt_uncertainty", "random")
    assert exp.loop.num_iterations == 3 and exp.init_checkpoint is None
