"""Where a scoring pool comes from: a task list with an NIV2 folder, a prepared tasks.jsonl
(`activeit-jax prepare`), or a Self-Instruct file, read lazily so that a large pool is never
held whole, each malformed task named (or skipped and listed with on_bad_task="skip")."""
from __future__ import annotations

import os
from typing import Any, Iterator

from activeit_jax.core import records
from activeit_jax.core.errors import UsageError
from activeit_jax.data import errors, niv2, self_instruct as si
from activeit_jax.data.errors import MissingTaskError, RecordError, TaskFormatError, check_unicode
from activeit_jax.scoring.planning import SkippedTask, TaskStub


def iter_pool(niv2_dir: str | None, tasks_file: str | None, self_instruct: str | None,
              on_bad_task: str = "error", role: str = "pool", shard: Any = None
              ) -> tuple[Iterator[Any], int, dict[str, Any]]:
    """The pool as a lazy iterator, its size, and what identifies it (for the fingerprint).

    With `shard` (a `scoring.ShardInfo`), NIV2 and prepared entries of other shards are not
    loaded: a `TaskStub` (the name only) stands in their place.
    """

    def mine(index: int) -> bool:
        return shard is None or shard.owns(index)

    if bool(tasks_file) == bool(self_instruct):
        raise UsageError("give exactly one pool: --tasks (with --niv2_dir) or --self_instruct")
    if self_instruct:
        entries = [entry if isinstance(entry, niv2.Task) else
                   SkippedTask(entry.name, entry.reason)
                   for entry in si.scan_self_instruct(self_instruct, on_bad_task=on_bad_task)]
        return iter(entries), len(entries), {"self_instruct": os.path.abspath(self_instruct)}
    if tasks_file.endswith(".jsonl"):
        def keep(record):
            return "role" not in record or not role or record["role"] == role

        # A first pass checks every line (and counts the pool) before anything is scored.
        total = 0
        for number, record in records.iter_jsonl(tasks_file, "prepared tasks file"):
            if not isinstance(record, dict) or not isinstance(record.get("name"), str):
                raise RecordError("expected a prepared task object with a 'name'", tasks_file,
                                  f"line {number}")
            total += keep(record)
        if not total:
            raise RecordError(f"no task to score (no line{f' with role {role!r}' if role else ''}"
                              f"): an empty pool would write an empty Task Map", tasks_file)

        def prepared():
            index = 0
            for number, record in records.iter_jsonl(tasks_file, "prepared tasks file"):
                if keep(record):
                    record.pop("role", None)
                    yield (prepared_task(record, tasks_file, number, on_bad_task)
                           if mine(index) else TaskStub(record["name"]))
                    index += 1
        return prepared(), total, {"tasks": os.path.abspath(tasks_file), "role": role}
    if not niv2_dir:
        raise UsageError("--tasks with task names needs --niv2_dir")
    names = [niv2.check_task_name(name, tasks_file, where)
             for where, name in records.read_records(tasks_file, "task list")]
    if not names:
        raise RecordError("no task to score (the list is empty): an empty pool would write an "
                          "empty Task Map", tasks_file)
    missing = [n for n in names if not os.path.exists(niv2.task_file_path(niv2_dir, n))]
    if missing:
        raise MissingTaskError(f"{len(missing)} task(s) of {tasks_file} have no file in "
                               f"{niv2_dir}/tasks: {missing[:5]}", tasks_file)
    return load_lazily(niv2_dir, names, on_bad_task, mine), len(names), {
        "tasks": os.path.abspath(tasks_file), "niv2_dir": os.path.abspath(niv2_dir)}


def prepared_task(record: dict[str, Any], path: str, number: int,
                   on_bad_task: str = "error") -> Any:
    """A `Task` from a prepared tasks.jsonl line; a malformed one (a lone surrogate in a
    string too) names its line, or becomes a `SkippedTask` with on_bad_task="skip"."""
    try:
        _check_strings(record, path, f"line {number}")
        try:
            return niv2.Task.from_dict(record)
        except (KeyError, TypeError, ValueError) as err:
            raise TaskFormatError(f"not a prepared task ({err!r})", path,
                                  f"line {number}") from None
    except TaskFormatError as err:
        if on_bad_task == "skip":
            name = record.get("name")
            usable = isinstance(name, str) and name.encode("utf-8", "replace").decode() == name
            return SkippedTask(name if usable else f"line {number}", str(err))
        raise


def _check_strings(value: Any, path: str, where: str) -> None:
    """Every string in a decoded JSON value is valid Unicode (`errors.check_unicode`)."""
    if isinstance(value, str):
        check_unicode(value, path, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(str(key), path, f"{where}: a key")
            _check_strings(item, path, f"{where}: {key}")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            _check_strings(item, path, f"{where}[{k}]")


def load_lazily(niv2_dir: str, names: list[str], on_bad_task: str,
                 mine: Any = None) -> Iterator[Any]:
    """Loads each task when the scorer reaches it; a file without instances (or, with
    on_bad_task="skip", any malformed file) becomes a `SkippedTask` with the reason; a task
    for which `mine(index)` is False (another host's) a `TaskStub`."""

    for index, name in enumerate(names):
        if mine is not None and not mine(index):
            yield TaskStub(name)
            continue
        path = niv2.task_file_path(niv2_dir, name)
        try:
            yield niv2.load_niv2_task(path)
        except errors.TaskFormatError as err:
            if err.field == "Instances" and "empty" in err.message:
                yield SkippedTask(name, "no instances")
            elif on_bad_task == "skip":
                yield SkippedTask(name, str(err))
            else:
                raise
