"""Classification ("cls") vs generation ("gen") label of a task.

No field of an NIV2 task file says whether a task is classification. Active-IT keeps the flag in
a metadata file (`task_metadata.json`, field `DefHasLabel`: a task is classification when it is
`"ExactMentioned"`, i.e. its label space is written in the definition). That file is not
public-size friendly, so we derive the same property from the data with an explicit rule, and
let a metadata file override it.

The rule (`infer_label`), with `normalize_label_text` = lowercase, every character that is not
a letter or digit turned into a space, whitespace collapsed:

  a task is "cls" iff
    1. its instances have at least one output and at most `max_labels` (default 10) distinct
       normalised outputs,
    2. every distinct normalised output is non-empty and at most `max_label_words` (default 5)
       words long, and
    3. every distinct normalised output occurs in the normalised definition as a whole-word
       phrase (so "no" matches "answer yes or no" but not "nothing", and "a" / "b" match the
       options of "Indicate your choice by 'a' or 'b'").
  otherwise it is "gen".

Examples on real NIV2 tasks: task363 (outputs POS/NEG, definition "classify ... as "POS" ...
or as "NEG"") is cls; task113 (letter counts 1..8, definition never lists the numbers) is gen;
the MMMLU tasks (outputs A-D, definition "The following are multiple choice questions ...")
are gen, because their definition does not write the label space.

The override file (`load_label_overrides`) may be:
  - JSON object {task: "cls" | "gen"} (case-insensitive; "classification"/"generation" too),
  - Active-IT's `task_metadata.json` shape {"taskNNN.json": {"DefHasLabel": ..., ...}} or
    {task: {"CLS_GEN": "CLS" | "GEN"}},
  - CSV with two columns task,label (an optional header row `task,label`).
`activeit-jax prepare --label_overrides=FILE` and `experiment.label_overrides` (the `run`
command's gin setting) take it; both report how many labels came from the rule and from the
file (`Task.label_source`).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from activeit_jax.core import json_text
from activeit_jax.data.errors import LabelOverrideError

if TYPE_CHECKING:  # only for annotations: niv2 imports this module at runtime.
    from activeit_jax.data.niv2 import Task

CLS = "cls"
GEN = "gen"
LABELS = (CLS, GEN)

# The classification share Active-IT keeps in every selection: `--fix_cls_gen_ratio 0.356` in
# the reference code's run script (PlusLabNLP/Active-IT, ActiveIT/reproduce.sh and its README's
# command), from which TLAL_pipeline.py takes int(68 * 0.356) = 24 classification tasks per
# iteration. The paper's text does not state it. `prepare` prints it beside the share our rule
# (or the override file) gives the train split, for comparison.
REFERENCE_CLS_RATIO = 0.356

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """Parameters of the "label space written in the definition" rule (see module docstring).

    Attributes:
      max_labels: most distinct normalised outputs a classification task may have.
      max_label_words: most words in one normalised label.
    """
    max_labels: int = 10
    max_label_words: int = 5


DEFAULT_RULE = LabelRule()


def normalize_label_text(text: str) -> str:
    """Lowercases, turns every non-alphanumeric character into a space, collapses whitespace.

    Args:
      text: an output or a definition.

    Returns:
      The normalised text, e.g. "Sci/Tech." -> "sci tech".
    """
    return " ".join(_NON_ALNUM.sub(" ", text.lower()).split())


def infer_label(definition: str, outputs: Iterable[str], rule: LabelRule = DEFAULT_RULE) -> str:
    """Applies the rule of the module docstring.

    Args:
      definition: the task definition.
      outputs: every reference output of every instance (duplicates are fine).
      rule: thresholds.

    Returns:
      "cls" or "gen".
    """
    labels = {normalize_label_text(output) for output in outputs}
    if not labels or len(labels) > rule.max_labels:
        return GEN
    # Pad with spaces so that a whole-word phrase test is a plain substring test.
    padded_definition = f" {normalize_label_text(definition)} "
    for label in labels:
        if not label or len(label.split()) > rule.max_label_words:
            return GEN
        if f" {label} " not in padded_definition:
            return GEN
    return CLS


def infer_task_label(task: "Task", rule: LabelRule = DEFAULT_RULE) -> str:
    """`infer_label` on a task's definition and all its instance outputs."""
    return infer_label(task.definition,
                       (output for instance in task.instances for output in instance.outputs),
                       rule)


