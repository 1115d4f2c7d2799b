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
    run_cases("convert", [
        ([f"--from={ckpt}", f"--to_hf={ckpt}"], ["is the input --from"]),
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
