"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for the judge tests."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """Scripted chat-completions endpoint.

    `script` is a list of actions consumed one per request; when it is empty, `default`
    (a function of the user prompt) gives the reply text. An action is ("reply", text),
    ("status", code) or ("sleep", seconds) (then the default reply).
    """

    def __init__(self, key: str):
        self.key = key
        self.requests: list[dict] = []
        self.script: list[tuple[str, object]] = []
        self.default = lambda prompt: "Equal"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization", "")
                server.requests.append({"path": self.path, "auth": auth, "body": body})
                if auth != f"Bearer {server.key}":
                    # Echo what was sent, as some real servers do: the client must redact it.
                    return self._send(401, {"error": f"invalid key in header {auth}"})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                action, arg = server.script.pop(0) if server.script else ("default", None)
                if action == "status":
                    return self._send(arg, {"error": f"scripted {arg}"})
                if action == "sleep":
                    time.sleep(arg)
                prompt = body["messages"][-1]["content"]
                text = arg if action == "reply" else server.default(prompt)
                self._send(200, {"choices": [{"message": {"role": "assistant",
                                                          "content": text}}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
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
