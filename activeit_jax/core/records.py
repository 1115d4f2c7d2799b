"""Reading record files a user hands in (score files, pools, task lists) with errors that name
the file, the line and the field.

`io_utils.read_jsonl` reads the journals this project writes itself, where a torn last line
is the expected trace of a kill and is dropped. Files named on the command line are inputs:
every line must parse, so a torn line anywhere is an error naming its line.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterator

from activeit_jax.core import json_text
from activeit_jax.core.errors import RecordError, read_text

# Numeric fields of a `scores.jsonl` record (`activeit-jax score`): a number or null, in the
# range its definition allows (`scoring.formulas`): PU is a mean of |p_k - p_0| and the
# prediction probability a mean of probabilities, both in [0, 1]; perplexity (exp of a mean
# negative log-probability) and entropy are >= 0. The bounds allow float rounding.
SCORE_NUMBER_FIELDS = ("prompt_uncertainty", "prediction_probability", "perplexity", "entropy")
SCORE_RANGES = {"prompt_uncertainty": (0.0, 1.0), "prediction_probability": (0.0, 1.0),
                "perplexity": (0.0, math.inf), "entropy": (0.0, math.inf)}
_ROUNDING = 1e-6
# The labels of the data layer (`data.labels`) and the Task Map categories
# (`scoring.taskmap.CATEGORIES`) a record may carry.
LABELS = ("cls", "gen")
CATEGORIES = ("ambiguous", "easy", "difficult")


def iter_jsonl(path: str | os.PathLike, what: str = "JSONL file"
               ) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL file.

    Raises:
      RecordError: the file is unreadable, not UTF-8, or a line is not JSON (its number named).
    """
    path = os.fspath(path)
    for number, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json_text.loads(line)
        except ValueError as err:
            raise RecordError(f"invalid JSON ({getattr(err, 'msg', err)}); a torn or "
                              f"hand-edited line?", path, f"line {number}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed content of a JSON file.

    Raises:
      RecordError: unreadable, not UTF-8, or not JSON (line and column named).
    """
    path = os.fspath(path)
    text = read_text(path, what)
    try:
        return json_text.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"invalid JSON at column {err.colno}: {err.msg}", path,
                          f"line {err.lineno}") from None


def read_records(path: str | os.PathLike, what: str = "task list") -> list[tuple[str, Any]]:
    """(where, record) of a list file in any of the usual forms.

    Forms: JSONL (one record per line); a JSON list, or an object whose "tasks" (or "pool") is
    a list; otherwise a text file with one name per line (`#` starts a comment).

    Returns:
      (location for messages, e.g. "line 3" or "tasks[2]", record) in file order.

    Raises:
      RecordError: the file cannot be read or parsed (file and line named).
    """
    path = os.fspath(path)
    if path.endswith(".jsonl"):
        return [(f"line {n}", value) for n, value in iter_jsonl(path, what)]
    text = read_text(path, what)
    if text.lstrip().startswith(("[", "{")):
        data = read_json(path, what)
        key = "items"
        if isinstance(data, dict):
            key = "tasks" if "tasks" in data else "pool"
            data = data.get(key)
        if not isinstance(data, list):
            raise RecordError("expected a JSON list, or an object with a 'tasks' or 'pool' "
                              "list", path)
        return [(f"{key}[{k}]", value) for k, value in enumerate(data)]
    return [(f"line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_score_records(path: str | os.PathLike, allow_nonfinite: bool = False
                       ) -> list[dict[str, Any]]:
    """The records of a `scores.jsonl`, each checked.

    Every line must be a JSON object with a non-empty string "task" seen on no other line;
    the score fields (`SCORE_NUMBER_FIELDS`), when present, must be finite numbers in their
    range (`SCORE_RANGES`) or null; "label", when present, one of `LABELS`; "category" one
    of `CATEGORIES`. (A PU below 0 or a probability above 1 would be ranked like any other.)

    Args:
      path: the file.
      allow_nonfinite: accept NaN / infinite scores (older runs wrote NaN; the report reads
        them and leaves them out of its means, selection must not rank them).

    Raises:
      RecordError: naming the file, the line and the field at fault.
    """
    path = os.fspath(path)
    records, seen = [], {}
    for number, record in iter_jsonl(path, "scores file"):
        where = f"line {number}"
        if not isinstance(record, dict):
            raise RecordError(f"expected a JSON object, got {type(record).__name__}", path,
                              where)
        task = record.get("task")
        if not isinstance(task, str) or not task:
            raise RecordError("missing or not a non-empty string", path, f"{where}: task")
        if task in seen:
            raise RecordError(f"task {task!r} is scored twice (first on line {seen[task]}): "
                              "two runs wrote into one directory?", path, f"{where}: task")
        seen[task] = number
        for field in SCORE_NUMBER_FIELDS:
            value = record.get(field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not (allow_nonfinite or math.isfinite(value)):
                raise RecordError(f"expected a finite number or null, got {value!r}", path,
                                  f"{where}: {field}")
            low, high = SCORE_RANGES[field]
            if math.isfinite(value) and not low - _ROUNDING <= value <= high + _ROUNDING:
                raise RecordError(f"{value!r} is outside [{low:g}, {high:g}], the range of a "
                                  f"{field.replace('_', ' ')}", path, f"{where}: {field}")
        for field, allowed in (("label", LABELS), ("category", CATEGORIES)):
            value = record.get(field)
            if value is not None and value not in allowed:
                raise RecordError(f"expected one of {list(allowed)} or null, got {value!r}",
                                  path, f"{where}: {field}")
        records.append(record)
    return records
