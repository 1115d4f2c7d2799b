"""Prompt-uncertainty scorer: a whole task pool through one jitted call per batch.

Definitions (Kung et al., 2023, "Active Instruction Tuning"), per task:

- Choose ``n`` instances (``num_instances``, default 10; all of them when the task has fewer)
  with the task's "instances" rng. Their unperturbed prompt (definition + positive examples +
  instance input, Tk-Instruct format) is greedily decoded: the *original prediction* y(x).
- Draw ``K`` perturbed prompts (``num_perturbations``, default 20) with the task's "perturb"
  rng; the same K perturbations of the definition / example inputs serve every instance.
- For instance x and prompt k: ``p_k(x) = exp(mean_t log p(y_t | prompt_k, x, y_<t))``, teacher
  forced on the original prediction re-tokenised as SeqIO does (EOS included); ``p_0`` is the
  same under the unperturbed prompt.
- ``prompt_uncertainty = mean_{x, k=1..K} |p_k(x) - p_0(x)|``;
  ``prediction_probability = mean_x p_0(x)``;
  ``perplexity = mean_x exp(-mean_t log p(y_t | prompt_0, x, y_<t))`` (= mean of 1 / p_0(x));
  ``entropy`` (optional) = mean_x of the mean over target positions of the entropy of the
  next-token distribution under prompt 0 (teacher forced on y(x)).

Tokenisation follows SeqIO: ``ids = vocab.encode(text)``; a sequence longer than the maximum
length is cut to ``ids[:max_len - 1] + [EOS]`` (EOS kept). The saved prompt text
(``save_prompts``) is exactly the string that was tokenised.

Decoder-only models (`DecoderOnlyModel`, LLaMA; `is_decoder_only`) use the same definitions
and formulas with the Self-Instruct / Alpaca prompt and the model's own special ids:

- The prompt is the Stanford Alpaca template (`prompts.render_alpaca`): instruction = the
  task's definition, input = the instance input; no demonstrations (the parts are built with
  0 examples), so the perturbation changes the definition -- the instruction words -- only.
  ``prompts.jsonl`` holds the rendered Alpaca prompt.
- Prompt ids are ``vocab.encode(prompt)`` without special tokens, cut to their *last*
  ``max_source_length - 1`` ids, so that ``bos + prompt`` fits ``max_source_length`` (the cut
  `models.make_prompt_batch` makes for the evaluator's decoding).
- The original prediction is greedily decoded after ``bos + prompt``; it ends at the model's
  EOS (or the first padding id, as the evaluator's `trainer.decode_tokens`), and its text is
  ``vocab.decode`` of the ids before EOS.
- The response is re-tokenised as ``vocab.encode(text)[:max_target_length - 1] + [EOS]``
  (the model's EOS, always present), and ``p_k = exp(mean log p(response ids incl. EOS |
  bos + prompt_k))``, teacher forced on ``bos + prompt_k + response`` with the loss weights on
  the response (`models.make_decoder_only_batch`).
- Scoring rows are bucketed on their total length ``len(prompt) + len(response)`` (the
  number of input positions; ``ScoreConfig.sequence_buckets``, default powers of two up to
  ``max_source_length + max_target_length``); decoding rows on ``1 + len(prompt)`` over the
  source buckets. In ``summary.json``'s padding statistics, "source" then counts the input
  positions of the whole sequence and "target" the scored (response) positions over the
  same slots.
- ``run_args.json`` additionally fingerprints ``prompt_format: "alpaca"`` and the model's
  pad / bos / eos ids (an encoder-decoder run's fingerprint is unchanged).

Edge cases:

- A task with fewer than n instances uses all it has (``n_instances`` records how many); a task
  with none is skipped and listed in ``summary.json`` (``skipped``).
- An empty definition with no example inputs leaves nothing to perturb: the K prompts equal the
  original, so PU is exactly 0 (``|p_k - p_0|`` over identical rows, scored once).

Execution: tasks stream through in fixed chunks of ``tasks_per_chunk`` consecutive pool tasks
(the pool is iterated lazily). In a chunk, all (1+K) x n rows of all tasks are de-duplicated,
grouped by (source bucket, target bucket) -- a few fixed lengths, powers of two by default --
and run in batches of a fixed size through one jitted function whose batch axis is sharded over
the mesh's data axes; each bucket shape compiles once for the whole run. Decoding the originals
is batched the same way.

Resumability: every finished task appends one line to ``scores.jsonl`` (and, with
``save_prompts``, its rows to ``prompts.jsonl`` before that). A restarted run with the same
arguments (``run_args.json`` holds a fingerprint; different arguments are refused) truncates a
torn tail, drops prompt rows of unfinished tasks, and recomputes only chunks that still hold
unfinished tasks -- the whole chunk, so every batch is composed exactly as in an uninterrupted
run and the numbers are bit-identical. At the end, ``scores.jsonl`` is rewritten atomically in
pool order with the Task Map categories, and ``taskmap.csv`` / ``.png`` / ``.svg`` and
``summary.json`` are written.

Multi-host: each host (JAX process) scores the pool tasks ``i`` with ``i % num_hosts ==
host`` on a mesh of its own devices, with no cross-host collective in the loop, journalling
them in ``out_dir/shards/host{k}-of-{n}/`` (``scores.jsonl``, ``skipped.jsonl``,
``prompts.jsonl``, ``run_args.json``, and ``done.json`` with its throughput once its shard is
complete). After a barrier, process 0 merges the journals into ``out_dir`` in pool order and
writes the Task Map and summary (``num_hosts`` and the per-host statistics in ``hosts``). A
resumed run may use another number of hosts: every journal under ``shards/`` counts as done.
Only the batch composition differs from a single-host run, which changes float rounding, not
the numbers (compare with ``rel=1e-4``; predictions and categories are identical in practice).

Output files (in ``out_dir``):

- ``scores.jsonl``: one line per scored task, pool order: index (position in the pool), task,
  prompt_uncertainty, prediction_probability, perplexity, entropy (null unless computed),
  category (Task Map, see `activeit_jax.taskmap`), label ("cls"/"gen"), n_instances,
  n_perturbations. While a run is in progress (or after a kill) the lines are in completion
  order and lack the category.
- ``prompts.jsonl`` (``save_prompts``): one line per (task, instance, perturbation): task,
  instance (id), perturbation (0 = unperturbed, 1..K), source (the exact text tokenised),
  prediction (the original prediction's text), p.
- ``skipped.jsonl``: tasks left out (index, task, reason), e.g. "no instances".
- ``taskmap.csv`` / ``taskmap.png`` / ``taskmap.svg``: the Task Map.
- ``summary.json``: categories and thresholds, skipped tasks, and this call's throughput,
  padding waste and compilation counts (those describe the last call only, so they differ
  between a resumed and an uninterrupted run; every other file is identical).
- ``run_args.json``: the fingerprinted arguments (`ScoreConfig.FINGERPRINTED` + the pool,
  checkpoint and vocabulary paths). Batch sizes, chunking, buckets and the mesh are not
  fingerprinted: changing them on resume is allowed and only changes float rounding.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from activeit_jax import distributed, io_utils
from activeit_jax import perturbation as perturbation_lib
from activeit_jax import taskmap

PAD_ID = 0
EOS_ID = 1

SCORES_FILE = "scores.jsonl"
PROMPTS_FILE = "prompts.jsonl"
RUN_ARGS_FILE = "run_args.json"
SUMMARY_FILE = "summary.json"
SKIPPED_FILE = "skipped.jsonl"
SHARDS_DIR = "shards"
SHARD_DONE_FILE = "done.json"


# =========================================================================== formulas


def sequence_probability(log_prob_sum: np.ndarray, num_tokens: np.ndarray) -> np.ndarray:
    """exp(mean token log-probability) of each sequence.

    Args:
      log_prob_sum: [...] summed target-token log-probabilities.
      num_tokens: [...] number of target tokens (>= 1; EOS counts).

    Returns:
      [...] float64 probabilities in [0, 1].
    """
    return np.exp(np.asarray(log_prob_sum, np.float64) / np.asarray(num_tokens, np.float64))


def prompt_uncertainty(p: np.ndarray) -> float:
    """Mean over instances and perturbations of |p_k(x) - p_0(x)|.

    Args:
      p: [n, 1 + K]; column 0 holds p_0 (unperturbed prompt), columns 1..K the perturbations.

    Returns:
      The task's prompt uncertainty (0.0 when K == 0).
    """
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"p must be [n>0, 1+K], got {p.shape}")
    if p.shape[1] == 1:
        return 0.0
    return float(np.mean(np.abs(p[:, 1:] - p[:, :1])))


def prediction_probability(p: np.ndarray) -> float:
    """Mean over instances of p_0(x). `p` as in `prompt_uncertainty`."""
    return float(np.mean(np.asarray(p, np.float64)[:, 0]))


def mean_perplexity(log_prob_sum0: np.ndarray, num_tokens0: np.ndarray) -> float:
    """Mean over instances of exp(mean token NLL) of the original prediction.

    Args:
      log_prob_sum0: [n] summed log-probabilities under the unperturbed prompt.
      num_tokens0: [n] target token counts.
    """
    nll = -np.asarray(log_prob_sum0, np.float64) / np.asarray(num_tokens0, np.float64)
    return float(np.mean(np.exp(nll)))


def task_metrics(log_prob_sum: np.ndarray, num_tokens: np.ndarray,
                 entropy_sum: np.ndarray | None = None) -> dict[str, float | None]:
    """All per-task numbers from the per-row sums.

    Args:
      log_prob_sum: [n, 1 + K] summed target log-probabilities (column 0 = unperturbed).
      num_tokens: [n, 1 + K] target token counts (equal along a row: same target).
      entropy_sum: [n] summed next-token entropies under prompt 0, or None.

    Returns:
      {prompt_uncertainty, prediction_probability, perplexity, entropy}.
    """
    p = sequence_probability(log_prob_sum, num_tokens)
    entropy = None
    if entropy_sum is not None:
        entropy = float(np.mean(np.asarray(entropy_sum, np.float64)
                                / np.asarray(num_tokens, np.float64)[:, 0]))
    return {
        "prompt_uncertainty": prompt_uncertainty(p),
        "prediction_probability": prediction_probability(p),
        "perplexity": mean_perplexity(log_prob_sum[:, 0], num_tokens[:, 0]),
        "entropy": entropy,
    }


# =========================================================================== tokenisation


def truncate_ids(ids: Sequence[int], max_length: int, eos_id: int = EOS_ID) -> list[int]:
    """SeqIO's cut with EOS kept: `ids[:max_length - 1] + [eos_id]` (ids without EOS)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    return list(ids[:max_length - 1]) + [eos_id]


