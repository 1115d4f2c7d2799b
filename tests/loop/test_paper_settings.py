"""The paper's experiment settings: configs, the schedule, label sources, the entropy switch, and
the paper's strategies driven through the loop (docs/paper_settings.md)."""
from __future__ import annotations

import csv
import json
import os

import pytest

from activeit_jax import layout
from activeit_jax.core import io_utils
from activeit_jax.data import prepared as prepared_lib
from activeit_jax.loop import active_loop, schedule
from activeit_jax.reporting import results as run_results
from activeit_jax.scoring import taskmap
from tests.loop.test_active_loop import FakeStages, _selected
from tests.loop_testlib import unit

NIV2 = "experiments/niv2_t5_large.gin"


def _niv2_bindings(sample_data):
    return ['NIV2_DIR = "/niv2"', f'get_vocabulary.path = "{sample_data}/vocab/sample_spm.model"',
            'experiment.init_checkpoint = "/ckpt"']


# ------------------------------------------------------------------------------- configs


def test_niv2_config_is_the_paper_and_reference_setting(parse_experiment, sample_data):
    exp = parse_experiment(NIV2, _niv2_bindings(sample_data))
    loop, tc = exp.loop, exp.train_config
    assert tuple(loop.seeds) == (0, 1, 2, 3, 4)
    assert tuple(loop.strategies) == ("prompt_uncertainty", "random", "high_perplexity",
                                      "low_perplexity", "uncertainty", "fully_trained")
    assert (loop.num_iterations, loop.tasks_per_iteration, loop.train_set_sizes) == (6, 68, None)
    assert schedule.train_set_sizes(68, 6, 68) == [68, 136, 204, 272, 340, 408]
    assert dict(loop.label_ratio) == {"cls": 24, "gen": 44}
    assert int(68 * 0.356) == 24  # reproduce.sh's --fix_cls_gen_ratio, as TLAL_pipeline.py
    # Best epoch: ROUGE-L of the classification validation tasks on 50 instances per task;
    # the test set keeps 100.
    assert (tc.selection_metric, tc.max_val_instances_per_task) == ("rougeL_cls", 50)
    assert tc.max_eval_instances_per_task == 100 and tc.max_instances_per_task == 200
    assert (exp.quotas.num_initial, exp.quotas.num_val_cls, exp.quotas.num_val_gen) == (
        68, 34, 34)
    assert exp.score_config.compute_entropy  # the "uncertainty" baseline reads it
    assert exp.label_overrides is None and exp.select_epoch_on_validation


def test_taskmap_config_runs_three_categories_and_random(parse_experiment, sample_data):
    exp = parse_experiment("experiments/niv2_t5_large_taskmap.gin",
                           _niv2_bindings(sample_data))
    assert tuple(exp.loop.strategies) == ("ambiguous", "easy", "difficult", "random")
    assert tuple(exp.loop.seeds) == (0, 1, 2, 3, 4)
    assert dict(exp.loop.label_ratio) == {"cls": 24, "gen": 44}
    assert (exp.loop.num_iterations, exp.loop.tasks_per_iteration) == (6, 68)
    assert not exp.score_config.compute_entropy  # no strategy here reads entropy


def test_alpaca_config_is_the_paper_setting(parse_experiment, sample_data):
    exp = parse_experiment("experiments/alpaca_llama7b.gin", [
        'SELF_INSTRUCT_FILE = "/a.json"', 'SELF_INSTRUCT_TEST_FILE = "/t.jsonl"',
        f'get_vocabulary.path = "{sample_data}/vocab/sample_spm.model"',
        'experiment.init_checkpoint = "/ckpt"'])
    loop = exp.loop
    assert tuple(loop.seeds) == (0, 1, 2, 3, 4)
    assert {"prompt_uncertainty", "random", "fully_trained"} <= set(loop.strategies)
    assert loop.num_iterations == 6 and exp.quotas.num_initial == 500
    sizes = schedule.train_set_sizes(500, 6, loop.tasks_per_iteration, loop.train_set_sizes,
                                     loop.growth_factor)
    assert sizes == [500, 1000, 2000, 4000, 8000, 16000]
    assert sizes == schedule.train_set_sizes(500, 6, growth_factor=2.0)


def test_entropy_is_computed_exactly_when_a_strategy_reads_it(parse_experiment):
    assert not parse_experiment("demo_tiny.gin", []).score_config.compute_entropy
    exp = parse_experiment("demo_tiny.gin", ['LoopConfig.strategies = ("uncertainty", "random")'])
    assert exp.score_config.compute_entropy
    assert exp.loop.scores_needed() == {"entropy", "perplexity"}


