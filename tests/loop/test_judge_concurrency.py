"""The judge at the paper's scale: concurrent requests, `Retry-After`, jittered backoff, and a
results journal that stays whole (each item exactly once) under concurrency, failures, and a
kill followed by a resume. Against the local fake server (127.0.0.1)."""
from __future__ import annotations

import collections
import email.utils
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from activeit_jax.core.errors import ConfigError
from activeit_jax.loop import judge
from activeit_jax.loop.judge import ChatClient, JudgeConfig, JudgeError, JudgeItem
from tests.fake_openai import FakeServer, reply_for, shown_answers

KEY = "sk-test-CONCURRENT-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def server():
    fake = FakeServer(KEY)
    yield fake
    fake.close()


def _items(n: int) -> list[JudgeItem]:
    return [JudgeItem(id=f"item{i}", instruction=f"Do thing {i}.", input="",
                      output_a=("GOOD" if i % 3 else "bad") + f" answer A{i}",
                      output_b=("bad" if i % 3 else "GOOD") + f" answer B{i}")
            for i in range(n)]


def _item_of(prompt: str) -> int:
    return int(re.search(r"Do thing (\d+)\.", prompt).group(1))


def _pick_good(prompt: str) -> str:
    return reply_for(prompt, "first" if "GOOD" in shown_answers(prompt)[0] else "second")


def _journal_ids(path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["id"] for line in handle]


def test_parse_retry_after_seconds_and_dates():
    now = 1_700_000_000.0
    assert judge.parse_retry_after("7", now) == 7.0
    assert judge.parse_retry_after(" 1.5 ", now) == 1.5
    assert judge.parse_retry_after("-3", now) == 0.0
    later = email.utils.formatdate(now + 30, usegmt=True)  # "Tue, 14 Nov 2023 22:13:50 GMT"
    assert judge.parse_retry_after(later, now) == pytest.approx(30.0)
    assert judge.parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert judge.parse_retry_after(unreadable, now) is None


def test_retry_after_is_the_least_wait_and_is_capped(server):
    now = 1_700_000_000.0
    server.script = [("status", 429, {"Retry-After": "7"}),
                     ("status", 503, {"Retry-After": email.utils.formatdate(now + 20,
                                                                            usegmt=True)}),
                     ("status", 429, {"Retry-After": "9999"}),
                     ("status", 429, {"Retry-After": "whenever"}),
                     ("reply", "Output (b)")]
    sleeps: list[float] = []
    config = JudgeConfig(base_url=server.base_url, max_retries=5, backoff_s=0.5,
                         max_backoff_s=30.0, timeout_s=5.0)
    client = ChatClient(config, api_key=KEY, sleep=sleeps.append, random=lambda: 0.0,
                        wall_clock=lambda: now)
    assert client.complete(MESSAGES) == "Output (b)"
    # 7 s and 20 s as asked, 9999 s capped at max_backoff_s, an unreadable header: backoff.
    assert sleeps == [7.0, pytest.approx(20.0), 30.0, 4.0]


def test_backoff_is_jittered_and_seedable(server):
    config = JudgeConfig(base_url=server.base_url, max_retries=6, backoff_s=1.0,
                         max_backoff_s=16.0, timeout_s=5.0, jitter=0.5)

    def waits(rng) -> list[float]:
        server.script = [("status", 500)] * 6 + [("reply", "Equal")]
        sleeps: list[float] = []
        ChatClient(config, api_key=KEY, sleep=sleeps.append, random=rng).complete(MESSAGES)
        return sleeps

    first = waits(random.Random(3).random)
    bases = [1.0, 2.0, 4.0, 8.0, 16.0, 16.0]
    assert len(first) == 6
    assert all(base / 2 <= wait <= base for wait, base in zip(first, bases))
    assert first != bases  # jittered
    assert waits(random.Random(3).random) == first  # the same seed, the same waits
    assert waits(random.Random(4).random) != first
    plain = ChatClient(JudgeConfig(base_url=server.base_url, jitter=0.0, backoff_s=1.0,
                                   max_backoff_s=16.0), api_key=KEY)
    assert [plain.retry_wait(n) for n in range(1, 7)] == bases


@pytest.mark.parametrize("field,value", [("concurrency", 0), ("concurrency", 2.5),
                                         ("jitter", 1.5), ("jitter", -0.1)])
def test_bad_concurrency_or_jitter_is_refused(field, value):
    with pytest.raises(ConfigError, match=f"JudgeConfig.{field}"):
        JudgeConfig(**{field: value})


class _FaultPlan:
    """Per-item faults that follow the item, whatever order concurrent requests arrive in:
    every 4th item gets a 429 with Retry-After, every other 5th (offset 1) two 500s."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: collections.Counter = collections.Counter()
        self.injected: list[tuple[int, int]] = []

    def __call__(self, prompt: str):
        item = _item_of(prompt)
        with self.lock:
            self.seen[item] += 1
            n = self.seen[item]
        action = None
        if item % 4 == 0:
            action = ("status", 429, {"Retry-After": "3"}) if n == 1 else None
        elif item % 5 == 1:
            action = ("status", 500) if n <= 2 else None
        if action is not None:
            with self.lock:
                self.injected.append((item, action[1]))
        return action


class _InFlight:
    """Replies like `_pick_good`, counting requests in flight; the first request waits (up
    to 10 s) for a second to arrive, so a client that never overlaps requests shows up as a
    peak of 1."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.started = False
        self.second = threading.Event()

    def __call__(self, prompt: str) -> str:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            first, self.started = not self.started, True
            if self.now >= 2:
                self.second.set()
        if first:
            self.second.wait(10)
        time.sleep(0.005)
        with self.lock:
            self.now -= 1
        return _pick_good(prompt)