def keep_last_ids(ids: Sequence[int], max_length: int) -> list[int]:
    """The last `max_length` ids (a decoder-only prompt keeps its end, which conditions the
    response)."""
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    ids = list(ids)
    return ids[max(len(ids) - max_length, 0):]


def is_decoder_only(model) -> bool:
    """True for decoder-only wrappers (`DecoderOnlyModel`, kind "llama")."""
    return getattr(model, "kind", None) == "llama"


def cut_generated(ids: Sequence[int], eos_id: int, pad_id: int = PAD_ID) -> list[int]:
    """Decoder-only generated ids up to and including the first EOS; a padding id ends the
    row too (excluded), as `trainer.decode_tokens` reads predictions."""
    out = []
    for token in ids:
        token = int(token)
        if token == pad_id:
            break
        out.append(token)
        if token == eos_id:
            break
    return out


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `max_length` (always included as the last one)."""
    out, length = [], smallest
    while length < max_length:
        out.append(length)
        length *= 2
    out.append(max_length)
    return tuple(out)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


# =========================================================================== config


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """What to compute (fingerprinted) and how to run it (not fingerprinted).

    Attributes:
      num_instances: n, instances scored per task.
      num_perturbations: K, perturbed prompts per task.
      seed: seeds instance choice and perturbations (per task, via a stable hash).
      perturbation: registry name in `activeit_jax.perturbation`.
      perturbation_options: options of that perturbation, as sorted (key, value) pairs.
      num_pos_examples: positive examples in the Tk-Instruct prompt.
      max_source_length / max_target_length: SeqIO lengths (cut with EOS kept).
      max_decode_length: greedy decoding length of the originals.
      fit_examples: add examples only while the tokenised source fits (Tk-Instruct); when
        False, all `num_pos_examples` are added and the source is cut.
      compute_entropy: also compute the mean token entropy baseline.
      save_prompts: also write prompts.jsonl.
      batch_size / decode_batch_size: rows per jitted call (rounded up to a multiple of the
        data-parallel size); decode_batch_size None = batch_size.
      tasks_per_chunk: consecutive pool tasks processed together.
      source_buckets / target_buckets: padded lengths (default: powers of two).
      sequence_buckets: decoder-only scoring: padded lengths of prompt + response (default:
        powers of two up to max_source_length + max_target_length).
      thresholds: Task Map thresholds.
    """
    num_instances: int = 10
    num_perturbations: int = 20
    seed: int = 0
    perturbation: str = "drop"
    perturbation_options: tuple[tuple[str, Any], ...] = (("rate", 0.2),)
    num_pos_examples: int = 2
    max_source_length: int = 1024
    max_target_length: int = 128
    max_decode_length: int = 128
    fit_examples: bool = True
    compute_entropy: bool = False
    save_prompts: bool = False
    batch_size: int = 64
    decode_batch_size: int | None = None
    tasks_per_chunk: int = 16
    source_buckets: tuple[int, ...] | None = None
    target_buckets: tuple[int, ...] | None = None
    sequence_buckets: tuple[int, ...] | None = None
    thresholds: taskmap.TaskMapThresholds = taskmap.TaskMapThresholds()

    # Fields that change the results; the rest only change speed / float rounding.
    FINGERPRINTED = ("num_instances", "num_perturbations", "seed", "perturbation",
                     "perturbation_options", "num_pos_examples", "max_source_length",
                     "max_target_length", "max_decode_length", "fit_examples",
                     "compute_entropy", "save_prompts")

    def __post_init__(self):
        if self.num_instances < 1:
            raise ValueError("num_instances must be >= 1")
        if self.num_perturbations < 0:
            raise ValueError("num_perturbations must be >= 0")
        if (self.tasks_per_chunk < 1 or self.batch_size < 1
                or (self.decode_batch_size is not None and self.decode_batch_size < 1)):
            raise ValueError("tasks_per_chunk, batch_size and decode_batch_size must be >= 1")

    @property
    def src_buckets(self) -> tuple[int, ...]:
        buckets = self.source_buckets or default_buckets(self.max_source_length)
        return tuple(sorted(set(min(b, self.max_source_length) for b in buckets)
                            | {self.max_source_length}))

    @property
    def tgt_buckets(self) -> tuple[int, ...]:
        buckets = self.target_buckets or default_buckets(self.max_target_length, smallest=8)
        return tuple(sorted(set(min(b, self.max_target_length) for b in buckets)
                            | {self.max_target_length}))

    @property
    def seq_buckets(self) -> tuple[int, ...]:
        """Decoder-only: buckets of the input positions of prompt + response (at most
        (max_source_length - 1) + max_target_length; the last bucket is their sum)."""
        top = self.max_source_length + self.max_target_length
        buckets = self.sequence_buckets or default_buckets(top)
        return tuple(sorted(set(min(b, top) for b in buckets) | {top}))

    def fingerprint_args(self) -> dict[str, Any]:
        out = {}
        for name in self.FINGERPRINTED:
            value = getattr(self, name)
            out[name] = [list(v) for v in value] if name == "perturbation_options" else value
        return out


def fingerprint(args: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `args`."""
    text = json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# =========================================================================== device side