# ------------------------------------------------------------------------------ schedule


def test_schedule_list_doubling_and_fixed_increment():
    assert schedule.tasks_to_add(500, 6, sizes=(1000, 2000, 4000, 8000, 16000)) == [
        500, 500, 1000, 2000, 4000, 8000]
    assert schedule.train_set_sizes(3, 4, growth_factor=2) == [3, 6, 12, 24]
    assert schedule.train_set_sizes(5, 3, growth_factor=1.5) == [5, 8, 11]  # round(11.25)
    assert schedule.tasks_to_add(68, 3) == [68, 68, 68]  # default: as many as the initial set
    assert schedule.tasks_to_add(68, 3, tasks_per_iteration=10) == [68, 10, 10]
    with pytest.raises(ValueError, match="needs 2"):
        schedule.train_set_sizes(5, 3, sizes=(10,))
    with pytest.raises(ValueError, match="must grow"):
        schedule.train_set_sizes(500, 2, sizes=(400,))
    with pytest.raises(ValueError, match="must increase"):
        schedule.check_schedule(3, sizes=(10, 10))
    with pytest.raises(ValueError, match="not both"):
        schedule.check_schedule(3, sizes=(10, 20), growth_factor=2.0)
    with pytest.raises(ValueError, match="growth_factor must be > 1"):
        active_loop.LoopConfig(growth_factor=1.0)
    with pytest.raises(ValueError, match="needs 5"):
        active_loop.LoopConfig(num_iterations=6, train_set_sizes=(1, 2))


@pytest.mark.parametrize("changes,added", [
    ({"train_set_sizes": (8, 12)}, [2, 4]),
    ({"growth_factor": 2.0}, [6, 12]),
])
def test_loop_follows_the_schedule(tmp_path, sample_data, changes, added):
    config = active_loop.LoopConfig(strategies=("random",), seeds=(0,), num_iterations=3,
                                    quota="none", **changes)
    run_dir = str(tmp_path / "run")
    active_loop.run_loop(run_dir, config, FakeStages(str(sample_data / "niv2")).stages())
    assert [len(_selected(run_dir, 0, "random", i)["tasks"]) for i in (1, 2)] == added
    with pytest.raises(ValueError, match="different settings"):  # the schedule is fixed
        active_loop.run_loop(run_dir, active_loop.LoopConfig(
            strategies=("random",), seeds=(0,), num_iterations=3, quota="none",
            tasks_per_iteration=2), FakeStages(str(sample_data / "niv2")).stages())


# ------------------------------------------------------------- paper strategies in the loop


class TaskMapStages(FakeStages):
    """Scores with entropy (optional) and real Task Map categories of the scored pool."""

    def __init__(self, niv2_dir, with_entropy=True):
        super().__init__(niv2_dir)
        self.with_entropy = with_entropy

    def score(self, checkpoint_dir, tasks, out_dir):
        self._tick("score", out_dir)
        key = self._checkpoint_key(checkpoint_dir)
        pu = [unit(key, t.name, "pu") for t in tasks]
        prob = [unit(key, t.name, "p") for t in tasks]
        categories, _ = taskmap.categorize(pu, prob)
        records = [{"task": t.name, "prompt_uncertainty": u, "prediction_probability": p,
                    "perplexity": 1 + 10 * unit(key, t.name, "ppl"),
                    "entropy": unit(key, t.name, "ent") if self.with_entropy else None,
                    "category": c, "label": t.label}
                   for t, u, p, c in zip(tasks, pu, prob, categories)]
        io_utils.atomic_write_text(os.path.join(out_dir, "scores.jsonl"), "".join(
            json.dumps(r) + "\n" for r in records))


LOOP = dict(seeds=(0,), num_iterations=3, tasks_per_iteration=6, quota="niv2",
            label_ratio={"cls": 2, "gen": 4})


