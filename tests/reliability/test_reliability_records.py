"""Reliability: the files a user hands in (issue 23, items 4, 9 and 10).

- an output that is one of the command's inputs (the same file, through a symbolic or a hard
  link too) is refused before anything is read, in every command with both;
- a lone surrogate in one NIV2 instance or Self-Instruct item makes that task a malformed one
  (skipped and listed with --on_bad_task=skip, an error naming it otherwise);
- the remaining tracebacks of round 2 are one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from tests.reliability.test_reliability_errors import TASK, bad, run_cases  # noqa: F401
from tests.reporting.test_reports import _build_run


def _digest(path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` (or of `path` itself)."""
    path = str(path)
    if os.path.isfile(path):
        return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


# ----------------------------------------------------------------------------- item 4


def test_select_refuses_an_output_that_is_an_input(tmp_path):
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"task": f"t{i}", "prompt_uncertainty": i / 10,
                                          "label": "gen"}) + "\n" for i in range(4)))
    pool = tmp_path / "pool.txt"
    pool.write_text("t0\nt1\nt2\n")
    exclude = tmp_path / "done.txt"
    exclude.write_text("t3\n")
    (tmp_path / "link.jsonl").symlink_to(scores)
    os.link(scores, tmp_path / "hard.jsonl")
    before = {p: _digest(p) for p in (scores, pool, exclude)}
    run_cases("select", [
        ([f"--scores={scores}", "--num_tasks=1", f"--out={scores}"],
         ["--out=", "is the input --scores"]),
        ([f"--scores={scores}", "--num_tasks=1", f"--out={tmp_path}/link.jsonl"],
         ["is the input --scores"]),
        ([f"--scores={scores}", "--num_tasks=1", f"--out={tmp_path}/hard.jsonl"],
         ["is the input --scores"]),
        ([f"--scores={scores}", f"--pool={pool}", "--num_tasks=1", f"--out={pool}"],
         ["is the input --pool"]),
        ([f"--scores={scores}", f"--exclude={exclude}", "--num_tasks=1", f"--out={exclude}"],
         ["is the input --exclude"]),
        ([f"--scores={tmp_path}/./scores.jsonl", "--num_tasks=1",
          f"--out={tmp_path}/sub/../scores.jsonl"], ["is the input --scores"]),
    ], tmp_path)
    assert {p: _digest(p) for p in (scores, pool, exclude)} == before


