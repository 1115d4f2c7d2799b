"""The project's own errors: what a user can cause and fix, shown as one line without a
traceback.

Every error the library raises on purpose for bad input, a refused run or an unreachable
service derives from `ActiveITError`; the entry point (`activeit_jax.main`) prints its message
as `activeit-jax <command>: error: <message>` and exits with status 1. Anything else that
escapes is a bug and keeps its traceback. So a message must say, on its own, what is wrong and
where: the file, the line and the field when there is one.
"""
from __future__ import annotations

import os


class ActiveITError(Exception):
    """Base class of the errors the entry point reports in one line."""


class UsageError(ActiveITError, ValueError):
    """A command-line flag or a config value is missing, malformed or out of range.

    Also a `ValueError`, so library callers that catch bad values keep working.
    """


class ConfigError(UsageError):
    """A gin file or binding cannot be parsed or names something that does not exist."""


class DataError(ActiveITError):
    """Bad input data: a malformed file, a missing task, an impossible split.

    Attributes:
      message: what is wrong, in words.
      path: the file (or directory) at fault, when there is one.
      field: the field inside that file (e.g. "Instances[3].output", or "line 3: task" in a
        JSONL file), when there is one.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 field: str | None = None):
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self):  # keeps the keyword arguments through pickling (multiprocessing)
        return (type(self), (self.message, self.path, self.field))


class RecordError(DataError):
    """A record file (scores.jsonl, a pool, a task list) has a malformed or repeated record."""


def read_text(path: str, what: str) -> str:
    """Reads a UTF-8 record file; an unreadable or non-UTF-8 file becomes a `RecordError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as err:
        raise RecordError(f"cannot read {what} ({err.strerror})", path) from None
    except UnicodeDecodeError as err:
        raise RecordError(f"not UTF-8 text ({err.reason} at byte {err.start})", path) from None


def one_line(message: str) -> str:
    """`message` with its line breaks folded, so an error fits the one-line contract."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())
