"""`activeit-jax run` as two local processes x 4 CPU devices (gloo, coordinator on 127.0.0.1)
against the single-process 8-device run; both killed inside an iteration and restarted; one
killed alone.

What "equal" means (two processes vs one):
- the same files, once the multi-host layout is set aside (each process's run lock, the
  scorer's per-host journals `scoring/shards/`, orbax's per-process parameter files, the
  TensorBoard file names, which hold a time and a pid);
- byte-equal: the split, the selections (`selected_tasks.json`), the evaluation predictions
  and metrics (greedy decoding gives the same tokens), `best.json`, `DONE`, the loop config;
- within float tolerance: the scores (rel=1e-4 / abs=1e-7, the scorer's own 1-vs-8-device
  tolerance: a host scores its share of the pool in other batches), the training losses
  (rtol=1e-5) and the best parameters (rtol=1e-4, atol=1e-6): the gradient all-reduce crosses
  the two processes through gloo and sums in another order than one process's 8 devices,
  which changes the last bits of every update;
- not compared: timings (metrics.jsonl's throughput, the summaries) and run_args.json's
  absolute paths.

A restarted two-process run must give the uninterrupted two-process run's files byte for byte
(the same processes, the same reduction order).

Every process runs in its own session; a `finally` kills the process groups, so a failing test
leaves no process behind.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from activeit_jax.core import io_utils
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

MINI_GIN = """
include '{demo}'
LoopConfig.strategies = ("prompt_uncertainty",)
LoopConfig.num_iterations = 2
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
PEER_TIMEOUT_S = 10
RUN_TIMEOUT_S = 900
SCORE_REL, SCORE_ABS = 1e-4, 1e-7
LOSS_RTOL = 1e-5
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-6
# Compared within tolerance, or not at all (timings, absolute paths, pictures of floats).
FLOAT_FILES = {"scores.jsonl", "taskmap.csv", "taskmap.png", "task_map.png"}
VOLATILE_FILES = {"train_summary.json", "summary.json", "run_args.json", "sessions.jsonl",
                  "taskmap.svg"}  # the SVG holds its date
ITER1 = os.path.join("seed_0", "prompt_uncertainty", "iter_1")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # --cpu_devices says it
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


class Job:
    """The processes of one `activeit-jax run`, each in its own process group, logs in files."""

    def __init__(self, gin_file, out, num_processes: int, log_dir, name: str):
        self.procs, self.logs = [], []
        port = _free_port()
        for k in range(num_processes):
            command = [sys.executable, "-m", "activeit_jax.main", "run",
                       f"--gin_file={gin_file}", f"--out={out}", "--noreport"]
            if num_processes == 1:
                command.append("--cpu_devices=8")
            else:
                command += ["--cpu_devices=4", "--cpu_collectives=gloo",
                            f"--coordinator_address=127.0.0.1:{port}",
                            f"--num_processes={num_processes}", f"--process_id={k}",
                            f"--peer_timeout={PEER_TIMEOUT_S}"]
            log = open(os.path.join(log_dir, f"{name}.process{k}.log"), "w+", encoding="utf-8")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(
                command, cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))

    def output(self, k: int) -> str:
        self.logs[k].flush()
        with open(self.logs[k].name, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for k, proc in enumerate(self.procs):
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {k} still runs after {timeout} s:\n{self.output(k)[-4000:]}")
        return codes

    def check(self) -> None:
        for k, code in enumerate(self.wait()):
            assert code == 0, f"process {k} failed ({code}):\n{self.output(k)[-6000:]}"

    def kill(self, k: int) -> None:
        if self.procs[k].poll() is None:
            os.killpg(self.procs[k].pid, signal.SIGKILL)
            self.procs[k].wait()

    def close(self) -> None:
        for k in range(len(self.procs)):
            try:
                self.kill(k)
            except ProcessLookupError:
                pass
        for log in self.logs:
            log.close()


def _run(gin_file, out, num_processes, log_dir, name) -> None:
    job = Job(gin_file, out, num_processes, log_dir, name)
    try:
        job.check()
    finally:
        job.close()


def _wait_for(path_test, job: Job, what: str, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path_test():
            return
        for k, proc in enumerate(job.procs):
            assert proc.poll() is None, f"process {k} ended before {what}:\n{job.output(k)[-4000:]}"
        time.sleep(0.2)
    pytest.fail(f"no {what} after {timeout} s")


def _has_step_checkpoint(train_dir: str):
    checkpoints = os.path.join(train_dir, "checkpoints")
    return lambda: os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))


def _files(run_dir) -> dict[str, str]:
    """relative path -> absolute path of the run's files, the multi-host layout set aside."""
    out = {}
    for root, dirs, files in os.walk(run_dir):
        rel_root = os.path.relpath(root, run_dir)
        parts = rel_root.split(os.sep)
        if "params" in parts or "shards" in parts or "tensorboard" in parts:
            continue
        for name in files:
            if name.startswith(".activeit.lock"):
                continue
            path = os.path.join(root, name)
            rel = os.path.normpath(os.path.join(rel_root, name))
            if name == "skipped.jsonl" and os.path.getsize(path) == 0:
                continue  # the scorer's merge writes it even when nothing was skipped
            if name == "sessions.jsonl" and parts[-1] == "scoring":
                continue  # multi-host: one per host journal (in shards/)
            out[rel] = path
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _assert_same_run(got_dir, ref_dir, exact: bool) -> None:
    got, ref = _files(got_dir), _files(ref_dir)
    assert sorted(got) == sorted(ref)
    assert os.path.join(ITER1, "selected_tasks.json") in got
    assert os.path.join(ITER1, "per_task_metrics.jsonl") in got
    for rel in sorted(ref):
        name = os.path.basename(rel)
        if name == "metrics.jsonl":  # with timings
            _assert_same_training(got[rel], ref[rel], rel, rtol=0 if exact else LOSS_RTOL)
        elif exact and name not in VOLATILE_FILES:
            assert _read(got[rel]) == _read(ref[rel]), rel
        elif name == "scores.jsonl":
            _assert_close_records(got[rel], ref[rel], rel)
        elif name not in FLOAT_FILES | VOLATILE_FILES:
            assert _read(got[rel]) == _read(ref[rel]), rel


