"""The device side: rows through jitted, sharded scoring and greedy decoding, bucketed.

Every batch is the model's (`model.batch_builder()`, a `models.features.BatchBuilder`): the
scorer plans rows over the builder's length dimensions and never branches on the kind.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from activeit_jax import partitioning
from activeit_jax.models import BaseModel
from activeit_jax.models.wrappers import loss_targets
from activeit_jax.scoring import batching, costs as costs_lib
from activeit_jax.scoring.batching import plan_batches


def _data_parallel_size(sharding) -> int:
    """Number of batch shards of a `[B, ...]` sharding (rows per call must divide by it)."""
    spec = sharding.spec[0] if len(sharding.spec) else None
    if spec is None:
        return 1
    axes = spec if isinstance(spec, tuple) else (spec,)
    return int(np.prod([sharding.mesh.shape[a] for a in axes]))


# When the pool's size is unknown, plans assume a shape compiled for one chunk serves this many.
DEFAULT_POOL_CHUNKS = 10
# How plans are costed (`RowScorer(plan_costs=...)`, `ScoreConfig.plan_costs`).
PLAN_COSTS = ("model", "slots")


def plan_costs(decoding: bool, pool_chunks: int = DEFAULT_POOL_CHUNKS) -> dict[str, float]:
    """The model-free `batching.plan_batches` costs (in full batches) of a chunk's scoring or
    decoding plan (`RowScorer(plan_costs="slots")`; the default plans with the model's own
    costs, `scoring.costs`).

    A compilation is paid once per run and its shape serves every chunk that meets it, so a
    chunk counts 1 / `pool_chunks` of it when deciding to share shapes: a one-chunk job pads
    more and compiles fewer shapes, a pool of many chunks pads little.

    Decoding plans see only a chunk's originals (about 150 rows for 16 tasks x 10 instances),
    each row a whole greedy decode: their call is cheaper and their sharing counts a quarter
    of the amortised compilation (a decoding slot costs several scoring slots). A new shape
    also costs half a full batch in the cut itself (compiling a decoder takes 1.4 s for a
    width-256 T5 on the 2-core CI machine, a 32 x 1024 batch 3.2 s), halved for every further
    chunk: in a pool of many chunks the shapes one chunk opens are the ones the others need
    too, so the cut's cost would only pad (counted in full per batch it padded the shared NIV2
    pool's decoding sources by 25%; now 9.8%, `python benchmarks/padding_plan.py`), while a
    one-chunk job (`benchmarks/score_vs_torch.py`: 50 originals) decodes in 2 shapes, not 5.
    """
    amortized = 1.0 / max(int(pool_chunks), 1)
    if decoding:
        opened = 0.5 * 2.0 ** -(max(int(pool_chunks), 1) - 1)
        return {"call_cost": 1 / 64, "compile_cost": opened, "share_cost": amortized / 4}
    return {"share_cost": amortized}


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


class _Executables:
    """A jitted function's executables, one per input shape, compiled ahead of their calls.

    `prepare` hands every new shape of a plan to a small thread pool as soon as the plan is
    known, in order of first use; each call waits only for its own shape. XLA releases the
    GIL while it compiles, so a plan's first shapes compile side by side while the device
    would otherwise wait (on the 2-core CI machine, two decoding shapes in the time of one),
    and later ones while earlier batches run. Calls stay in plan order on the calling thread,
    so every host of a multi-host run issues the same programs in the same order.
    """

    def __init__(self, jitted, mesh, rules, workers: int = 2):
        self._jitted, self._mesh, self._rules = jitted, mesh, rules
        self._ready: dict[tuple, concurrent.futures.Future] = {}
        # Seconds each shape took to lower and compile (on its compile thread), in order.
        self.compile_seconds: dict[tuple, float] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="activeit-compile")

    def __len__(self) -> int:
        return len(self._ready)

    @staticmethod
    def _key(batch: dict) -> tuple:
        return tuple((name, batch[name].shape, str(batch[name].dtype)) for name in sorted(batch))

    def _compile(self, params, batch):
        # The mesh and logical-axis rules are thread-local contexts: entered on this thread.
        start = time.perf_counter()
        with partitioning.mesh_context(self._mesh, self._rules):
            compiled = self._jitted.lower(params, batch).compile()
        self.compile_seconds[self._key(batch)] = time.perf_counter() - start
        return compiled

    def prepare(self, params, batches: Sequence[dict]) -> None:
        """Starts compiling the shapes of `batches` not seen before."""
        for batch in batches:
            key = self._key(batch)
            if key not in self._ready:
                self._ready[key] = self._pool.submit(self._compile, params, batch)

    def __call__(self, params, batch: dict):
        """Dispatches one call (asynchronously); compiles its shape first if not prepared."""
        self.prepare(params, [batch])
        return self._ready[self._key(batch)].result()(params, batch)


class RowScorer:
    """Runs rows through jitted, sharded scoring and greedy decoding, one shape per bucket.

    Args:
      model: an `EncoderDecoderModel` or a `DecoderOnlyModel` (`token_log_probs`,
        `greedy_decode`); its batch builder (`model.batch_builder()`) makes every batch with
        the model's special ids.
      params: its parameters, already placed on `mesh` (their shardings are reused).
      mesh: a `jax.sharding.Mesh`; the batch axis is sharded over its data axes.
      batch_size / decode_batch_size: the most rows per call, rounded up to the
        data-parallel size.
      source_buckets / target_buckets: padded lengths (decoder-only: source buckets pad
        `bos + prompt` for decoding; target buckets pad the scored response positions).
      token_budget: rows x padded source (decoder-only: sequence) length per call, see
        `scoring.batching`; None = always `batch_size` / `decode_batch_size` rows.
      decode_source_buckets: padded source lengths of decoding (default `source_buckets`).
      max_decode_length: decoding length.
      compute_entropy: also return per-row summed next-token entropies (from
        `model.logits(params, batch) -> [B, T, V]`).
      sequence_buckets: decoder-only scoring: padded lengths of prompt + response (the input
        positions); required for a decoder-only model. Its `target_buckets` pad the scored
        response positions (where the output head runs).
      plan_costs: "model" (default): batches are planned with the model's own costs
        (`scoring.costs`: its FLOPs per position, its estimated compile time, any row count
        that is a multiple of the data-parallel size); "slots": the model-free costs
        (`plan_costs`, padded slots and power-of-two row counts).

    The buckets of each dimension the builder plans scoring rows on (`score_dims`: "source"
    and "target", or "sequence") must be given.
    """

    def __init__(self, model: BaseModel, params, mesh, *, batch_size: int, decode_batch_size: int,
                 source_buckets: Sequence[int], target_buckets: Sequence[int],
                 max_decode_length: int, compute_entropy: bool = False,
                 sequence_buckets: Sequence[int] | None = None,
                 token_budget: int | None = None,
                 decode_source_buckets: Sequence[int] | None = None,
                 plan_costs: str = "model"):
        import jax
        import jax.numpy as jnp

        if plan_costs not in PLAN_COSTS:
            raise ValueError(f"plan_costs must be one of {PLAN_COSTS}, got {plan_costs!r}")
        self.plan_costs = plan_costs

        self.builder = model.batch_builder()
        self.decoder_only = self.builder.decoder_only
        buckets = {"source": tuple(source_buckets), "target": tuple(target_buckets),
                   "sequence": tuple(sequence_buckets or ())}
        for dim in self.builder.score_dims:
            if not buckets[dim]:
                raise ValueError(f"{type(model).__name__} scores rows by {dim} length: it "
                                 f"needs {dim}_buckets")
        # The buckets of each of the builder's `score_dims`, the first being the one the
        # planner's token budget is measured on.
        self.score_buckets = tuple(buckets[dim] for dim in self.builder.score_dims)
        self.sequence_buckets = buckets["sequence"]
        self.model, self.params, self.mesh = model, params, mesh
        self.rules = getattr(model, "logical_axis_rules", None)
        self._matrix_sharding = partitioning.data_sharding(mesh, 2, self.rules)
        self._row_sharding = partitioning.data_sharding(mesh, 1, self.rules)
        dp = self._dp = _data_parallel_size(self._row_sharding)
        self.batch_size = int(math.ceil(batch_size / dp) * dp)
        self.decode_batch_size = int(math.ceil(decode_batch_size / dp) * dp)
        self.token_budget = token_budget
        # Chunks a compiled shape is expected to serve (`plan_costs`); `score_pool` sets it
        # from the pool's size.
        self.pool_chunks = DEFAULT_POOL_CHUNKS
        self.source_buckets, self.target_buckets = tuple(source_buckets), tuple(target_buckets)
        self.decode_source_buckets = tuple(decode_source_buckets or source_buckets)
        self.max_decode_length = int(max_decode_length)
        self.compute_entropy = compute_entropy
        self._platform = mesh.devices.flat[0].platform
        param_shardings = jax.tree.map(lambda x: x.sharding, params)
        batch_shardings = {k: self._matrix_sharding for k in self.builder.score_features}

        def score_fn(params, batch):
            # The scored positions' targets and weights (decoder-only: gathered at
            # `decoder_loss_positions`, where the model's output head runs).
            targets, weights = loss_targets(batch)
            weights = weights.astype(jnp.float32)
            if not compute_entropy:
                log_probs = model.token_log_probs(params, batch)
                return (log_probs * weights).sum(-1), weights.sum(-1)
            # One logits computation serves both the target log-probs and the entropies.
            log_z = jax.nn.log_softmax(model.logits(params, batch).astype(jnp.float32), -1)
            targets = targets.astype(jnp.int32)
            log_probs = jnp.take_along_axis(log_z, targets[..., None], axis=-1)[..., 0]
            entropy = -(jnp.exp(log_z) * log_z).sum(-1)
            return ((log_probs * weights).sum(-1), weights.sum(-1),
                    (entropy * weights).sum(-1))

        def decode_fn(params, batch):
            return model.greedy_decode(params, batch, self.max_decode_length)

        n_out = 3 if compute_entropy else 2
        self._score = _Executables(jax.jit(
            score_fn, in_shardings=(param_shardings, batch_shardings),
            out_shardings=(self._row_sharding,) * n_out), mesh, self.rules)
        self._decode = _Executables(jax.jit(decode_fn, in_shardings=(
            param_shardings, {self.builder.decode_feature: self._matrix_sharding}),
            out_shardings=self._matrix_sharding), mesh, self.rules)
        self.score_padding = PaddingStats()
        self.decode_padding = PaddingStats()
        # Calls per padded shape: (batch, source, target) / (batch, source).
        self.score_shapes: collections.Counter = collections.Counter()
        self.decode_shapes: collections.Counter = collections.Counter()

    def jitted(self, kind: str):
        """The jitted scoring (`kind` "score") or decoding ("decode") function
        `(params, batch)`, for ahead-of-time compilation (`activeit_jax.aot`)."""
        return (self._score if kind == "score" else self._decode)._jitted

    # ------------------------------------------------------------------ the model's ids

    @property
    def pad_id(self) -> int:
        return self.builder.ids.pad

    @property
    def bos_id(self) -> int | None:
        """None: the model takes no BOS (e.g. SmolLM2; T5 has none)."""
        return self.builder.ids.bos

    @property
    def eos_id(self) -> int:
        return self.builder.ids.eos

    # ------------------------------------------------------------------ counters

    @property
    def num_compilations(self) -> int:
        """Distinct shapes compiled so far (scoring + decoding)."""
        return len(self._score) + len(self._decode)

    # ------------------------------------------------------------------ batching

    @classmethod
    def from_config(cls, model: BaseModel, params, mesh, config) -> RowScorer:
        """A scorer with a `ScoreConfig`'s batch sizes, token budget, buckets and decoding
        length."""
        return cls(model, params, mesh, batch_size=config.batch_size,
                   decode_batch_size=config.decode_batch_size or config.batch_size,
                   source_buckets=config.src_buckets, target_buckets=config.tgt_buckets,
                   decode_source_buckets=config.decode_src_buckets,
                   max_decode_length=config.max_decode_length,
                   compute_entropy=config.compute_entropy,
                   sequence_buckets=config.seq_buckets,
                   token_budget=config.batch_tokens, plan_costs=config.plan_costs)

    def _plan(self, lengths: Sequence[Sequence[int]], buckets: Sequence[Sequence[int]],
              max_rows: int, decoding: bool = False
              ) -> list[tuple[tuple[int, ...], list[int]]]:
        """Batches of rows: `batching.plan_batches` with this scorer's budget (None: always
        `max_rows` rows, i.e. a budget of max_rows x the largest first-dimension bucket).

        The plan is a function of the rows alone (not of the shapes compiled by earlier
        calls), so a resumed run composes a chunk's batches exactly as an uninterrupted one.
        Costs: the model's (`plan_cost_model`) or the model-free `plan_costs`, for this
        scorer's `pool_chunks` (set by the pool driver).
        """
        budget = self.token_budget or max_rows * buckets[0][-1]
        if self.plan_costs == "slots":
            return plan_batches(lengths, buckets, token_budget=budget, max_rows=max_rows,
                                multiple=self._dp, **plan_costs(decoding, self.pool_chunks))
        return plan_batches(lengths, buckets, token_budget=budget, max_rows=max_rows,
                            multiple=self._dp, costs=self.plan_cost_model(decoding))

    def plan_cost_model(self, decoding: bool) -> batching.PlanCosts:
        """The model's planner costs (`scoring.costs.model_plan_costs`) of a scoring or
        decoding plan on this scorer's mesh, for its `pool_chunks`."""
        return costs_lib.model_plan_costs(
            self.model.flops(), decoding=decoding, pool_chunks=self.pool_chunks,
            data_parallel=self._dp, platform=self._platform,
            max_decode_length=self.max_decode_length)

    def compile_log(self) -> list[dict[str, Any]]:
        """Every shape compiled so far: `{"kind", "shape" (feature: shape), "seconds" (lower
        and compile, measured), "estimate" (the planner's, `costs.compile_seconds`)}`, for
        summary.json: a check of the planner's compile-time estimate on this machine."""
        flops = self.model.flops()
        out = []
        for kind, executables in (("score", self._score), ("decode", self._decode)):
            estimate = costs_lib.compile_seconds(flops, kind == "decode")
            for key, seconds in list(executables.compile_seconds.items()):
                out.append({"kind": kind, "shape": {name: list(shape) for name, shape, _ in key},
                            "seconds": round(seconds, 3), "estimate": round(estimate, 3)})
        return out

    def _dispatch(self, executables: _Executables, batches: list[tuple[list[int], dict]]
                  ) -> list[tuple[list[int], Any]]:
        """Dispatches `(row indices, device batch)` pairs in order: every new shape starts
        compiling first, then each call waits only for its own shape. (The mesh context is
        entered where programs are lowered, on the compile threads; a compiled program's call
        needs none.)"""
        executables.prepare(self.params, [batch for _, batch in batches])
        return [(idx, executables(self.params, batch)) for idx, batch in batches]

    def score_async(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> _Pending:
        """Dispatches scoring of (source ids, target ids) rows; ids already end with EOS.

        Decoder-only: (prompt ids without bos, response ids ending with the model's EOS);
        each row is scored as `bos + prompt + response`, on the response positions. Rows are
        planned on `builder.score_lengths` (T5: source and target; decoder-only: prompt +
        response) over the matching buckets.

        Returns:
          A pending result; `.result()` -> (log_prob_sum [N], num_tokens [N],
          entropy_sum [N] or None), float64 numpy.
        """
        import jax
        lengths = [self.builder.score_lengths(row) for row in rows]
        plan = self._plan(lengths, self.score_buckets, self.batch_size)
        batches = []
        for (b, *shape), idx in plan:
            chosen = [rows[i] for i in idx]
            chosen += [chosen[0]] * (b - len(idx))  # filler rows: copies of the first, ignored
            batch = jax.device_put(self.builder.score_batch(chosen, shape),
                                   self._matrix_sharding)
            self.score_shapes[(b, *shape)] += 1
            # "source" counts the first dimension's tokens (decoder-only: the whole sequence),
            # "target" the scored tokens, over the last dimension's slots.
            self.score_padding.add([lengths[i][0] for i in idx], [len(rows[i][1]) for i in idx],
                                   b, shape[0], shape[-1])
            batches.append((idx, batch))
        parts = self._dispatch(self._score, batches)
        return _Pending(len(rows), parts, self._combine_scores)

    def _combine_scores(self, num_rows: int, parts: list[tuple[list[int], Any]]):
        n_out = 3 if self.compute_entropy else 2
        out = [np.zeros(num_rows, np.float64) for _ in range(n_out)]
        for idx, arrays in parts:
            for o, arr in zip(out, arrays):
                o[idx] = np.asarray(arr, np.float64)[:len(idx)]
        return out[0], out[1], (out[2] if self.compute_entropy else None)

    def decode_async(self, sources: Sequence[Sequence[int]]) -> _Pending:
        """Dispatches greedy decoding of source id lists (decoder-only: prompts without bos).

        Returns:
          A pending result; `.result()` -> list of generated id lists, cut after the first
          EOS (EOS included when generated; `builder.generated_ids`).
        """
        import jax
        plan = self._plan([(self.builder.decode_length(s),) for s in sources],
                          (self.decode_source_buckets,), self.decode_batch_size, decoding=True)
        batches = []
        for (b, s_len), idx in plan:
            chosen = [sources[i] for i in idx]
            chosen += [chosen[0]] * (b - len(idx))
            batch = jax.device_put(self.builder.decode_batch(chosen, s_len),
                                   self._matrix_sharding)
            self.decode_shapes[(b, s_len)] += 1
            self.decode_padding.add([self.builder.decode_length(sources[i]) for i in idx], [],
                                    b, s_len, 0)
            batches.append((idx, batch))
        parts = self._dispatch(self._decode, batches)

        def combine(num_rows, parts):
            out: list[list[int]] = [[] for _ in range(num_rows)]
            for idx, arr in parts:
                arr = np.asarray(arr)
                for j, i in enumerate(idx):
                    out[i] = self.builder.generated_ids(arr[j].tolist())
            return out
        return _Pending(len(sources), parts, combine)
