"""Keeping credentials off the terminal: what the error boundary masks before it prints.

The judge's API key is the one secret the program holds, but an exception can carry it in
forms the judge's own redaction never sees: `http.client` refuses a header with a stray
`\\r` by quoting the whole `Authorization: Bearer <key>` value in a `ValueError`; a
library may put a `https://user:password@host` address in an `OSError`; a repr escapes the
key's characters. `redact` masks all of these, and `activeit_jax.main` (the one error
boundary) passes every line it prints through it, tracebacks of bugs included.

What counts as a secret:

- every value given to `register_secret` (the judge client registers its key), in its raw,
  stripped and escaped (repr) forms;
- the value of every environment variable whose name says it holds a credential
  (`..._API_KEY`, `..._TOKEN`, `..._SECRET`, `..._PASSWORD`, ...), at least 8 characters;
- anything after `Bearer ` / `Basic `, the value of an `Authorization:` header, the
  user-information part of a URL (`scheme://user:password@`) and `key=` / `token=` /
  `password=` parameters of a query string.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

REDACTED = "<redacted>"

# Environment variable names that hold credentials (OPENAI_API_KEY, HF_TOKEN, ...).
_SECRET_ENV_NAME = re.compile(r"(?i)(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)")
# Shorter values are too likely to occur in ordinary text to be masked everywhere.
_MIN_ENV_SECRET_LENGTH = 8
_PATTERNS = (
    # "Authorization: Bearer x", "authorization': 'x" (a dict repr), "Proxy-Authorization: x"
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^\r\n'\",}]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\",}]+"), r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(?i)([?&;](?:api[_-]?key|key|access[_-]?token|token|password|secret)=)"
                r"[^&\s'\"]+"), r"\1" + REDACTED),
)

_registered: set[str] = set()


def register_secret(value: str) -> None:
    """Marks `value` as a secret `redact` masks from now on (in this process)."""
    for form in _forms(value):
        _registered.add(form)


def _forms(value: str) -> Iterable[str]:
    """The ways `value` can appear in a message: as is, stripped of the whitespace a copy and
    paste adds, and escaped as a str or bytes repr shows it."""
    if not isinstance(value, str):
        return ()
    forms = {value, value.strip(), repr(value)[1:-1]}
    try:
        forms.add(repr(value.encode("utf-8", "backslashreplace"))[2:-1])
    except UnicodeError:
        pass
    # Too-short fragments would mask ordinary words; the patterns still catch a bearer token.
    return [form for form in forms if len(form) >= 4]


def _secrets() -> list[str]:
    """The registered secrets and the credential-like environment values, longest first (so
    a secret that contains another is masked whole)."""
    values = set(_registered)
    for name, value in os.environ.items():
        if _SECRET_ENV_NAME.search(name) and len(value.strip()) >= _MIN_ENV_SECRET_LENGTH:
            values.update(_forms(value))
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret (module docstring) replaced by `<redacted>`."""
    text = str(text)
    for secret in _secrets():
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
