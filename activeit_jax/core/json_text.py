"""Parsing JSON from files: a document nested too deeply is malformed JSON, not a crash.

`json.loads` recurses once per nesting level, so `[[[[...]]]]` 100,000 levels deep raises
`RecursionError` -- which no reader's `except ValueError` catches, and which reached the user
as a traceback. `loads` turns it into a `json.JSONDecodeError` (a `ValueError`) with the line
and column where the nesting passes `MAX_DEPTH`, so every reader reports it like any other
malformed JSON: one line naming the file. Use it wherever a file a user hands in is parsed.
"""
from __future__ import annotations

import json
from typing import Any

# Depth reported in the message: `json` gives up near the interpreter's recursion limit (1000
# frames, some already in use), always deeper than this.
MAX_DEPTH = 500


def loads(text: str | bytes) -> Any:
    """`json.loads`, with too deep a document raised as `json.JSONDecodeError`.

    Raises:
      json.JSONDecodeError: malformed JSON, or nesting deeper than the parser can follow
        (`msg`, `lineno`, `colno` as usual).
    """
    try:
        return json.loads(text)
    except RecursionError:
        doc = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else text
        raise json.JSONDecodeError(f"nested more than {MAX_DEPTH} levels deep", doc,
                                   deep_position(doc)) from None


def deep_position(doc: str, limit: int = MAX_DEPTH) -> int:
    """The offset in `doc` where array/object nesting first exceeds `limit` (0 if never)."""
    depth, in_string, escaped = 0, False, False
    for index, char in enumerate(doc):
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
            if depth > limit:
                return index
        elif char in "]}":
            depth -= 1
    return 0
