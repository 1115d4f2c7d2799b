"""The judge's transport: a minimal OpenAI-compatible chat-completions client.

Transport: `POST {base_url}/chat/completions` with `http.client` (stdlib), JSON body
`{"model", "messages", "temperature", "max_tokens"}`, header `Authorization: Bearer <key>`.
HTTP 429 / 5xx, deadline overruns and connection errors are retried with exponential backoff
and jitter (each wait drawn from [1 - jitter, 1] times the doubled base, so that concurrent
requests refused together do not come back together); a `Retry-After` header (seconds or an
HTTP date) is honoured as the least wait, and every wait is capped at `max_backoff_s`. Other
errors raise `JudgeError` at once. Each attempt has a whole-request deadline
(`timeout_s`: connect, send, headers and body together, so a server trickling its reply byte
by byte cannot hold the run), and all attempts of one item with their waits are bounded by
`total_timeout_s`. Redirects are never followed: the key goes to `base_url` and nowhere else
(a 3xx is an error naming the new address). A reply larger than 1 MiB is refused.

The API key is read from the environment variable named by `JudgeConfig.api_key_env`. It is
never logged, printed, written to the results file, shown in a repr, or put in an exception
message: server replies (stored ones included) and quoted error bodies are redacted, and
exceptions are raised without the original exception attached.
"""
from __future__ import annotations

import dataclasses
import datetime
import email.utils
import http.client
import json
import logging
import os
import random as _random_module
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from typing import Callable, Mapping, Protocol, Sequence

from activeit_jax.core import redaction
from activeit_jax.core.errors import ActiveITError, ConfigError

log = logging.getLogger(__name__)

