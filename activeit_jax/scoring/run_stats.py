"""Throughput statistics of a scoring run across its sessions (calls) and hosts.

Each call of `score_pool` (a session) appends its statistics so far to `sessions.jsonl` in its
journal directory after every task it scores and when it finishes, so `summary.json` counts
the whole run -- every task scored, row computed and second spent by any session on any host,
a killed one up to its last journalled task -- rather than only the work of the call that
finished it.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from activeit_jax import layout
from activeit_jax.core import io_utils
from activeit_jax.scoring.row_scorer import PaddingStats

SUMMED = ("rows", "unique_rows", "tasks_scored", "chunks_computed", "seconds_wait_decode",
          "seconds_wait_score", "seconds_host", "seconds_write", "seconds_compile")


def record_session(journal_dir: str, entry: Mapping[str, Any]) -> None:
    """Appends a session's `{"session", "stats", "score_padding_raw",
    "decode_padding_raw"}` so far (a later line of the same session replaces it)."""
    io_utils.append_jsonl_line(os.path.join(journal_dir, layout.SESSIONS_FILE), dict(entry))


def combine(entries: Sequence[Mapping[str, Any]], parallel: bool) -> dict[str, Any]:
    """Statistics of several sessions (`parallel=False`: one after another, their seconds
    add up) or hosts (`parallel=True`: the slowest host's seconds), from their raw padding
    counts and counters."""
    stats = [e["stats"] for e in entries]
    times = [s.get("seconds", 0.0) for s in stats] or [0.0]
    seconds = max(times) if parallel else sum(times)
    out: dict[str, Any] = {"seconds": seconds}
    for key in SUMMED:
        out[key] = sum(s.get(key, 0) for s in stats)
    out["rows_per_s"] = out["rows"] / seconds if seconds > 0 else 0.0
    compilations = [s.get("num_compilations", 0) for s in stats] or [0]
    # Hosts compile the same shapes side by side; sessions each compile them again.
    out["num_compilations"] = max(compilations) if parallel else sum(compilations)
    for kind in ("score", "decode"):
        shapes = sorted({tuple(x) for s in stats for x in s.get(f"{kind}_shapes", [])})
        out[f"{kind}_shapes"] = [list(x) for x in shapes]
        raw = PaddingStats()
        for entry in entries:
            for field, value in entry.get(f"{kind}_padding_raw", {}).items():
                setattr(raw, field, getattr(raw, field) + value)
        out[f"{kind}_padding"] = raw.as_dict()
    return out


def run_totals(out_dir: str, shard_dirs: Sequence[str]) -> dict[str, Any]:
    """The whole run's statistics: every finished session of `out_dir` and of its shard
    journals, added up (`num_sessions` says how many)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for directory in [out_dir, *shard_dirs]:
        for entry in io_utils.read_jsonl(os.path.join(directory, layout.SESSIONS_FILE)):
            latest[f"{directory}:{entry.get('session')}"] = entry
    entries = list(latest.values())
    return {**combine(entries, parallel=False), "num_sessions": len(entries)}
