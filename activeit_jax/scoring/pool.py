"""The pool driver: streams a task pool through planning, decoding and scoring, and
journals each finished task (the contract is in the package docstring)."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
from collections.abc import Sized
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from activeit_jax import layout, partitioning
from activeit_jax.core import distributed, io_utils, profiling, run_lock
from activeit_jax.core.errors import ActiveITError
from activeit_jax.data import chat as chat_lib, prompts
from activeit_jax.models import BaseModel, SpecialIds, check_vocabulary
from activeit_jax.scoring import run_stats
from activeit_jax.scoring.config import ScoreConfig
from activeit_jax.scoring.formulas import sequence_probability, task_metrics
from activeit_jax.scoring.journal import (
    append_jsonl_lines,
    check_run_args,
    drop_orphan_prompts,
    finalize,
    finished_tasks,
    prepare_run_dir,
    remove_if_exists,
    shard_dirs,
)
from activeit_jax.scoring.multihost import (
    ShardInfo,
    localize,
    merge_journals,
    merge_shards,
    shard_dir,
)
from activeit_jax.scoring.planning import (
    PromptBuilder,
    TaskPlan,
    TaskStub,
    check_prompts_render,
    prompt_formats,
)
from activeit_jax.scoring.row_scorer import DEFAULT_POOL_CHUNKS, RowScorer

logger = logging.getLogger(__name__)


class NonFiniteScoreError(ActiveITError):
    """A task's scores came out NaN or infinite."""


