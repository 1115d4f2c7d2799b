"""`activeit-jax prepare` as a library: read, label, split, cap instances, summarise, write.

A prepared directory holds two files (names: `activeit_jax.layout`):
  the tasks file   one task per line (`Task.to_dict()` plus "role"), every task of the
                   experiment (initial, validation, pool, test) with its resolved instances;
  the splits file  the `ExperimentSplit` (task names per role, chunks, seed, quota note), the
                   summary numbers, and the SHA-256 of the tasks file.
The splits file is written last and removed first, so its presence means the pair is complete;
`load_prepared` checks the hash.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

from activeit_jax import layout
from activeit_jax.core import io_utils, records
from activeit_jax.data import (
    labels as labels_lib,
    niv2 as niv2_lib,
    self_instruct as si_lib,
    splits as splits_lib,
)
from activeit_jax.data.errors import DataError, EmptyPoolError, MissingTaskError, SplitError
from activeit_jax.data.niv2 import Task


@dataclasses.dataclass(frozen=True)
class SourceReport:
    """What reading one split file (or one Self-Instruct file) found."""
    name: str
    path: str
    named: int
    read: int
    missing: int
    skipped: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A resolved experiment.

    Attributes:
      split: task names per role.
      tasks: {name: Task} for every task in any role, instances already capped.
      sources: what each input file held (for the summary).
      train_label_ratio: classification ratio over all tasks read from the train split
        (NIV2) or the Self-Instruct file, before splitting.
      train_label_counts: {"cls": n, "gen": n} over the same tasks.
      label_sources: {"rule"|"override"|"metadata": n} over the same tasks ("override": from
        the label file).
      max_instances_per_task: the cap applied (None: none).
      label_file: `labels.LabelSource.describe()` of the label file the labels came from
        (path, SHA-256, counts), or None (the rule labels every task).
    """
    split: splits_lib.ExperimentSplit
    tasks: dict[str, Task]
    sources: tuple[SourceReport, ...] = ()
    train_label_ratio: float = math.nan
    train_label_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    label_sources: dict[str, int] = dataclasses.field(default_factory=dict)
    max_instances_per_task: int | None = None
    label_file: dict[str, Any] | None = None

    def role_tasks(self, role: str) -> list[Task]:
        """The tasks of one role ("initial", "validation", "pool", "test"), in split order."""
        return [self.tasks[name] for name in getattr(self.split, role)]

    def role_stats(self) -> dict[str, dict[str, Any]]:
        """{role: {tasks, cls, gen, label_sources, instances_min, instances_mean,
        instances_max}}; label_sources counts where each label came from ("rule", "override",
        "metadata")."""
        stats = {}
        for role in splits_lib.ExperimentSplit.ROLES:
            tasks = self.role_tasks(role)
            low, mean, high = niv2_lib.instance_count_stats(tasks)
            stats[role] = {"tasks": len(tasks),
                           "cls": sum(t.label == labels_lib.CLS for t in tasks),
                           "gen": sum(t.label == labels_lib.GEN for t in tasks),
                           "label_sources": _count_by([t.label_source for t in tasks]),
                           "instances_min": low, "instances_max": high,
                           "instances_mean": None if math.isnan(mean) else round(mean, 2)}
        return stats

    def summary(self) -> dict[str, Any]:
        """The numbers printed by `format_summary`, JSON-ready."""
        return {
            "kind": self.split.kind, "seed": self.split.seed, "quota_note": self.split.note,
            "max_instances_per_task": self.max_instances_per_task,
            "sources": [dataclasses.asdict(s) for s in self.sources],
            "train_classification_ratio": round(self.train_label_ratio, 4),
            "train_label_counts": self.train_label_counts,
            "label_sources": self.label_sources,
            "label_file": self.label_file,
            "roles": self.role_stats(),
            "num_chunks": len(self.split.chunks),
        }


