"""End to end: `activeit-jax train` killed with SIGKILL and rerun ends like an uninterrupted run;
`activeit-jax evaluate` scores its best checkpoint."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from activeit_jax.core import io_utils

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAIN = ["task063_first_i_elements", "task092_check_prime_classification",
         "task1331_reverse_array"]
VAL = ["task1332_check_leap_year", "task376_reverse_order_of_words"]


def _cli(*args):
    # The installed console script (as users run it); `python -c` would put the working
    # directory on sys.path, where gin mistakes the repository's data/ for a package.
    script = pathlib.Path(sys.executable).parent / "activeit-jax"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "activeit_jax.main", *args]


def _train_args(tmp_path, out):
    (tmp_path / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(VAL) + "\n")
    return _cli("train", "--gin_file=runs/finetune_tiny.gin",
                f"--tasks={tmp_path / 'train.txt'}", f"--val_tasks={tmp_path / 'val.txt'}",
                f"--out={out}", "--gin.TrainConfig.num_epochs=3", "--verbosity=-1")


def _committed_steps(out):
    directory = pathlib.Path(out) / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _final_state(out):
    code = ("import json, sys, jax, numpy as np, orbax.checkpoint as ocp\n"
            "m = ocp.CheckpointManager(sys.argv[1])\n"
            "r = m.restore(m.latest_step(), args=ocp.args.Composite("
            "state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))\n"
            "leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(r['state']))\n"
            "np.savez(sys.argv[2], **{jax.tree_util.keystr(k): v for k, v in leaves})\n"
            "print(json.dumps({'step': m.latest_step(), 'data': r['data']}))\n")
    target = f"{out}/state.npz"
    done = subprocess.run([sys.executable, "-c", code, f"{out}/checkpoints", target],
                          capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1]), dict(np.load(target))


@pytest.mark.e2e
def test_sigkill_and_rerun_matches_uninterrupted_cli_run(tmp_path):
    env = dict(os.environ)
    full_out, killed_out = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_args(tmp_path, full_out), check=True, cwd=tmp_path, env=env,
                   capture_output=True)
    final_step = _committed_steps(full_out)[-1]
    assert final_step == 9  # 3 epochs x 3 steps

    # Kill -9 as soon as a first checkpoint is committed (mid-run), then rerun the command.
    proc = subprocess.Popen(_train_args(tmp_path, killed_out), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 300
    while not _committed_steps(killed_out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert _committed_steps(killed_out)[-1] < final_step  # really stopped part-way
    subprocess.run(_train_args(tmp_path, killed_out), check=True, cwd=tmp_path, env=env,
                   capture_output=True)

    (info_a, state_a), (info_b, state_b) = _final_state(full_out), _final_state(killed_out)
    assert info_a == info_b  # step, data position, best epoch and validation history
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)
    assert json.loads((killed_out / "best.json").read_text()) == \
        json.loads((full_out / "best.json").read_text())

    # The evaluator reads the best checkpoint and writes per-task metrics.
    eval_out = tmp_path / "eval"
    done = subprocess.run(_cli("evaluate", "--gin_file=runs/finetune_tiny.gin",
                               f"--checkpoint={full_out / 'best'}",
                               f"--niv2_dir={REPO / 'data' / 'sample' / 'niv2'}",
                               f"--tasks={tmp_path / 'val.txt'}", f"--out={eval_out}",
                               "--verbosity=-1"),
                          check=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    best = json.loads((full_out / "best.json").read_text())
    assert printed["rougeL"] == best["metrics"]["rougeL"]
    per_task = io_utils.read_jsonl(eval_out / "per_task_metrics.jsonl")
    assert [r["task"] for r in per_task] == VAL and all(r["num_examples"] == 4 for r in per_task)


_PRINT_JOB = """
import dataclasses, json, sys
from activeit_jax.core import gin_utils
from activeit_jax.training import config as train_config, run_dir
gin_utils.parse_gin([sys.argv[1]], sys.argv[2:])
job = train_config.train_job()
config = job.resolved_config()
print(json.dumps({"config": run_dir.config_dict(config), "model": type(job.model).__name__,
                  "model_config": dataclasses.asdict(job.model.config),
                  "vocab_size": job.vocabulary.vocab_size, "niv2_dir": job.niv2_dir,
                  "allow_random_init": job.allow_random_init}))
"""


def _parsed_job(tmp_path, gin_file, *bindings):
    # In a subprocess started outside the repository: with the repository root on sys.path,
    # gin's resource lookup mistakes data/ (a namespace package) for a config package.
    done = subprocess.run([sys.executable, "-c", _PRINT_JOB, gin_file, *bindings],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reference_run_config_is_the_paper_setting(tmp_path):
    vocab = REPO / "data" / "sample" / "vocab" / "sample_spm.model"
    job = _parsed_job(tmp_path, "runs/finetune_niv2.gin", 'NIV2_DIR = "/niv2"',
                      f'get_vocabulary.path = "{vocab}"')
    config = job["config"]
    assert (config["learning_rate"], config["schedule"], config["warmup_steps"]) == \
        (5e-5, "constant", 50)
    assert (config["batch_size"], config["num_epochs"], config["optimizer"]) == (128, 8, "adamw")
    assert (config["max_source_length"], config["max_target_length"]) == (1024, 128)
    assert (config["max_instances_per_task"], config["num_pos_examples"]) == (200, 2)
    assert config["selection_metric"] == "rougeL" and config["mesh_shape"]["data"] == -1
    assert job["model"] == "EncoderDecoderModel"
    assert job["model_config"]["dtype"] == "bfloat16" and job["model_config"]["d_model"] == 1024
    assert job["niv2_dir"] == "/niv2" and not job["allow_random_init"]

    tiny = _parsed_job(tmp_path, "runs/finetune_tiny.gin")
    assert tiny["allow_random_init"] and tiny["vocab_size"] == 1100
    assert tiny["model_config"]["vocab_size"] >= tiny["vocab_size"]
