"""Reliability: bad input to every command ends in one line naming the file / line / field,
exit status 1 and no traceback (the error boundary of `activeit_jax.main`).

Each command runs its bad command lines in one interpreter (`tests/cli_cases.py`), so a whole
table of cases costs one start-up per command.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import pytest

from activeit_jax.core import io_utils
from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints

REPO = pathlib.Path(__file__).resolve().parents[2]
TASK = "task063_first_i_elements"
TINY = T5Config(vocab_size=1152, d_model=8, num_heads=2, d_kv=4, d_ff=16,
                num_encoder_layers=1, num_decoder_layers=1)


def run_cases(command: str, cases: list[tuple[list[str], list[str] | None]], tmp_path) -> None:
    """Runs each (args, expected substrings) case: each must fail with one error line holding
    the substrings, or succeed when `expected` is None."""
    spec = tmp_path / f"{command}_cases.json"
    spec.write_text(json.dumps({"command": command, "cases": [args for args, _ in cases]}))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run([sys.executable, str(REPO / "tests" / "cli_cases.py"), str(spec)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{\"")]
    assert len(results) == len(cases), done.stderr[-3000:]
    assert "Event loop is closed" not in done.stderr  # no teardown noise after the message
    for (args, expected), result in zip(cases, results):
        where = f"{command} {' '.join(args)}"
        assert result["exception"] is None, f"{where}: traceback: {result['exception']}"
        if expected is None:
            assert result["code"] == 0, f"{where}: {result['stderr'][-2000:]}"
            continue
        assert result["code"] == 1, f"{where}: exit {result['code']}"
        errors = [line for line in result["stderr"].splitlines()
                  if line.startswith(f"activeit-jax {command}: error: ")]
        assert len(errors) == 1, f"{where}: {result['stderr'][-2000:]}"
        assert "Traceback" not in result["stderr"], where
        for text in expected:
            assert text in errors[0], f"{where}: {text!r} not in {errors[0]!r}"


@pytest.fixture(scope="module")
def bad(tmp_path_factory, sample_data):
    """A directory of broken inputs, shared by the commands' cases."""
    root = tmp_path_factory.mktemp("bad")
    niv2 = root / "niv2"
    (niv2 / "tasks").mkdir(parents=True)
    shutil.copy(sample_data / "niv2" / "tasks" / f"{TASK}.json", niv2 / "tasks")
    (niv2 / "tasks" / "task_broken.json").write_text('{"Definition": ["x"],\n"Instances": [')
    (root / "ok.txt").write_text(f"{TASK}\n")
    (root / "absent.txt").write_text(f"{TASK}\ntask_absent\n")
    (root / "broken.txt").write_text("task_broken\n")
    (root / "path.txt").write_text(f"{TASK}\n../../etc/passwd\n")
    (root / "latin1.txt").write_bytes(b"t\xe2che\n")
    model = EncoderDecoderModel(TINY)
    checkpoints.save_model(root / "ckpt", model, model.init_params(jax.random.key(0)))
    shutil.copytree(root / "ckpt", root / "garbled")
    (root / "garbled" / "config.json").write_text('{"format": "activeit-jax",\n"model_kind":')
    shutil.copytree(root / "ckpt", root / "othershape")
    spec = json.loads((root / "othershape" / "config.json").read_text())
    spec["config"]["d_ff"] = 32
    (root / "othershape" / "config.json").write_text(json.dumps(spec))
    (root / "scores_dup.jsonl").write_text('{"task": "a", "prompt_uncertainty": 0.1}\n'
                                           '{"task": "a", "prompt_uncertainty": 0.2}\n')
    (root / "scores_torn.jsonl").write_text('{"task": "a", "prompt_uncertainty": 0.1}\n'
                                            '{"task": "b", "prompt_unc\n'
                                            '{"task": "c", "prompt_uncertainty": 0.3}\n')
    (root / "scores_type.jsonl").write_text('{"task": "a", "prompt_uncertainty": "high"}\n')
    (root / "pool_torn.jsonl").write_text('{"name": "a"}\n{"name": "b\n{"name": "c"}\n')
    (root / "latin1.jsonl").write_bytes(b'{"task": "t\xe2che"}\n')
    (root / "notarun").mkdir()
    (root / "notarun" / "notes.txt").write_text("not a run")
    return root


