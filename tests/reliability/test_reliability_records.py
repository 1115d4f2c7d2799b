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
