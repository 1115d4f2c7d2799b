"""Classification ("cls") vs generation ("gen") label of a task.

No field of an NIV2 task file says whether a task is classification. Active-IT keeps the flag in
a metadata file (`task_metadata.json`, field `DefHasLabel`: a task is classification when it is
`"ExactMentioned"`, i.e. its label space is written in the definition). That file is not
public-size friendly, so we derive the same property from the data with an explicit rule, and
let a label file replace it.

Label source (one concept, one name: `experiment.label_source`, `prepare --label_source`): our
rule ("rule"), or a label file (`load_label_source`); a file labels the tasks it names and the
rule labels the others (every run prints how many came from each). `label_overrides` is the
old name of the same setting and still accepted. Active-IT's metadata gives a task two labels:
`DefHasLabel == "ExactMentioned"` decides its selection pool (classification / generative
quota, `TLAL_utils.py`), and `CLS_GEN` ("CLS" / "GEN") groups the reported scores and the
best-epoch metric (`write_cls_split_into_tasks.py` copies it into the task files,
`run_s2s.py` groups by it). We keep both: `Task.label` is the selection label, and
`Task.metric_label` the `CLS_GEN` one where the file has it (`metric_label_of`).

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

The label file (`load_label_source`) may be:
  - JSON object {task: "cls" | "gen"} (case-insensitive; "classification"/"generation" too),
  - Active-IT's `task_metadata.json` shape {"taskNNN.json": {"DefHasLabel": ..., "CLS_GEN":
    ..., ...}}: the selection label from `DefHasLabel` (or, without it, from `CLS_GEN`), the
    metric label from `CLS_GEN` where present,
  - CSV with two columns task,label (an optional header row `task,label`).
A task whose label came from the file has `Task.label_source == "override"` (the stored name
of "label file"); the rule's have "rule".
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
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
# (or the label file) gives the train split, for comparison.
REFERENCE_CLS_RATIO = 0.356

# How a run names each `Task.label_source` value to the user (the prints and the report).
LABEL_SOURCE_WORDS = {"rule": "rule", "override": "label file",
                      "metadata": "Self-Instruct metadata"}

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


def _parse_label_text(value: object, path: str, task: str) -> str:
    if isinstance(value, str):
        key = value.strip().lower()
        if key in (CLS, "classification"):
            return CLS
        if key in (GEN, "generation"):
            return GEN
    raise LabelOverrideError(f"label must be 'cls' or 'gen', got {value!r}", path, task)


def _parse_label_value(value: object, path: str, task: str) -> tuple[str, str | None]:
    """One label-file entry -> (selection label, metric label or None); raises
    LabelOverrideError otherwise."""
    if isinstance(value, Mapping):
        metric = (_parse_label_text(value["CLS_GEN"], path, f"{task}: CLS_GEN")
                  if value.get("CLS_GEN") is not None else None)
        if "DefHasLabel" in value:  # Active-IT task_metadata.json (TLAL_utils.py is_cls)
            return (CLS if value["DefHasLabel"] == "ExactMentioned" else GEN), metric
        if metric is not None:
            return metric, metric
        if "label" in value:
            return _parse_label_text(value["label"], path, task), None
        raise LabelOverrideError(
            "expected a label string or an object with DefHasLabel / CLS_GEN / label",
            path, task)
    return _parse_label_text(value, path, task), None


def _task_key(name: str) -> str:
    """Label-file keys may carry the file suffix (Active-IT writes "task001_x.json")."""
    name = name.strip()
    return name[:-len(".json")] if name.endswith(".json") else name


@dataclasses.dataclass(frozen=True)
class LabelSource(Mapping[str, str]):
    """A label file read back; as a Mapping, {task: selection label} (what
    `apply_label_overrides` and the data readers take).

    Attributes:
      path: the file.
      labels: {task name (no .json suffix): "cls" | "gen"}: the selection label.
      metric_labels: {task: "cls" | "gen"} from `CLS_GEN`, for the tasks whose entry has one.
      sha256: the file's SHA-256 (recorded with the prepared split and in the report).
    """
    path: str
    labels: Mapping[str, str]
    metric_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sha256: str = ""

    def __getitem__(self, task: str) -> str:
        return self.labels[task]

    def __iter__(self):
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> dict[str, object]:
        """JSON-ready: {"path", "sha256", "tasks", "metric_labels", "disagree"}: the counts of
        tasks labelled, of metric labels (CLS_GEN) and of tasks whose metric label differs
        from their selection label (docs/paper_settings.md says where they can)."""
        disagree = sum(label != self.labels.get(task)
                       for task, label in self.metric_labels.items())
        return {"path": self.path, "sha256": self.sha256, "tasks": len(self.labels),
                "metric_labels": len(self.metric_labels), "disagree": disagree}


def metric_label_of(task: "Task") -> str:
    """The label a task's scores are grouped by: its `metric_label` (a label file's
    `CLS_GEN`) when it has one, else its `label`."""
    return getattr(task, "metric_label", None) or task.label


def load_label_source(path: str | os.PathLike) -> LabelSource:
    """Reads a label file (formats in the module docstring).

    Args:
      path: a .json or .csv file.

    Returns:
      The `LabelSource` (selection labels, `CLS_GEN` metric labels, the file's hash).

    Raises:
      LabelOverrideError: the file is missing, unreadable, or holds an invalid entry; the
        message names the file and the task (field).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        text = raw.decode("utf-8")
    except OSError as err:
        raise LabelOverrideError(f"cannot read the label file ({err.strerror})", path) from None
    except UnicodeDecodeError as err:
        raise LabelOverrideError(f"the label file is not UTF-8 text ({err.reason})",
                                 path) from None
    labels: dict[str, str] = {}
    metric: dict[str, str] = {}
    digest = hashlib.sha256(raw).hexdigest()
    if path.lower().endswith(".csv"):
        for row_number, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if row_number == 1 and [c.strip().lower() for c in row[:2]] == ["task", "label"]:
                continue
            if len(row) < 2:
                raise LabelOverrideError("expected two columns: task,label", path,
                                         f"line {row_number}")
            labels[_task_key(row[0])] = _parse_label_text(row[1], path, row[0].strip())
        return LabelSource(path, labels, {}, digest)
    try:
        data = json_text.loads(text)
    except json.JSONDecodeError as err:
        raise LabelOverrideError(f"invalid JSON at line {err.lineno} column {err.colno}: "
                                 f"{err.msg}", path) from None
    if not isinstance(data, dict):
        raise LabelOverrideError(f"expected a JSON object task -> label, got "
                                 f"{type(data).__name__}", path)
    for name, value in data.items():
        label, metric_label = _parse_label_value(value, path, name)
        labels[_task_key(name)] = label
        if metric_label is not None:
            metric[_task_key(name)] = metric_label
    return LabelSource(path, labels, metric, digest)


def load_label_overrides(path: str | os.PathLike) -> dict[str, str]:
    """{task: selection label} of a label file (`load_label_source`; the old name)."""
    return dict(load_label_source(path).labels)


def apply_label_overrides(tasks: Sequence["Task"],
                          overrides: Mapping[str, str] | None) -> list["Task"]:
    """Replaces the label of every task named in `overrides` (other tasks unchanged).

    Args:
      tasks: tasks whose label came from the rule.
      overrides: {task name: "cls" | "gen"}, or a `LabelSource`, which also sets each named
        task's `metric_label` where the file gives one (`CLS_GEN`); names of absent tasks are
        ignored (a metadata file usually covers all 1600+ NIV2 tasks).

    Returns:
      New list; relabelled tasks carry `label_source="override"`.
    """
    if not overrides:
        return list(tasks)
    metric = overrides.metric_labels if isinstance(overrides, LabelSource) else {}
    return [dataclasses.replace(task, label=overrides[task.name], label_source="override",
                                metric_label=metric.get(task.name))
            if task.name in overrides else task for task in tasks]


def classification_ratio(tasks: Sequence["Task"]) -> float:
    """Fraction of tasks labelled "cls" (0.0 for an empty list)."""
    if not tasks:
        return 0.0
    return sum(task.label == CLS for task in tasks) / len(tasks)