def test_train_errors_are_one_line(bad, tmp_path):
    base = ["--gin_file=runs/finetune_tiny.gin", f"--niv2_dir={bad}/niv2",
            f"--out={tmp_path}/out"]
    run_cases("train", [
        ([*base, f"--tasks={bad}/absent.txt"], ["task_absent", "line 2", "absent.txt"]),
        ([*base, f"--tasks={bad}/broken.txt"], ["task_broken.json", "line 2"]),
        ([*base, f"--tasks={bad}/path.txt"], ["path.txt", "line 2", "refused"]),
        ([*base, f"--tasks={bad}/latin1.txt"], ["latin1.txt", "not UTF-8"]),
        ([*base, f"--tasks={bad}/ok.txt", f"--init_checkpoint={bad}/nothere"], ["nothere"]),
        ([*base, f"--tasks={bad}/ok.txt", f"--init_checkpoint={bad}/garbled"],
         ["garbled/config.json", "line 2"]),
        ([*base, f"--tasks={bad}/ok.txt", "--gin.TrainConfig.nonsense=3"],
         ["gin", "nonsense"]),
        ([*base, f"--tasks={bad}/ok.txt", "--gin.TrainConfig.num_epochs=(("], ["gin"]),
        (["--gin_file=runs/nothere.gin", f"--tasks={bad}/ok.txt", f"--out={tmp_path}/o"],
         ["runs/nothere.gin"]),
        ([*base, f"--tasks={bad}/ok.txt", "stray"], ["unexpected arguments"]),
        ([*base, f"--tasks={bad}/ok.txt", "--gin.TrainConfig.batch_size=0"],
         ["TrainConfig.batch_size", ">= 1"]),
        ([*base, f"--tasks={bad}/ok.txt", "--gin.TrainConfig.num_epochs='x'"],
         ["TrainConfig.num_epochs", "'x'"]),
        ([*base, f"--tasks={bad}/ok.txt", "--gin.TrainConfig.schedule='wavy'"], ["wavy"]),
        ([*base, f"--tasks={bad}/ok.txt", f"--init_checkpoint={bad}/ckpt",
          f"--gin.train_job.init_checkpoint='{bad}/ckpt'"],
         ["--init_checkpoint and --gin.train_job.init_checkpoint both set"]),
    ], tmp_path)
    assert not (tmp_path / "out").exists()  # nothing written by a refused command


def test_evaluate_errors_are_one_line(bad, tmp_path, sample_data):
    base = [f"--niv2_dir={bad}/niv2", f"--out={tmp_path}/out",
            f"--vocab={sample_data}/vocab/sample_spm.model"]
    run_cases("evaluate", [
        ([*base, f"--checkpoint={bad}/ckpt", f"--tasks={bad}/absent.txt"], ["task_absent"]),
        ([*base, f"--checkpoint={bad}/nothere", f"--tasks={bad}/ok.txt"], ["nothere"]),
        ([*base, f"--checkpoint={bad}/garbled", f"--tasks={bad}/ok.txt"],
         ["garbled/config.json", "line 2"]),
        ([*base, f"--checkpoint={bad}/ckpt", f"--tasks={bad}/broken.txt"],
         ["task_broken.json"]),
        ([*base, f"--checkpoint={bad}/ckpt", f"--tasks={bad}/ok.txt", "--mesh=data=x"],
         ["--mesh"]),
        ([*base, f"--checkpoint={bad}/ckpt", f"--tasks={bad}/ok.txt", "--batch_size=0"],
         ["eval_batch_size"]),
    ], tmp_path)
    assert not (tmp_path / "out").exists()


def test_select_errors_are_one_line(bad, tmp_path):
    out = f"--out={tmp_path}/next.txt"
    run_cases("select", [
        ([f"--scores={bad}/scores_dup.jsonl", "--num_tasks=1", out],
         ["scores_dup.jsonl", "line 2", "scored twice"]),
        ([f"--scores={bad}/scores_torn.jsonl", "--num_tasks=1", out],
         ["scores_torn.jsonl", "line 2", "invalid JSON"]),
        ([f"--scores={bad}/scores_type.jsonl", "--num_tasks=1", out],
         ["line 1", "prompt_uncertainty"]),
        ([f"--pool={bad}/pool_torn.jsonl", "--strategy=random", "--num_tasks=1", out],
         ["pool_torn.jsonl", "line 2"]),
        ([f"--scores={bad}/latin1.jsonl", "--num_tasks=1", out], ["latin1.jsonl", "UTF-8"]),
        ([f"--scores={bad}/absent.jsonl", "--num_tasks=1", out], ["absent.jsonl"]),
        ([f"--scores={bad}/scores_dup.jsonl", "--num_tasks=-1", out], ["--num_tasks"]),
        ([f"--scores={bad}/scores_dup.jsonl", "--strategy=nonsense", out], ["nonsense"]),
    ], tmp_path)
    assert not (tmp_path / "next.txt").exists()