def _data_parallel_size(sharding) -> int:
    """Number of batch shards of a `[B, ...]` sharding (rows per call must divide by it)."""
    spec = sharding.spec[0] if len(sharding.spec) else None
    if spec is None:
        return 1
    axes = spec if isinstance(spec, tuple) else (spec,)
    return int(np.prod([sharding.mesh.shape[a] for a in axes]))


@dataclasses.dataclass
class PaddingStats:
    """Real vs padded token slots over all jitted calls (filler rows count as padding)."""
    calls: int = 0
    rows: int = 0
    row_slots: int = 0
    source_tokens: int = 0
    source_slots: int = 0
    target_tokens: int = 0
    target_slots: int = 0

    def add(self, src_lens: Sequence[int], tgt_lens: Sequence[int], batch: int, s: int,
            t: int) -> None:
        self.calls += 1
        self.rows += len(src_lens)
        self.row_slots += batch
        self.source_tokens += int(sum(src_lens))
        self.source_slots += batch * s
        self.target_tokens += int(sum(tgt_lens))
        self.target_slots += batch * t

    def as_dict(self) -> dict[str, float]:
        def waste(real, slots):
            return 0.0 if slots == 0 else 1.0 - real / slots
        return {"calls": self.calls, "rows": self.rows,
                "source_tokens": self.source_tokens, "target_tokens": self.target_tokens,
                "source_padding_waste": waste(self.source_tokens, self.source_slots),
                "target_padding_waste": waste(self.target_tokens, self.target_slots),
                "filler_row_waste": waste(self.rows, self.row_slots)}


class _Pending:
    """Results of dispatched (asynchronous) jitted calls, gathered on `result()`."""

    def __init__(self, num_rows: int, parts: list[tuple[list[int], Any]],
                 combine: Callable[[int, list[tuple[list[int], Any]]], Any]):
        self._num_rows, self._parts, self._combine = num_rows, parts, combine

    def result(self):
        return self._combine(self._num_rows, self._parts)


