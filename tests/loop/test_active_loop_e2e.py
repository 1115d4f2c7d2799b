"""The real loop through `activeit-jax run`: tiny T5, real trainer and scorer, killed with
SIGKILL inside an iteration and resumed, against an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

MINI_GIN = """
include '{demo}'
LoopConfig.strategies = ("prompt_uncertainty",)
LoopConfig.num_iterations = 2
LoopConfig.keep_train_checkpoints = True
TrainConfig.num_epochs = 2
TrainConfig.max_instances_per_task = 8
TrainConfig.max_eval_instances_per_task = 2
TrainConfig.max_source_length = 128
TrainConfig.max_target_length = 16
TrainConfig.save_every_steps = 2
TrainConfig.progress_bar = False
ScoreConfig.num_instances = 2
ScoreConfig.num_perturbations = 2
ScoreConfig.max_source_length = 128
ScoreConfig.max_target_length = 16
ScoreConfig.max_decode_length = 16
ScoreConfig.tasks_per_chunk = 4
"""

# Files whose content must not depend on interruptions (timings and logs excluded).
COMPARED = ("selected_tasks.json", "scores.jsonl", "per_task_metrics.jsonl",
            "metrics_val.json", "metrics_test.json")


def _command(gin_file: str, out: str) -> list[str]:
    return [sys.executable, "-m", "activeit_jax.main", "run", f"--gin_file={gin_file}",
            f"--out={out}", "--noreport"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _compared_files(run_dir: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            if name in COMPARED:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, run_dir)] = handle.read()
    return out


def test_killed_loop_resumes_to_the_same_results(tmp_path):
    gin_file = tmp_path / "mini.gin"
    gin_file.write_text(MINI_GIN.format(demo=REPO_ROOT / "configs" / "demo_tiny.gin"))
    reference = str(tmp_path / "reference")
    subprocess.run(_command(str(gin_file), reference), check=True, cwd=REPO_ROOT,
                   env=_env(), capture_output=True)
    expected = _compared_files(reference)
    assert any(k.endswith("scores.jsonl") for k in expected)
    assert any("prompt_uncertainty" in k and k.endswith("selected_tasks.json")
               for k in expected)

    resumed = str(tmp_path / "resumed")
    proc = subprocess.Popen(_command(str(gin_file), resumed), cwd=REPO_ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once iteration 0's training has written a step checkpoint, i.e. inside iteration 0.
    checkpoints_dir = os.path.join(resumed, "seed_0", "iter_0", "train", "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(checkpoints_dir) and any(
                name.isdigit() for name in os.listdir(checkpoints_dir)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(resumed, "seed_0", "iter_0", "DONE"))

    subprocess.run(_command(str(gin_file), resumed), check=True, cwd=REPO_ROOT, env=_env(),
                   capture_output=True)
    assert _compared_files(resumed) == expected
