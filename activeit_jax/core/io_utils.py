"""Atomic file output: every user-facing file is written to a temp file, then renamed."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any, Iterator, TextIO

from activeit_jax.core import json_text
from activeit_jax.core.errors import RecordError, read_text


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w",
                encoding: str | None = "utf-8") -> Iterator[TextIO]:
    """Opens a temp file beside `path`; renames it onto `path` only if the block succeeds.

    Args:
      path: final destination.
      mode: "w" (text) or "wb" (binary).
      encoding: text encoding (ignored for binary mode).

    Yields:
      The open temp file. On an exception the temp file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                    dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


# `atomic_open`'s temp names: "." + the final name + "." + mkstemp's 8 random characters + ".tmp".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(directory: str | os.PathLike, recursive: bool = False
                            ) -> list[str]:
    """Removes the temp files a killed `atomic_open` left behind (`.<name>.<random>.tmp`).

    Call it only while holding the directory's run lock (`run_lock.hold`): another live
    writer's temp file looks the same.

    Args:
      directory: where to look (a missing directory has none).
      recursive: also look in every subdirectory.

    Returns:
      The paths removed.
    """
    removed = []
    for root, dirs, files in os.walk(os.fspath(directory)):
        for name in files:
            if _TEMP_NAME.match(name):
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    removed.append(path)
        if not recursive:
            break
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Writes `obj` as JSON to `path` atomically (keys in insertion order, UTF-8)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def append_jsonl_line(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Appends one JSON line and fsyncs it, so a killed run loses at most a partial last line.

    Readers use `read_jsonl(..., drop_partial_tail=True)` to ignore such a torn last line.
    """
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_json_object(path: str | os.PathLike, error: type[Exception], what: str
                     ) -> dict[str, Any]:
    """The JSON object in `path`; a damaged, unreadable or non-object file raises `error` with
    one line naming the file (and the line and column of a syntax error).

    Args:
      path: the JSON file.
      error: the exception class to raise (the caller's own error type).
      what: what the file is, for the message ("the model config").
    """
    try:
        with open(path, encoding="utf-8") as handle:
            obj = json_text.loads(handle.read())
    except json.JSONDecodeError as err:
        raise error(f"{path}: line {err.lineno} column {err.colno}: {what} is not valid JSON "
                    f"({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read {what} ({err})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: {what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | os.PathLike, drop_partial_tail: bool = True) -> list[dict[str, Any]]:
    """Reads a JSONL file; a last line without its newline (a torn write) is dropped.

    Args:
      path: the file; a missing file reads as an empty list.
      drop_partial_tail: ignore a final line that lacks "\n" (written by a killed process).

    Returns:
      The records, in file order.

    Raises:
      RecordError: the file is not UTF-8, or a line other than a torn tail is not JSON.
    """
    if not os.path.exists(path):
        return []
    lines = read_text(os.fspath(path), "JSONL file").split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    if tail.strip() and not drop_partial_tail:
        lines.append(tail)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json_text.loads(line))
        except ValueError as err:
            # Only the last line can be torn by a kill; one in the middle is damage.
            raise RecordError(f"invalid JSON ({getattr(err, 'msg', err)})", os.fspath(path),
                              f"line {number}") from None
    return records


def truncate_partial_tail(path: str | os.PathLike) -> None:
    """Cuts a torn last line (no trailing newline) off a JSONL file before appending to it."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)