class RowScorer:
    """Runs rows through jitted, sharded scoring and greedy decoding, one shape per bucket.

    Args:
      model: an `EncoderDecoderModel` or a `DecoderOnlyModel` (`token_log_probs`,
        `greedy_decode`; a decoder-only model's config gives its pad / bos / eos ids).
      params: its parameters, already placed on `mesh` (their shardings are reused).
      mesh: a `jax.sharding.Mesh`; the batch axis is sharded over its data axes.
      batch_size / decode_batch_size: rows per call, rounded up to the data-parallel size.
      source_buckets / target_buckets: padded lengths (decoder-only: source buckets pad
        `bos + prompt` for decoding; target buckets are unused).
      max_decode_length: decoding length.
      compute_entropy: also return per-row summed next-token entropies (from
        `model.logits(params, batch) -> [B, T, V]`).
      sequence_buckets: decoder-only scoring: padded lengths of prompt + response (the input
        positions); required for a decoder-only model.
    """

    def __init__(self, model, params, mesh, *, batch_size: int, decode_batch_size: int,
                 source_buckets: Sequence[int], target_buckets: Sequence[int],
                 max_decode_length: int, compute_entropy: bool = False,
                 sequence_buckets: Sequence[int] | None = None):
        import jax
        import jax.numpy as jnp
        from activeit_jax import partitioning

        self.decoder_only = is_decoder_only(model)
        if self.decoder_only:
            if not sequence_buckets:
                raise ValueError("a decoder-only model needs sequence_buckets")
            self.pad_id = int(model.config.pad_id)
            bos = model.config.bos_id  # None: the model takes no BOS (e.g. SmolLM2)
            self.bos_id = None if bos is None else int(bos)
            self.eos_id = int(model.config.eos_id)
        else:
            self.pad_id, self.bos_id, self.eos_id = PAD_ID, None, EOS_ID
        self.sequence_buckets = tuple(sequence_buckets or ())
        self.model, self.params, self.mesh = model, params, mesh
        self.rules = getattr(model, "logical_axis_rules", None)
        self._matrix_sharding = partitioning.data_sharding(mesh, 2, self.rules)
        self._row_sharding = partitioning.data_sharding(mesh, 1, self.rules)
        dp = _data_parallel_size(self._row_sharding)
        self.batch_size = int(math.ceil(batch_size / dp) * dp)
        self.decode_batch_size = int(math.ceil(decode_batch_size / dp) * dp)
        self.source_buckets, self.target_buckets = tuple(source_buckets), tuple(target_buckets)
        self.max_decode_length = int(max_decode_length)
        self.compute_entropy = compute_entropy
        param_shardings = jax.tree.map(lambda x: x.sharding, params)
        features = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                    "decoder_loss_weights")
        # What the decoding batch holds: the encoder input, or bos + prompt.
        self._decode_feature = "encoder_input_tokens"
        if self.decoder_only:
            features = features[1:]
            self._decode_feature = "decoder_input_tokens"
        batch_shardings = {k: self._matrix_sharding for k in features}

        def score_fn(params, batch):
            weights = batch["decoder_loss_weights"].astype(jnp.float32)
            if not compute_entropy:
                log_probs = model.token_log_probs(params, batch)
                return (log_probs * weights).sum(-1), weights.sum(-1)
            # One logits computation serves both the target log-probs and the entropies.
            log_z = jax.nn.log_softmax(model.logits(params, batch).astype(jnp.float32), -1)
            targets = batch["decoder_target_tokens"].astype(jnp.int32)
            log_probs = jnp.take_along_axis(log_z, targets[..., None], axis=-1)[..., 0]
            entropy = -(jnp.exp(log_z) * log_z).sum(-1)
            return ((log_probs * weights).sum(-1), weights.sum(-1),
                    (entropy * weights).sum(-1))

        def decode_fn(params, batch):
            return model.greedy_decode(params, batch, self.max_decode_length)

        n_out = 3 if compute_entropy else 2
        self._score = jax.jit(score_fn, in_shardings=(param_shardings, batch_shardings),
                              out_shardings=(self._row_sharding,) * n_out)
        self._decode = jax.jit(decode_fn, in_shardings=(
            param_shardings, {self._decode_feature: self._matrix_sharding}),
            out_shardings=self._matrix_sharding)
        self.score_padding = PaddingStats()
        self.decode_padding = PaddingStats()
        # Calls per padded shape: (batch, source, target) / (batch, source).
        self.score_shapes: collections.Counter = collections.Counter()
        self.decode_shapes: collections.Counter = collections.Counter()

    # ------------------------------------------------------------------ counters

    @property
    def num_compilations(self) -> int:
        """Distinct shapes compiled so far (scoring + decoding), from jit's own cache."""
        try:
            return int(self._score._cache_size() + self._decode._cache_size())
        except AttributeError:  # pragma: no cover - older jax
            return len(self.score_shapes) + len(self.decode_shapes)

    # ------------------------------------------------------------------ batching

    @staticmethod
    def _group(keys: Sequence[Any], batch_size: int) -> list[tuple[Any, list[int]]]:
        """Row indices grouped by key (sorted keys, stable order within), cut into batches."""
        order = sorted(range(len(keys)), key=lambda i: keys[i])
        out = []
        for key, group in itertools.groupby(order, key=lambda i: keys[i]):
            group = list(group)
            for start in range(0, len(group), batch_size):
                out.append((key, group[start:start + batch_size]))
        return out

    def score_async(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> _Pending:
        """Dispatches scoring of (source ids, target ids) rows; ids already end with EOS.

        Decoder-only: (prompt ids without bos, response ids ending with the model's EOS);
        each row is scored as `bos + prompt + response`, on the response positions.

        Returns:
          A pending result; `.result()` -> (log_prob_sum [N], num_tokens [N],
          entropy_sum [N] or None), float64 numpy.
        """
        import jax
        from activeit_jax import partitioning
        if self.decoder_only:
            return self._score_decoder_only_async(rows)
        keys = [(bucket_for(len(s), self.source_buckets), bucket_for(len(t), self.target_buckets))
                for s, t in rows]
        parts = []
        for (s_len, t_len), idx in self._group(keys, self.batch_size):
            b = self.batch_size
            enc = np.zeros((b, s_len), np.int32)
            tgt = np.zeros((b, t_len), np.int32)
            for j, i in enumerate(idx):
                src, target = rows[i]
                enc[j, :len(src)] = src
                tgt[j, :len(target)] = target
            if len(idx) < b:  # filler rows: copies of the first row, ignored
                enc[len(idx):] = enc[0]
                tgt[len(idx):] = tgt[0]
            dec_in = np.zeros_like(tgt)
            dec_in[:, 1:] = tgt[:, :-1]
            weights = (tgt != PAD_ID).astype(np.int32)
            batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
                     "decoder_target_tokens": tgt, "decoder_loss_weights": weights}
            batch = jax.device_put(batch, self._matrix_sharding)
            self.score_shapes[(b, s_len, t_len)] += 1
            self.score_padding.add([len(rows[i][0]) for i in idx],
                                   [len(rows[i][1]) for i in idx], b, s_len, t_len)
            with partitioning.mesh_context(self.mesh, self.rules):
                parts.append((idx, self._score(self.params, batch)))

        return _Pending(len(rows), parts, self._combine_scores)

    def _combine_scores(self, num_rows: int, parts: list[tuple[list[int], Any]]):
        n_out = 3 if self.compute_entropy else 2
        out = [np.zeros(num_rows, np.float64) for _ in range(n_out)]
        for idx, arrays in parts:
            for o, arr in zip(out, arrays):
                o[idx] = np.asarray(arr, np.float64)[:len(idx)]
        return out[0], out[1], (out[2] if self.compute_entropy else None)

    def _score_decoder_only_async(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]]
                                  ) -> _Pending:
        """`score_async` for a decoder-only model: one bucket per prompt + response length."""
        import jax
        from activeit_jax import partitioning
        from activeit_jax.models import make_decoder_only_batch
        for prompt, response in rows:
            if not response or response[-1] != self.eos_id:
                raise ValueError("a decoder-only response must end with the model's EOS")
        keys = [bucket_for(len(p) + len(r), self.sequence_buckets) for p, r in rows]
        parts = []
        for length, idx in self._group(keys, self.batch_size):
            b = self.batch_size
            chosen = [rows[i] for i in idx]
            chosen += [chosen[0]] * (b - len(idx))  # filler rows: copies of the first, ignored
            # The response's EOS is added back by the builder (after the response ids).
            batch = make_decoder_only_batch([p for p, _ in chosen], [r[:-1] for _, r in chosen],
                                            length, bos_id=self.bos_id, eos_id=self.eos_id,
                                            pad_id=self.pad_id)
            batch = jax.device_put(batch, self._matrix_sharding)
            self.score_shapes[(b, length)] += 1
            self.score_padding.add([len(rows[i][0]) + len(rows[i][1]) for i in idx],
                                   [len(rows[i][1]) for i in idx], b, length, length)
            with partitioning.mesh_context(self.mesh, self.rules):
                parts.append((idx, self._score(self.params, batch)))
        return _Pending(len(rows), parts, self._combine_scores)

    def decode_async(self, sources: Sequence[Sequence[int]]) -> _Pending:
        """Dispatches greedy decoding of source id lists.

        Returns:
          A pending result; `.result()` -> list of generated id lists, cut after the first
          EOS (EOS included when generated).
        """
        import jax
        from activeit_jax import partitioning
        if self.decoder_only:
            return self._decode_decoder_only_async(sources)
        keys = [bucket_for(len(s), self.source_buckets) for s in sources]
        parts = []
        for s_len, idx in self._group(keys, self.decode_batch_size):
            b = self.decode_batch_size
            enc = np.zeros((b, s_len), np.int32)
            for j, i in enumerate(idx):
                enc[j, :len(sources[i])] = sources[i]
            if len(idx) < b:
                enc[len(idx):] = enc[0]
            batch = jax.device_put({"encoder_input_tokens": enc}, self._matrix_sharding)
            self.decode_shapes[(b, s_len)] += 1
            self.decode_padding.add([len(sources[i]) for i in idx], [], b, s_len, 0)
            with partitioning.mesh_context(self.mesh, self.rules):
                parts.append((idx, self._decode(self.params, batch)))

        def combine(num_rows, parts):
            out: list[list[int]] = [[] for _ in range(num_rows)]
            for idx, arr in parts:
                arr = np.asarray(arr)
                for j, i in enumerate(idx):
                    ids = arr[j].tolist()
                    if EOS_ID in ids:
                        ids = ids[:ids.index(EOS_ID) + 1]
                    else:
                        ids = [t for t in ids if t != PAD_ID]
                    out[i] = ids
            return out
        return _Pending(len(sources), parts, combine)

    def _decode_decoder_only_async(self, prompts: Sequence[Sequence[int]]) -> _Pending:
        """`decode_async` for a decoder-only model: prompts (no bos) -> the continuation, cut
        by `cut_generated` (EOS included when generated)."""
        import jax
        from activeit_jax import partitioning
        from activeit_jax.models import make_prompt_batch
        keys = [bucket_for(len(p) + 1, self.source_buckets) for p in prompts]
        parts = []
        for s_len, idx in self._group(keys, self.decode_batch_size):
            b = self.decode_batch_size
            chosen = [prompts[i] for i in idx]
            chosen += [chosen[0]] * (b - len(idx))
            batch = make_prompt_batch(chosen, s_len, bos_id=self.bos_id, pad_id=self.pad_id)
            batch = jax.device_put(batch, self._matrix_sharding)
            self.decode_shapes[(b, s_len)] += 1
            self.decode_padding.add([len(prompts[i]) + 1 for i in idx], [], b, s_len, 0)
            with partitioning.mesh_context(self.mesh, self.rules):
                parts.append((idx, self._decode(self.params, batch)))

        def combine(num_rows, parts):
            out: list[list[int]] = [[] for _ in range(num_rows)]
            for idx, arr in parts:
                arr = np.asarray(arr)
                for j, i in enumerate(idx):
                    out[i] = cut_generated(arr[j].tolist(), self.eos_id, self.pad_id)
            return out
        return _Pending(len(prompts), parts, combine)