def test_category_strategies_draw_inside_the_previous_task_map(tmp_path, sample_data):
    config = active_loop.LoopConfig(strategies=("ambiguous", "easy", "difficult", "random"),
                                    **LOOP)
    run_dir = str(tmp_path / "run")
    active_loop.run_loop(run_dir, config, TaskMapStages(str(sample_data / "niv2")).stages())
    prepared = prepared_lib.load_prepared(os.path.join(run_dir, "seed_0", "data"))
    drawn_inside = filled = 0
    for strategy in ("ambiguous", "easy", "difficult"):
        for iteration in (1, 2):
            prev = layout.iteration_dir(run_dir, 0, strategy, iteration - 1)
            category = {r["task"]: r["category"] for r in io_utils.read_jsonl(
                os.path.join(prev, layout.SCORES_FILE))}
            record = _selected(run_dir, 0, strategy, iteration)
            outside = [n for n in record["tasks"] if category[n] != strategy]
            assert record["category_fill"] == outside  # every fill is recorded
            labels = [prepared.tasks[n].label for n in record["tasks"]]
            assert (labels.count("cls"), labels.count("gen")) == (2, 4)
            # a fill only where the label group had too few tasks of the category
            for label, quota in (("cls", 2), ("gen", 4)):
                inside = [n for n, c in category.items()
                          if c == strategy and prepared.tasks[n].label == label]
                taken = [n for n in outside if prepared.tasks[n].label == label]
                assert len(taken) == max(0, quota - len(inside))
            drawn_inside += len(record["tasks"]) - len(outside)
            filled += len(outside)
    assert drawn_inside and filled  # the small sample exercises both the draw and the fill


def test_uncertainty_in_the_loop_needs_entropy_and_ranks_by_it(tmp_path, sample_data):
    config = active_loop.LoopConfig(strategies=("uncertainty",), **LOOP)
    with pytest.raises(ValueError, match="lacks 'entropy'"):
        active_loop.run_loop(str(tmp_path / "no_entropy"), config,
                             TaskMapStages(str(sample_data / "niv2"), False).stages())
    run_dir = str(tmp_path / "run")
    active_loop.run_loop(run_dir, config, TaskMapStages(str(sample_data / "niv2")).stages())
    prepared = prepared_lib.load_prepared(os.path.join(run_dir, "seed_0", "data"))
    scores = io_utils.read_jsonl(os.path.join(run_dir, "seed_0", "iter_0",
                                              layout.SCORES_FILE))
    expected = []
    for label, key, count in (("cls", "entropy", 2), ("gen", "perplexity", 4)):
        group = sorted((r for r in scores if prepared.tasks[r["task"]].label == label),
                       key=lambda r: (-r[key], r["task"]))
        expected += [r["task"] for r in group[:count]]
    assert _selected(run_dir, 0, "uncertainty", 1)["tasks"] == expected


# ------------------------------------------------------------------------ label sources


def test_run_takes_label_overrides_and_counts_their_sources(parse_experiment, tmp_path,
                                                            capsys):
    from activeit_jax.loop import stages as loop_stages
    plain = loop_stages.build_stages(parse_experiment("demo_tiny.gin", []))
    data = plain.prepare(0, str(tmp_path / "plain" / "seed_0" / "data"))
    assert set(prepared_lib.label_source_counts(data.summary())) == {"rule"}
    names = sorted(data.tasks)[:4]
    flipped = {n: "gen" if data.tasks[n].label == "cls" else "cls" for n in names}
    # Active-IT's task_metadata.json shape for two tasks, a CSV for the other two.
    meta = tmp_path / "task_metadata.json"
    meta.write_text(json.dumps({f"{n}.json": {"DefHasLabel": (
        "ExactMentioned" if flipped[n] == "cls" else "NotMentioned")} for n in names[:2]}))
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["task", "label"]] + [[n, flipped[n]] for n in names[2:]])
    for path, subset in ((meta, names[:2]), (tmp_path / "labels.csv", names[2:])):
        out = tmp_path / path.stem
        capsys.readouterr()
        exp = parse_experiment("demo_tiny.gin", [f'experiment.label_overrides = "{path}"'])
        got = loop_stages.build_stages(exp).prepare(0, str(out / "seed_0" / "data"))
        for n in data.tasks:
            want = flipped[n] if n in subset else data.tasks[n].label
            assert got.tasks[n].label == want
        counts = {"override": len(subset), "rule": len(data.tasks) - len(subset)}
        assert prepared_lib.label_source_counts(got.summary()) == counts
        assert run_results.label_sources(str(out)) == {0: counts}
        printed = capsys.readouterr().out
        assert (f"seed 0: task labels (cls/gen) of {len(data.tasks)} tasks: "
                f"{len(subset)} from the override file, {counts['rule']} from the rule"
                ) in printed
    # A run prepared without overrides refuses to resume with them (and vice versa).
    with pytest.raises(ValueError, match="other label overrides"):
        loop_stages.build_stages(exp).prepare(0, str(tmp_path / "plain" / "seed_0" / "data"))
    with pytest.raises(ValueError, match="other label overrides"):
        plain.prepare(0, str(tmp_path / "labels" / "seed_0" / "data"))
