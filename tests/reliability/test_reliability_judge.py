"""Reliability: the judge's HTTP transport against a misbehaving server on 127.0.0.1.

A redirect must not carry the key to another host, a server echoing the key must not get it
stored, a trickling reply must not hang the run, and 500s / garbage end in one clear line with
the judge stage resuming where it stopped.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from activeit_jax.loop import judge
from activeit_jax.loop.judge import ChatClient, JudgeConfig, JudgeError, JudgeItem

KEY = "sk-test-RELIABILITY-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]


class HostileServer:
    """Chat-completions endpoint whose behaviour `mode` a test sets:

    "ok" (reply "Output (a)"), "redirect" (302 to `target`), "echo" (a reply quoting the
    Authorization header), "trickle" (headers, then one body byte every 50 ms until the client
    leaves or the server closes), "garbage" (200 with a non-JSON body), "status" (`code`).
    Every request's path and Authorization header is recorded.
    """

    def __init__(self):
        self.mode, self.code, self.target = "ok", 500, ""
        self.requests: list[dict] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append({"path": self.path,
                                        "auth": self.headers.get("Authorization", "")})
                getattr(self, f"_{server.mode}")()

            do_GET = do_POST = _any

            def _send(self, code, data: bytes, headers=()):
                self.send_response(code)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _reply(self, text):
                self._send(200, json.dumps({"choices": [{"message": {"content": text}}]})
                           .encode())

            def _ok(self):
                self._reply("Output (a)")

            def _echo(self):
                self._reply(f"Output (a). You sent: {self.headers.get('Authorization')}")

            def _redirect(self):
                self._send(302, b"", [("Location", server.target)])

            def _garbage(self):
                self._send(200, b"<html>502 Bad Gateway</html>")

            def _status(self):
                self._send(server.code, b'{"error": "overloaded"}')

            def _trickle(self):
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                try:
                    while not server.stop.wait(0.05):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:
                    pass  # the client hung up: what it should do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile():
    servers = []

    def make():
        servers.append(HostileServer())
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def _client(server, **overrides):
    settings = dict(base_url=server.base_url, model="m", max_retries=2, backoff_s=0.01,
                    timeout_s=5.0, prompt_template="ours")  # the server replies "Output (a)"
    return ChatClient(JudgeConfig(**{**settings, **overrides}), api_key=KEY,
                      sleep=lambda s: None)


def test_redirect_to_another_host_never_gets_the_key(hostile):
    api, elsewhere = hostile(), hostile()
    api.mode, api.target = "redirect", elsewhere.base_url + "/chat/completions"
    with pytest.raises(JudgeError, match="302") as info:
        _client(api).complete(MESSAGES)
    assert "redirect" in str(info.value) and KEY not in str(info.value)
    assert elsewhere.requests == []  # not followed at all: the key stays with base_url
    assert len(api.requests) == 1  # and not retried


def test_echoed_key_is_redacted_from_replies_and_results(hostile, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = hostile()
    server.mode = "echo"
    client = _client(server)
    reply = client.complete(MESSAGES)
    assert KEY not in reply and "<redacted>" in reply
    items = [JudgeItem("x1", "Do.", "", "a", "b")]
    path = tmp_path / "judge_vs_random.jsonl"
    judge.run_pairwise(items, client, path)
    assert KEY not in path.read_text() and KEY not in caplog.text
    assert json.loads(path.read_text())["verdict"] == "a"


def test_trickled_reply_hits_the_whole_request_deadline(hostile):
    server = hostile()
    server.mode = "trickle"
    client = _client(server, timeout_s=0.5, max_retries=1, total_timeout_s=30.0)
    outcome = {}

    def call():
        try:
            outcome["reply"] = client.complete(MESSAGES)
        except JudgeError as err:
            outcome["error"] = str(err)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(120)  # a hang guard only: the client must give up by itself long before
    server.stop.set()
    assert not worker.is_alive(), "a trickling server kept the judge waiting"
    assert "deadline" in outcome.get("error", "") and "gave up after 2" in outcome["error"]
    assert len(server.requests) == 2


class _Clock:
    """A fake monotonic clock that sleeping advances."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_retries_and_backoff_are_bounded_in_total_time(hostile):
    server = hostile()
    server.mode, server.code = "status", 503
    clock = _Clock()
    config = JudgeConfig(base_url=server.base_url, max_retries=100, backoff_s=2.0,
                         max_backoff_s=8.0, total_timeout_s=20.0)
    client = ChatClient(config, api_key=KEY, sleep=clock.sleep, clock=clock)
    with pytest.raises(JudgeError, match="HTTP 503.*gave up"):
        client.complete(MESSAGES)
    assert sum(clock.sleeps) <= 20.0
    assert len(server.requests) == len(clock.sleeps) + 1 < 101


@pytest.mark.parametrize("field,value", [("timeout_s", 0), ("total_timeout_s", -1),
                                         ("max_retries", -1), ("base_url", "ftp://x/v1")])
def test_bad_transport_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        JudgeConfig(**{field: value})


@pytest.mark.parametrize("mode", ["status", "garbage"])
def test_500s_and_garbage_end_in_one_line_and_the_judge_resumes(hostile, tmp_path, mode):
    """Through the command line's error boundary: one line on stderr, status 1, no traceback;
    the items judged before the failure are kept and not asked again."""
    server = hostile()
    items = [JudgeItem(f"x{i}", "Do.", "", "a", "b") for i in range(4)]
    path = tmp_path / "judge_vs_random.jsonl"
    judge.run_pairwise(items[:2], _client(server), path)
    server.mode = mode
    code = ("import sys; from activeit_jax import main; from activeit_jax.loop import judge\n"
            "items = [judge.JudgeItem(f'x{i}', 'Do.', '', 'a', 'b') for i in range(4)]\n"
            "client = judge.ChatClient(judge.JudgeConfig(base_url=sys.argv[1], max_retries=1,"
            " backoff_s=0.01, prompt_template='ours'), api_key=sys.argv[3])\n"
            "main._guarded('run', lambda argv: judge.run_pairwise(items, client, sys.argv[2]))"
            "([])\n")
    done = subprocess.run([sys.executable, "-c", code, server.base_url, str(path), KEY],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("activeit-jax run: error: ") and "Traceback" not in done.stderr
    assert ("HTTP 500" if mode == "status" else "malformed reply") in lines[-1]
    assert KEY not in done.stderr
    asked = len(server.requests)
    server.mode = "ok"
    summary = judge.run_pairwise(items, _client(server), path)
    assert summary.n == 4 and len(server.requests) == asked + 2  # only the two left
