"""The terminal of `run`, `score` and `train` in the full test environment (TensorFlow, seqio
and libtpu installed): our progress lines are there, other libraries' logging is not."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.install.terminal import foreign_lines

pytestmark = pytest.mark.e2e

TRAIN = ["task063_first_i_elements", "task1331_reverse_array"]
VAL = ["task1332_check_leap_year"]


def _cli(*args: str) -> list[str]:
    script = pathlib.Path(sys.executable).parent / "activeit-jax"  # as users run it
    return [str(script) if script.exists() else sys.executable,
            *([] if script.exists() else ["-m", "activeit_jax.main"]), *args]


def _terminal(*args: str, cwd: pathlib.Path, quiet: bool = True) -> str:
    """stdout + stderr of `activeit-jax ARGS` (asserting success, no traceback and, when
    `quiet`, no foreign log line)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command's own defaults, as for a user
    done = subprocess.run(_cli(*args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-4000:]
    if quiet:
        assert foreign_lines(output) == [], foreign_lines(output)
    return output


def test_run_score_and_train_show_our_lines_only(tmp_path):
    run_dir = tmp_path / "run"
    output = _terminal(
        "run", "--gin_file=configs/demo_tiny.gin", f"--out={run_dir}",
        "--gin.LoopConfig.num_iterations=1", "--gin.LoopConfig.strategies=('random',)",
        "--gin.experiment.max_instances_per_task=8", "--gin.TrainConfig.num_epochs=1",
        "--gin.TrainConfig.max_eval_instances_per_task=2", "--gin.ScoreConfig.num_instances=2",
        "--gin.ScoreConfig.num_perturbations=2", cwd=REPO_ROOT)
    assert "training on " in output and "seed 0 iteration 0 done" in output
    assert "decode: " in output and "train: " in output and "score: " in output  # the bars

    best = run_dir / "seed_0" / "iter_0" / "train" / "best"
    # Reading a checkpoint: orbax's INFO lines only with --verbose (so the filter, not their
    # absence, keeps the other commands quiet).
    quiet = _terminal("convert", f"--from={best}", f"--to_hf={tmp_path / 'hf'}", cwd=tmp_path)
    assert quiet.startswith("exported ") and len(quiet.splitlines()) == 1
    verbose = _terminal("convert", f"--from={best}", f"--to_hf={tmp_path / 'hf_v'}",
                        "--verbose", cwd=tmp_path, quiet=False)
    assert any("orbax" in line for line in foreign_lines(verbose))
    (tmp_path / "pool.txt").write_text("\n".join(TRAIN) + "\n")
    niv2 = REPO_ROOT / "data" / "sample" / "niv2"
    output = _terminal("score", f"--checkpoint={best}", f"--niv2_dir={niv2}",
                       f"--tasks={tmp_path / 'pool.txt'}", f"--out={tmp_path / 'scores'}",
                       "--num_instances=2", "--num_perturbations=2",
                       "--max_source_length=128", cwd=tmp_path)
    assert "scored 2 tasks (0 skipped)" in output
    assert len((tmp_path / "scores" / "scores.jsonl").read_text().splitlines()) == 2

    (tmp_path / "val.txt").write_text("\n".join(VAL) + "\n")
    train = ["train", "--gin_file=runs/finetune_tiny.gin", f"--tasks={tmp_path / 'pool.txt'}",
             f"--val_tasks={tmp_path / 'val.txt'}", f"--out={tmp_path / 'train'}",
             "--gin.TrainConfig.max_instances_per_task=8"]
    first = _terminal(*train, "--stop_after_steps=2", cwd=tmp_path)
    assert "training on 16 examples from 2 tasks" in first
    resumed = _terminal(*train, cwd=tmp_path)  # the trainer's own resume line is shown
    assert "resuming from step 2" in resumed
    summary = json.loads((tmp_path / "train" / "train_summary.json").read_text())
    assert summary