def test_commands_refuse_to_write_over_their_inputs(bad, tmp_path, sample_data):  # noqa: F811
    """score, evaluate, train, prepare, convert and report: an output directory that is an
    input directory, or that would hold one of the command's own files over an input."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(bad / "ckpt", ckpt)
    score_dir = tmp_path / "scored"
    score_dir.mkdir()
    (score_dir / "scores.jsonl").write_text(f"{TASK}\n")  # a task list named like an output
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    shutil.copy(sample_data / "self_instruct" / os.listdir(sample_data / "self_instruct")[0],
                prepared / "tasks.jsonl")
    run = tmp_path / "run"
    _build_run(str(run))
    watched = (ckpt, score_dir, prepared, run)
    before = {p: _digest(p) for p in watched}
    spm = f"--vocab={sample_data}/vocab/sample_spm.model"
    run_cases("score", [
        ([f"--checkpoint={ckpt}", spm, f"--niv2_dir={bad}/niv2", f"--tasks={bad}/ok.txt",
          f"--out={ckpt}"], ["is the input --checkpoint"]),
        ([f"--checkpoint={ckpt}", spm, f"--niv2_dir={bad}/niv2",
          f"--tasks={score_dir}/scores.jsonl", f"--out={score_dir}"],
         ["would overwrite the input --tasks", "scores.jsonl"]),
    ], tmp_path)
    run_cases("evaluate", [
        ([f"--checkpoint={ckpt}", spm, f"--niv2_dir={bad}/niv2", f"--tasks={bad}/ok.txt",
          f"--out={ckpt}"], ["is the input --checkpoint"]),
    ], tmp_path)
    run_cases("train", [
        (["--gin_file=runs/finetune_tiny.gin", f"--niv2_dir={bad}/niv2",
          f"--tasks={bad}/ok.txt", f"--init_checkpoint={ckpt}", f"--out={ckpt}"],
         ["is the input --init_checkpoint"]),
    ], tmp_path)
    run_cases("prepare", [
        ([f"--self_instruct={prepared}/tasks.jsonl", f"--out={prepared}", "--num_initial=2"],
         ["would overwrite the input --self_instruct", "tasks.jsonl"]),
    ], tmp_path)
    run_cases("convert", [  # convert's own policy: it never writes over a model it did not
        ([f"--from={ckpt}", f"--to_hf={ckpt}"], [str(ckpt)]),  # make (test_reliability_models)
    ], tmp_path)
    run_cases("report", [([f"--run={run}", f"--out={run}"], ["is the input --run"])],
              tmp_path)
    assert {p: _digest(p) for p in watched} == before


# ----------------------------------------------------------------------------- item 9

GOOD = ("task020_mctaco_span_based_question", "task033_winogrande_answer_generation")
SCORE_SMALL = ["--num_instances=1", "--num_perturbations=1", "--max_source_length=32",
               "--max_target_length=4", "--batch_size=1", "--noprogress"]


@pytest.fixture(scope="module")
def surrogates(tmp_path_factory, sample_data):
    """An NIV2 folder where one task has a lone surrogate in an instance input, and a
    Self-Instruct file where the middle item has one in its output."""
    root = tmp_path_factory.mktemp("surrogates")
    tasks = root / "niv2" / "tasks"
    tasks.mkdir(parents=True)
    for name in (*GOOD, TASK):
        shutil.copy(sample_data / "niv2" / "tasks" / f"{name}.json", tasks)
    shutil.copytree(sample_data / "niv2" / "splits", root / "niv2" / "splits")
    raw = json.loads((tasks / f"{TASK}.json").read_text())
    raw["Instances"][0]["input"] = "before \ud800 after"
    (tasks / f"{TASK}.json").write_text(json.dumps(raw))  # ensure_ascii: the \ud800 escape
    (root / "pool.txt").write_text(f"{GOOD[0]}\n{TASK}\n{GOOD[1]}\n")
    items = [{"id": f"si_{k}", "instruction": f"Say {k}.", "input": "", "output": str(k)}
             for k in range(3)]
    items[1]["output"] = "\udc80"
    (root / "si.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return root


def test_a_lone_surrogate_makes_one_malformed_task(bad, surrogates, tmp_path,  # noqa: F811
                                                   sample_data):
    """score: the task is skipped and listed with --on_bad_task=skip (the good tasks of its
    chunk are scored), an error naming the task and the field without it."""
    base = [f"--checkpoint={bad}/ckpt", f"--vocab={sample_data}/vocab/sample_spm.model",
            *SCORE_SMALL]
    niv2 = [*base, f"--niv2_dir={surrogates}/niv2", f"--tasks={surrogates}/pool.txt"]
    si = [*base, f"--self_instruct={surrogates}/si.jsonl"]
    run_cases("score", [
        ([*niv2, f"--out={tmp_path}/niv2_error"],
         [f"{TASK}.json", "Instances[0].input", "lone surrogate"]),
        ([*si, f"--out={tmp_path}/si_error"], ["si.jsonl", "'si_1'", "line 2.output",
                                              "lone surrogate"]),
        ([*niv2, "--on_bad_task=skip", f"--out={tmp_path}/niv2_skip"], None),
        ([*si, "--on_bad_task=skip", f"--out={tmp_path}/si_skip"], None),
    ], tmp_path)
    # (NIV2 tasks are read as the scorer reaches them, so niv2_error holds the run's start;
    # the same command resumes once the file is fixed.)
    assert not (tmp_path / "si_error").exists()
    for out, scored, bad_task in (("niv2_skip", set(GOOD), TASK),
                                  ("si_skip", {"si_0", "si_2"}, "si_1")):
        lines = [json.loads(x) for x in (tmp_path / out / "scores.jsonl").read_text().split("\n")
                 if x]
        assert {r["task"] for r in lines} == scored
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        assert [s["task"] for s in summary["skipped"]] == [bad_task]
        assert "lone surrogate" in summary["skipped"][0]["reason"]


def test_prepare_lists_the_bad_item_and_leaves_no_empty_directory(surrogates, tmp_path):
    run_cases("prepare", [
        ([f"--self_instruct={surrogates}/si.jsonl", f"--out={tmp_path}/si_error",
          "--num_initial=1"], ["si.jsonl", "'si_1'", "lone surrogate"]),
        ([f"--niv2_dir={surrogates}/niv2", f"--out={tmp_path}/niv2_error", f"--tasks={TASK}"],
         [f"{TASK}.json", "Instances[0].input", "lone surrogate"]),
    ], tmp_path)
    assert not (tmp_path / "si_error").exists() and not (tmp_path / "niv2_error").exists()

    from activeit_jax.data import prepared
    data = prepared.prepare_self_instruct(surrogates / "si.jsonl", num_chunks=1,
                                          quotas=None, on_bad_task="skip")
    assert sorted(data.tasks) == ["si_0", "si_2"]
    assert [name for name, _ in data.sources[0].skipped] == ["si_1"]
    assert "lone surrogate" in prepared.format_summary(data)


def test_a_failed_write_removes_the_directory_it_created(tmp_path, monkeypatch, sample_data):
    from activeit_jax.data import prepared
    data = prepared.prepare_self_instruct(
        sample_data / "self_instruct" / "user_oriented_instructions.jsonl", num_chunks=1)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(prepared.io_utils, "atomic_write_json", broken)
    with pytest.raises(OSError):
        prepared.write_prepared(data, tmp_path / "new" / "out")
    assert not (tmp_path / "new" / "out").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError):
        prepared.write_prepared(data, tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()  # not created by it: left alone


# ----------------------------------------------------------------------------- item 10

DEEP = "[" * 100_000 + "]" * 100_000


def _scores(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_select_refuses_impossible_scores_and_labels(tmp_path):
    good = {"task": "a", "prompt_uncertainty": 0.2, "prediction_probability": 0.5,
            "perplexity": 3.0, "label": "gen", "category": "easy"}
    cases = {"pu_null.jsonl": (dict(good, prompt_uncertainty=None), ["no score or a null",
                                                                     "prompt_uncertainty"]),
             "pu_negative.jsonl": (dict(good, prompt_uncertainty=-0.5),
                                   ["line 2: prompt_uncertainty", "-0.5", "outside [0, 1]"]),
             "probability.jsonl": (dict(good, prediction_probability=1.5),
                                   ["line 2: prediction_probability", "outside [0, 1]"]),
             "label.jsonl": (dict(good, label="maybe"), ["line 2: label", "'maybe'"]),
             "category.jsonl": (dict(good, category="weird"), ["line 2: category"])}
    runs = []
    for name, (record, expected) in cases.items():
        path = _scores(tmp_path / name, [dict(good, task="b"), dict(record, task="a")])
        runs.append(([f"--scores={path}", "--num_tasks=1", f"--out={tmp_path}/o.json"],
                     [name, *expected]))
    (tmp_path / "pool.jsonl").write_text('{"name": "a", "label": "gen"}\n'
                                         '{"name": "b", "label": "classification"}\n')
    runs.append(([f"--pool={tmp_path}/pool.jsonl", "--strategy=random", "--num_tasks=1",
                  f"--out={tmp_path}/o.json"], ["pool.jsonl", "line 2: label"]))
    run_cases("select", runs, tmp_path)
    assert not (tmp_path / "o.json").exists()


def test_json_nested_100k_deep_is_one_line(bad, tmp_path, sample_data):  # noqa: F811
    """Every reader of user JSON: scores, pools, task lists, prepared tasks, NIV2 task files,
    label overrides, paraphrase files and the report's inputs."""
    deep_line = tmp_path / "deep.jsonl"
    deep_line.write_text('{"task": "a", "prompt_uncertainty": 0.1}\n' + DEEP + "\n")
    deep_first = tmp_path / "deep_first.jsonl"
    deep_first.write_text(DEEP + "\n")
    deep_json = tmp_path / "deep.json"
    deep_json.write_text(DEEP)
    niv2 = tmp_path / "niv2"
    (niv2 / "tasks").mkdir(parents=True)
    (niv2 / "tasks" / "task_deep.json").write_text(DEEP)
    (tmp_path / "deep_task.txt").write_text("task_deep\n")
    out = f"--out={tmp_path}/o.json"
    run_cases("select", [
        ([f"--scores={deep_line}", "--num_tasks=1", out], ["deep.jsonl", "line 2",
                                                           "levels deep"]),
        ([f"--pool={deep_json}", "--strategy=random", "--num_tasks=1", out],
         ["deep.json", "levels deep"]),
        ([f"--pool={deep_line}", "--strategy=random", "--num_tasks=1", out],
         ["deep.jsonl", "line 2"]),
        ([f"--scores={_scores(tmp_path / 'ok.jsonl', [{'task': 'a'}])}",
          f"--exclude={deep_json}", "--num_tasks=1", out], ["deep.json", "levels deep"]),
    ], tmp_path)
    score = [f"--checkpoint={bad}/ckpt", f"--vocab={sample_data}/vocab/sample_spm.model",
             f"--out={tmp_path}/scored"]
    run_cases("score", [
        ([*score, f"--tasks={deep_first}"], ["deep_first.jsonl", "line 1", "levels deep"]),
        ([*score, f"--tasks={deep_json}", f"--niv2_dir={niv2}"], ["deep.json", "levels deep"]),
        ([*score[:-1], f"--out={tmp_path}/lazy", f"--tasks={tmp_path}/deep_task.txt",
          f"--niv2_dir={niv2}"], ["task_deep.json", "levels deep"]),
        ([*score, f"--tasks={bad}/ok.txt", f"--niv2_dir={bad}/niv2", "--perturbation=paraphrase",
          f"--perturbation_option=file={deep_json}"], ["levels deep"]),
    ], tmp_path)
    run_cases("prepare", [
        ([f"--niv2_dir={sample_data}/niv2", f"--out={tmp_path}/prepared",
          f"--label_source={deep_json}"], ["deep.json", "levels deep"]),
    ], tmp_path)
    run = tmp_path / "run"
    _build_run(str(run))
    (run / "seed_0" / "iter_0" / "per_task_metrics.jsonl").write_text(DEEP + "\n")
    (run / "seed_1" / "iter_0" / "selected_tasks.json").write_text(DEEP)
    run_cases("report", [([f"--run={run}"], ["levels deep"])], tmp_path)
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "scored").exists()
    assert not (tmp_path / "prepared").exists() and not (run / "report").exists()


