"""Multi-host scoring: each host's share of the pool, and process 0's merge of the journals."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from activeit_jax import layout, partitioning
from activeit_jax.core import distributed, io_utils
from activeit_jax.models import BaseModel
from activeit_jax.scoring import run_stats
from activeit_jax.scoring.config import ScoreConfig
from activeit_jax.scoring.journal import finalize, shard_dirs

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """This host's share of the pool (SeqIO's `ShardInfo`): pool task i is scored by host
    `i % num_shards`, so every host gets a similar mix of short and long tasks.

    Attributes:
      index: this shard, 0 .. num_shards - 1 (`jax.process_index()`).
      num_shards: number of shards (`jax.process_count()`).
    """
    index: int = 0
    num_shards: int = 1

    def __post_init__(self):
        if self.num_shards < 1 or not 0 <= self.index < self.num_shards:
            raise ValueError(f"bad shard {self.index} of {self.num_shards}")

    @classmethod
    def of_process(cls) -> "ShardInfo":
        """(jax.process_index(), jax.process_count())."""
        import jax
        return cls(jax.process_index(), jax.process_count())

    def owns(self, pool_index: int) -> bool:
        return pool_index % self.num_shards == self.index

    def count(self, total: int) -> int:
        """How many of `total` pool tasks this shard owns."""
        return len(range(self.index, total, self.num_shards))

    @property
    def name(self) -> str:
        return layout.shard_name(self.index, self.num_shards)


def shard_dir(out_dir: str, shard: ShardInfo) -> str:
    """`out_dir/shards/host{k}-of-{n}`: the journal of one host of a multi-host run."""
    return os.path.join(out_dir, layout.SHARDS_DIR, shard.name)


def localize(model: BaseModel, params, mesh):
    """This host's share of a multi-host mesh, and `params` gathered and placed on it."""
    import jax
    from jax.experimental import multihost_utils

    local = partitioning.local_mesh_like(mesh)
    host_params = multihost_utils.process_allgather(params, tiled=True)
    return local, jax.device_put(host_params, partitioning.params_shardings(model, local))


def _task_blocks(path: str) -> dict[str, tuple[int, int]]:
    """Byte range of each task's rows in a prompts.jsonl (a task's rows are contiguous:
    appended with one write)."""
    blocks: dict[str, tuple[int, int]] = {}
    if not os.path.exists(path):
        return blocks
    offset = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break  # a torn last line (killed run)
            task = json.loads(line)["task"]
            lo, _ = blocks.get(task, (offset, offset))
            blocks[task] = (lo, offset + len(line))
            offset += len(line)
    return blocks


def merge_journals(out_dir: str) -> None:
    """Rewrites `out_dir`'s scores / skipped / prompts journals from every shard journal (and
    its own), in pool order; each task once (the first journal holding it wins: shard
    journals in name order, then `out_dir`'s own). Idempotent. `finalize` then adds the
    Task Map categories."""
    sources = shard_dirs(out_dir) + [out_dir]
    owner: dict[str, int] = {}
    scores: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for k, directory in enumerate(sources):
        for name, bucket in ((layout.SCORES_FILE, scores), (layout.SKIPPED_FILE, skipped)):
            for rec in io_utils.read_jsonl(os.path.join(directory, name)):
                if rec["task"] not in owner:
                    owner[rec["task"]] = k
                    bucket.append(rec)
    scores.sort(key=lambda rec: rec["index"])
    skipped.sort(key=lambda rec: rec["index"])
    blocks = [_task_blocks(os.path.join(d, layout.PROMPTS_FILE)) for d in sources]
    # Read every block before rewriting out_dir/prompts.jsonl (one of the sources).
    prompt_text = []
    for rec in scores:
        k = owner[rec["task"]]
        if rec["task"] in blocks[k]:
            lo, hi = blocks[k][rec["task"]]
            with open(os.path.join(sources[k], layout.PROMPTS_FILE), "rb") as handle:
                handle.seek(lo)
                prompt_text.append(handle.read(hi - lo))
    for name, records in ((layout.SCORES_FILE, scores), (layout.SKIPPED_FILE, skipped)):
        with io_utils.atomic_open(os.path.join(out_dir, name)) as handle:
            for rec in records:
                handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if prompt_text or os.path.exists(os.path.join(out_dir, layout.PROMPTS_FILE)):
        with io_utils.atomic_open(os.path.join(out_dir, layout.PROMPTS_FILE), "wb") as handle:
            for text in prompt_text:
                handle.write(text)


def _combine_host_stats(done_files: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of this session over all hosts: sums, the slowest host's time, and the
    per-host list."""
    hosts = [d["stats"] for d in done_files]
    return {**run_stats.combine(done_files, parallel=True), "num_hosts": len(hosts),
            "hosts": hosts}


def merge_shards(out_dir: str, config: ScoreConfig, shard: ShardInfo,
                  stats: dict[str, Any]) -> dict[str, Any]:
    """After every host scored its shard: process 0 merges and finalizes; all return the
    summary. In a single process (shards run one after another) the merge happens once every
    shard has finished."""
    import jax
    distributed.barrier("activeit_score_scored")
    multi_process = jax.process_count() > 1
    paths = [os.path.join(shard_dir(out_dir, ShardInfo(k, shard.num_shards)),
                          layout.SHARD_DONE_FILE) for k in range(shard.num_shards)]
    summary, error = None, ""
    if jax.process_index() == 0:
        missing = [p for p in paths if not os.path.exists(p)]
        if not missing:
            try:
                done_files = []
                for path in paths:
                    with open(path, encoding="utf-8") as handle:
                        done_files.append(json.load(handle))
                merge_journals(out_dir)
                session = _combine_host_stats(done_files)
                totals = run_stats.run_totals(out_dir, shard_dirs(out_dir))
                summary = finalize(out_dir, config, extra={
                    **totals, "num_hosts": session["num_hosts"], "hosts": session["hosts"],
                    "last_session": session})
            except Exception as err:  # reported to every host below, then re-raised
                if not multi_process:
                    raise
                error = f"{type(err).__name__}: {err}"
                logger.exception("merging the shards of %s failed", out_dir)
        elif multi_process:
            error = (f"after the barrier, {len(missing)} shard(s) have no {layout.SHARD_DONE_FILE} "
                     f"(e.g. {missing[0]}): out_dir must be on a filesystem that every host "
                     "sees")
        else:
            logger.info("shard %s done; %d shard(s) still to run before the merge",
                        shard.name, len(missing))
            return {**stats, "merged": False}
    if multi_process:
        from jax.experimental import multihost_utils
        code = np.frombuffer(error.encode("utf-8")[:1024].ljust(1024, b"\0"), np.uint8)
        code = multihost_utils.broadcast_one_to_all(code)  # also the final barrier
        error = bytes(np.asarray(code, np.uint8)).rstrip(b"\0").decode("utf-8", "replace")
        if error:
            raise RuntimeError(f"multi-host scoring: process 0 could not merge: {error}")
    if summary is None:
        with open(os.path.join(out_dir, layout.SCORE_SUMMARY_FILE), encoding="utf-8") as handle:
            summary = json.load(handle)
    return {**summary, "merged": True}