def _chunks(indexed_tasks: Iterable[tuple[int, Any]], size: int
            ) -> Iterator[list[tuple[int, Any]]]:
    iterator = iter(indexed_tasks)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _dedup(keys: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Unique keys in first-seen order, and each key's position among them."""
    where: dict[Any, int] = {}
    unique, pos = [], []
    for key in keys:
        if key not in where:
            where[key] = len(unique)
            unique.append(key)
        pos.append(where[key])
    return unique, pos


@dataclasses.dataclass
class ScoreHooks:
    """Test / monitoring hooks: `after_task(name, n_scored)` runs after each task's lines are
    appended (n_scored counts the tasks scored by this call)."""
    after_task: Callable[[str, int], None] | None = None


def score_pool(model: BaseModel, params, vocab, tasks: Iterable[Any], out_dir: str,
               config: ScoreConfig = ScoreConfig(), *, mesh=None,
               run_args: dict[str, Any] | None = None, total: int | None = None,
               parts_fn: Callable[..., Any] | None = None,
               render_fn: Callable[..., str] | None = None,
               hooks: ScoreHooks = ScoreHooks(), progress: bool = True,
               scorer: RowScorer | None = None,
               shard: ShardInfo | None = None) -> dict[str, Any]:
    """Scores every task of a pool; resumable; writes scores, Task Map and summary to out_dir.

    Multi-host (`jax.process_count() > 1`, or an explicit `shard`): every host calls this with
    the same arguments. Host k scores the pool tasks i with i % n == k (`ShardInfo`) on its own
    devices -- scoring is embarrassingly parallel, so the hot loop has no cross-host
    collective -- and journals them in `out_dir/shards/host{k}-of-{n}/` (same files and
    resume rules as a single-host `out_dir`). After a barrier, process 0 merges every journal
    into `out_dir/scores.jsonl` / `skipped.jsonl` / `prompts.jsonl` in pool order and runs
    `finalize` (Task Map, summary with per-host throughput); the other hosts then return the
    same summary. `out_dir` must be on a filesystem that every host sees. A task's numbers do
    not depend on its host (the batch composition changes only float rounding, see
    `ScoreConfig`), so the files equal a single-host run's up to that rounding.

    Args:
      model: an `EncoderDecoderModel`, or a `DecoderOnlyModel` (see the package docstring).
      params: its parameters placed on `mesh`.
      vocab: the seqio vocabulary of the model.
      tasks: the pool, iterated once, lazily (data layer `Task`s, unique names; a
        `SkippedTask` stands for an entry that could not be read, a `TaskStub` for an entry
        that another shard scores).
      out_dir: output directory (resumed when it holds a run with the same arguments).
      config: what to compute and how.
      mesh: the device mesh (default: this host's devices on the data axis). A mesh that
        spans several processes is replaced by this host's share of it
        (`partitioning.local_mesh_like`) and `params` are gathered onto it; restore them on
        `partitioning.local_mesh(...)` directly to skip that.
      run_args: extra arguments to fingerprint (checkpoint, pool files...); merged with the
        config's fingerprinted fields.
      total: number of tasks in the pool (default: `len(tasks)` when it has one): the
        progress bar's ETA, and how many chunks share each compiled shape (the planner's
        costs, `scoring.costs`); pass the same value when resuming for batches composed
        exactly as before.
      parts_fn / render_fn: prompt construction overrides (default: the data layer's parts
        rendered in `config.prompt_format`, see `PromptBuilder`).
      hooks: callbacks (tests simulate a kill with `after_task`).
      progress: show a tqdm bar.
      scorer: a ready `RowScorer` (reused across calls, e.g. by the benchmark).
      shard: this host's share of the pool (default `ShardInfo.of_process()`).

    Returns:
      The summary dict (also written to summary.json). A shard that finishes in a
      single-process run before the other shards did returns its own statistics only.

    Raises:
      RunLockedError: another process is scoring into `out_dir` (or this host's shard).
      ResumeMismatchError: `out_dir` holds a run with other arguments.
      UsageError: a vocabulary larger than the model's embedding.
      NonFiniteScoreError: a task's scores are NaN or infinite (nothing of it is written).
    """
    import jax
    shard = ShardInfo.of_process() if shard is None else shard
    if total is None and isinstance(tasks, Sized):
        total = len(tasks)  # a list of tasks: its chunks are known (the plans' shape sharing)
    if jax.process_count() > 1 and shard.num_shards == 1:
        raise ValueError(f"{jax.process_count()} processes would all score the whole pool into "
                         f"{out_dir}: give each its ShardInfo (the default)")
    if scorer is None:
        mesh, params = _local_mesh(model, params, mesh)
    model = model if scorer is None else scorer.model
    check_vocabulary(model, vocab)
    args = fingerprint_args(model, vocab, config, run_args)
    if render_fn is None:  # a broken chat template stops here, before run_args.json
        check_prompts_render(vocab, config, model.decoder_only)
    with _directory_locks(out_dir, shard):
        journal_dir = _open_journal(out_dir, args, shard)
        # Every journal's torn tail is repaired, and read, before any host appends again.
        distributed.barrier("activeit_score_prepared")
        done = finished_tasks(out_dir)
        distributed.barrier("activeit_score_started")
        if config.save_prompts:
            drop_orphan_prompts(os.path.join(journal_dir, layout.PROMPTS_FILE), done)
        scorer = scorer or _make_scorer(model, params, mesh, config)
        _check_scorer(scorer, config)
        # This host's chunks (only the plans' shape sharing depends on it), set on every call:
        # a reused scorer must not plan with an earlier pool's count.
        scorer.pool_chunks = (-(-total // (shard.num_shards * config.tasks_per_chunk)) if total
                              else DEFAULT_POOL_CHUNKS)
        builder = PromptBuilder(vocab, config, parts_fn, render_fn,
                                decoder_only=scorer.decoder_only, eos_id=scorer.eos_id)
        run = _PoolRun(scorer, builder, config, journal_dir, done, shard, hooks,
                       _progress_bar(progress, shard, total, len(done)))
        stats = run.score(tasks)
        session = run.record_session()
        if shard.num_shards == 1:
            if shard_dirs(out_dir):  # resuming a multi-host run on one host
                merge_journals(out_dir)
            # The whole run's work, every session's; this call's under "last_session".
            totals = run_stats.run_totals(out_dir, shard_dirs(out_dir))
            return finalize(out_dir, config, extra={**totals, "last_session": stats})
        io_utils.atomic_write_json(os.path.join(journal_dir, layout.SHARD_DONE_FILE), {
            "shard": shard.index, "num_shards": shard.num_shards, **session})
        return merge_shards(out_dir, config, shard, stats)


@contextlib.contextmanager
def _directory_locks(out_dir: str, shard: ShardInfo) -> Iterator[None]:
    """One process per directory: a single-host run locks `out_dir`; in a sharded run each
    host locks its own journal and process 0 also `out_dir` (where it merges), so a
    single-host run started there meets it."""
    with contextlib.ExitStack() as locks:
        if shard.num_shards == 1 or distributed.is_primary():
            locks.enter_context(run_lock.hold(out_dir, "score"))
        if shard.num_shards > 1:
            locks.enter_context(run_lock.hold(shard_dir(out_dir, shard), "score"))
        yield


def fingerprint_args(model: BaseModel, vocab, config: ScoreConfig,
                        run_args: dict[str, Any] | None) -> dict[str, Any]:
    """The arguments `run_args.json` fingerprints: the caller's, the config's fingerprinted
    fields, the prompt formats (decoder-only, or a format chosen explicitly: an
    encoder-decoder run with the default format keeps its earlier fingerprint) with the hash
    of the chat template they use, and (decoder-only) the model's special ids."""
    args = {**(run_args or {}), **config.fingerprint_args()}
    decoder_only = model.decoder_only
    chat = chat_lib.from_vocabulary(vocab)
    formats = prompt_formats(config, decoder_only, chat is not None)
    if decoder_only or config.prompt_format != prompts.AUTO:
        args.update(prompt_format=config.prompt_format, prompt_formats=formats)
        if any(prompts.is_chat_format(f) for f in formats.values()):
            args["chat_template_sha256"] = chat.sha256
    if decoder_only:
        ids = SpecialIds.of(model)
        args["special_ids"] = {"pad": ids.pad, "bos": ids.bos, "eos": ids.eos}
    return args


def _open_journal(out_dir: str, args: dict[str, Any], shard: ShardInfo) -> str:
    """Checks / writes the fingerprint and repairs this host's journal; returns its directory
    (`out_dir` itself, or `out_dir/shards/host{k}-of-{n}` in a sharded run)."""
    if shard.num_shards == 1:
        prepare_run_dir(out_dir, args)
        return out_dir
    check_run_args(out_dir, args, write=distributed.is_primary())
    if distributed.is_primary():  # it holds out_dir's lock (`_directory_locks`)
        io_utils.remove_stale_temp_files(out_dir)
    journal_dir = shard_dir(out_dir, shard)
    prepare_run_dir(journal_dir, args)
    remove_if_exists(os.path.join(journal_dir, layout.SHARD_DONE_FILE))
    return journal_dir


def _local_mesh(model, params, mesh):
    """(mesh, params) on this host: the default mesh of its devices, or its share of a mesh
    that spans processes (params gathered onto it)."""
    if mesh is None:
        return partitioning.local_mesh({"data": -1, "fsdp": 1, "model": 1}), params
    if partitioning.spans_processes(mesh):
        return localize(model, params, mesh)
    return mesh, params


def _make_scorer(model: BaseModel, params, mesh, config: ScoreConfig) -> RowScorer:
    """A `RowScorer` with the config's batch sizes, buckets and decoding length."""
    return RowScorer.from_config(model, params, mesh, config)


def _check_scorer(scorer: RowScorer, config: ScoreConfig) -> None:
    if (scorer.compute_entropy != config.compute_entropy
            or scorer.max_decode_length != config.max_decode_length):
        raise ValueError("the given scorer was built for another compute_entropy / "
                         "max_decode_length than `config`")


def _progress_bar(progress: bool, shard: ShardInfo, total: int | None, num_done: int):
    """A tqdm bar over this shard's tasks (None without `progress`)."""
    if not progress:
        return None
    from tqdm import tqdm
    if shard.num_shards > 1:
        return tqdm(total=shard.count(total) if total else None, unit="task",
                    dynamic_ncols=True, desc=f"score {shard.name}")
    return tqdm(total=total, initial=num_done if total else 0, unit="task",
                dynamic_ncols=True, desc="score")


class _PoolRun:
    """One call's pass over the pool: plan chunk j+1 and dispatch its decoding while the
    device scores chunk j, then journal each finished task in pool order."""

    def __init__(self, scorer: RowScorer, builder: PromptBuilder, config: ScoreConfig,
                 journal_dir: str, done: set[str], shard: ShardInfo, hooks: ScoreHooks, bar):
        self.scorer, self.builder, self.config = scorer, builder, config
        self.done, self.shard, self.hooks, self.bar = done, shard, hooks, bar
        self.journal_dir = journal_dir
        self.session = f"{os.getpid()}-{time.time_ns()}"
        self.scores_path = os.path.join(journal_dir, layout.SCORES_FILE)
        self.prompts_path = os.path.join(journal_dir, layout.PROMPTS_FILE)
        self.skipped_path = os.path.join(journal_dir, layout.SKIPPED_FILE)
        self.counters = {"rows": 0, "unique_rows": 0, "tasks_scored": 0,
                         "chunks_computed": 0, "seconds_wait_decode": 0.0,
                         "seconds_wait_score": 0.0, "seconds_host": 0.0,
                         "seconds_write": 0.0}
        self.start = time.perf_counter()
        profiling.start_compile_clock()
        self.compile_start = profiling.compile_seconds()

    def score(self, tasks: Iterable[Any]) -> dict[str, Any]:
        """Scores every unfinished task of `tasks`; returns this call's statistics."""
        chunk_iter = self._planned_chunks(tasks)
        plans = next(chunk_iter, None)
        decoding = self._dispatch_decode(plans)
        while plans is not None:
            self.counters["chunks_computed"] += 1
            self._attach_predictions(plans, decoding)
            row_keys = [(tuple(src), tuple(plan.target_ids[i]))
                        for plan in plans for i in range(len(plan.instances))
                        for src in plan.source_ids[i]]
            unique, pos = _dedup(row_keys)
            pending = self.scorer.score_async(unique)
            # Dispatched before waiting, so the device always has queued work.
            next_plans = next(chunk_iter, None)
            decoding = self._dispatch_decode(next_plans)
            t0 = time.perf_counter()
            logp, ntok, ent = pending.result()
            self.counters["seconds_wait_score"] += time.perf_counter() - t0
            self.counters["rows"] += len(row_keys)
            self.counters["unique_rows"] += len(unique)
            t0 = time.perf_counter()
            self._record_chunk(plans, logp[pos], ntok[pos],
                               None if ent is None else ent[pos])
            self.counters["seconds_write"] += time.perf_counter() - t0
            plans = next_plans
        if self.bar is not None:
            self.bar.close()
        return self._stats()

    def record_session(self) -> dict[str, Any]:
        """Appends this session's statistics so far to the journal's sessions.jsonl (the
        last line of a session counts); returns that entry."""
        entry = {"session": self.session, "stats": self._stats(),
                 "score_padding_raw": dataclasses.asdict(self.scorer.score_padding),
                 "decode_padding_raw": dataclasses.asdict(self.scorer.decode_padding)}
        run_stats.record_session(self.journal_dir, entry)
        return entry

    def _owned_tasks(self, tasks: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """(pool index, task) of this shard; every name is checked for duplicates."""
        seen: set[str] = set()
        for index, task in enumerate(tasks):
            if task.name in seen:
                raise ValueError(f"task {task.name!r} appears twice in the pool")
            seen.add(task.name)
            if self.shard.owns(index):
                if isinstance(task, TaskStub):
                    raise ValueError(f"pool entry {index} ({task.name}) belongs to this shard "
                                     f"({self.shard.name}) but the pool reader gave only a stub")
                if self.shard.num_shards > 1 and self.bar is not None and task.name in self.done:
                    self.bar.update(1)
                yield index, task

    def _planned_chunks(self, tasks: Iterable[Any]) -> Iterator[list[TaskPlan]]:
        """Plans of the chunks that still hold unfinished tasks (a whole chunk is recomputed,
        so its batches are composed exactly as in an uninterrupted run)."""
        for chunk in _chunks(self._owned_tasks(tasks), self.config.tasks_per_chunk):
            if all(task.name in self.done for _, task in chunk):
                continue
            t0 = time.perf_counter()
            plans = [self.builder.plan(i, task) for i, task in chunk]
            self.counters["seconds_host"] += time.perf_counter() - t0
            yield plans

    def _dispatch_decode(self, plans: list[TaskPlan] | None):
        """Dispatches greedy decoding of the chunk's unique original prompts."""
        if plans is None:
            return None
        originals = [ids[0] for plan in plans for ids in plan.source_ids]
        unique, pos = _dedup([tuple(s) for s in originals])
        return self.scorer.decode_async(unique), pos

    def _attach_predictions(self, plans: list[TaskPlan], decoding) -> None:
        """Waits for the originals' decoding; stores each prediction's text and target ids."""
        t0 = time.perf_counter()
        pending, pos = decoding
        generated = pending.result()
        self.counters["seconds_wait_decode"] += time.perf_counter() - t0
        k = 0
        for plan in plans:
            for _ in plan.instances:
                text = self.builder.prediction_text(generated[pos[k]])
                plan.predictions.append(text)
                plan.target_ids.append(self.builder.encode_target(text))
                k += 1

    def _record_chunk(self, plans: list[TaskPlan], logp: np.ndarray, ntok: np.ndarray,
                      ent: np.ndarray | None) -> None:
        """Journals each unfinished task of the chunk, in pool order, from its rows' sums
        (`logp` / `ntok` / `ent`: [rows] in plan order, (1+K) rows per instance)."""
        width = self.config.num_perturbations + 1
        r = 0
        for plan in plans:
            n = len(plan.instances)
            rows = slice(r, r + n * width)
            r += n * width
            if plan.task.name in self.done:
                continue
            if n == 0:
                io_utils.append_jsonl_line(self.skipped_path, {
                    "index": plan.index, "task": plan.task.name,
                    "reason": getattr(plan.task, "reason", "no instances")})
            else:
                self._record_task(plan, logp[rows].reshape(n, width),
                                  ntok[rows].reshape(n, width),
                                  None if ent is None else ent[rows].reshape(n, width)[:, 0])
            self.done.add(plan.task.name)
            if self.bar is not None:
                self.bar.update(1)

    def _record_task(self, plan: TaskPlan, lp: np.ndarray, nt: np.ndarray,
                     es: np.ndarray | None) -> None:
        """Appends a task's prompt rows (save_prompts) and then its scores line.

        Raises:
          NonFiniteScoreError: a score is NaN / infinite (checked before anything is written).
        """
        name, width = plan.task.name, lp.shape[1]
        numbers = task_metrics(lp, nt, es)
        bad = sorted(k for k, v in numbers.items() if v is not None and not math.isfinite(v))
        if bad:  # a NaN score would get a Task Map category and be selected like any other
            raise NonFiniteScoreError(
                f"task {name!r}: {', '.join(f'{k} {numbers[k]}' for k in bad)}: the model's "
                "outputs are not finite (a diverged checkpoint, or a vocabulary larger than "
                "its embedding); nothing of this task was written")
        if self.config.save_prompts:
            p = sequence_probability(lp, nt)
            append_jsonl_lines(self.prompts_path, [
                {"task": name, "instance": instance.id, "perturbation": kk,
                 "source": plan.sources[i][kk], "prediction": plan.predictions[i],
                 "p": float(p[i, kk])}
                for i, instance in enumerate(plan.instances) for kk in range(width)])
        if plan.truncated:
            cut = ("the start of its instruction" if self.builder.decoder_only
                   else "its instance input (the end of the prompt)")
            logger.warning("task %s: %d of %d instance(s) are longer than max_source_length="
                           "%d, so %s is cut off; its scores describe the truncated prompt "
                           "(marked truncated_instances in %s)", name,
                           plan.truncated, len(plan.instances),
                           self.config.max_source_length, cut, layout.SCORES_FILE)
        record = {"index": plan.index, "task": name, **numbers,
                  "label": getattr(plan.task, "label", "gen"),
                  "n_instances": len(plan.instances),
                  "n_perturbations": self.config.num_perturbations,
                  "truncated_instances": plan.truncated}
        io_utils.append_jsonl_line(self.scores_path, record)
        self.counters["tasks_scored"] += 1
        self.record_session()  # after every task, so that a killed session's work counts
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(rows_per_s=f"{self.counters['rows'] / elapsed:.1f}",
                                 refresh=False)
        if self.hooks.after_task is not None:
            self.hooks.after_task(name, self.counters["tasks_scored"])

    def _stats(self) -> dict[str, Any]:
        """This call's throughput, compilations, shapes and padding waste."""
        elapsed = time.perf_counter() - self.start
        scorer = self.scorer
        return {"seconds": elapsed, **self.counters,
                "seconds_compile": profiling.compile_seconds() - self.compile_start,
                "rows_per_s": self.counters["rows"] / elapsed if elapsed > 0 else 0.0,
                "num_compilations": scorer.num_compilations,
                "compilations": scorer.compile_log(),
                "score_shapes": sorted(scorer.score_shapes),
                "decode_shapes": sorted(scorer.decode_shapes),
                "score_padding": scorer.score_padding.as_dict(),
                "decode_padding": scorer.decode_padding.as_dict()}
