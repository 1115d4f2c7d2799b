"""An iteration's evaluation files: the per-task metrics and their per-split means.

The loop's evaluate stage writes them (`write_iteration_metrics`); the report reads them back
(`reporting.results`). File names: `activeit_jax.layout`.

- per-task metrics (`layout.PER_TASK_FILE`): one line per (split, task):
  `{"split": "val"|"test", "task": str, "label": "cls"|"gen", "rouge_l": float,
  "exact_match": float (optional), "n_instances": int (optional)}` with metrics in percent
  (0..100). A repeated (split, task) keeps its last line.
- per-split means (`layout.metrics_file(it, split)`) are *defined* as `derive_split_metrics`
  of that split's per-task lines: for "overall", "cls" and "gen", the unweighted mean over
  tasks of the per-task metric, and the number of tasks.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from activeit_jax import layout
from activeit_jax.core import io_utils, json_text
from activeit_jax.data.errors import RecordError

log = logging.getLogger(__name__)

SPLITS = ("val", "test")  # the loop's evaluation splits: validation tasks, test tasks
CATEGORIES = ("overall", "cls", "gen")
METRIC_KEYS = ("rouge_l", "exact_match")


def read_per_task(iter_dir: str | os.PathLike, split: str,
                  warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """The per-task lines of one split (last line wins for a repeated task), by task name.

    The file is written whole (atomically), so a last line without its newline is damage or
    a hand edit: kept when it parses, else left out with a warning naming the file and the
    line (appended to `warnings`, or logged) -- its task would otherwise vanish from the
    means without a word. A damaged line elsewhere is an error naming it.
    """
    by_task: dict[str, dict[str, Any]] = {}
    for record in _per_task_records(os.path.join(iter_dir, layout.PER_TASK_FILE), warnings):
        if record.get("split") == split:
            by_task[str(record["task"])] = record
    return [by_task[name] for name in sorted(by_task)]


def _per_task_records(path: str, warnings: list[str] | None) -> list[dict[str, Any]]:
    records = io_utils.read_jsonl(path)  # without a last line that lacks its newline
    tail = _unterminated_last_line(path)
    if tail is not None:
        number, text = tail
        try:
            records.append(json_text.loads(text))
        except ValueError:
            message = (f"{path}: line {number} is torn (cut off, no newline at its end); it is "
                       f"left out, so its task is missing from this iteration's means")
            if warnings is None:
                log.warning("%s", message)
            elif message not in warnings:  # read once per split
                warnings.append(message)
    bad = next((r for r in records if not isinstance(r, dict)), None)
    if bad is not None:
        raise RecordError(f"expected one JSON object per line, got {bad!r:.40}", path)
    return records


def _unterminated_last_line(path: str) -> tuple[int, str] | None:
    """(its line number, its text) of a last line without a newline, or None."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        data = handle.read()
    if not data or data.endswith(b"\n"):
        return None
    tail = data[data.rfind(b"\n") + 1:]
    if not tail.strip():
        return None
    return data.count(b"\n") + 1, tail.decode("utf-8", "replace")


def derive_split_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-split means file's content of one split's per-task records.

    Args:
      records: per-task lines of one split ("task", "label", "rouge_l", optional
        "exact_match").

    Returns:
      {"n_tasks": N, "overall"|"cls"|"gen": {"rouge_l": mean or None, "exact_match": mean or
      None, "n_tasks": n}}: unweighted means over tasks; None where a category has no task
      (or, for exact_match, where a task lacks it).
    """
    out: dict[str, Any] = {"n_tasks": len(records)}
    for category in CATEGORIES:
        members = [r for r in records if category == "overall" or r.get("label") == category]
        entry: dict[str, Any] = {"n_tasks": len(members)}
        for key in METRIC_KEYS:
            values = [r.get(key) for r in members]
            entry[key] = (float(np.mean([float(v) for v in values]))
                          if members and all(v is not None for v in values) else None)
        out[category] = entry
    return out


def write_derived_metrics(iter_dir: str | os.PathLike) -> list[str]:
    """Writes the per-split means file of each split found in the per-task file.

    Returns:
      The paths written.
    """
    iter_dir = os.fspath(iter_dir)
    written = []
    records = io_utils.read_jsonl(os.path.join(iter_dir, layout.PER_TASK_FILE))
    for split in sorted({str(r["split"]) for r in records}):
        metrics = {"split": split, **derive_split_metrics(read_per_task(iter_dir, split))}
        path = layout.metrics_file(iter_dir, split)
        io_utils.atomic_write_json(path, metrics)
        written.append(path)
    return written


def write_iteration_metrics(iter_dir: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Writes an iteration's per-task file (`records`, each with its "split"), then the
    per-split means derived from it."""
    io_utils.atomic_write_text(os.path.join(iter_dir, layout.PER_TASK_FILE), "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_derived_metrics(iter_dir)