def test_report_errors_are_one_line(bad, tmp_path):
    run_cases("report", [
        ([f"--run={bad}/notarun"], ["notarun", "not a run directory"]),
        ([f"--run={bad}/absent"], ["absent", "not found"]),
    ], tmp_path)
    assert not (bad / "notarun" / "report").exists()


def test_score_errors_are_one_line_and_a_rejected_argument_leaves_no_trace(
        bad, tmp_path, sample_data):
    """The last two cases: `score --drop_rate=1.5` is refused before anything is written, so
    the corrected command then runs (it used to be refused: the first had written
    run_args.json)."""
    base = [f"--checkpoint={bad}/ckpt", f"--vocab={sample_data}/vocab/sample_spm.model",
            f"--niv2_dir={bad}/niv2", f"--out={tmp_path}/out"]
    ok = f"--tasks={bad}/ok.txt"
    usable = [*base[:3], ok, f"--out={tmp_path}/usable", "--num_instances=1",
              "--num_perturbations=1", "--max_source_length=32", "--max_target_length=4",
              "--batch_size=1", "--noprogress"]
    run_cases("score", [
        ([*base, f"--tasks={bad}/path.txt"], ["path.txt", "line 2", "refused"]),
        ([*base, f"--tasks={bad}/absent.txt"], ["task_absent"]),
        ([*base[1:], f"--checkpoint={bad}/garbled", ok], ["garbled/config.json"]),
        ([*base[1:], f"--checkpoint={bad}/othershape", ok], ["stored with shape"]),
        ([*base, ok, "--num_perturbations=0"], ["num_perturbations", ">= 1"]),
        ([*base, ok, "--num_perturbations=-1"], ["num_perturbations"]),
        ([*base, ok, "--batch_size=0"], ["batch_size"]),
        ([*base, ok, "--source_buckets=a,b"], ["--source_buckets"]),
        ([*base, ok, "--num_perturbations=3", "--gin.ScoreConfig.num_perturbations=5"],
         ["--num_perturbations and --gin.ScoreConfig.num_perturbations both set"]),
        ([*usable, "--drop_rate=1.5"], ["rate must be in [0, 1]"]),
        (usable, None),
    ], tmp_path)
    assert not (tmp_path / "out").exists()
    assert len(io_utils.read_jsonl(tmp_path / "usable" / "scores.jsonl")) == 1


def test_run_errors_and_a_second_run_are_one_line(tmp_path):
    """The last case: `run` locks its directory (score and train lock theirs in the library:
    see test_reliability_scoring / test_reliability_training)."""
    from activeit_jax.core import run_lock
    out, locked = tmp_path / "run", tmp_path / "locked"
    with run_lock.hold(locked, "run"):
        run_cases("run", [
            (["--gin_file=demo_tiny.gin", f"--out={out}", "--gin.LoopConfig.nonsense=1"],
             ["gin", "nonsense"]),
            (["--gin_file=nothere.gin", f"--out={out}"], ["nothere.gin"]),
            (["--gin_file=demo_tiny.gin", f"--out={out}", "--gin.ScoreConfig.num_perturbations=0"],
             ["num_perturbations"]),
            (["--gin_file=demo_tiny.gin", f"--out={out}", "--gin.TrainConfig.batch_size=0"],
             ["batch_size"]),
            (["--gin_file=demo_tiny.gin", f"--out={locked}", "--noreport"],
             [str(locked), "in use by another process", f"pid {os.getpid()}"]),
        ], tmp_path)
    assert not out.exists()
    assert sorted(os.listdir(locked)) == [run_lock.LOCK_FILE]


@pytest.mark.parametrize("error,expected", [
    (OSError(28, "No space left on device"), "No space left on device: free some space"),
    (PermissionError(13, "Permission denied", "/data/out/scores.jsonl"),
     "/data/out/scores.jsonl: Permission denied")])
def test_disk_full_and_permission_errors_are_one_line(error, expected, capsys):
    from activeit_jax import main

    def command(argv):
        raise error
    with pytest.raises(SystemExit) as info:
        main._guarded("score", command)([])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1
    assert err.startswith(f"activeit-jax score: error: {expected}")


def test_bugs_keep_their_traceback():
    from activeit_jax import main

    def command(argv):
        raise KeyError("a bug")
    with pytest.raises(KeyError):
        main._guarded("score", command)([])
