"""Self-Instruct / Alpaca reader: every item is one task (definition = its instruction).

Accepted files:
  - a JSON list, or JSONL (one object per line), of Alpaca items
    `{"instruction": str, "input": str, "output": str, ...}` -> a task with one instance;
  - the Self-Instruct repository shape `{"id", "instruction", "instances": [{"input",
    "output"}], "is_classification"?}` (seed tasks, the 252 user-oriented tasks) -> a task with
    one instance per entry of `instances`.

Task names: the item's "id" when it has one, else `<file stem>_<index:05d>`. Instance ids are
`<task name>-<k>`. The label is `is_classification` when the item carries it, else the rule of
`labels.py` (output written in the instruction).

`output_length_chunks` splits a pool into 13 chunks by output length, for length-balanced
selection.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Sequence

import numpy as np

from activeit_jax.core import json_text
from activeit_jax.data import labels as labels_lib
from activeit_jax.data.errors import TaskFormatError, check_unicode, read_text
from activeit_jax.data.niv2 import Instance, Task

NUM_LENGTH_CHUNKS = 13


def _item_error(message: str, path: str, field: str) -> TaskFormatError:
    return TaskFormatError(message, path, field)


def _str_field(item: dict, key: str, path: str, where: str, default: str | None = None) -> str:
    if key not in item:
        if default is not None:
            return default
        raise _item_error("missing", path, f"{where}.{key}")
    value = item[key]
    if not isinstance(value, str):
        raise _item_error(f"expected a string, got {type(value).__name__}", path,
                          f"{where}.{key}")
    return check_unicode(value, path, f"{where}.{key}")


def _read_items(path: str) -> list[tuple[str, Any]]:
    """Returns (location, decoded item) pairs from a JSON list or a JSONL file."""
    text = read_text(path, "Self-Instruct file")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json_text.loads(text)
        except json.JSONDecodeError as err:
            raise TaskFormatError(f"invalid JSON at line {err.lineno} column {err.colno}: "
                                  f"{err.msg}", path) from None
        return [(f"[{i}]", item) for i, item in enumerate(data)]
    items = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {line_number}", json_text.loads(line)))
        except json.JSONDecodeError as err:
            raise TaskFormatError(f"invalid JSON at column {err.colno}: {err.msg}", path,
                                  f"line {line_number}") from None
    return items


def _file_stem(path: str) -> str:
    stem = os.path.basename(path)
    for suffix in (".jsonl", ".json"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    return re.sub(r"[^0-9A-Za-z]+", "_", stem).strip("_") or "self_instruct"


@dataclasses.dataclass(frozen=True)
class SkippedItem:
    """A malformed item left out with on_bad_task="skip".

    Attributes:
      index: its position in the file (0-based, among the items read).
      name: its task name (its "id", else the generated `<prefix>_<index>`).
      reason: the error, naming the file and the field.
    """
    index: int
    name: str
    reason: str


def load_self_instruct(path: str | os.PathLike, name_prefix: str | None = None,
                       max_items: int | None = None,
                       label_rule: labels_lib.LabelRule = labels_lib.DEFAULT_RULE) -> list[Task]:
    """Reads a Self-Instruct / Alpaca JSON or JSONL file into tasks.

    Args:
      path: the file.
      name_prefix: prefix of generated task names (default: the file stem, e.g.
        "alpaca_plus_validation_seen").
      max_items: read only the first N items (None: all).
      label_rule: thresholds of the classification rule.

    Returns:
      Tasks in file order, `source="self_instruct"`, no demonstrations.

    Raises:
      TaskFormatError: unreadable file, broken JSON, a non-object item, a missing or non-string
        instruction/input/output (or one that is not valid Unicode: a lone surrogate), an
        empty `instances` list, or a duplicate task name; the message names the file, the
        item (e.g. "[12].output") and its task.
    """
    return [entry for entry in scan_self_instruct(path, name_prefix, max_items, label_rule)
            if isinstance(entry, Task)]


def scan_self_instruct(path: str | os.PathLike, name_prefix: str | None = None,
                       max_items: int | None = None,
                       label_rule: labels_lib.LabelRule = labels_lib.DEFAULT_RULE,
                       on_bad_task: str = "error") -> list[Task | SkippedItem]:
    """`load_self_instruct`, where a malformed item may be skipped instead.

    Args:
      path, name_prefix, max_items, label_rule: as `load_self_instruct`.
      on_bad_task: "error" raises on the first malformed item; "skip" puts a `SkippedItem`
        (with the error) in its place and goes on. A file that cannot be read or parsed as a
        whole is an error either way.

    Returns:
      One entry per item, in file order: its `Task`, or a `SkippedItem`.

    Raises:
      TaskFormatError: as `load_self_instruct` (with on_bad_task="skip": only for the file).
    """
    if on_bad_task not in ("error", "skip"):
        raise ValueError(f"on_bad_task must be 'error' or 'skip', got {on_bad_task!r}")
    path = os.fspath(path)
    prefix = name_prefix if name_prefix is not None else _file_stem(path)
    items = _read_items(path)
    if not items:
        raise TaskFormatError("no items: expected a list of {instruction, input, output}", path)
    if max_items is not None:
        items = items[:max_items]
    entries: list[Task | SkippedItem] = []
    names: set[str] = set()
    for index, (where, item) in enumerate(items):
        default = f"{prefix}_{index:05d}"
        try:
            task = _item_task(item, where, default, path, names, label_rule)
        except TaskFormatError as err:
            name = item.get("id") if isinstance(item, dict) else None
            if not (isinstance(name, str) and _valid_text(name)):
                name = default
            if on_bad_task == "error":
                raise TaskFormatError(f"task {name!r}: {err.message}", err.path,
                                      err.field) from None
            logging.getLogger(__name__).warning("skipping bad item %s: %s", name, err)
            entries.append(SkippedItem(index, name, str(err)))
            continue
        names.add(task.name)
        entries.append(task)
    return entries


def _valid_text(text: str) -> bool:
    """Non-empty and valid Unicode (usable as a name in messages and files)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(text)