_REDACTED = "<redacted>"
# The judge's prompt templates (their text: `judge.PROMPT_TEMPLATES`); the first is the default.
PROMPT_TEMPLATE_NAMES = ("paper", "ours")
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
      max_backoff_s: the longest single wait, a server's `Retry-After` included.
      total_timeout_s: bound on all attempts of one request and the waits between them.
      name: the judge's label in result file names and the report (letters, digits, ".",
        "-", "_"); None = `model`.
      concurrency: requests in flight at once in `run_pairwise` (1 = one at a time).
      jitter: fraction in [0, 1] by which a backoff wait is shortened at random (0.5: waits
        uniform in [base / 2, base]); 0 gives the plain doubling.
      prompt_template: the judge's prompt (`judge.PROMPT_TEMPLATES`): "paper" (the paper's
        template, appendix A.1 Table 1, verbatim; the default) or "ours" (our wording).

    Raises:
      ConfigError: a base_url that is not http(s), a non-positive time / negative count,
        a concurrency below 1, a jitter outside [0, 1] or an unknown prompt template.
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
    concurrency: int = 1
    jitter: float = 0.5
    prompt_template: str = "paper"

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
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or \
                self.concurrency < 1:
            raise ConfigError(f"JudgeConfig.concurrency must be an integer >= 1, got "
                              f"{self.concurrency!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or \
                not 0 <= self.jitter <= 1:
            raise ConfigError(f"JudgeConfig.jitter must be a number in [0, 1], got "
                              f"{self.jitter!r}")
        if self.prompt_template not in PROMPT_TEMPLATE_NAMES:
            raise ConfigError(f"JudgeConfig.prompt_template must be one of "
                              f"{list(PROMPT_TEMPLATE_NAMES)}, got {self.prompt_template!r}")


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


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (RFC 9110: delay-seconds or an HTTP date).

    Args:
      value: the header's value, or None when the reply had none.
      now: the current wall-clock time (seconds since the epoch), for the date form.

    Returns:
      The wait in seconds (0 for a date in the past), or None for a missing or unreadable
      header (the caller then keeps its own backoff).
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


@dataclasses.dataclass(frozen=True)
class _Failure:
    """One failed attempt: whether to retry, the redacted message, and the server's
    `Retry-After` wait in seconds (None when it sent none)."""
    retryable: bool
    message: str
    retry_after: float | None = None


class ChatClient:
    """Minimal OpenAI-compatible chat-completions client with bounded retries.

    Safe to share between threads: every attempt opens its own connection.

    Args:
      config: the endpoint, deadline and retry settings.
      api_key: the key; default `os.environ[config.api_key_env]`.
      sleep: the wait function between retries (tests pass a no-op).
      clock: a monotonic clock in seconds (tests pass a fake one with `sleep`).
      random: uniform draws in [0, 1) for the backoff jitter (tests pass a seeded
        `random.Random(seed).random` or a constant); default a fresh `random.Random()`.
      wall_clock: seconds since the epoch, to read `Retry-After` dates.
    """

    def __init__(self, config: JudgeConfig, api_key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[], float] | None = None,
                 wall_clock: Callable[[], float] = time.time):
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
        self._random = random if random is not None else _random_module.Random().random
        self._wall_clock = wall_clock

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
            if not problem.retryable:
                raise JudgeError(problem.message)
            wait = self.retry_wait(attempt, problem.retry_after)
            left = end - self._clock()
            if attempt > self.config.max_retries or left <= wait:
                raise JudgeError(f"{problem.message}; gave up after {attempt} attempt(s) in "
                                 f"{self._clock() - start:.1f} s")
            log.warning("judge request failed (%s); retry %d/%d in %.1f s", problem.message,
                        attempt, self.config.max_retries, wait)
            self._sleep(wait)

    def retry_wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        The base doubles from `backoff_s`, capped at `max_backoff_s`, and is shortened by a
        random fraction of up to `jitter`; a server's `Retry-After` is the least wait. No
        wait exceeds `max_backoff_s`.
        """
        cfg = self.config
        base = min(cfg.backoff_s * 2 ** (attempt - 1), cfg.max_backoff_s)
        wait = base * (1.0 - cfg.jitter * self._random())
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, cfg.max_backoff_s)

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

    def _try_once(self, body: bytes, budget: float) -> str | _Failure:
        """One request within `budget` seconds: the reply text, or the failure."""
        if budget <= 0:
            return _Failure(True, f"no time left for a request to {self.url}")
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
            retry_after = response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as err:
            if expired.is_set():
                return _Failure(True, f"no complete reply from {self.url} within the "
                                f"{budget:.1f} s deadline")
            return _Failure(True, self.redact(f"{type(err).__name__} talking to {self.url}: "
                                              f"{err}"))
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():
            return _Failure(True, f"no complete reply from {self.url} within the {budget:.1f} s "
                            f"deadline")
        return self._interpret(status, location, payload, retry_after)

    def _interpret(self, status: int, location: str, payload: bytes,
                   retry_after: str | None = None) -> str | _Failure:
        """The reply text of a finished response, or the failure."""
        snippet = payload[:300].decode("utf-8", "replace").strip()
        if 300 <= status < 400:
            return _Failure(False, self.redact(
                f"HTTP {status} from {self.url}: a redirect to {location or '(no Location)'}; "
                f"redirects are not followed, so that the API key goes to base_url only "
                f"(set JudgeConfig.base_url to the final address)"))
        if status == 429 or status >= 500:
            return _Failure(True, self.redact(f"HTTP {status} from {self.url}: {snippet}"),
                            parse_retry_after(retry_after, self._wall_clock()))
        if not 200 <= status < 300:
            return _Failure(False, self.redact(f"HTTP {status} from {self.url}: {snippet}"))
        if len(payload) > MAX_REPLY_BYTES:
            return _Failure(False, f"reply from {self.url} is larger than {MAX_REPLY_BYTES} "
                            "bytes")
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return _Failure(False, self.redact(f"malformed reply from {self.url}: {snippet}"))
        return "" if content is None else str(content)