def test_label_overrides_that_are_not_utf8_are_one_line(tmp_path, sample_data):
    (tmp_path / "labels.json").write_bytes(b'{"task063_first_i_elements": "g\xe9n"}')
    run_cases("prepare", [
        ([f"--niv2_dir={sample_data}/niv2", f"--out={tmp_path}/prepared",
          f"--label_source={tmp_path}/labels.json"], ["labels.json", "not UTF-8"]),
    ], tmp_path)
    assert not (tmp_path / "prepared").exists()


def test_adaptive_settings_are_checked_before_anything_is_written(bad, tmp_path,  # noqa: F811
                                                                  sample_data):
    base = [f"--checkpoint={bad}/ckpt", f"--vocab={sample_data}/vocab/sample_spm.model",
            f"--niv2_dir={bad}/niv2", f"--tasks={bad}/ok.txt", f"--out={tmp_path}/scored"]
    run_cases("score", [
        ([*base, "--adaptive_k0=-1"], ["--adaptive_k0", ">= 1", "-1"]),
        ([*base, "--adaptive_k0=2", "--adaptive_select=0"], ["--adaptive_select", ">= 1"]),
        ([*base, "--adaptive_select=3"], ["--adaptive_select", "without --adaptive_k0"]),
        ([*base, "--adaptive_k0=2", "--adaptive_z=nan"], ["AdaptiveConfig.z"]),
        ([*base, "--adaptive_k0=2", "--save_prompts"], ["--save_prompts", "adaptive"]),
        ([*base, "--adaptive_k0=2", "--entropy"], ["--entropy", "adaptive"]),
    ], tmp_path)
    assert not (tmp_path / "scored").exists()


