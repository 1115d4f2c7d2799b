"""Runs one `activeit-jax` subcommand on several command lines in one process (tests only).

    python tests/cli_cases.py CASES.json

CASES.json: {"command": "train", "cases": [[arg, ...], ...], "cwd": optional}. Each case runs
through `activeit_jax.main.run_main` as the console script does, after the previous case's flag
values and gin bindings are cleared (one interpreter start for many bad command lines keeps the
tests fast). Prints one JSON line per case: {"code": exit status, "stderr": what was printed
on stderr, "exception": "Type: message" when an exception escaped the entry point (the user
would have seen a traceback)}.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import sys


def run_cases(command: str, cases: list[list[str]]) -> list[dict]:
    """Runs each case; returns what the user would have seen."""
    import gin
    from absl import flags

    from activeit_jax import main as main_lib

    results = []
    for args in cases:
        flags.FLAGS.unparse_flags()
        gin.clear_config()
        err = io.StringIO()
        handler = logging.StreamHandler(err)
        logging.getLogger().addHandler(handler)
        record = {"code": 0, "exception": None}
        try:
            with contextlib.redirect_stderr(err):
                main_lib.run_main(["activeit-jax", command, *args])
        except SystemExit as exit_:
            code = exit_.code
            record["code"] = code if isinstance(code, int) else (0 if code is None else 1)
            if isinstance(code, str):
                err.write(code + "\n")
        except BaseException as exc:  # noqa: BLE001 - a traceback the user would have seen
            record["code"] = 1
            record["exception"] = f"{type(exc).__name__}: {exc}"
        finally:
            logging.getLogger().removeHandler(handler)
        record["stderr"] = err.getvalue()
        results.append(record)
    return results


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    for result in run_cases(spec["command"], spec["cases"]):
        print(json.dumps(result), flush=True)