def test_concurrent_judging_with_429s_and_500s_judges_each_pair_once(server, tmp_path,
                                                                     monkeypatch):
    n, workers = 40, 6
    plan, in_flight = _FaultPlan(), _InFlight()
    server.plan, server.default = plan, in_flight
    writers: set[str] = set()
    append = judge.io_utils.append_jsonl_line

    def watched_append(path, record):
        writers.add(threading.current_thread().name)
        append(path, record)
    monkeypatch.setattr(judge.io_utils, "append_jsonl_line", watched_append)
    sleeps: list[float] = []
    config = JudgeConfig(base_url=server.base_url, max_retries=3, backoff_s=0.01,
                         max_backoff_s=5.0, timeout_s=15.0, concurrency=workers)
    client = ChatClient(config, api_key=KEY, sleep=sleeps.append,
                        random=random.Random(0).random)
    path = tmp_path / "judge.jsonl"
    summary = judge.run_pairwise(_items(n), client, path, seed=5)

    assert (summary.n, summary.win, summary.lose) == (n, n - n // 3 - 1, n // 3 + 1)
    ids = _journal_ids(path)
    assert sorted(ids) == sorted(f"item{i}" for i in range(n))  # each exactly once
    assert collections.Counter(_item_of(p) for p in server.replies) == \
        collections.Counter(range(n))  # each pair judged (answered) exactly once
    assert writers == {threading.current_thread().name}  # one writer: the caller
    assert 2 <= in_flight.peak <= workers
    fives = [i for i in range(1, n, 5) if i % 4]
    assert sorted(plan.injected) == sorted([(i, 429) for i in range(0, n, 4)] +
                                           [(i, 500) for i in fives for _ in range(2)])
    assert len(server.requests) == n + len(plan.injected)
    assert sleeps.count(3.0) == n // 4  # each 429's Retry-After honoured
    assert all(0.0 < s <= 0.04 for s in sleeps if s != 3.0)  # the 500s: jittered backoff
    assert judge.summarize_results(path) == summary


def test_a_failure_under_concurrency_keeps_finished_items_and_resumes(server, tmp_path):
    n = 30
    server.default = _pick_good
    server.plan = lambda prompt: ("status", 400) if _item_of(prompt) == 12 else None
    config = JudgeConfig(base_url=server.base_url, timeout_s=5.0, concurrency=4)
    client = ChatClient(config, api_key=KEY, sleep=lambda s: None)
    path = tmp_path / "judge.jsonl"
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge.run_pairwise(_items(n), client, path)
    first = _journal_ids(path)
    assert "item12" not in first and len(first) == len(set(first)) >= 12
    assert len(first) < n  # items not yet started were dropped, not asked
    server.plan = lambda prompt: None
    summary = judge.run_pairwise(_items(n), client, path)
    assert summary.n == n
    assert sorted(_journal_ids(path)) == sorted(f"item{i}" for i in range(n))
    assert collections.Counter(_item_of(p) for p in server.replies) == \
        collections.Counter(range(n))


_WORKER = textwrap.dedent("""
    import sys
    from activeit_jax.loop import judge
    items = [judge.JudgeItem(id=f"item{i}", instruction=f"Do thing {i}.", input="",
                             output_a=f"GOOD a{i}", output_b=f"bad b{i}") for i in range(60)]
    config = judge.JudgeConfig(base_url=sys.argv[1], timeout_s=10.0, concurrency=4)
    client = judge.ChatClient(config, api_key=sys.argv[3])
    judge.run_pairwise(items, client, sys.argv[2], seed=2)
""")


def test_killed_mid_run_then_resumed_holds_each_item_once(server, tmp_path):
    def slow(prompt: str) -> str:
        time.sleep(0.05)
        return _pick_good(prompt)
    server.default = slow
    path = tmp_path / "judge.jsonl"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, server.base_url, str(path), KEY],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 12:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    written = path.read_bytes()
    killed_at = written.count(b"\n")
    assert 12 <= killed_at < 60
    if written.endswith(b"\n"):  # as if the kill had cut a line short
        path.write_bytes(written + b'{"id": "item59", "ord')

    items = [JudgeItem(id=f"item{i}", instruction=f"Do thing {i}.", input="",
                       output_a=f"GOOD a{i}", output_b=f"bad b{i}") for i in range(60)]
    config = JudgeConfig(base_url=server.base_url, timeout_s=10.0, concurrency=4)
    summary = judge.run_pairwise(items, ChatClient(config, api_key=KEY), path, seed=2)
    assert (summary.n, summary.win) == (60, 60)
    ids = _journal_ids(path)
    assert sorted(ids) == sorted(f"item{i}" for i in range(60))  # each exactly once
    assert ids[:killed_at] == [json.loads(line)["id"]
                               for line in written.split(b"\n")[:killed_at]]  # kept as written
    # Items already in the journal were not asked again (those in flight at the kill were).
    answered = collections.Counter(_item_of(p) for p in server.replies)
    assert all(answered[int(i[4:])] == 1 for i in ids[:killed_at])
