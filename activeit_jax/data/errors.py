"""Errors raised for bad input data. Each names the file and the field at fault.

The CLI catches `DataError` (an `activeit_jax.core.errors.ActiveITError`) and prints its message
without a traceback, so the message alone must say what is wrong and where:
`<file>: field '<field>': <what>` (in a line-oriented file the field starts with its line,
e.g. "line 3: task").
"""
from __future__ import annotations

import os

# DataError and RecordError live in core (core's record readers raise them); named here too,
# with the data layer's own errors.
from activeit_jax.core.errors import DataError, RecordError  # noqa: F401


class TaskFormatError(DataError):
    """A task file (NIV2 JSON, Self-Instruct JSON/JSONL) is malformed."""


class MissingTaskError(DataError):
    """A task that is required (e.g. named with --tasks) has no file, or a split file is absent."""


class TaskNameError(DataError):
    """A task name that is not a plain file name (a path such as `../../x` or `/abs/x`)."""


class SplitError(DataError):
    """The requested experiment split cannot be made (too few tasks of a kind)."""


class EmptyPoolError(SplitError):
    """No task is left for the pool once the initial and validation tasks are taken."""


class VocabularyError(DataError):
    """A SentencePiece model file is missing or cannot be loaded."""


class LabelOverrideError(DataError):
    """A classification/generation label file (`labels.load_label_source`) is malformed."""


def check_unicode(value: str, path: str | os.PathLike | None, field: str | None) -> str:
    """Returns `value` when it is valid Unicode text (it can be written as UTF-8).

    JSON allows escapes of lone surrogates (`"\\ud800"`), which Python decodes into a string
    that no UTF-8 file, tokenizer or terminal accepts: the first write of such a text used to
    abort a whole pool with a UnicodeEncodeError. Readers check every string they keep.

    Raises:
      TaskFormatError: naming the file, the field and the position of the lone surrogate.
    """
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise TaskFormatError(f"not valid Unicode text: a lone surrogate "
                              f"U+{ord(value[err.start]):04X} at character {err.start} (an "
                              f"unpaired \\u escape in the JSON)", path, field) from None
    return value


def read_text(path: str, what: str) -> str:
    """Reads a UTF-8 data file; an unreadable or non-UTF-8 file becomes a `TaskFormatError`.

    Args:
      path: the file.
      what: what the file is, for the message (e.g. "task file", "Self-Instruct file").

    Returns:
      The file's text.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as err:
        raise TaskFormatError(f"cannot read {what} ({err.strerror})", path) from None
    except UnicodeDecodeError as err:
        raise TaskFormatError(f"not UTF-8 text ({err.reason} at byte {err.start})",
                              path) from None