def _parse_label_value(value: object, path: str, task: str) -> str:
    """Turns one override entry into "cls"/"gen"; raises LabelOverrideError otherwise."""
    if isinstance(value, Mapping):
        if "DefHasLabel" in value:  # Active-IT task_metadata.json
            return CLS if value["DefHasLabel"] == "ExactMentioned" else GEN
        if "CLS_GEN" in value:
            value = value["CLS_GEN"]
        elif "label" in value:
            value = value["label"]
        else:
            raise LabelOverrideError(
                "expected a label string or an object with DefHasLabel / CLS_GEN / label",
                path, task)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in (CLS, "classification"):
            return CLS
        if key in (GEN, "generation"):
            return GEN
    raise LabelOverrideError(f"label must be 'cls' or 'gen', got {value!r}", path, task)


def _task_key(name: str) -> str:
    """Override keys may carry the file suffix (Active-IT writes "task001_x.json")."""
    name = name.strip()
    return name[:-len(".json")] if name.endswith(".json") else name


def load_label_overrides(path: str | os.PathLike) -> dict[str, str]:
    """Reads a task -> "cls"/"gen" override file (formats in the module docstring).

    Args:
      path: a .json or .csv file.

    Returns:
      {task name (no .json suffix): "cls" | "gen"}.

    Raises:
      LabelOverrideError: the file is missing, unreadable, or holds an invalid entry; the
        message names the file and the task (field).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise LabelOverrideError(f"cannot read label override file ({err.strerror})",
                                 path) from None
    except UnicodeDecodeError as err:
        raise LabelOverrideError(f"not UTF-8 text ({err.reason} at byte {err.start})",
                                 path) from None
    overrides: dict[str, str] = {}
    if path.lower().endswith(".csv"):
        for row_number, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if row_number == 1 and [c.strip().lower() for c in row[:2]] == ["task", "label"]:
                continue
            if len(row) < 2:
                raise LabelOverrideError("expected two columns: task,label", path,
                                         f"line {row_number}")
            overrides[_task_key(row[0])] = _parse_label_value(row[1], path, row[0].strip())
        return overrides
    try:
        data = json_text.loads(text)
    except json.JSONDecodeError as err:
        raise LabelOverrideError(f"invalid JSON at line {err.lineno} column {err.colno}: "
                                 f"{err.msg}", path) from None
    if not isinstance(data, dict):
        raise LabelOverrideError(f"expected a JSON object task -> label, got "
                                 f"{type(data).__name__}", path)
    for name, value in data.items():
        overrides[_task_key(name)] = _parse_label_value(value, path, name)
    return overrides


def apply_label_overrides(tasks: Sequence["Task"],
                          overrides: Mapping[str, str] | None) -> list["Task"]:
    """Replaces the label of every task named in `overrides` (other tasks unchanged).

    Args:
      tasks: tasks whose label came from the rule.
      overrides: {task name: "cls" | "gen"}; names of absent tasks are ignored (a metadata file
        usually covers all 1600+ NIV2 tasks).

    Returns:
      New list; overridden tasks carry `label_source="override"`.
    """
    if not overrides:
        return list(tasks)
    return [dataclasses.replace(task, label=overrides[task.name], label_source="override")
            if task.name in overrides else task for task in tasks]


def classification_ratio(tasks: Sequence["Task"]) -> float:
    """Fraction of tasks labelled "cls" (0.0 for an empty list)."""
    if not tasks:
        return 0.0
    return sum(task.label == CLS for task in tasks) / len(tasks)
