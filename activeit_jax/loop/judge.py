"""Pairwise evaluation by an LLM judge (Self-Instruct), over an OpenAI-compatible chat API.

The protocol of the paper's Self-Instruct evaluation (Kung et al., 2023, Sec. 4): for every
item (an instruction, its input, and the answers of model A and model B) the judge sees the two
answers under neutral labels, "Output (a)" / "Output (b)", in a seeded random order
(`presentation_order`, the same for every judge), and is asked which one is better or whether
they are equal; it replies "Output (a)", "Output (b)" or "Equal". The order is undone and the
verdict recorded from model A's perspective: win, lose or tie. A reply that fits none of the
three (or names several without leading with one) counts as a tie ("equal") and is kept as
`verdict: "unparsed"` for inspection. So a verdict depends on the answers' content, never on
their position. A run may use several judges (the paper: GPT-4 and ChatGPT), each with its own
results file and its own Win / Tie / Lose table in the report (`JudgeConfig.name`).

Transport: `POST {base_url}/chat/completions` with `http.client` (stdlib), JSON body
`{"model", "messages", "temperature", "max_tokens"}`, header `Authorization: Bearer <key>`.
HTTP 429 / 5xx, deadline overruns and connection errors are retried with exponential backoff;
other errors raise `JudgeError` at once. Each attempt has a whole-request deadline
(`timeout_s`: connect, send, headers and body together, so a server trickling its reply byte
by byte cannot hold the run), and all attempts of one item with their waits are bounded by
`total_timeout_s`. Redirects are never followed: the key goes to `base_url` and nowhere else
(a 3xx is an error naming the new address). A reply larger than 1 MiB is refused.

The API key is read from the environment variable named by `JudgeConfig.api_key_env`. It is
never logged, printed, written to the results file, shown in a repr, or put in an exception
message: server replies (stored ones included) and quoted error bodies are redacted, and
exceptions are raised without the original exception attached.

Results file (JSONL, one line per item, appended and fsynced, so a killed run resumes where it
stopped): `{"id", "order": "ab"|"ba", "verdict": "a"|"b"|"equal"|"unparsed",
"winner": "A"|"B"|"tie", "reply"}`; "ab" means model A was shown as Output (a).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping, Protocol, Sequence

from activeit_jax.core import io_utils, redaction
from activeit_jax.core.errors import ActiveITError, ConfigError

log = logging.getLogger(__name__)

SYSTEM_PROMPT = ("You are a helpful, impartial assistant that compares the quality of two "
                 "responses to the same instruction.")

USER_TEMPLATE = """Compare two outputs written for the same instruction. Choose the output that \
follows the instruction better: correct, helpful, relevant and complete.

# Instruction
{instruction}

# Input
{input}

# Output (a)
{output_a}

# Output (b)
{output_b}

