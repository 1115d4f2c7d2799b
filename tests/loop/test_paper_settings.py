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
from activeit_jax.loop import active_loop, schedule, selection
from activeit_jax.reporting import results as run_results
from activeit_jax.scoring import taskmap
from tests.loop.test_active_loop import FakeStages, _selected
from tests.loop_testlib import unit

NIV2 = "experiments/niv2_t5_large.gin"


def _niv2_bindings(sample_data, label_source='experiment.label_source = "rule"'):
    return ['NIV2_DIR = "/niv2"', f'get_vocabulary.path = "{sample_data}/vocab/sample_spm.model"',
            'experiment.init_checkpoint = "/ckpt"'] + ([label_source] if label_source else [])


# ------------------------------------------------------------------------------- configs


def test_niv2_config_is_the_paper_and_reference_setting(parse_experiment, sample_data):
    exp = parse_experiment(NIV2, _niv2_bindings(sample_data))
    loop, tc = exp.loop, exp.train_config
    assert tuple(loop.seeds) == (0, 1, 2, 3, 4)
    assert tuple(loop.strategies) == ("prompt_uncertainty", "random", "high_perplexity",
                                      "low_perplexity", "fully_trained")
    assert loop.perplexity_variant == "reference"  # the reference code's perplexity baselines
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
    assert not exp.score_config.compute_entropy  # no strategy reads it (reference variant)
    assert exp.label_source == "rule" and exp.select_epoch_on_validation


def test_niv2_config_refuses_to_start_without_its_label_source(parse_experiment, sample_data,
                                                               tmp_path):
    import gin

    from activeit_jax.core.errors import UsageError
    with pytest.raises(UsageError) as info:
        parse_experiment(NIV2, _niv2_bindings(sample_data, label_source=None))
    message = str(info.value)
    assert "\n" not in message and "task_metadata.json" in message
    assert "TASK_METADATA_FILE" in message and 'label_source=\'"rule"\'' in message
    gin.clear_config()
    with pytest.raises(UsageError, match="no label file at .*absent.json"):
        parse_experiment(NIV2, _niv2_bindings(
            sample_data, label_source=f'TASK_METADATA_FILE = "{tmp_path}/absent.json"'))
    gin.clear_config()
    meta = tmp_path / "task_metadata.json"
    meta.write_text(json.dumps({"task1.json": {"DefHasLabel": "ExactMentioned", "CLS_GEN": "GEN"},
                                "task2.json": {"DefHasLabel": "NotMentioned"}}))
    exp = parse_experiment(NIV2, _niv2_bindings(
        sample_data, label_source=f'TASK_METADATA_FILE = "{meta}"'))
    assert exp.label_source.path == str(meta)
    assert dict(exp.label_source) == {"task1": "cls", "task2": "gen"}
    assert dict(exp.label_source.metric_labels) == {"task1": "gen"}  # CLS_GEN, where given
    assert exp.label_source.describe()["disagree"] == 1
    gin.clear_config()
    taskmap = parse_experiment("experiments/niv2_t5_large_taskmap.gin", _niv2_bindings(
        sample_data, label_source=f'TASK_METADATA_FILE = "{meta}"'))
    assert taskmap.label_source == exp.label_source


def test_taskmap_config_runs_three_categories_and_random(parse_experiment, sample_data):
    exp = parse_experiment("experiments/niv2_t5_large_taskmap.gin",
                           _niv2_bindings(sample_data))
    assert tuple(exp.loop.strategies) == ("ambiguous", "easy", "difficult", "random")
    assert exp.loop.category_selection == "rank"  # the reference code's mechanism
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


@pytest.mark.parametrize("rule", ["rank", "random"])
def test_category_strategies_draw_inside_the_previous_task_map(tmp_path, sample_data, rule):
    config = active_loop.LoopConfig(strategies=("ambiguous", "easy", "difficult", "random"),
                                    category_selection=rule, **LOOP)
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
            assert record["variant"] == rule
            if rule == "rank":  # inside each label group: the reference's ranking's top
                by_task = {r["task"]: r for r in io_utils.read_jsonl(
                    os.path.join(prev, layout.SCORES_FILE))}
                for label in ("cls", "gen"):
                    mine = [n for n in record["tasks"] if category[n] == strategy
                            and prepared.tasks[n].label == label]
                    group = sorted(n for n in by_task if category[n] == strategy and n in
                                   _remaining(run_dir, prepared, strategy, iteration)
                                   and prepared.tasks[n].label == label)
                    assert mine == selection.category_ranking(strategy, group,
                                                              by_task)[:len(mine)]
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