def test_adaptive_score_locks_its_directory(bad, tmp_path, sample_data):  # noqa: F811
    from activeit_jax.core import run_lock
    out = tmp_path / "scored"
    with run_lock.hold(out, "score"):  # another scorer, as far as the lock is concerned
        run_cases("score", [
            ([f"--checkpoint={bad}/ckpt", f"--vocab={sample_data}/vocab/sample_spm.model",
              f"--niv2_dir={bad}/niv2", f"--tasks={bad}/ok.txt", f"--out={out}",
              "--adaptive_k0=1", "--adaptive_select=1", *SCORE_SMALL[1:]],
             [str(out), "in use by another process"]),
        ], tmp_path)
    assert sorted(os.listdir(out)) == [".activeit.lock"]


def test_score_refuses_an_empty_task_list(bad, tmp_path, sample_data):  # noqa: F811
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    (tmp_path / "empty.jsonl").write_text("")
    base = [f"--checkpoint={bad}/ckpt", f"--vocab={sample_data}/vocab/sample_spm.model",
            f"--niv2_dir={bad}/niv2", f"--out={tmp_path}/scored"]
    run_cases("score", [
        ([*base, f"--tasks={tmp_path}/empty.txt"], ["empty.txt", "no task to score"]),
        ([*base, f"--tasks={tmp_path}/empty.jsonl"], ["empty.jsonl", "no task to score"]),
    ], tmp_path)
    assert not (tmp_path / "scored").exists()


