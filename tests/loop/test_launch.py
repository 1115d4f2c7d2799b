"""The launchers' --dry_run commands are exactly what a user would run by hand."""
from __future__ import annotations

import importlib.util
import shlex

import pytest

from tests.conftest import REPO_ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO_ROOT / "launch" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run_lines(module, argv: list[str], capsys) -> list[str]:
    assert module.main([*argv, "--dry_run"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_tpu_vm_create_copy_run_delete(capsys):
    tpu = _load("tpu_vm")
    lines = _dry_run_lines(tpu, ["--name=ait", "--zone=us-central2-b", "--project=p1",
                                 "--accelerator_type=v4-32", "--job=score --gin_file=a.gin",
                                 "--delete"], capsys)
    commands = [shlex.split(line.removeprefix("[dry-run] ")) for line in lines]
    assert commands[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "ait",
                           "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
                           "--zone=us-central2-b", "--project=p1"]
    # Every remote step runs on all workers of the slice.
    ssh_and_scp = [c for c in commands if c[3] == "tpu-vm" and c[4] in ("ssh", "scp")]
    assert ssh_and_scp and all("--worker=all" in c for c in ssh_and_scp)
    job = commands[-2]
    assert job[-1] == ("--command=cd activeit-jax && make venv && "
                       ".venv/bin/pip install --quiet -c requirements.lock -e '.[tpu]' && "
                       ".venv/bin/activeit-jax score --gin_file=a.gin")
    assert commands[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "ait",
                            "--zone=us-central2-b", "--project=p1", "--quiet"]


def test_tpu_vm_queued_resource_and_reuse(capsys):
    tpu = _load("tpu_vm")
    lines = _dry_run_lines(tpu, ["--name=q", "--zone=z", "--queued", "--spot"], capsys)
    assert shlex.split(lines[0].removeprefix("[dry-run] ")) == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "q", "--node-id=q",
        "--accelerator-type=v4-8", "--runtime-version=tpu-ubuntu2204-base", "--zone=z",
        "--spot"]
    reuse = _dry_run_lines(tpu, ["--name=q", "--zone=z", "--reuse"], capsys)
    assert not any(" create " in line for line in reuse)


def test_local_gpu_processes_split_devices_and_share_a_loopback_coordinator(capsys):
    local = _load("local_gpu")
    lines = _dry_run_lines(local, ["--gpus=8", "--processes=4", "--job=score --seed=3"], capsys)
    assert len(lines) == 4
    for rank, line in enumerate(lines):
        words = shlex.split(line.removeprefix("[dry-run] "))
        env = dict(w.split("=", 1) for w in words[:4])
        assert env == {"CUDA_VISIBLE_DEVICES": f"{2 * rank},{2 * rank + 1}",
                       "ACTIVEIT_COORDINATOR": "127.0.0.1:12355",
                       "ACTIVEIT_NUM_PROCESSES": "4", "ACTIVEIT_PROCESS_ID": str(rank)}
        assert words[4:] == [".venv/bin/python", "-m", "activeit_jax.main", "score",
                             "--seed=3"]
    with pytest.raises(SystemExit, match="not divisible"):
        local.main(["--gpus=8", "--processes=3", "--job=score", "--dry_run"])


def test_slurm_script_runs_one_task_per_node(capsys):
    slurm = _load("slurm")
    lines = _dry_run_lines(slurm, ["--nodes=4", "--gpus_per_node=8", "--partition=gpu",
                                   "--repo_dir=/r", "--job=run --gin_file=x.gin"], capsys)
    assert "#SBATCH --nodes=4" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --gpus-per-node=8" in lines and "#SBATCH --partition=gpu" in lines
    assert "srun .venv/bin/activeit-jax run --gin_file=x.gin" in lines
    assert lines[-1] == "[dry-run] sbatch activeit_job.sbatch"