def _remaining(run_dir, prepared, strategy, iteration):
    """The pool left before `iteration` of `strategy`."""
    taken = set()
    for i in range(1, iteration):
        taken |= set(_selected(run_dir, 0, strategy, i)["tasks"])
    return set(prepared.split.pool) - taken


def test_an_old_run_resumes_only_in_the_variant_it_ran(tmp_path, sample_data):
    """Runs started before the variants existed drew categories at random and ranked
    perplexity for every task: resuming one names the setting that keeps it so."""
    stages = TaskMapStages(str(sample_data / "niv2")).stages()
    old = dict(LOOP, num_iterations=2)
    run_dir = str(tmp_path / "run")
    active_loop.run_loop(run_dir, active_loop.LoopConfig(
        strategies=("easy", "random"), category_selection="random", **old), stages)
    path = os.path.join(run_dir, layout.LOOP_CONFIG_FILE)
    stored = json.load(open(path))
    for key in ("category_selection", "perplexity_variant"):
        del stored[key]
    io_utils.atomic_write_json(path, stored)
    with pytest.raises(ValueError, match="category_selection.*'random'"):
        active_loop.run_loop(run_dir, active_loop.LoopConfig(strategies=("easy", "random"),
                                                             **old), stages)
    active_loop.run_loop(run_dir, active_loop.LoopConfig(
        strategies=("easy", "random"), category_selection="random", **old), stages)
    # perplexity_variant: no strategy of the run reads it, so it may be anything
    active_loop.run_loop(run_dir, active_loop.LoopConfig(
        strategies=("easy", "random"), category_selection="random",
        perplexity_variant="paper_text", **old), stages)


@pytest.mark.parametrize("strategy,variant", [("uncertainty", "reference"),
                                              ("high_perplexity", "paper_text")])
def test_uncertainty_in_the_loop_needs_entropy_and_ranks_by_it(tmp_path, sample_data,
                                                               strategy, variant):
    config = active_loop.LoopConfig(strategies=(strategy,), perplexity_variant=variant, **LOOP)
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
    assert _selected(run_dir, 0, strategy, 1)["tasks"] == expected


# ------------------------------------------------------------------------ label sources


def test_run_takes_a_label_source_and_counts_its_labels(parse_experiment, tmp_path, capsys):
    import gin

    from activeit_jax.core.errors import UsageError
    from activeit_jax.loop import stages as loop_stages
    from activeit_jax.reporting import render
    plain = loop_stages.build_stages(parse_experiment("demo_tiny.gin", []))
    data = plain.prepare(0, str(tmp_path / "plain" / "seed_0" / "data"))
    assert set(prepared_lib.label_source_counts(data.summary())) == {"rule"}
    names = sorted(data.tasks)[:4]
    flipped = {n: "gen" if data.tasks[n].label == "cls" else "cls" for n in names}
    # Active-IT's task_metadata.json shape for two tasks (CLS_GEN on the first, set against
    # DefHasLabel), a CSV for the other two.
    meta = tmp_path / "task_metadata.json"
    entries = {f"{n}.json": {"DefHasLabel": (
        "ExactMentioned" if flipped[n] == "cls" else "NotMentioned")} for n in names[:2]}
    entries[f"{names[0]}.json"]["CLS_GEN"] = data.tasks[names[0]].label.upper()
    meta.write_text(json.dumps(entries))
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["task", "label"]] + [[n, flipped[n]] for n in names[2:]])
    # the label file through its name and through its old name, label_overrides
    for path, subset, name in ((meta, names[:2], "label_source"),
                               (tmp_path / "labels.csv", names[2:], "label_overrides")):
        out = tmp_path / path.stem
        capsys.readouterr()
        gin.clear_config()
        exp = parse_experiment("demo_tiny.gin", [f'experiment.{name} = "{path}"'])
        assert exp.label_source.path == str(path) and exp.label_overrides is None
        got = loop_stages.build_stages(exp).prepare(0, str(out / "seed_0" / "data"))
        for n in data.tasks:
            want = flipped[n] if n in subset else data.tasks[n].label
            assert got.tasks[n].label == want
        counts = {"override": len(subset), "rule": len(data.tasks) - len(subset)}
        assert prepared_lib.label_source_counts(got.summary()) == counts
        assert run_results.label_sources(str(out)) == {0: counts}
        assert prepared_lib.stored_label_file(out / "seed_0" / "data")["path"] == str(path)
        printed = capsys.readouterr().out
        assert (f"seed 0: task labels (cls/gen) of {len(data.tasks)} tasks: "
                f"{len(subset)} from the label file, {counts['rule']} from the rule ({path})"
                ) in printed
        # every report names the source at its top
        line = run_results.label_source_line(str(out))
        assert str(path) in line and f"{len(subset)} from the label file" in line
        os.makedirs(layout.iteration_dir(str(out), 0, None, 0))
        report = render.write_report(str(out))
        top = open(report["results.md"], encoding="utf-8").read().split("\n")[:4]
        assert any(str(path) in row for row in top)
        assert str(path) in open(report["report.html"], encoding="utf-8").read()
    # CLS_GEN, where the file has it, is the label the scores group by
    first = prepared_lib.load_prepared(tmp_path / "task_metadata" / "seed_0" / "data").tasks[
        names[0]]
    assert (first.label, first.metric_label) == (flipped[names[0]], data.tasks[names[0]].label)
    # A run prepared without a label file refuses to resume with one (and vice versa).
    with pytest.raises(ValueError, match="another label source"):
        loop_stages.build_stages(exp).prepare(0, str(tmp_path / "plain" / "seed_0" / "data"))
    with pytest.raises(ValueError, match="another label source"):
        plain.prepare(0, str(tmp_path / "labels" / "seed_0" / "data"))
    # both names at once is one setting given twice
    gin.clear_config()
    with pytest.raises(UsageError, match="old name of experiment.label_source"):
        parse_experiment("demo_tiny.gin", [f'experiment.label_overrides = "{meta}"',
                                           'experiment.label_source = "rule"'])