Which output is better? Reply with exactly one of: "Output (a)", "Output (b)" or "Equal" (if \
they are equally good or equally bad). Do not explain."""

_REDACTED = "<redacted>"
MAX_REPLY_BYTES = 1 << 20  # a chat reply of a few tokens is far below this


class JudgeError(ActiveITError, RuntimeError):
    """A judge request failed (the message never contains the API key)."""


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Where and how to call the judge (bind it with gin at the edge).

    Attributes:
      base_url: API root; requests go to `{base_url}/chat/completions`.
      model: judge model name.
      api_key_env: name of the environment variable holding the API key.
      temperature, max_tokens: sampling settings sent with each request.
      timeout_s: whole-request deadline of one attempt (connect, send, headers and body).
      max_retries: retries after the first try for 429 / 5xx / deadlines / connection errors.
      backoff_s: first wait; doubles on each retry, capped at `max_backoff_s`.
      total_timeout_s: bound on all attempts of one request and the waits between them.
      name: the judge's label in result file names and the report (letters, digits, ".",
        "-", "_"); None = `model`.

    Raises:
      ConfigError: a base_url that is not http(s), or a non-positive time / negative count.
    """
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 16
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    name: str | None = None
    total_timeout_s: float = 600.0

    def __post_init__(self):
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https") or \
                not urllib.parse.urlsplit(self.base_url).hostname:
            raise ConfigError(f"JudgeConfig.base_url must be an http(s) URL, got "
                              f"{self.base_url!r}")
        for name, low in (("timeout_s", 0), ("total_timeout_s", 0), ("max_tokens", 0),
                          ("max_retries", -1), ("backoff_s", -1), ("max_backoff_s", -1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= low \
                    or (low < 0 and value < 0):
                raise ConfigError(f"JudgeConfig.{name} must be a number "
                                  f"{'> 0' if low == 0 else '>= 0'}, got {value!r}")


# What an HTTP header value (the key goes in `Authorization: Bearer <key>`) may hold: API keys
# are printable ASCII tokens, so anything else is a copy-and-paste accident.
_KEY_CHARACTER = re.compile(r"[!-~]")
_CHARACTER_NAMES = {"\r": "a carriage return (\\r)", "\n": "a line feed (\\n)",
                    "\t": "a tab", " ": "a space", "\ufeff": "a byte-order mark"}


def check_api_key(key: str, where: str) -> None:
    """Refuses an API key that cannot go into an HTTP header, before any request.

    A key copied with a Windows line ending (`sk-...\\r`) used to fail at the first judge
    request, after the whole loop, as a traceback quoting the header. The message names
    where the key came from (`where`, e.g. "environment variable 'OPENAI_API_KEY'"), the
    position and the kind of character, never the key.

    Raises:
      JudgeError: a character outside printable ASCII (control characters, whitespace,
        non-ASCII).
    """
    for position, char in enumerate(key, 1):
        if not _KEY_CHARACTER.fullmatch(char):
            what = _CHARACTER_NAMES.get(char, f"the character U+{ord(char):04X}")
            raise JudgeError(f"the API key in {where} holds {what} at position {position} of "
                             f"{len(key)}: an HTTP header cannot carry it (a line ending or "
                             f"space copied with the key?); set it to the key alone")


class ChatCompleter(Protocol):
    """Anything that turns chat messages into the assistant's reply text."""

    def complete(self, messages: Sequence[Mapping[str, str]]) -> str: ...


class _Secret:
    """Holds a string; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return _REDACTED

    __str__ = __repr__


class ChatClient:
    """Minimal OpenAI-compatible chat-completions client with bounded retries.

    Args:
      config: the endpoint, deadline and retry settings.
      api_key: the key; default `os.environ[config.api_key_env]`.
      sleep: the wait function between retries (tests pass a no-op).
      clock: a monotonic clock in seconds (tests pass a fake one with `sleep`).
    """

    def __init__(self, config: JudgeConfig, api_key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        key = os.environ.get(config.api_key_env) if api_key is None else api_key
        if not key:
            raise JudgeError(f"no API key: environment variable {config.api_key_env!r} is "
                             f"unset or empty")
        redaction.register_secret(key)  # kept off the terminal even if a library quotes it
        check_api_key(key, f"environment variable {config.api_key_env!r}"
                      if api_key is None else "api_key")
        self._key = _Secret(key)
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={self.config.base_url!r}, model={self.config.model!r}, "
                f"api_key={_REDACTED})")

    def redact(self, text: str) -> str:
        """`text` with the API key (and any bearer token) masked."""
        text = text.replace(self._key.get(), _REDACTED)
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1" + _REDACTED, text)

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Sends one chat request; returns the first choice's message content, with the key
        masked should the server have echoed it.

        Raises:
          JudgeError: a non-retryable HTTP error (a redirect among them), a malformed reply,
            or retries exhausted (`max_retries` or `total_timeout_s`, whichever comes first).
        """
        body = json.dumps({"model": self.config.model, "messages": list(messages),
                           "temperature": self.config.temperature,
                           "max_tokens": self.config.max_tokens}).encode("utf-8")
        start = self._clock()
        end = start + self.config.total_timeout_s
        attempt = 0
        while True:
            attempt += 1
            budget = min(self.config.timeout_s, end - self._clock())
            problem = self._try_once(body, budget)
            if isinstance(problem, str):
                # Only the exact key: a "bearer ..." pattern could eat words of a verdict.
                return problem.replace(self._key.get(), _REDACTED)
            retryable, message = problem
            if not retryable:
                raise JudgeError(message)
            wait = min(self.config.backoff_s * 2 ** (attempt - 1), self.config.max_backoff_s)
            left = end - self._clock()
            if attempt > self.config.max_retries or left <= wait:
                raise JudgeError(f"{message}; gave up after {attempt} attempt(s) in "
                                 f"{self._clock() - start:.1f} s")
            log.warning("judge request failed (%s); retry %d/%d in %.1f s", message,
                        attempt, self.config.max_retries, wait)
            self._sleep(wait)

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, str]:
        """A connection to the API host (through the environment's proxy, if any) and the
        request target to send."""
        parts = urllib.parse.urlsplit(self.url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
            via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if not https:  # a plain-HTTP proxy takes the absolute URL
                return http.client.HTTPConnection(via.hostname, via.port or 80,
                                                  timeout=timeout), self.url
            conn = http.client.HTTPSConnection(via.hostname, via.port or 80, timeout=timeout)
            conn.set_tunnel(parts.hostname, port)  # TLS end to end through CONNECT
            return conn, target
        cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
        return cls(parts.hostname, port, timeout=timeout), target

    def _try_once(self, body: bytes, budget: float) -> str | tuple[bool, str]:
        """One request within `budget` seconds: the reply text, or (retryable, redacted
        error message)."""
        if budget <= 0:
            return True, f"no time left for a request to {self.url}"
        conn, target = self._connection(budget)
        expired = threading.Event()
        opened: list[socket.socket] = []  # the response keeps reading it after conn drops it

        def abort() -> None:
            # Per-socket timeouts restart with every byte; this bounds the whole request.
            expired.set()
            for sock in opened:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        timer = threading.Timer(budget, abort)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            opened.append(conn.sock)
            if expired.is_set():  # the deadline passed while connecting
                abort()
            conn.request("POST", target, body=body, headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._key.get()}"})
            response = conn.getresponse()
            payload = response.read(MAX_REPLY_BYTES + 1)
            status, location = response.status, response.getheader("Location", "")
        except (OSError, http.client.HTTPException) as err:
            if expired.is_set():
                return True, (f"no complete reply from {self.url} within the {budget:.1f} s "
                              f"deadline")
            return True, self.redact(f"{type(err).__name__} talking to {self.url}: {err}")
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():
            return True, f"no complete reply from {self.url} within the {budget:.1f} s deadline"
        return self._interpret(status, location, payload)

    def _interpret(self, status: int, location: str, payload: bytes
                   ) -> str | tuple[bool, str]:
        """The reply text of a finished response, or (retryable, redacted message)."""
        snippet = payload[:300].decode("utf-8", "replace").strip()
        if 300 <= status < 400:
            return False, self.redact(
                f"HTTP {status} from {self.url}: a redirect to {location or '(no Location)'}; "
                f"redirects are not followed, so that the API key goes to base_url only "
                f"(set JudgeConfig.base_url to the final address)")
        if status == 429 or status >= 500:
            return True, self.redact(f"HTTP {status} from {self.url}: {snippet}")
        if not 200 <= status < 300:
            return False, self.redact(f"HTTP {status} from {self.url}: {snippet}")
        if len(payload) > MAX_REPLY_BYTES:
            return False, f"reply from {self.url} is larger than {MAX_REPLY_BYTES} bytes"
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return False, self.redact(f"malformed reply from {self.url}: {snippet}")
        return "" if content is None else str(content)


# ----------------------------------------------------------------------------- judging


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    """One comparison: model A's and model B's answers to one instruction."""
    id: str
    instruction: str
    input: str
    output_a: str
    output_b: str


@dataclasses.dataclass(frozen=True)
class JudgeSummary:
    """Totals from model A's perspective."""
    win: int
    tie: int
    lose: int

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def win_rate(self) -> float:
        """Fraction of items A wins (0 when there are none)."""
        return self.win / self.n if self.n else 0.0


_VERDICT_RE = re.compile(r"output\s*\(\s*([ab])\s*\)|\b(equal)(?:ly)?\b", re.IGNORECASE)


def parse_verdict(reply: str) -> str:
    """Reads a judge reply.

    A reply that mentions exactly one verdict ("Output (a)", "Output (b)", "Equal"/"equally")
    gives it; one that mentions several gives the verdict it starts with (after quotes and
    markup); anything else is "unparsed" (counted as a tie).

    Returns:
      "a", "b", "equal" or "unparsed".
    """
    matches = [(m.start(), (m.group(1) or m.group(2)).lower()) for m in
               _VERDICT_RE.finditer(reply)]
    found = {verdict for _, verdict in matches}
    if len(found) == 1:
        return found.pop()
    if matches:
        lead = len(reply) - len(reply.lstrip(" \t\r\n\"'`*#:>-"))
        if matches[0][0] == lead:
            return matches[0][1]
    return "unparsed"


def presentation_order(seed: int, item_id: str) -> str:
    """"ab" (A shown as Output (a)) or "ba"; a stable function of (seed, item id)."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode("utf-8")).digest()
    return "ab" if digest[0] & 1 == 0 else "ba"


_JUDGE_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


def check_judge_name(name: str) -> str:
    """Returns `name` if it can label a judge in a file name, else raises ValueError."""
    if not _JUDGE_NAME_RE.match(name):
        raise ValueError(f"judge name {name!r}: use letters, digits, '.', '-' and '_' only "
                         f"(set JudgeConfig.name)")
    return name


def judge_name(config: JudgeConfig) -> str:
    """The label of a configured judge: `config.name`, else its model (checked)."""
    return check_judge_name(config.name or config.model)


def winner_of(verdict: str, order: str) -> str:
    """Maps a parsed verdict on the shown order back to "A", "B" or "tie"."""
    if verdict not in ("a", "b"):
        return "tie"
    first = "A" if order == "ab" else "B"
    second = "B" if order == "ab" else "A"
    return first if verdict == "a" else second


def build_messages(item: JudgeItem, order: str) -> list[dict[str, str]]:
    """The chat messages for one item with its answers in `order`."""
    first, second = ((item.output_a, item.output_b) if order == "ab"
                     else (item.output_b, item.output_a))
    user = USER_TEMPLATE.format(instruction=item.instruction, input=item.input or "(none)",
                                output_a=first, output_b=second)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def summarize(records: Sequence[Mapping[str, Any]]) -> JudgeSummary:
    """Win / tie / lose counts of result records (the last record of a repeated id counts)."""
    last = {str(r["id"]): r["winner"] for r in records}
    winners = list(last.values())
    return JudgeSummary(win=winners.count("A"), tie=winners.count("tie"),
                        lose=winners.count("B"))


def summarize_results(path: str | os.PathLike) -> JudgeSummary:
    """`summarize` of a results file (a torn last line is ignored)."""
    return summarize(io_utils.read_jsonl(path))


def run_pairwise(items: Sequence[JudgeItem], client: ChatCompleter,
                 results_path: str | os.PathLike, seed: int = 0) -> JudgeSummary:
    """Judges every item not yet in `results_path`, appending one line per item.

    Args:
      items: the comparisons; ids must be unique.
      client: e.g. a `ChatClient`.
      results_path: the resumable JSONL results file.
      seed: seeds the presentation order (`presentation_order`).

    Returns:
      The totals over `items` (from model A's perspective).
    """
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    io_utils.truncate_partial_tail(results_path)
    done = {str(r["id"]): r for r in io_utils.read_jsonl(results_path)}
    todo = [item for item in items if item.id not in done]
    if done:
        log.info("judge: %d item(s) already in %s, %d to go", len(items) - len(todo),
                 os.fspath(results_path), len(todo))
    for item in todo:
        order = presentation_order(seed, item.id)
        reply = client.complete(build_messages(item, order))
        verdict = parse_verdict(reply)
        record = {"id": item.id, "order": order, "verdict": verdict,
                  "winner": winner_of(verdict, order), "reply": reply}
        io_utils.append_jsonl_line(results_path, record)
        done[item.id] = record
    return summarize([done[i] for i in ids])
