"""Reading JSON a user hands in, without the standard library's one unbounded failure.

`json.loads` recurses once per level of nesting, so `[[[[...` 100,000 levels deep raises
RecursionError -- a traceback, not the one line every reader gives for a malformed file.
`loads` turns it into the `json.JSONDecodeError` readers already report with its line and
column. (Kept free of project imports, so every reader can use it.)
"""
from __future__ import annotations

import json
from typing import Any


def loads(text: str) -> Any:
    """`json.loads`, where a document nested too deeply for the parser (`[[[[...` 100,000
    levels deep raises RecursionError in the standard library) is a `json.JSONDecodeError`
    like any other malformed document, at the deepest point: every reader that reports a
    syntax error with its line and column reports this one the same way.

    Raises:
      json.JSONDecodeError: not JSON, or nested too deeply.
    """
    try:
        return json.loads(text)
    except RecursionError:
        depth, position = _deepest(text)
        raise json.JSONDecodeError(f"nested {depth:,} levels deep, too deep to read", text,
                                   position) from None


def _deepest(text: str) -> tuple[int, int]:
    """(greatest nesting depth of [ and {, the offset where it is first reached), strings
    skipped."""
    depth = best = where = 0
    in_string = escaped = False
    for offset, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > best:
                best, where = depth, offset
        elif char in "]}":
            depth -= 1
    return best, where