def test_cls_gen_groups_the_scores_and_defhaslabel_the_selection(sample_data, tmp_path):
    """Active-IT's two labels: DefHasLabel == ExactMentioned decides the selection pools
    (Task.label), CLS_GEN the cls / gen scores and the best-epoch metric (Task.metric_label)."""
    import dataclasses

    from activeit_jax.data import labels, niv2, vocab as vocab_lib
    from activeit_jax.loop import stages as loop_stages
    from activeit_jax.training import inputs
    meta = tmp_path / "task_metadata.json"
    name = "task113_count_frequency_of_letter"
    meta.write_text(json.dumps({f"{name}.json": {"DefHasLabel": "ExactMentioned",
                                                 "CLS_GEN": "GEN"}}))
    source = labels.load_label_source(meta)
    task = [t for t in niv2.read_niv2_split(sample_data / "niv2", "train",
                                            label_overrides=source) if t.name == name][0]
    assert (task.label, task.metric_label, task.label_source) == ("cls", "gen", "override")
    assert labels.metric_label_of(task) == "gen"
    assert labels.metric_label_of(dataclasses.replace(task, metric_label=None)) == "cls"
    vocab = vocab_lib.load_vocabulary(str(sample_data / "vocab" / "sample_spm.model"))
    examples = inputs.encode_tasks([task], vocab, max_instances_per_task=2, num_pos_examples=2,
                                   max_source_length=256, max_target_length=16, seed=None)
    assert {ex.label for ex in examples} == {"gen"}  # what the evaluator groups by
    records = loop_stages._evaluation_records(
        [task], {"per_task": {name: {"rougeL": 50.0, "exact_match": 0.0}}}, 100)
    assert records[0]["label"] == "gen"


def test_paper_settings_page_fills_every_column_of_every_row():
    """docs/paper_settings.md: each setting has paper / reference (file) / ours / why."""
    from tests.conftest import REPO_ROOT
    text = open(os.path.join(REPO_ROOT, "docs", "paper_settings.md"), encoding="utf-8").read()
    rows = [line for line in text.splitlines() if line.startswith("| ")
            and line.split("|")[1].strip().isdigit()]
    assert len(rows) >= 45
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
        assert len(cells) == 6 and all(cells), row
    page = " ".join(rows)
    for correction in ("learning rate 2e-5 (appendix A.2)", "`--perturb_num 10`",
                       "`--no_update_task_list`", "the official Alpaca release",
                       "24 classification + 44 generative", "200 (appendix A.2)",
                       "entropy for classification tasks", "category_selection = \"rank\"`",
                       "prompt_template = \"paper\"`", "| 500 |"):
        assert correction in page, correction