def _item_task(item: Any, where: str, default_name: str, path: str, names: set[str],
               label_rule: labels_lib.LabelRule) -> Task:
    """The task of one item (`names`: the names taken so far)."""
    if not isinstance(item, dict):
        raise _item_error(f"expected an object, got {type(item).__name__}", path, where)
    name = item.get("id", default_name)
    if not isinstance(name, str) or not name:
        raise _item_error("expected a non-empty string", path, f"{where}.id")
    check_unicode(name, path, f"{where}.id")
    if name in names:
        raise _item_error(f"duplicate task id {name!r}", path, f"{where}.id")
    instruction = _str_field(item, "instruction", path, where)
    if "instances" in item:
        raw_instances = item["instances"]
        if not isinstance(raw_instances, list):
            raise _item_error(f"expected a list, got {type(raw_instances).__name__}", path,
                              f"{where}.instances")
        if not raw_instances:
            raise _item_error("empty list: a task needs at least one instance", path,
                              f"{where}.instances")
    else:
        raw_instances = [item]
    instances = []
    for k, raw in enumerate(raw_instances):
        inner = where if raw is item else f"{where}.instances[{k}]"
        if not isinstance(raw, dict):
            raise _item_error(f"expected an object, got {type(raw).__name__}", path, inner)
        instances.append(Instance(id=f"{name}-{k}",
                                  input=_str_field(raw, "input", path, inner, default=""),
                                  outputs=(_str_field(raw, "output", path, inner),)))
    task = Task(name=name, definition=instruction, positive_examples=(),
                negative_examples=(), instances=tuple(instances),
                categories=(), source="self_instruct", path=path)
    if isinstance(item.get("is_classification"), bool):
        label = labels_lib.CLS if item["is_classification"] else labels_lib.GEN
        label_source = "metadata"
    else:
        label, label_source = labels_lib.infer_task_label(task, label_rule), "rule"
    return dataclasses.replace(task, label=label, label_source=label_source)


def whitespace_length(text: str) -> int:
    """Number of whitespace-separated words: the default output length."""
    return len(text.split())


def output_length_chunks(tasks: Sequence[Task], num_chunks: int = NUM_LENGTH_CHUNKS,
                         length_fn: Callable[[str], int] = whitespace_length
                         ) -> list[tuple[str, ...]]:
    """Splits tasks into `num_chunks` groups of consecutive output length (shortest first).

    Tasks are sorted by (length of their first instance's first output, name) and cut into
    `num_chunks` contiguous groups whose sizes differ by at most one (numpy.array_split), so
    drawing the same number of tasks from every chunk gives a length-balanced selection.

    Args:
      tasks: the pool.
      num_chunks: number of chunks (13 by default).
      length_fn: text -> length; whitespace words by default, or a tokenizer's
        `lambda s: len(vocab.encode(s))` for token counts.

    Returns:
      `num_chunks` tuples of task names (some empty when there are fewer tasks than chunks).
    """
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
    ordered = sorted(tasks, key=lambda t: (length_fn(t.instances[0].outputs[0]), t.name))
    names = [task.name for task in ordered]
    return [tuple(chunk.tolist()) for chunk in np.array_split(np.array(names, dtype=object),
                                                               num_chunks)]
