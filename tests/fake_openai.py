"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for the judge tests."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SHOWN = {  # the two answers as a judge prompt shows them, per template
    "paper": re.compile(r"\n\(1\): (.*)\n\(2\): (.*)\nOutput:$", re.S),
    "ours": re.compile(r"# Output \(a\)\n(.*)\n\n# Output \(b\)\n(.*)\n\nWhich", re.S),
}
_REPLIES = {"paper": ("(1)", "(2)"), "ours": ("Output (a)", "Output (b)")}


def template_of(prompt: str) -> str:
    """The judge template ("paper" or "ours") a user prompt was written in."""
    return "paper" if _SHOWN["paper"].search(prompt) else "ours"


def shown_answers(prompt: str) -> tuple[str, str]:
    """(first, second) answer of a judge prompt of either template."""
    return _SHOWN[template_of(prompt)].search(prompt).groups()


def reply_for(prompt: str, pick: str) -> str:
    """The reply naming `pick` ("first", "second" or "equal") in the prompt's template."""
    if pick == "equal":
        return "Equal"
    return _REPLIES[template_of(prompt)][0 if pick == "first" else 1]


class FakeServer:
    """Scripted chat-completions endpoint.

    `script` is a list of actions consumed one per request; when it is empty, `plan` (a
    function of the user prompt returning an action or None, for faults that must follow the
    item rather than the arrival order of concurrent requests) and then `default` (a function
    of the user prompt) give the reply. An action is ("reply", text), ("status", code),
    ("status", code, {header: value}) or ("sleep", seconds) (then the default reply).
    `replies` lists the user prompts answered with HTTP 200, in order. Safe under concurrent
    requests.
    """

    def __init__(self, key: str):
        self.key = key
        self.requests: list[dict] = []
        self.replies: list[str] = []
        self.script: list[tuple] = []
        self.plan = lambda prompt: None
        self.default = lambda prompt: "Equal"
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization", "")
                with server.lock:
                    server.requests.append({"path": self.path, "auth": auth, "body": body})
                if auth != f"Bearer {server.key}":
                    # Echo what was sent, as some real servers do: the client must redact it.
                    return self._send(401, {"error": f"invalid key in header {auth}"})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    planned = server.script.pop(0) if server.script else server.plan(prompt)
                action, arg, *extra = planned or ("default", None)
                if action == "status":
                    return self._send(arg, {"error": f"scripted {arg}"}, *extra)
                if action == "sleep":
                    time.sleep(arg)
                text = arg if action == "reply" else server.default(prompt)
                with server.lock:
                    server.replies.append(prompt)
                self._send(200, {"choices": [{"message": {"role": "assistant",
                                                          "content": text}}]})

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
