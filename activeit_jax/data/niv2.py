"""Super-NaturalInstructions (NIV2) reader: task files and the official English splits.

Layout (the `allenai/natural-instructions` repository, or any partial checkout of it):

    <niv2_dir>/tasks/<task name>.json
    <niv2_dir>/splits/default/{train,test,excluded}_tasks.txt   (the English track)

A split file names tasks one per line. A partial checkout lacks most task files; names without
a file are counted as `missing` and skipped, which is normal. A task that is *required* (named
with an explicit task list) and missing is an error (`MissingTaskError`).

Task files are validated field by field; a malformed one raises `TaskFormatError` naming the
file and the field, or is skipped and reported with `on_bad_task="skip"`.

The dataclasses here (`Example`, `Instance`, `Task`) are the data layer's currency: the
Self-Instruct reader builds the same `Task`, the prompt encoder, the splitter and the SeqIO
registration take them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

from activeit_jax.core import json_text
from activeit_jax.data import labels as labels_lib
from activeit_jax.data.errors import (
    DataError,
    MissingTaskError,
    TaskFormatError,
    TaskNameError,
    check_unicode,
    read_text,
)
from activeit_jax.data.hashing import stable_shuffle

logger = logging.getLogger(__name__)

OnBadTask = str  # "error" | "skip"
ON_BAD_TASK_CHOICES = ("error", "skip")
SPLIT_NAMES = ("train", "test", "excluded")
DEFAULT_SPLIT_DIR = "default"  # the English track of NIV2

# Tk-Instruct evaluates on the first 100 instances of a test task (they are label-balanced and
# placed first for that purpose) and samples up to 100 instances of a train task at random.
DEFAULT_MAX_INSTANCES_PER_TASK = 100


@dataclasses.dataclass(frozen=True)
class Example:
    """A demonstration from "Positive Examples" / "Negative Examples"."""
    input: str
    output: str
    explanation: str = ""


@dataclasses.dataclass(frozen=True)
class Instance:
    """One instance: its id, input and the acceptable reference outputs (>= 1)."""
    id: str
    input: str
    outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: definition, demonstrations, instances and metadata.

    Attributes:
      name: the task name (NIV2: the file name without ".json").
      definition: the instruction (NIV2: `Definition[0]`; Self-Instruct: the instruction).
      positive_examples / negative_examples: demonstrations (Self-Instruct: none).
      instances: the instances, in file order unless resampled (`select_instances`).
      categories: NIV2 `Categories` (e.g. "Sentiment Analysis").
      label: "cls" or "gen" (see `activeit_jax.data.labels`).
      source: "niv2" or "self_instruct" (where the task came from).
      label_source: how `label` was decided: "rule", "override" (a label file) or "metadata".
      metric_label: "cls" / "gen" by which the task's scores are grouped when a label file
        gives it apart from `label` (Active-IT's `CLS_GEN`); None = `label`
        (`labels.metric_label_of`).
      reasoning, domains: NIV2 `Reasoning`, `Domains`.
      source_datasets: NIV2 `Source` (the underlying datasets).
      input_language, output_language, instruction_language: NIV2 language fields.
      instance_license: NIV2 `Instance License`.
      path: the file it was read from ("" when built in memory).
    """
    name: str
    definition: str
    positive_examples: tuple[Example, ...]
    negative_examples: tuple[Example, ...]
    instances: tuple[Instance, ...]
    categories: tuple[str, ...] = ()
    label: str = labels_lib.GEN
    source: str = "niv2"
    label_source: str = "rule"
    reasoning: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    source_datasets: tuple[str, ...] = ()
    input_language: tuple[str, ...] = ()
    output_language: tuple[str, ...] = ()
    instruction_language: tuple[str, ...] = ()
    instance_license: tuple[str, ...] = ()
    path: str = ""
    metric_label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); `Task.from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Task":
        """Rebuilds a Task written by `to_dict` (e.g. a line of a prepared tasks.jsonl).

        Keys that are not Task fields (such as the "role" of a tasks.jsonl line) are ignored.

        Raises:
          KeyError / TypeError: `data` does not have the `to_dict` shape.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        fields["positive_examples"] = tuple(Example(**e) for e in data["positive_examples"])
        fields["negative_examples"] = tuple(Example(**e) for e in data["negative_examples"])
        fields["instances"] = tuple(Instance(i["id"], i["input"], tuple(i["outputs"]))
                                    for i in data["instances"])
        for name in ("categories", "reasoning", "domains", "source_datasets", "input_language",
                     "output_language", "instruction_language", "instance_license"):
            fields[name] = tuple(data.get(name, ()))
        return cls(**fields)


# --------------------------------------------------------------------------- validation


def _expect_str(value: Any, path: str, field: str) -> str:
    if not isinstance(value, str):
        raise TaskFormatError(f"expected a string, got {_type_name(value)}", path, field)
    return check_unicode(value, path, field)


def _expect_list(value: Any, path: str, field: str) -> list:
    if not isinstance(value, list):
        raise TaskFormatError(f"expected a list, got {_type_name(value)}", path, field)
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str_list(raw: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    """An optional list-of-strings metadata field (absent -> ())."""
    if key not in raw:
        return ()
    items = _expect_list(raw[key], path, key)
    return tuple(_expect_str(item, path, f"{key}[{i}]") for i, item in enumerate(items))


def _examples(raw: Mapping[str, Any], key: str, path: str) -> tuple[Example, ...]:
    if key not in raw:
        return ()
    examples = []
    for i, item in enumerate(_expect_list(raw[key], path, key)):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise TaskFormatError(f"expected an object, got {_type_name(item)}", path, where)
        for needed in ("input", "output"):
            if needed not in item:
                raise TaskFormatError("missing", path, f"{where}.{needed}")
        explanation = item.get("explanation", "")
        examples.append(Example(
            input=_expect_str(item["input"], path, f"{where}.input"),
            output=_expect_str(item["output"], path, f"{where}.output"),
            explanation=_expect_str(explanation, path, f"{where}.explanation")))
    return tuple(examples)


def _instances(raw: Mapping[str, Any], path: str) -> tuple[Instance, ...]:
    if "Instances" not in raw:
        raise TaskFormatError("missing", path, "Instances")
    items = _expect_list(raw["Instances"], path, "Instances")
    if not items:
        raise TaskFormatError("empty list: a task needs at least one instance", path,
                              "Instances")
    instances, seen = [], set()
    for i, item in enumerate(items):
        where = f"Instances[{i}]"
        if not isinstance(item, dict):
            raise TaskFormatError(f"expected an object, got {_type_name(item)}", path, where)
        for needed in ("id", "input", "output"):
            if needed not in item:
                raise TaskFormatError("missing", path, f"{where}.{needed}")
        instance_id = _expect_str(item["id"], path, f"{where}.id")
        if instance_id in seen:
            raise TaskFormatError(f"duplicate instance id {instance_id!r}", path, f"{where}.id")
        seen.add(instance_id)
        outputs = _expect_list(item["output"], path, f"{where}.output")
        if not outputs:
            raise TaskFormatError("empty output list: an instance needs at least one "
                                  "reference output", path, f"{where}.output")
        instances.append(Instance(
            id=instance_id,
            input=_expect_str(item["input"], path, f"{where}.input"),
            outputs=tuple(_expect_str(o, path, f"{where}.output[{j}]")
                          for j, o in enumerate(outputs))))
    return tuple(instances)


def _definition(raw: Mapping[str, Any], path: str) -> str:
    if "Definition" not in raw:
        raise TaskFormatError("missing", path, "Definition")
    items = _expect_list(raw["Definition"], path, "Definition")
    if not items:
        raise TaskFormatError("empty list: expected one definition string", path, "Definition")
    # NIV2 holds exactly one string; Tk-Instruct uses Definition[0], so do we.
    return _expect_str(items[0], path, "Definition[0]")


def parse_niv2_task(raw: Any, name: str, path: str = "",
                    label_rule: labels_lib.LabelRule = labels_lib.DEFAULT_RULE) -> Task:
    """Validates a decoded NIV2 task object and builds a `Task` (label from the rule).

    Args:
      raw: the decoded JSON value of one task file.
      name: the task name.
      path: the file, for error messages.
      label_rule: thresholds of the classification rule.

    Returns:
      The Task, `label_source="rule"`.

    Raises:
      TaskFormatError: a required field is missing or a field has the wrong type; the message
        names `path` and the field (e.g. "Instances[3].output").
    """
    if not isinstance(raw, dict):
        raise TaskFormatError(f"expected a JSON object, got {_type_name(raw)}", path)
    # `URL` is not read: real files hold `[NaN]` there (Python's json accepts it).
    task = Task(
        name=name,
        definition=_definition(raw, path),
        positive_examples=_examples(raw, "Positive Examples", path),
        negative_examples=_examples(raw, "Negative Examples", path),
        instances=_instances(raw, path),
        categories=_str_list(raw, "Categories", path),
        source="niv2",
        reasoning=_str_list(raw, "Reasoning", path),
        domains=_str_list(raw, "Domains", path),
        source_datasets=_str_list(raw, "Source", path),
        input_language=_str_list(raw, "Input_language", path),
        output_language=_str_list(raw, "Output_language", path),
        instruction_language=_str_list(raw, "Instruction_language", path),
        instance_license=_str_list(raw, "Instance License", path),
        path=path,
    )
    return dataclasses.replace(task, label=labels_lib.infer_task_label(task, label_rule))


def load_niv2_task(path: str | os.PathLike,
                   label_rule: labels_lib.LabelRule = labels_lib.DEFAULT_RULE) -> Task:
    """Reads and validates one NIV2 task file.

    Args:
      path: `<niv2_dir>/tasks/<name>.json`; the task name is the file name without ".json".
      label_rule: thresholds of the classification rule.

    Returns:
      The Task with its rule label.

    Raises:
      TaskFormatError: unreadable file, broken JSON, or a malformed field (file + field named).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    name = name[:-len(".json")] if name.endswith(".json") else name
    text = read_text(path, "task file")
    try:
        raw = json_text.loads(text)  # accepts the bare NaN of real files
    except json.JSONDecodeError as err:
        raise TaskFormatError(f"invalid JSON at line {err.lineno} column {err.colno}: "
                              f"{err.msg}", path) from None
    return parse_niv2_task(raw, name, path, label_rule)


# --------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class SplitRead:
    """What reading one split found.

    Attributes:
      split: "train", "test" or "excluded".
      split_file: the split file read.
      names: every task named in the split file, in file order.
      tasks: the tasks read, in split-file order.
      missing: names without a task file (normal for a partial checkout).
      skipped: (name, error message) of malformed files skipped with on_bad_task="skip".
    """
    split: str
    split_file: str
    names: tuple[str, ...]
    tasks: tuple[Task, ...]
    missing: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def split_file_path(niv2_dir: str | os.PathLike, split: str,
                    split_dir: str = DEFAULT_SPLIT_DIR) -> str:
    """`<niv2_dir>/splits/<split_dir>/<split>_tasks.txt`."""
    return os.path.join(os.fspath(niv2_dir), "splits", split_dir, f"{split}_tasks.txt")


def check_task_name(name: str, source: str | os.PathLike | None = None,
                    where: str | None = None) -> str:
    """`name` when it is a plain task name: a task name becomes a file name under
    `<niv2_dir>/tasks/`, so one holding a path (`../../x`, `/abs/x`) would read outside it.

    Args:
      name: the task name as read.
      source: the file that named it (for the message), if any.
      where: its place in `source` (e.g. "line 3"), if known.

    Returns:
      `name`, unchanged.

    Raises:
      TaskNameError: `name` is empty, absolute, or holds a path separator, `..` or NUL.
    """
    bad = (not name or name != name.strip() or os.path.isabs(name) or ".." in name
           or any(ch in name for ch in ("/", "\\", "\0", os.sep)))
    if bad:
        raise TaskNameError(f"task name {name!r} refused: a task name is a plain file name "
                            "under <niv2_dir>/tasks (no '/', '\\', '..' or absolute path)",
                            source, where)
    return name


def task_file_path(niv2_dir: str | os.PathLike, name: str) -> str:
    """`<niv2_dir>/tasks/<name>.json`, for a plain task name only (`check_task_name`)."""
    check_task_name(name)
    return os.path.join(os.fspath(niv2_dir), "tasks", f"{name}.json")


def read_split_names(niv2_dir: str | os.PathLike, split: str,
                     split_dir: str = DEFAULT_SPLIT_DIR) -> list[str]:
    """The task names listed in a split file (blank lines and `#` comments ignored).

    Raises:
      MissingTaskError: the split file does not exist (names the expected path).
    """
    path = split_file_path(niv2_dir, split, split_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise MissingTaskError(f"split file not found (expected the NIV2 layout "
                               f"tasks/*.json + splits/{split_dir}/*_tasks.txt)", path) from None
    except OSError as err:
        raise MissingTaskError(f"cannot read split file ({err.strerror})", path) from None
    names = []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if name and not name.startswith("#"):
            name = name[:-len(".json")] if name.endswith(".json") else name
            names.append(check_task_name(name, path, f"line {number}"))
    return names


def _check_on_bad_task(on_bad_task: str) -> None:
    if on_bad_task not in ON_BAD_TASK_CHOICES:
        raise ValueError(f"on_bad_task must be one of {ON_BAD_TASK_CHOICES}, "
                         f"got {on_bad_task!r}")


def _load_many(niv2_dir: str, names: Sequence[str], on_bad_task: str, required: bool,
               label_rule: labels_lib.LabelRule, where: str
               ) -> tuple[list[Task], list[str], list[tuple[str, str]]]:
    tasks, missing, skipped = [], [], []
    for name in names:
        path = task_file_path(niv2_dir, name)
        if not os.path.exists(path):
            if required:
                raise MissingTaskError(f"task {name!r} is required ({where}) but has no file",
                                       path)
            missing.append(name)
            continue
        try:
            tasks.append(load_niv2_task(path, label_rule))
        except DataError as err:
            if on_bad_task == "error":
                raise
            logger.warning("skipping bad task %s: %s", name, err)
            skipped.append((name, str(err)))
    return tasks, missing, skipped


def scan_niv2_split(niv2_dir: str | os.PathLike, split: str, on_bad_task: OnBadTask = "error",
                    label_overrides: Mapping[str, str] | None = None,
                    split_dir: str = DEFAULT_SPLIT_DIR,
                    label_rule: labels_lib.LabelRule = labels_lib.DEFAULT_RULE,
                    require_any: bool = True) -> SplitRead:
    """Reads every task of a split that has a file; reports the missing and the skipped.

    Args:
      niv2_dir: the NIV2 root (holds `tasks/` and `splits/`).
      split: "train", "test" or "excluded".
      on_bad_task: "error" raises on the first malformed task file; "skip" leaves it out and
        lists it in `skipped`.
      label_overrides: {task: "cls"|"gen"} replacing the rule's label (see labels.py).
      split_dir: the split folder; "default" is the English track.
      label_rule: thresholds of the classification rule.
      require_any: raise when not one named task has a file (a wrong directory rather than a
        partial checkout); False returns an empty SplitRead instead.

    Returns:
      A SplitRead.

    Raises:
      MissingTaskError: the split file or the `tasks/` folder is absent, or (require_any) not
        one task named in the split has a file.
      TaskFormatError: a malformed task file, with on_bad_task="error".
    """
    _check_on_bad_task(on_bad_task)
    niv2_dir = os.fspath(niv2_dir)
    names = read_split_names(niv2_dir, split, split_dir)
    tasks_dir = os.path.join(niv2_dir, "tasks")
    if not os.path.isdir(tasks_dir):
        raise MissingTaskError("task folder not found", tasks_dir)
    tasks, missing, skipped = _load_many(niv2_dir, names, on_bad_task, required=False,
                                         label_rule=label_rule, where=f"{split} split")
    if require_any and names and len(missing) == len(names):
        raise MissingTaskError(f"none of the {len(names)} tasks named in the {split} split has "
                               f"a file in this folder", tasks_dir)
    tasks = labels_lib.apply_label_overrides(tasks, label_overrides)
    if missing:
        logger.debug("%s split: %d of %d named tasks have no file (partial checkout)", split,
                 len(missing), len(names))
    return SplitRead(split=split, split_file=split_file_path(niv2_dir, split, split_dir),
                     names=tuple(names), tasks=tuple(tasks), missing=tuple(missing),
                     skipped=tuple(skipped))


def read_niv2_split(niv2_dir: str | os.PathLike, split: str, on_bad_task: OnBadTask = "error",
                    label_overrides: Mapping[str, str] | None = None,
                    split_dir: str = DEFAULT_SPLIT_DIR) -> list[Task]:
    """The tasks of a split that have a file (see `scan_niv2_split` for the counts).

    Args:
      niv2_dir: the NIV2 root.
      split: "train", "test" or "excluded".
      on_bad_task: "error" or "skip".
      label_overrides: optional {task: "cls"|"gen"}.
      split_dir: "default" (English track).

    Returns:
      Tasks in split-file order.
    """
    return list(scan_niv2_split(niv2_dir, split, on_bad_task, label_overrides,
                                split_dir).tasks)


def load_niv2_tasks(niv2_dir: str | os.PathLike, names: Sequence[str],
                    on_bad_task: OnBadTask = "error",
                    label_overrides: Mapping[str, str] | None = None,
                    label_rule: labels_lib.LabelRule = labels_lib.DEFAULT_RULE
                    ) -> tuple[list[Task], list[tuple[str, str]]]:
    """Reads an explicit list of tasks, every one of which must have a file.

    Args:
      niv2_dir: the NIV2 root.
      names: required task names.
      on_bad_task: "error" or "skip" (malformed files only; a missing file is always an error).
      label_overrides: optional {task: "cls"|"gen"}.
      label_rule: thresholds of the classification rule.

    Returns:
      (tasks in `names` order, skipped (name, message) pairs).

    Raises:
      MissingTaskError: a named task has no file.
      TaskFormatError: a malformed task file, with on_bad_task="error".
    """
    _check_on_bad_task(on_bad_task)
    tasks, _, skipped = _load_many(os.fspath(niv2_dir), list(names), on_bad_task, required=True,
                                   label_rule=label_rule, where="explicit task list")
    return labels_lib.apply_label_overrides(tasks, label_overrides), skipped


# --------------------------------------------------------------------------- instances


def select_instances(task: Task, max_instances: int | None, seed: int,
                     shuffle: bool) -> Task:
    """Caps a task's instances the way Tk-Instruct does, but reproducibly.

    Tk-Instruct keeps the first N instances of a test task (the official, label-balanced
    evaluation instances) and a random N of a train task. The random draw here is a seeded
    ordering of instance ids (`stable_shuffle`, salted with the task name), so it does not
    depend on the order tasks are read in or on the machine.

    Args:
      task: the task.
      max_instances: keep at most this many (None or < 0: keep all).
      seed: the experiment seed.
      shuffle: False keeps the first N in file order (test tasks); True keeps a seeded random N.

    Returns:
      The task with its instances replaced.
    """
    instances = task.instances
    if shuffle:
        by_id = {instance.id: instance for instance in instances}
        instances = tuple(by_id[i] for i in stable_shuffle(by_id, seed, f"instances:{task.name}"))
    if max_instances is not None and max_instances >= 0:
        instances = instances[:max_instances]
    return dataclasses.replace(task, instances=instances)


def instance_count_stats(tasks: Sequence[Task]) -> tuple[int, float, int]:
    """(min, mean, max) number of instances per task; (0, nan, 0) for no tasks."""
    counts = [len(task.instances) for task in tasks]
    if not counts:
        return 0, math.nan, 0
    return min(counts), sum(counts) / len(counts), max(counts)