def label_source_counts(summary: Mapping[str, Any]) -> dict[str, int]:
    """Where the labels of every task of an experiment (all roles) came from.

    Args:
      summary: `PreparedData.summary()`, or the "summary" of a stored splits.json.

    Returns:
      {"rule": n, "override": m, ...} summed over the roles (sorted by source; empty for a
      summary written before the per-role counts existed).
    """
    counts: dict[str, int] = {}
    for stats in summary.get("roles", {}).values():
        for source, n in stats.get("label_sources", {}).items():
            counts[source] = counts.get(source, 0) + int(n)
    return dict(sorted(counts.items()))


def stored_label_source_counts(out_dir: str | os.PathLike) -> dict[str, int]:
    """`label_source_counts` of a prepared directory's splits.json (tasks.jsonl is not read)."""
    meta = records.read_json(os.path.join(out_dir, layout.SPLITS_FILE), "prepared split")
    summary = meta.get("summary") if isinstance(meta, dict) else None
    return label_source_counts(summary if isinstance(summary, dict) else {})


def stored_label_file(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The label file a prepared directory's labels came from (`PreparedData.label_file`), or
    None (the rule labelled every task, or a directory prepared before it was recorded)."""
    with open(os.path.join(out_dir, layout.SPLITS_FILE), encoding="utf-8") as handle:
        return json.load(handle).get("summary", {}).get("label_file")


def _label_file(label_overrides: Mapping[str, str] | None) -> dict[str, Any] | None:
    if isinstance(label_overrides, labels_lib.LabelSource):
        return label_overrides.describe()
    return {"path": None, "tasks": len(label_overrides)} if label_overrides else None


def _count_by(values: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _cap(tasks: Sequence[Task], max_instances: int | None, seed: int,
         shuffle: bool) -> list[Task]:
    return [niv2_lib.select_instances(t, max_instances, seed, shuffle) for t in tasks]


def _parse_task_list(tasks: Sequence[str] | None) -> list[str] | None:
    if tasks is None:
        return None
    names = [name.strip() for name in tasks if name.strip()]
    return list(dict.fromkeys(name[:-5] if name.endswith(".json") else name for name in names))


def prepare_niv2(niv2_dir: str | os.PathLike, seed: int = 42, on_bad_task: str = "error",
                 label_overrides: Mapping[str, str] | None = None,
                 tasks: Sequence[str] | None = None,
                 quotas: splits_lib.NIV2Quotas | None = None,
                 max_instances_per_task: int | None = niv2_lib.DEFAULT_MAX_INSTANCES_PER_TASK,
                 split_dir: str = niv2_lib.DEFAULT_SPLIT_DIR,
                 label_rule: labels_lib.LabelRule = labels_lib.DEFAULT_RULE) -> PreparedData:
    """Reads the NIV2 train and test splits and draws the experiment split.

    Args:
      niv2_dir: the NIV2 root (tasks/ + splits/).
      seed: seed of the split and of the train-task instance sampling.
      on_bad_task: "error" or "skip" malformed task files.
      label_overrides: {task: "cls"|"gen"}, or a `labels.LabelSource` (a label file: its
        CLS_GEN metric labels apply too, and its path and hash are recorded).
      tasks: optional explicit train task names: only these are used, and each must be named
        in the train split and have a file.
      quotas: explicit counts, or None for the paper's (scaled down on partial data).
      max_instances_per_task: cap per task: test tasks keep their first N (the official
        evaluation instances), the others a seeded random N. None keeps all.
      split_dir: the split folder ("default": English).
      label_rule: thresholds of the classification rule.

    Returns:
      PreparedData.

    Raises:
      DataError subclasses: malformed files, missing required tasks, impossible split.
    """
    wanted = _parse_task_list(tasks)
    train_file = niv2_lib.split_file_path(niv2_dir, "train", split_dir)
    if wanted is None:
        train_read = niv2_lib.scan_niv2_split(niv2_dir, "train", on_bad_task, label_overrides,
                                              split_dir, label_rule)
        train_tasks, skipped_train = list(train_read.tasks), list(train_read.skipped)
        train_source = SourceReport("train split", train_file, len(train_read.names),
                                    len(train_tasks), len(train_read.missing),
                                    tuple(skipped_train))
    else:
        # Only the listed tasks are read; each must be in the train split and have a file.
        if not wanted:
            raise SplitError("the explicit task list is empty")
        in_split = set(niv2_lib.read_split_names(niv2_dir, "train", split_dir))
        not_in_split = [n for n in wanted if n not in in_split]
        if not_in_split:
            more = f" (and {len(not_in_split) - 1} more)" if len(not_in_split) > 1 else ""
            raise MissingTaskError(f"task {not_in_split[0]!r} is required (explicit task list) "
                                   f"but not named in the train split{more}", train_file)
        train_tasks, skipped_train = niv2_lib.load_niv2_tasks(
            niv2_dir, wanted, on_bad_task, label_overrides, label_rule)
        train_source = SourceReport(f"train split ({len(wanted)} listed tasks)", train_file,
                                    len(wanted), len(train_tasks), 0, tuple(skipped_train))
    # A checkout without any test task file is allowed: the test role is then empty.
    test_read = niv2_lib.scan_niv2_split(niv2_dir, "test", on_bad_task, label_overrides,
                                         split_dir, label_rule, require_any=False)
    if not train_tasks:
        raise EmptyPoolError("no usable train task (all missing or skipped)", train_file)
    split = splits_lib.split_niv2(train_tasks, test_read.tasks, seed, quotas)
    by_name = {t.name: t for t in train_tasks}
    resolved = {t.name: t for t in _cap([by_name[n] for n in split.initial + split.validation
                                         + split.pool], max_instances_per_task, seed,
                                        shuffle=True)}
    resolved.update({t.name: t for t in _cap(test_read.tasks, max_instances_per_task, seed,
                                              shuffle=False)})
    sources = (train_source,
               SourceReport("test split", test_read.split_file, len(test_read.names),
                            len(test_read.tasks), len(test_read.missing), test_read.skipped))
    return PreparedData(
        split=split, tasks=resolved, sources=sources,
        train_label_ratio=labels_lib.classification_ratio(train_tasks),
        train_label_counts=_count_by([t.label for t in train_tasks]),
        label_sources=_count_by([t.label_source for t in train_tasks]),
        max_instances_per_task=max_instances_per_task, label_file=_label_file(label_overrides))


def prepare_self_instruct(path: str | os.PathLike, test_path: str | os.PathLike | None = None,
                          seed: int = 42,
                          label_overrides: Mapping[str, str] | None = None,
                          quotas: splits_lib.SelfInstructQuotas | None = None,
                          max_items: int | None = None,
                          length_fn: Callable[[str], int] = si_lib.whitespace_length,
                          num_chunks: int = si_lib.NUM_LENGTH_CHUNKS,
                          on_bad_task: str = "error") -> PreparedData:
    """Reads a Self-Instruct / Alpaca file, draws initial/pool and the output-length chunks.

    Args:
      path: the training file (JSON list or JSONL).
      test_path: optional evaluation file (e.g. the 252 user-oriented instructions).
      seed: the seed.
      label_overrides: {task: "cls"|"gen"}.
      quotas: explicit count, or None for 500 (scaled down on small files).
      max_items: read only the first N items of `path`.
      length_fn: output length measure for the chunks (whitespace words by default).
      num_chunks: number of output-length chunks of the pool.
      on_bad_task: "error" stops at a malformed item; "skip" leaves it out and lists it in
        the summary (`SourceReport.skipped`), as a malformed NIV2 task file.

    Returns:
      PreparedData (no validation role; `split.chunks` holds the pool chunks).
    """
    tasks, skipped = _self_instruct_tasks(path, max_items, on_bad_task)
    tasks = labels_lib.apply_label_overrides(tasks, label_overrides)
    test_tasks: list[Task] = []
    test_skipped: tuple[tuple[str, str], ...] = ()
    if test_path is not None:
        test_tasks, test_skipped = _self_instruct_tasks(test_path, None, on_bad_task)
        test_tasks = labels_lib.apply_label_overrides(test_tasks, label_overrides)
        clash = {t.name for t in tasks} & {t.name for t in test_tasks}
        if clash:
            raise SplitError(f"task names in both the training and the test file: "
                             f"{sorted(clash)[:5]}", test_path)
    chunks = si_lib.output_length_chunks(tasks, num_chunks, length_fn)
    split = splits_lib.split_self_instruct(tasks, test_tasks, seed, quotas, chunks)
    resolved = {t.name: t for t in [*tasks, *test_tasks]}
    sources = [SourceReport("self-instruct file", os.fspath(path), len(tasks) + len(skipped),
                            len(tasks), 0, skipped)]
    if test_path is not None:
        sources.append(SourceReport("test file", os.fspath(test_path),
                                    len(test_tasks) + len(test_skipped), len(test_tasks), 0,
                                    test_skipped))
    return PreparedData(
        split=split, tasks=resolved, sources=tuple(sources),
        train_label_ratio=labels_lib.classification_ratio(tasks),
        train_label_counts=_count_by([t.label for t in tasks]),
        label_sources=_count_by([t.label_source for t in tasks]),
        max_instances_per_task=None, label_file=_label_file(label_overrides))


def _self_instruct_tasks(path: str | os.PathLike, max_items: int | None, on_bad_task: str
                         ) -> tuple[list[Task], tuple[tuple[str, str], ...]]:
    """The tasks of a Self-Instruct file and the (name, reason) of its skipped items."""
    entries = si_lib.scan_self_instruct(path, max_items=max_items, on_bad_task=on_bad_task)
    tasks = [e for e in entries if isinstance(e, Task)]
    skipped = tuple((e.name, e.reason) for e in entries if not isinstance(e, Task))
    if not tasks:
        raise EmptyPoolError("no usable item (all skipped)", path)
    return tasks, skipped


def format_summary(prepared: PreparedData) -> str:
    """A plain-text summary table of a prepared experiment."""
    lines = []
    lines.append(f"{'input':<34} {'named':>6} {'read':>6} {'missing':>8} {'skipped':>8}")
    for s in prepared.sources:
        lines.append(f"{s.name:<34} {s.named:>6} {s.read:>6} {s.missing:>8} {len(s.skipped):>8}")
    for s in prepared.sources:
        for name, message in s.skipped:
            lines.append(f"  skipped {name}: {message}")
    if any(s.missing for s in prepared.sources):
        lines.append("  (missing = named in a split file without a task file: a partial "
                     "checkout, skipped)")
    lines.append("")
    lines.append(f"split: seed {prepared.split.seed}; {prepared.split.note}")
    cap = prepared.max_instances_per_task
    lines.append(f"{'role':<12} {'tasks':>6} {'cls':>5} {'gen':>5} {'inst/task min':>14} "
                 f"{'mean':>8} {'max':>6}" + (f"   (cap {cap})" if cap is not None else ""))
    total = 0
    for role, st in prepared.role_stats().items():
        total += st["tasks"]
        mean = "-" if st["instances_mean"] is None else f"{st['instances_mean']:.1f}"
        lines.append(f"{role:<12} {st['tasks']:>6} {st['cls']:>5} {st['gen']:>5} "
                     f"{st['instances_min']:>14} {mean:>8} {st['instances_max']:>6}")
    lines.append(f"{'total':<12} {total:>6}")
    if prepared.split.chunks:
        sizes = [len(c) for c in prepared.split.chunks]
        lines.append(f"pool output-length chunks: {len(sizes)} (sizes {min(sizes)}-{max(sizes)})")
    counts = prepared.train_label_counts
    what = "train split" if prepared.split.kind == "niv2" else "self-instruct file"
    n = sum(counts.values())
    lines.append("")
    lines.append(f"classification ratio ({what}, {n} tasks): {prepared.train_label_ratio:.3f} "
                 f"({counts.get('cls', 0)} cls / {counts.get('gen', 0)} gen; labels from "
                 + ", ".join(f"{k}: {v}" for k, v in prepared.label_sources.items()) + ")"
                 + (f"; Active-IT's run script keeps {labels_lib.REFERENCE_CLS_RATIO} "
                    f"classification tasks in each selection (reproduce.sh)"
                    if prepared.split.kind == "niv2" else ""))
    return "\n".join(lines)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_prepared(prepared: PreparedData, out_dir: str | os.PathLike) -> dict[str, str]:
    """Writes tasks.jsonl then splits.json into `out_dir`, each atomically.

    splits.json is removed before and written after tasks.jsonl, so an interrupted write leaves
    no splits.json and `load_prepared` refuses the directory instead of reading a mix.

    Args:
      prepared: the experiment.
      out_dir: created if needed.

    Returns:
      {"tasks": path, "splits": path}.
    """
    out_dir = os.fspath(out_dir)
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        return _write_prepared_files(prepared, out_dir)
    except BaseException:
        if created:  # a failed write leaves no directory behind, only if it made it
            for name in (layout.SPLITS_FILE, layout.TASKS_FILE):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(out_dir, name))
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)  # only when empty: nothing else is removed
        raise


def _write_prepared_files(prepared: PreparedData, out_dir: str) -> dict[str, str]:
    tasks_path = os.path.join(out_dir, layout.TASKS_FILE)
    splits_path = os.path.join(out_dir, layout.SPLITS_FILE)
    role_of = {name: role for role, names in prepared.split.roles().items() for name in names}
    if os.path.exists(splits_path):
        os.remove(splits_path)
    with io_utils.atomic_open(tasks_path) as handle:
        for role in splits_lib.ExperimentSplit.ROLES:
            for task in prepared.role_tasks(role):
                record = {"role": role_of[task.name], **task.to_dict()}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    io_utils.atomic_write_json(splits_path, {
        **prepared.split.to_dict(),
        "tasks_file": layout.TASKS_FILE,
        "tasks_sha256": _sha256(tasks_path),
        "summary": prepared.summary(),
    })
    return {"tasks": tasks_path, "splits": splits_path}


def load_prepared(out_dir: str | os.PathLike) -> PreparedData:
    """Reads a directory written by `write_prepared`.

    Args:
      out_dir: the prepared directory.

    Returns:
      PreparedData (sources and label counts from the stored summary are not restored; the
      split and the tasks are).

    Raises:
      DataError: splits.json is missing (never prepared, or interrupted), or tasks.jsonl does
        not match its recorded hash or lacks a task of the split.
    """
    out_dir = os.fspath(out_dir)
    splits_path = os.path.join(out_dir, layout.SPLITS_FILE)
    if not os.path.exists(splits_path):
        raise DataError(f"not a prepared directory (no {layout.SPLITS_FILE}; run `activeit-jax "
                        "prepare`)", out_dir)
    meta = records.read_json(splits_path, "prepared split")
    if not isinstance(meta, dict):
        raise DataError("expected a JSON object", splits_path)
    tasks_path = os.path.join(out_dir, meta.get("tasks_file", layout.TASKS_FILE))
    if not os.path.exists(tasks_path) or _sha256(tasks_path) != meta.get("tasks_sha256"):
        raise DataError(f"tasks file missing or changed since {layout.SPLITS_FILE} was "
                        "written", tasks_path)
    tasks = {}
    for record in io_utils.read_jsonl(tasks_path, drop_partial_tail=False):
        record = dict(record)
        record.pop("role", None)
        task = Task.from_dict(record)
        tasks[task.name] = task
    split = splits_lib.ExperimentSplit.from_dict(meta)
    absent = [n for names in split.roles().values() for n in names if n not in tasks]
    if absent:
        raise DataError(f"task {absent[0]!r} of the split is not in the tasks file", tasks_path)
    summary = meta.get("summary", {})
    return PreparedData(split=split, tasks=tasks,
                        train_label_ratio=summary.get("train_classification_ratio", math.nan),
                        train_label_counts=summary.get("train_label_counts", {}),
                        label_sources=summary.get("label_sources", {}),
                        max_instances_per_task=summary.get("max_instances_per_task"),
                        label_file=summary.get("label_file"))
