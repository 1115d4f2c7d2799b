"""The scorer's run directory (names: `activeit_jax.layout`): fingerprint, per-task journals,
resume repair, and the final files."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence

from activeit_jax import layout
from activeit_jax.core import io_utils
from activeit_jax.core.errors import ActiveITError
from activeit_jax.scoring import taskmap
from activeit_jax.scoring.config import ScoreConfig, fingerprint

logger = logging.getLogger(__name__)


class ResumeMismatchError(ActiveITError, ValueError):
    """`out_dir` holds a scoring run made with other arguments (or of unknown arguments)."""


def prepare_run_dir(out_dir: str, run_args: dict[str, Any]) -> None:
    """Creates `out_dir`, checks / writes the run fingerprint, removes the temp files of a
    killed write and repairs torn journal tails (call it holding `out_dir`'s run lock).

    Raises:
      ResumeMismatchError: `out_dir` holds a run with different arguments.
    """
    os.makedirs(out_dir, exist_ok=True)
    check_run_args(out_dir, run_args)
    io_utils.remove_stale_temp_files(out_dir)  # the caller holds the directory's lock
    for name in (layout.SCORES_FILE, layout.PROMPTS_FILE, layout.SKIPPED_FILE,
                 layout.SESSIONS_FILE):
        io_utils.truncate_partial_tail(os.path.join(out_dir, name))


def check_run_args(out_dir: str, run_args: dict[str, Any], write: bool = True) -> None:
    """Checks `out_dir/run_args.json` against `run_args`; writes it when absent and `write`.

    Raises:
      ResumeMismatchError: `out_dir` holds a run with different arguments.
    """
    path = os.path.join(out_dir, layout.RUN_ARGS_FILE)
    fp = fingerprint(run_args)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if previous.get("fingerprint") != fp:
            old = previous.get("args", {})
            diff = sorted(k for k in set(old) | set(run_args)
                          if json.dumps(old.get(k), sort_keys=True, default=str)
                          != json.dumps(run_args.get(k), sort_keys=True, default=str))
            raise ResumeMismatchError(
                f"{out_dir} holds a scoring run with different arguments (differing: "
                f"{', '.join(diff) or 'unknown'}); use another --out or the same arguments")
    else:
        if os.path.exists(os.path.join(out_dir, layout.SCORES_FILE)):
            raise ResumeMismatchError(
                f"{out_dir} has {layout.SCORES_FILE} but no {layout.RUN_ARGS_FILE}; refusing "
                "to resume a run whose arguments are unknown")
        if write:
            io_utils.atomic_write_json(path, {"fingerprint": fp, "args": run_args})


def append_jsonl_lines(path: str, records: Sequence[dict[str, Any]]) -> None:
    """Appends several JSON lines with one write and one fsync (a torn tail is repaired on
    resume by `io_utils.truncate_partial_tail`)."""
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def drop_orphan_prompts(path: str, done: set[str]) -> None:
    """Cuts prompts.jsonl after the last row of a finished task (orphans sit at the tail)."""
    if not os.path.exists(path):
        return
    keep_until = 0
    offset = 0
    with open(path, "rb") as handle:
        for line in handle:
            offset += len(line)
            if json.loads(line)["task"] in done:
                keep_until = offset
    if keep_until != offset:
        with open(path, "rb+") as handle:
            handle.truncate(keep_until)


def shard_dirs(out_dir: str) -> list[str]:
    root = os.path.join(out_dir, layout.SHARDS_DIR)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, name) for name in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, name))]


def finished_tasks(out_dir: str) -> set[str]:
    """Names of the tasks scored or skipped in `out_dir` or any of its shard journals (so a
    resumed run may use another number of hosts)."""
    done: set[str] = set()
    for directory in shard_dirs(out_dir) + [out_dir]:
        for name in (layout.SCORES_FILE, layout.SKIPPED_FILE):
            done |= {r["task"] for r in io_utils.read_jsonl(os.path.join(directory, name))}
    return done


def remove_if_exists(path: str) -> None:
    """Removes `path` when it exists (no error when it does not)."""
    if os.path.exists(path):
        os.remove(path)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def finalize(out_dir: str, config: ScoreConfig, extra: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Rewrites scores.jsonl in pool order with categories; writes the Task Map and summary.

    Idempotent: the same journal always gives the same files.
    """
    scores_path = os.path.join(out_dir, layout.SCORES_FILE)
    records = sorted(io_utils.read_jsonl(scores_path), key=lambda rec: rec["index"])
    skipped = sorted(io_utils.read_jsonl(os.path.join(out_dir, layout.SKIPPED_FILE)),
                     key=lambda rec: rec["index"])
    categories, thresholds = taskmap.categorize(
        [r["prompt_uncertainty"] for r in records],
        [r["prediction_probability"] for r in records], config.thresholds)
    fields = ("index", "task", "prompt_uncertainty", "prediction_probability", "perplexity",
              "entropy", "category", "label", "n_instances", "n_perturbations",
              "truncated_instances")
    final = []
    for rec, category in zip(records, categories):
        rec = {**rec, "category": category}
        final.append({k: rec.get(k) for k in fields})
    with io_utils.atomic_open(scores_path) as handle:
        for rec in final:
            handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
    taskmap.write_csv(os.path.join(out_dir, layout.TASKMAP_CSV), final)
    taskmap.plot(final, thresholds, os.path.join(out_dir, layout.TASKMAP_PNG),
                 os.path.join(out_dir, layout.TASKMAP_SVG))
    summary = {
        "num_tasks": len(final),
        "skipped": [{"task": s["task"], "reason": s["reason"]} for s in skipped],
        # null, not NaN (which is not JSON), when no task was scored (all skipped)
        "thresholds": {"prompt_uncertainty": _finite_or_none(thresholds[0]),
                       "prediction_probability": _finite_or_none(thresholds[1])},
        "categories": {c: categories.count(c) for c in taskmap.CATEGORIES},
        **(extra or {}),
    }
    io_utils.atomic_write_json(os.path.join(out_dir, layout.SCORE_SUMMARY_FILE), summary)
    logger.info("scored %d tasks (%d skipped) -> %s", len(final), len(skipped), out_dir)
    return summary