# =========================================================================== planning


@dataclasses.dataclass(frozen=True)
class SkippedTask:
    """A pool entry that cannot be scored (e.g. a task file without instances); the pool
    iterator yields it in the task's place so it is recorded in skipped.jsonl."""
    name: str
    reason: str
    instances: tuple = ()


@dataclasses.dataclass(frozen=True)
class TaskStub:
    """A pool entry that another host scores: only its name is needed here (the duplicate
    check). A sharded pool reader yields it instead of loading the task."""
    name: str


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
        return f"host{self.index}-of-{self.num_shards}"


@dataclasses.dataclass
class TaskPlan:
    """Everything a task needs on the host: chosen instances and (1+K) prompts each."""
    index: int
    task: Any
    instances: list[Any]
    sources: list[list[str]] = dataclasses.field(default_factory=list)       # [n][1+K]
    source_ids: list[list[list[int]]] = dataclasses.field(default_factory=list)
    predictions: list[str] = dataclasses.field(default_factory=list)          # [n]
    target_ids: list[list[int]] = dataclasses.field(default_factory=list)     # [n]


def choose_instances(task, num_instances: int, seed: int) -> list[Any]:
    """n instances of `task` chosen with its "instances" rng, in their original order."""
    instances = list(task.instances)
    if len(instances) <= num_instances:
        return instances
    rng = perturbation_lib.task_rng(seed, task.name, "instances")
    chosen = np.sort(rng.choice(len(instances), size=num_instances, replace=False))
    return [instances[i] for i in chosen]


def _render_alpaca(parts, fits=None) -> str:
    """`prompts.render_alpaca` with the `(parts, fits)` signature of a scorer render_fn."""
    del fits  # the Alpaca prompt has no demonstrations to fit
    from activeit_jax.data import prompts
    return prompts.render_alpaca(parts)


class PromptBuilder:
    """Builds and tokenises the (1+K) sources of each chosen instance of a task.

    Args:
      vocab: a seqio vocabulary (`encode`, `decode`).
      config: the scoring config.
      parts_fn: `(task, instance, num_pos_examples) -> PromptParts` (data layer).
      render_fn: `(parts, fits) -> str` (data layer's `render_tk_instruct`; decoder-only:
        the Alpaca template).
      decoder_only: build decoder-only prompts (Alpaca template, no demonstrations, prompt ids
        without special tokens keeping their last `max_source_length - 1`, responses ending
        with `eos_id`); see the module docstring.
      eos_id: the EOS appended to targets (T5: 1; decoder-only: the model's).
    """

    def __init__(self, vocab, config: ScoreConfig,
                 parts_fn: Callable[..., Any] | None = None,
                 render_fn: Callable[..., str] | None = None, *,
                 decoder_only: bool = False, eos_id: int = EOS_ID):
        if parts_fn is None or render_fn is None:
            from activeit_jax.data import prompts
            parts_fn = parts_fn or prompts.tk_instruct_parts
            render_fn = render_fn or (_render_alpaca if decoder_only
                                      else prompts.render_tk_instruct)
        self.vocab, self.config = vocab, config
        self.parts_fn, self.render_fn = parts_fn, render_fn
        self.decoder_only, self.eos_id = decoder_only, int(eos_id)
        # Decoder-only prompts show no demonstrations: only the definition is perturbed.
        self.num_pos_examples = 0 if decoder_only else config.num_pos_examples
        self.perturb = perturbation_lib.get_perturbation(
            config.perturbation, **dict(config.perturbation_options))
        self._fits = None
        if config.fit_examples and not decoder_only:
            from activeit_jax.data import prompts
            self._fits = prompts.make_fits(vocab, config.max_source_length)

    def encode_source(self, text: str) -> list[int]:
        ids = self.vocab.encode(text)
        if self.decoder_only:  # bos + prompt fits max_source_length
            return keep_last_ids(ids, self.config.max_source_length - 1)
        return truncate_ids(ids, self.config.max_source_length)

    def encode_target(self, text: str) -> list[int]:
        return truncate_ids(self.vocab.encode(text), self.config.max_target_length, self.eos_id)

    def prediction_text(self, generated: Sequence[int]) -> str:
        """The text of a generated id list (as `RowScorer.decode_async` returns it)."""
        if self.decoder_only:
            return self.vocab.decode([t for t in generated if t != self.eos_id])
        return self.vocab.decode(generated)

    def perturbed_instructions(self, task, template) -> list[tuple[str, tuple[str, ...]]]:
        """The K perturbed (definition, example_inputs) of a task, drawn in order k=0..K-1."""
        rng = perturbation_lib.task_rng(self.config.seed, task.name, "perturb")
        out = []
        for k in range(self.config.num_perturbations):
            parts = self.perturb(template, rng, task_name=task.name, index=k)
            out.append((parts.definition, tuple(parts.example_inputs)))
        return out

    def plan(self, index: int, task) -> TaskPlan:
        """Chooses instances and renders / tokenises all (1+K) sources of each."""
        cfg = self.config
        if isinstance(task, SkippedTask):
            return TaskPlan(index=index, task=task, instances=[])
        instances = choose_instances(task, cfg.num_instances, cfg.seed)
        plan = TaskPlan(index=index, task=task, instances=instances)
        if not instances:
            return plan
        template = self.parts_fn(task, instances[0], self.num_pos_examples)
        variants = self.perturbed_instructions(task, template)
        cache: dict[str, list[int]] = {}
        for instance in instances:
            base = self.parts_fn(task, instance, self.num_pos_examples)
            all_parts = [base] + [dataclasses.replace(base, definition=d, example_inputs=e)
                                  for d, e in variants]
            texts = [self.render_fn(parts, self._fits) for parts in all_parts]
            ids = []
            for text in texts:
                if text not in cache:
                    cache[text] = self.encode_source(text)
                ids.append(cache[text])
            plan.sources.append(texts)
            plan.source_ids.append(ids)
        return plan


