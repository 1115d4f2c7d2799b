"""Reliability: the judge's API key never reaches the terminal (issue 23, item 3).

A key with a stray carriage return is refused before the loop starts, in one line that does
not echo it; and whatever exception escapes a command -- the project's one-line errors and a
bug's traceback alike -- the error boundary (`activeit_jax.main`) prints no key, no
`Authorization` header and no URL with credentials.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from activeit_jax.loop import judge

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY = "sk-proj-0123456789abcdefABCDEF"

# Exceptions a command could let escape, each carrying the key (or a credential) the way a
# library would quote it. Run in a fresh interpreter: the traceback printing of a bug is
# Python's own, after the error boundary.
RAISERS = {
    "header_value_error": "raise ValueError(f\"Invalid header value b'Bearer {key}\\\\r'\")",
    "header_dict_in_bug": "raise KeyError({'Authorization': f'Bearer {key}'})",
    "judge_error": "from activeit_jax.loop.judge import JudgeError\n"
                   "raise JudgeError(f'HTTP 401 from https://api.example/v1: bad key {key}')",
    "os_error_with_url": "raise OSError(2, 'No such file', "
                         "f'https://user:{key}@proxy.example:8080/x')",
    "os_error_no_file": "raise ConnectionError(f'proxy https://me:{key}@proxy.example refused')",
    "chained_cause": "try:\n    raise RuntimeError(f'token={key}')\nexcept RuntimeError as e:\n"
                     "    raise TypeError('wrapped') from e",
    "unicode_error": "raise UnicodeEncodeError('latin-1', key + '\\u2028', len(key), "
                     "len(key) + 1, 'ordinal not in range(256)')",
    "escaped_repr": "raise ValueError(repr(key + '\\r'))",
    "key_only_stripped": "raise RuntimeError(key.strip())",
}


@pytest.mark.parametrize("name", sorted(RAISERS))
def test_no_exception_path_prints_the_key(name):
    """The key (given with a trailing `\\r`, as a Windows copy leaves it) sits in the
    environment; each exception type carrying it reaches the boundary; stderr never shows it,
    nor an Authorization header's value, nor a URL's password."""
    body = "\n".join("    " + line for line in RAISERS[name].splitlines())
    code = ("import os, sys\n"
            "from activeit_jax import main\n"
            "key = os.environ['OPENAI_API_KEY']\n"
            "def command(argv):\n"
            f"{body}\n"
            "main._guarded('run', command)([])\n")
    env = {"OPENAI_API_KEY": KEY + "\r", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": ":".join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode != 0
    assert done.stderr.strip(), "the error must still be reported"
    assert KEY not in done.stderr, done.stderr
    assert KEY[:12] not in done.stderr, done.stderr  # no prefix of it either
    assert "Bearer sk" not in done.stderr and f":{KEY}@" not in done.stderr


def test_redact_masks_every_form_of_a_registered_secret():
    from activeit_jax.core import redaction
    secret = "judge-key-for-tests-42\r"
    redaction.register_secret(secret)
    for text in (secret, secret.strip(), repr(secret), repr(secret.encode()),
                 f"Authorization: Bearer {secret}", "https://u:judge-key-for-tests-42@h/x"):
        assert "judge-key-for-tests-42" not in redaction.redact(text), text
    assert redaction.redact("an ordinary message about a file") == \
        "an ordinary message about a file"


@pytest.mark.parametrize("bad,what", [("\r", "carriage return"), ("\n", "line feed"),
                                      (" ", "space"), ("\u00e9", "U+00E9"),
                                      ("\x00", "U+0000")])
def test_a_key_no_header_can_carry_is_refused_without_echoing_it(bad, what):
    with pytest.raises(judge.JudgeError) as info:
        judge.ChatClient(judge.JudgeConfig(), api_key=KEY + bad)
    message = str(info.value)
    assert what in message and f"position {len(KEY) + 1}" in message
    assert KEY not in message and KEY[:8] not in message


def test_run_refuses_the_key_before_the_loop(tmp_path):
    """`run` with a judge: the key is checked when the judge client is made, before the run
    directory is created; one line, without the key."""
    out = tmp_path / "run"
    args = ["--gin_file=demo_tiny.gin", f"--out={out}", "--noreport",
            "--gin.experiment.judge=@JudgeConfig()",
            "--gin.JudgeConfig.base_url='http://127.0.0.1:9'"]
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"command": "run", "cases": [args]}))
    env = dict(os.environ, OPENAI_API_KEY=KEY + "\r",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run([sys.executable, str(REPO / "tests" / "cli_cases.py"), str(spec)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["exception"] is None and result["code"] == 1, result
    errors = [line for line in result["stderr"].splitlines()
              if line.startswith("activeit-jax run: error: ")]
    assert len(errors) == 1, result["stderr"]
    assert "'OPENAI_API_KEY'" in errors[0] and "carriage return" in errors[0]
    assert KEY not in done.stdout + done.stderr and KEY[:8] not in result["stderr"]
    assert not out.exists()
