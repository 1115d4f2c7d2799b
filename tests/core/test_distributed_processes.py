"""Barriers, shared decisions and the watchdog between two real local processes (JAX's
coordination service on 127.0.0.1, no devices used): a late process times a bounded barrier
out with one line, and a process that exits with an error ends its peer's unbounded wait with
one line instead of a hang (and its own exit stays clean: no JAX abort).

Each case starts two small Python processes (a few seconds each); marked e2e.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

PEER_TIMEOUT_S = 3
WORKER = textwrap.dedent("""
    import sys, time
    from activeit_jax.core import distributed
    from activeit_jax.core.errors import ActiveITError
    from activeit_jax.loop import hosts
    case, port, me = sys.argv[1], sys.argv[2], int(sys.argv[3])
    distributed.initialize(distributed.resolve_config(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=me,
        peer_timeout_s=%(peer)s, barrier_timeout_s=2, environ={}))
    try:
        decided = distributed.share_from_primary(
            "answer", lambda: (time.sleep(1), "yes")[1], timeout_s=30)
        print("SHARED", decided, flush=True)
        if case == "late":
            if me == 1:
                time.sleep(6)
            hosts.barrier("activeit_test_late")
            print("PASSED", flush=True)
        elif case == "exit":
            if me == 1:
                raise SystemExit(3)
            hosts.wait_for_writer("activeit_test_unbounded")
            print("PASSED", flush=True)
    except ActiveITError as error:
        print(f"activeit-jax: error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
""") % {"peer": PEER_TIMEOUT_S}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_pair(case: str) -> list[tuple[int, str]]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, case, port, str(k)], env=env,
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True) for k in range(2)]
    try:
        # A hang fails here, well before JAX's own heartbeat (100 s) would end anything.
        return [(proc.wait(timeout=90), proc.stdout.read()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("activeit-jax: error:")]


def test_late_process_times_the_bounded_barrier_out_with_one_line():
    results = _run_pair("late")
    for code, output in results:
        assert "SHARED yes" in output, output  # process 0's decision, waited for by process 1
        assert code == 1 and "PASSED" not in output, output
        lines = _error_lines(output)
        assert len(lines) == 1, output
        assert "start all of them again with the same command" in lines[0]
        assert "Check failure" not in output  # no JAX abort
    # Process 0 waited its 2 s; process 1, late, finds the barrier failed (or, if process 0
    # has exited by then, its watchdog says so first).
    assert re.match(r"activeit-jax: error: process 0 of 2 waited \d+ s at barrier "
                    r"'activeit_test_late': the other processes did not all arrive within 2 s",
                    _error_lines(results[0][1])[0])


def test_a_process_that_exits_ends_the_others_wait_with_one_line():
    (code0, out0), (code1, out1) = _run_pair("exit")
    assert code1 == 3, out1  # its own exit, cleanly through JAX's shutdown barrier
    assert "Check failure" not in out1 and "Terminating process" not in out1, out1
    assert code0 == 1 and "PASSED" not in out0, out0
    lines = _error_lines(out0)
    assert len(lines) == 1, out0
    assert "process 0 of 2: process 1 exited" in lines[0]
    assert "while waiting" in lines[0] and "'activeit_test_unbounded'" in lines[0]
    assert f"--peer_timeout={PEER_TIMEOUT_S} s" in lines[0]