# =========================================================================== pool scoring


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


class ResumeMismatchError(ValueError):
    """`out_dir` holds a scoring run made with other arguments (or of unknown arguments)."""


def prepare_run_dir(out_dir: str, run_args: dict[str, Any]) -> None:
    """Creates `out_dir`, checks / writes the run fingerprint, repairs torn journal tails.

    Raises:
      ResumeMismatchError: `out_dir` holds a run with different arguments.
    """
    os.makedirs(out_dir, exist_ok=True)
    check_run_args(out_dir, run_args)
    for name in (SCORES_FILE, PROMPTS_FILE, SKIPPED_FILE):
        io_utils.truncate_partial_tail(os.path.join(out_dir, name))


def check_run_args(out_dir: str, run_args: dict[str, Any], write: bool = True) -> None:
    """Checks `out_dir/run_args.json` against `run_args`; writes it when absent and `write`.

    Raises:
      ResumeMismatchError: `out_dir` holds a run with different arguments.
    """
    path = os.path.join(out_dir, RUN_ARGS_FILE)
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
        if os.path.exists(os.path.join(out_dir, SCORES_FILE)):
            raise ResumeMismatchError(
                f"{out_dir} has {SCORES_FILE} but no {RUN_ARGS_FILE}; refusing to resume a run "
                "whose arguments are unknown")
        if write:
            io_utils.atomic_write_json(path, {"fingerprint": fp, "args": run_args})


def _append_jsonl_lines(path: str, records: Sequence[dict[str, Any]]) -> None:
    """Appends several JSON lines with one write and one fsync (a torn tail is repaired on
    resume by `io_utils.truncate_partial_tail`)."""
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _drop_orphan_prompts(path: str, done: set[str]) -> None:
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


@dataclasses.dataclass
class ScoreHooks:
    """Test / monitoring hooks: `after_task(name, n_scored)` runs after each task's lines are
    appended (n_scored counts the tasks scored by this call)."""
    after_task: Callable[[str, int], None] | None = None