def test_all_skipped_pool_writes_null_thresholds_not_nan(tmp_path):
    from activeit_jax import layout
    from activeit_jax.scoring import ScoreConfig, journal
    (tmp_path / layout.SKIPPED_FILE).write_text(
        json.dumps({"index": 0, "task": "t", "reason": "no instances"}) + "\n")
    summary = journal.finalize(str(tmp_path), ScoreConfig())
    text = (tmp_path / layout.SCORE_SUMMARY_FILE).read_text()
    assert "NaN" not in text and summary["thresholds"] == {"prompt_uncertainty": None,
                                                           "prediction_probability": None}
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in summary.json"))


def test_report_says_which_per_task_line_is_torn(tmp_path):
    from activeit_jax.reporting import render as reports, results
    run = tmp_path / "run"
    _build_run(str(run))
    path = run / "seed_0" / "iter_0" / "per_task_metrics.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the last line cut off, as a damaged copy leaves it
    number = data[:-20].count(b"\n") + 1
    warnings: list[str] = []
    results.collect_results(results.discover_run(str(run)), warnings)
    expected = f"{path}: line {number} is torn"
    assert sum(expected in w for w in warnings) == 1, warnings
    reports.write_report(str(run))
    assert f"line {number} is torn" in (run / "report" / "report.html").read_text()
    # A last line that only lacks its newline is read, without a warning.
    path.write_bytes(data[:-1])
    warnings = []
    rows = results.collect_results(results.discover_run(str(run)), warnings)
    assert not any("torn" in w for w in warnings) and rows


def test_a_lone_surrogate_in_a_prepared_line_is_a_malformed_task(sample_data):
    from activeit_jax.data import niv2
    from activeit_jax.data.errors import TaskFormatError
    from activeit_jax.scoring import SkippedTask, pool_source
    task = niv2.load_niv2_task(sample_data / "niv2" / "tasks" / f"{TASK}.json").to_dict()
    task["instances"][1]["input"] = "x\ud800"
    with pytest.raises(TaskFormatError, match=r"line 3: instances\[1\]: input.*lone surrogate"):
        pool_source.prepared_task(task, "tasks.jsonl", 3)
    skipped = pool_source.prepared_task(dict(task, name="bad\udc80name"), "tasks.jsonl", 3, "skip")
    assert isinstance(skipped, SkippedTask) and skipped.name == "line 3"
    json.dumps(skipped.reason).encode("utf-8")  # writable to skipped.jsonl