def _assert_close_records(got_path, ref_path, rel) -> None:
    got, ref = io_utils.read_jsonl(got_path), io_utils.read_jsonl(ref_path)
    assert len(got) == len(ref) > 0, rel
    for a, b in zip(got, ref):
        floats = {k for k, v in b.items() if isinstance(v, float)}
        assert {k: v for k, v in a.items() if k not in floats} == \
            {k: v for k, v in b.items() if k not in floats}, rel
        for key in floats:
            assert a[key] == pytest.approx(b[key], rel=SCORE_REL, abs=SCORE_ABS), (rel, key)


def _assert_same_training(got_path, ref_path, rel, rtol: float) -> None:
    got, ref = io_utils.read_jsonl(got_path), io_utils.read_jsonl(ref_path)
    keys = ("kind", "step", "epoch", "num_tokens")
    assert [[r.get(k) for k in keys] for r in got] == [[r.get(k) for k in keys] for r in ref]
    losses = [(a["loss"], b["loss"]) for a, b in zip(got, ref) if b.get("loss") is not None]
    assert losses, rel
    np.testing.assert_allclose(*zip(*losses), rtol=rtol, err_msg=rel)
    if rtol == 0:
        def untimed(records):
            return [{k: v for k, v in r.items() if not k.endswith(("_s", "seconds"))}
                    for r in records]
        assert untimed(got) == untimed(ref), rel


def _assert_close_params(got_dir, ref_dir) -> None:
    from activeit_jax.models import checkpoints
    for it in ("seed_0/iter_0", ITER1):
        _, got = checkpoints.load_model(os.path.join(got_dir, it, "train", "best"))
        _, ref = checkpoints.load_model(os.path.join(ref_dir, it, "train", "best"))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=PARAM_RTOL, atol=PARAM_ATOL), got, ref)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process 8-device run and the uninterrupted two-process run."""
    root = tmp_path_factory.mktemp("multihost_loop")
    gin_file = root / "mini.gin"
    gin_file.write_text(MINI_GIN.format(demo=REPO_ROOT / "configs" / "demo_tiny.gin"))
    single, multi = root / "single", root / "multi"
    _run(gin_file, single, 1, root, "single")
    _run(gin_file, multi, 2, root, "multi")
    return root, gin_file, single, multi


def test_two_process_run_equals_single_process_run(runs):
    root, _, single, multi = runs
    _assert_same_run(multi, single, exact=False)
    _assert_close_params(multi, single)
    # The multi-host layout: each host journalled its share of the pool, process 1 its lock.
    for k in range(2):
        journal = multi / "seed_0" / "iter_0" / "scoring" / "shards" / f"host{k}-of-2"
        assert io_utils.read_jsonl(journal / "scores.jsonl")
    assert (multi / ".activeit.lock.process1").exists()
    summary = json.loads((multi / "seed_0" / "iter_0" / "scoring" / "summary.json").read_text())
    assert summary["num_hosts"] == 2


def test_both_processes_killed_inside_an_iteration_resume_to_the_same_result(runs):
    root, gin_file, _, multi = runs
    out = root / "killed_both"
    job = Job(gin_file, out, 2, root, "killed_both")
    try:
        # Inside iteration 1: its selection is written, its training has a step checkpoint.
        _wait_for(_has_step_checkpoint(str(out / ITER1 / "train")), job,
                  "step checkpoint in iteration 1")
        job.kill(0)
        job.kill(1)
    finally:
        job.close()
    assert (out / ITER1 / "selected_tasks.json").exists()
    assert not (out / ITER1 / "DONE").exists()
    _run(gin_file, out, 2, root, "restarted")
    _assert_same_run(out, multi, exact=True)


@pytest.mark.parametrize("victim", [1, 0])
def test_one_process_killed_the_other_exits_with_one_line(runs, victim):
    root, gin_file, _, _ = runs
    out = root / f"killed_{victim}"
    job = Job(gin_file, out, 2, root, f"killed_{victim}")
    survivor = 1 - victim
    try:
        _wait_for(_has_step_checkpoint(str(out / "seed_0" / "iter_0" / "train")), job,
                  "step checkpoint in iteration 0")
        job.kill(victim)  # SIGKILL, inside training (collectives in flight)
        # Bounded: the watchdog gives up after PEER_TIMEOUT_S; JAX's own heartbeat (100 s)
        # would abort later. A hang fails here.
        code = job.wait(timeout=PEER_TIMEOUT_S + 150)[survivor]
        output = job.output(survivor)
    finally:
        job.close()
    assert code != 0
    if victim == 1:
        # Our watchdog: one line, status 1.
        lines = [line for line in output.splitlines() if line.startswith("activeit-jax: error:")]
        assert code == 1 and len(lines) == 1, output[-4000:]
        assert "process 0 of 2: process 1 has sent no heartbeat for" in lines[0]
        assert "start all of them again with the same command" in lines[0]
        assert "--peer_timeout=10 s" in lines[0]
    else:
        # Process 0 hosts JAX's coordination service: when it dies, JAX ends the others at
        # once with its own fatal message (no hook in jax 0.10.2 lets us say it first).
        assert "another task died" in output, output[-4000:]
    assert not (out / "seed_0" / "iter_0" / "DONE").exists()