def score_pool(model, params, vocab, tasks: Iterable[Any], out_dir: str,
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
      model: an `EncoderDecoderModel`, or a `DecoderOnlyModel` (Alpaca prompts, see the
        module docstring).
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
      total: number of tasks in the pool, for the progress bar's ETA (optional).
      parts_fn / render_fn: prompt construction (default: the data layer's Tk-Instruct;
        decoder-only: the Alpaca template).
      hooks: callbacks (tests simulate a kill with `after_task`).
      progress: show a tqdm bar.
      scorer: a ready `RowScorer` (reused across calls, e.g. by the benchmark).
      shard: this host's share of the pool (default `ShardInfo.of_process()`).

    Returns:
      The summary dict (also written to summary.json). A shard that finishes in a
      single-process run before the other shards did returns its own statistics only.
    """
    import jax

    from activeit_jax import partitioning
    shard = ShardInfo.of_process() if shard is None else shard
    sharded = shard.num_shards > 1
    if jax.process_count() > 1 and not sharded:
        raise ValueError(f"{jax.process_count()} processes would all score the whole pool into "
                         f"{out_dir}: give each its ShardInfo (the default)")
    primary = jax.process_index() == 0
    if scorer is None:
        if mesh is None:
            mesh = partitioning.local_mesh({"data": -1, "fsdp": 1, "model": 1})
        elif partitioning.spans_processes(mesh):
            mesh, params = _localize(model, params, mesh)
    decoder_only = scorer.decoder_only if scorer is not None else is_decoder_only(model)
    args = {**(run_args or {}), **config.fingerprint_args()}
    if decoder_only:
        ids = model.config if scorer is None else scorer.model.config
        args.update(prompt_format="alpaca", special_ids={
            "pad": int(ids.pad_id), "bos": None if ids.bos_id is None else int(ids.bos_id),
            "eos": int(ids.eos_id)})
    if sharded:
        check_run_args(out_dir, args, write=primary)
        journal_dir = shard_dir(out_dir, shard)
        prepare_run_dir(journal_dir, args)
        _remove(os.path.join(journal_dir, SHARD_DONE_FILE))
    else:
        prepare_run_dir(out_dir, args)
        journal_dir = out_dir
    distributed.barrier("activeit_score_prepared")  # every journal's torn tail is repaired ...
    done = finished_tasks(out_dir)
    distributed.barrier("activeit_score_started")  # ... and read before any host appends again.
    scores_path = os.path.join(journal_dir, SCORES_FILE)
    prompts_path = os.path.join(journal_dir, PROMPTS_FILE)
    skipped_path = os.path.join(journal_dir, SKIPPED_FILE)
    if config.save_prompts:
        _drop_orphan_prompts(prompts_path, done)

    if scorer is None:
        scorer = RowScorer(model, params, mesh, batch_size=config.batch_size,
                           decode_batch_size=config.decode_batch_size or config.batch_size,
                           source_buckets=config.src_buckets,
                           target_buckets=config.tgt_buckets,
                           max_decode_length=config.max_decode_length,
                           compute_entropy=config.compute_entropy,
                           sequence_buckets=config.seq_buckets if decoder_only else None)
    elif (scorer.compute_entropy != config.compute_entropy
          or scorer.max_decode_length != config.max_decode_length):
        raise ValueError("the given scorer was built for another compute_entropy / "
                         "max_decode_length than `config`")
    builder = PromptBuilder(vocab, config, parts_fn, render_fn, decoder_only=decoder_only,
                            eos_id=scorer.eos_id)

    bar = None
    if progress:
        from tqdm import tqdm
        if sharded:
            bar = tqdm(total=shard.count(total) if total else None, unit="task",
                       dynamic_ncols=True, desc=f"score {shard.name}")
        else:
            bar = tqdm(total=total, initial=len(done) if total else 0, unit="task",
                       dynamic_ncols=True, desc="score")
    seen: set[str] = set()
    counters = {"rows": 0, "unique_rows": 0, "tasks_scored": 0,
                "chunks_computed": 0, "seconds_wait_decode": 0.0,
                "seconds_wait_score": 0.0, "seconds_host": 0.0}
    start = time.perf_counter()

    def owned_tasks():
        """(pool index, task) of this shard; every name is checked for duplicates."""
        for index, task in enumerate(tasks):
            if task.name in seen:
                raise ValueError(f"task {task.name!r} appears twice in the pool")
            seen.add(task.name)
            if shard.owns(index):
                if isinstance(task, TaskStub):
                    raise ValueError(f"pool entry {index} ({task.name}) belongs to this shard "
                                     f"({shard.name}) but the pool reader gave only a stub")
                if sharded and bar is not None and task.name in done:
                    bar.update(1)
                yield index, task

    # Chunks with work, planned one ahead so host prep overlaps device compute.
    def planned_chunks():
        for chunk in _chunks(owned_tasks(), config.tasks_per_chunk):
            if all(task.name in done for _, task in chunk):
                continue
            t0 = time.perf_counter()
            plans = [builder.plan(i, task) for i, task in chunk]
            counters["seconds_host"] += time.perf_counter() - t0
            yield plans

    def dispatch_decode(plans):
        if plans is None:
            return None
        originals = [ids[0] for plan in plans for ids in plan.source_ids]
        unique, pos = _dedup([tuple(s) for s in originals])
        return scorer.decode_async(unique), pos

    # Pipeline: while the device scores chunk j, the host plans chunk j+1 and dispatches its
    # decoding, so the device always has queued work.
    chunk_iter = planned_chunks()
    plans = next(chunk_iter, None)
    decoding = dispatch_decode(plans)
    while plans is not None:
        counters["chunks_computed"] += 1
        # 1) greedy predictions of the originals -> re-tokenised targets.
        t0 = time.perf_counter()
        pending, pos = decoding
        generated = pending.result()
        counters["seconds_wait_decode"] += time.perf_counter() - t0
        k = 0
        for plan in plans:
            for _ in plan.instances:
                text = builder.prediction_text(generated[pos[k]])
                plan.predictions.append(text)
                plan.target_ids.append(builder.encode_target(text))
                k += 1
        # 2) teacher-forced scoring of every (instance, prompt) row.
        row_keys = [(tuple(src), tuple(plan.target_ids[i]))
                    for plan in plans for i in range(len(plan.instances))
                    for src in plan.source_ids[i]]
        unique, pos = _dedup(row_keys)
        pending = scorer.score_async(unique)
        next_plans = next(chunk_iter, None)
        decoding = dispatch_decode(next_plans)
        t0 = time.perf_counter()
        logp, ntok, ent = pending.result()
        counters["seconds_wait_score"] += time.perf_counter() - t0
        counters["rows"] += len(row_keys)
        counters["unique_rows"] += len(unique)
        # 3) per-task numbers, appended in pool order.
        r = 0
        width = config.num_perturbations + 1
        for plan in plans:
            name = plan.task.name
            n = len(plan.instances)
            if name in done:
                r += n * width
                continue
            if n == 0:
                reason = getattr(plan.task, "reason", "no instances")
                io_utils.append_jsonl_line(skipped_path, {"index": plan.index, "task": name,
                                                          "reason": reason})
                done.add(name)
                if bar is not None:
                    bar.update(1)
                continue
            sel = np.asarray(pos[r:r + n * width])
            r += n * width
            lp = logp[sel].reshape(n, width)
            nt = ntok[sel].reshape(n, width)
            es = ent[sel].reshape(n, width)[:, 0] if ent is not None else None
            metrics = task_metrics(lp, nt, es)
            if config.save_prompts:
                p = sequence_probability(lp, nt)
                _append_jsonl_lines(prompts_path, [
                    {"task": name, "instance": instance.id, "perturbation": kk,
                     "source": plan.sources[i][kk], "prediction": plan.predictions[i],
                     "p": float(p[i, kk])}
                    for i, instance in enumerate(plan.instances) for kk in range(width)])
            record = {"index": plan.index, "task": name, **metrics,
                      "label": getattr(plan.task, "label", "gen"),
                      "n_instances": n, "n_perturbations": config.num_perturbations}
            io_utils.append_jsonl_line(scores_path, record)
            done.add(name)
            counters["tasks_scored"] += 1
            if bar is not None:
                bar.update(1)
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(rows_per_s=f"{counters['rows'] / elapsed:.1f}", refresh=False)
            if hooks.after_task is not None:
                hooks.after_task(name, counters["tasks_scored"])
        plans = next_plans
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    stats = {
        "seconds": elapsed, **counters,
        "rows_per_s": counters["rows"] / elapsed if elapsed > 0 else 0.0,
        "num_compilations": scorer.num_compilations,
        "score_shapes": sorted(scorer.score_shapes),
        "decode_shapes": sorted(scorer.decode_shapes),
        "score_padding": scorer.score_padding.as_dict(),
        "decode_padding": scorer.decode_padding.as_dict()}
    if not sharded:
        if _shard_dirs(out_dir):  # resuming a multi-host run on one host
            merge_journals(out_dir)
        return finalize(out_dir, config, extra=stats)
    io_utils.atomic_write_json(os.path.join(journal_dir, SHARD_DONE_FILE), {
        "shard": shard.index, "num_shards": shard.num_shards, "stats": stats,
        "score_padding_raw": dataclasses.asdict(scorer.score_padding),
        "decode_padding_raw": dataclasses.asdict(scorer.decode_padding)})
    return _merge_shards(out_dir, config, shard, stats)


# =========================================================================== multi-host


def shard_dir(out_dir: str, shard: ShardInfo) -> str:
    """`out_dir/shards/host{k}-of-{n}`: the journal of one host of a multi-host run."""
    return os.path.join(out_dir, SHARDS_DIR, shard.name)


def _shard_dirs(out_dir: str) -> list[str]:
    root = os.path.join(out_dir, SHARDS_DIR)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, name) for name in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, name))]


def finished_tasks(out_dir: str) -> set[str]:
    """Names of the tasks scored or skipped in `out_dir` or any of its shard journals (so a
    resumed run may use another number of hosts)."""
    done: set[str] = set()
    for directory in _shard_dirs(out_dir) + [out_dir]:
        for name in (SCORES_FILE, SKIPPED_FILE):
            done |= {r["task"] for r in io_utils.read_jsonl(os.path.join(directory, name))}
    return done


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _localize(model, params, mesh):
    """This host's share of a multi-host mesh, and `params` gathered and placed on it."""
    import jax
    from jax.experimental import multihost_utils

    from activeit_jax import partitioning
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
    sources = _shard_dirs(out_dir) + [out_dir]
    owner: dict[str, int] = {}
    scores: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for k, directory in enumerate(sources):
        for name, bucket in ((SCORES_FILE, scores), (SKIPPED_FILE, skipped)):
            for rec in io_utils.read_jsonl(os.path.join(directory, name)):
                if rec["task"] not in owner:
                    owner[rec["task"]] = k
                    bucket.append(rec)
    scores.sort(key=lambda rec: rec["index"])
    skipped.sort(key=lambda rec: rec["index"])
    blocks = [_task_blocks(os.path.join(d, PROMPTS_FILE)) for d in sources]
    # Read every block before rewriting out_dir/prompts.jsonl (one of the sources).
    prompt_text = []
    for rec in scores:
        k = owner[rec["task"]]
        if rec["task"] in blocks[k]:
            lo, hi = blocks[k][rec["task"]]
            with open(os.path.join(sources[k], PROMPTS_FILE), "rb") as handle:
                handle.seek(lo)
                prompt_text.append(handle.read(hi - lo))
    for name, records in ((SCORES_FILE, scores), (SKIPPED_FILE, skipped)):
        with io_utils.atomic_open(os.path.join(out_dir, name)) as handle:
            for rec in records:
                handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if prompt_text or os.path.exists(os.path.join(out_dir, PROMPTS_FILE)):
        with io_utils.atomic_open(os.path.join(out_dir, PROMPTS_FILE), "wb") as handle:
            for text in prompt_text:
                handle.write(text)


def _combine_host_stats(done_files: list[dict[str, Any]]) -> dict[str, Any]:
    """Run statistics of all hosts: sums, the slowest host's time, and the per-host list."""
    hosts = [d["stats"] for d in done_files]
    seconds = max(h["seconds"] for h in hosts)
    out: dict[str, Any] = {"seconds": seconds}
    for key in ("rows", "unique_rows", "tasks_scored", "chunks_computed"):
        out[key] = sum(h[key] for h in hosts)
    out["rows_per_s"] = out["rows"] / seconds if seconds > 0 else 0.0
    out["num_compilations"] = max(h["num_compilations"] for h in hosts)
    for kind in ("score", "decode"):
        shapes = sorted({tuple(s) for h in hosts for s in h[f"{kind}_shapes"]})
        out[f"{kind}_shapes"] = [list(s) for s in shapes]
        raw = PaddingStats()
        for d in done_files:
            for field, value in d[f"{kind}_padding_raw"].items():
                setattr(raw, field, getattr(raw, field) + value)
        out[f"{kind}_padding"] = raw.as_dict()
    out["num_hosts"] = len(hosts)
    out["hosts"] = hosts
    return out


def _merge_shards(out_dir: str, config: ScoreConfig, shard: ShardInfo,
                  stats: dict[str, Any]) -> dict[str, Any]:
    """After every host scored its shard: process 0 merges and finalizes; all return the
    summary. In a single process (shards run one after another) the merge happens once every
    shard has finished."""
    import jax
    distributed.barrier("activeit_score_scored")
    multi_process = jax.process_count() > 1
    paths = [os.path.join(shard_dir(out_dir, ShardInfo(k, shard.num_shards)), SHARD_DONE_FILE)
             for k in range(shard.num_shards)]
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
                summary = finalize(out_dir, config, extra=_combine_host_stats(done_files))
            except Exception as err:  # reported to every host below, then re-raised
                if not multi_process:
                    raise
                error = f"{type(err).__name__}: {err}"
                logging.exception("merging the shards of %s failed", out_dir)
        elif multi_process:
            error = (f"after the barrier, {len(missing)} shard(s) have no {SHARD_DONE_FILE} "
                     f"(e.g. {missing[0]}): out_dir must be on a filesystem that every host "
                     "sees")
        else:
            logging.info("shard %s done; %d shard(s) still to run before the merge",
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
        with open(os.path.join(out_dir, SUMMARY_FILE), encoding="utf-8") as handle:
            summary = json.load(handle)
    return {**summary, "merged": True}


def finalize(out_dir: str, config: ScoreConfig, extra: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Rewrites scores.jsonl in pool order with categories; writes the Task Map and summary.

    Idempotent: the same journal always gives the same files.
    """
    scores_path = os.path.join(out_dir, SCORES_FILE)
    records = sorted(io_utils.read_jsonl(scores_path), key=lambda rec: rec["index"])
    skipped = sorted(io_utils.read_jsonl(os.path.join(out_dir, SKIPPED_FILE)),
                     key=lambda rec: rec["index"])
    categories, thresholds = taskmap.categorize(
        [r["prompt_uncertainty"] for r in records],
        [r["prediction_probability"] for r in records], config.thresholds)
    fields = ("index", "task", "prompt_uncertainty", "prediction_probability", "perplexity",
              "entropy", "category", "label", "n_instances", "n_perturbations")
    final = []
    for rec, category in zip(records, categories):
        rec = {**rec, "category": category}
        final.append({k: rec.get(k) for k in fields})
    with io_utils.atomic_open(scores_path) as handle:
        for rec in final:
            handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
    taskmap.write_csv(os.path.join(out_dir, "taskmap.csv"), final)
    taskmap.plot(final, thresholds, os.path.join(out_dir, "taskmap.png"),
                 os.path.join(out_dir, "taskmap.svg"))
    summary = {
        "num_tasks": len(final),
        "skipped": [{"task": s["task"], "reason": s["reason"]} for s in skipped],
        "thresholds": {"prompt_uncertainty": thresholds[0],
                       "prediction_probability": thresholds[1]},
        "categories": {c: categories.count(c) for c in taskmap.CATEGORIES},
        **(extra or {}),
    }
    io_utils.atomic_write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
    logging.info("scored %d tasks (%d skipped) -> %s", len(final), len(skipped), out_dir)
    return summary
