"""Model wrappers (t5x style): pure functions of (params, batch) around the Flax modules.

`EncoderDecoderModel` (T5) and `DecoderOnlyModel` (LLaMA) share one interface:

  init_params(rng) -> params                      plain pytree of float32 arrays
  params_logical_axes() -> pytree of PartitionSpec (logical names), same structure
  logits(params, batch, dropout_rng=None) -> float32 [B, T, vocab]
  loss_fn(params, batch, dropout_rng=None) -> (loss, aux)
  token_log_probs(params, batch) -> float32 [B, T] (or [B, K], see below)
  greedy_decode(params, batch, max_decode_length) -> int32 [B, max_decode_length]
  flops() -> models.flops.RowFlops                 matmul FLOPs per padded position

Each wrapper declares its kind: `decoder_only` (a class attribute) and `batch_builder(vocab)`,
the host-side builder of its batches with its special ids (`features.BatchBuilder`,
`features.SpecialIds`); callers build batches through it and never branch on the kind.

Every method is pure and traceable: callers `jax.jit` them with their own in/out shardings
(`max_decode_length` must be static, e.g. `functools.partial` or `static_argnums`). The
wrapper enters flax's logical-axis-rules context while tracing, so the activation constraints
resolve against `logical_axis_rules` whenever a mesh is set (`partitioning.mesh_context`).

Batch features (0 = padding everywhere):

Encoder-decoder (seqio `EncDecFeatureConverter` names):
  encoder_input_tokens  int [B, S]
  decoder_input_tokens  int [B, T]  targets shifted right, first position = 0 (start id)
  decoder_target_tokens int [B, T]
  decoder_loss_weights  [B, T]      1 on scored target tokens, 0 on padding
  greedy_decode needs only `encoder_input_tokens`.
  Packed rows (training) add `encoder_segment_ids [B, S]`, `decoder_segment_ids [B, T]`
  (1, 2, ... per example, 0 = padding; positions are read from slots, see `t5.Encoder`).

Decoder-only packed rows add `decoder_segment_ids` and per-segment `decoder_positions`.
Decoder-only batches may add `decoder_loss_positions` int [B, K]: the positions whose targets
are scored (-1 = none), so the vocabulary-wide output head runs on K positions per row, not T
(`loss_targets`); logits and `token_log_probs` are then `[B, K, ...]`.

Decoder-only (LLaMA ids: bos 1, eos 2, padding 0; each model's config has its own, and
`bos_id` None drops the BOS everywhere below):
  Scoring / training on `bos + prompt + response + eos` (`batches.make_decoder_only_batch`):
    decoder_input_tokens  int [B, T]  the sequence without its last token
    decoder_target_tokens int [B, T]  the sequence without its first token (next tokens)
    decoder_loss_weights  [B, T]      1 on response (+ eos) targets, 0 on prompt and padding
  Padding may be on the right (usual) or the left: attention ignores tokens == 0 and
  positions count only real tokens.
  greedy_decode: `decoder_input_tokens` [B, P] holds the prompts (bos + prompt, padded left
  or right, see `batches.make_prompt_batch`); the result holds only the generated
  continuation.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, ClassVar, Mapping, Protocol

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from activeit_jax import partitioning
from activeit_jax.core.errors import UsageError
from activeit_jax.models import layer_layout
from activeit_jax.models.features import (
    BatchBuilder,
    DecoderOnlyBatches,
    EncoderDecoderBatches,
    SpecialIds,
)
from activeit_jax.models.flops import RowFlops, llama_flops, t5_flops
from activeit_jax.models.llama import LlamaConfig, LlamaTransformer
from activeit_jax.models.t5 import T5Config, T5Transformer

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any


class BaseModel:
    """Shared plumbing: init, logical axes, losses and the greedy decoding loop.

    Class attributes of each wrapper:
      kind: its name in a checkpoint's config.json ("t5" / "llama"; `model_to_dict`), read
        only inside `models/`: everything else asks `decoder_only` or the batch builder.
      decoder_only: one sequence `bos + prompt + response` (True) or an encoder source and
        a decoder target (False).
      batch_builder_cls: the `features.BatchBuilder` of its batches.
      config_cls: its config dataclass.
    """

    kind: ClassVar[str]
    decoder_only: ClassVar[bool]
    batch_builder_cls: ClassVar[type[BatchBuilder]]
    config_cls: ClassVar[type]
    # Reads packed batches (segment ids and positions, t5x / seqio pack=True features).
    supports_packing: ClassVar[bool] = True

    def __init__(self, config: Any,
                 logical_axis_rules: partitioning.LogicalRules | None = None) -> None:
        """Args:
          config: a `T5Config` / `LlamaConfig`.
          logical_axis_rules: rules used when tracing under a mesh (default
            `partitioning.DEFAULT_LOGICAL_AXIS_RULES`).
        """
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        self.logical_axis_rules = partitioning.normalize_rules(logical_axis_rules)
        self.module = self._make_module()

    # -- to be provided by subclasses -----------------------------------------------------
    def _make_module(self) -> nn.Module:
        raise NotImplementedError

    def _init_args(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def logits(self, params: Params, batch: Batch, dropout_rng: Array | None = None) -> Array:
        """Teacher-forced float32 logits `[B, T, vocab]` for `decoder_input_tokens`."""
        raise NotImplementedError

    def greedy_decode(self, params: Params, batch: Batch, max_decode_length: int) -> Array:
        raise NotImplementedError

    def flops(self) -> RowFlops:
        """Matmul FLOPs of its calls per padded position (`models.flops`), from its config."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self.config.eos_id

    @property
    def pad_id(self) -> int:
        return self.config.pad_id

    def batch_builder(self, vocab: Any = None) -> BatchBuilder:
        """The host-side builder of this model's batches, with its special ids.

        Args:
          vocab: the model's vocabulary (its end-of-turn id joins the ids), or None.

        Returns:
          A `features.BatchBuilder` of this model's kind with `SpecialIds.of(self, vocab)`.
        """
        return self.batch_builder_cls(SpecialIds.of(self, vocab))

    def describe(self) -> str:
        """One line for logs: its kind and size, e.g. "llama, 134,515,008 parameters"."""
        return f"{self.kind}, {self.num_params():,} parameters"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other.config == self.config
                and other.logical_axis_rules == self.logical_axis_rules)

    def __hash__(self) -> int:
        return hash((type(self), self.config, self.logical_axis_rules))

    def _apply(self, variables: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """`module.apply` inside the logical axis rules context."""
        with nn.logical_axis_rules(self.logical_axis_rules):
            return self.module.apply(variables, *args, **kwargs)

    def _boxed_init(self, rng: Array) -> Any:
        with nn.logical_axis_rules(self.logical_axis_rules):
            return self.module.init({"params": rng}, *self._init_args())["params"]

    def init_params(self, rng: Array) -> Params:
        """Randomly initialised float32 parameters (a plain nested dict of arrays).

        Args:
          rng: a PRNG key.

        Returns:
          The params pytree. Jit with `out_shardings=partitioning.params_shardings(...)` to
          create them directly sharded.
        """
        if layer_layout.scans_layers(self.config):
            # The per-layer layout's values for the same rng, stacked: a seed gives the same
            # model whichever layout runs it (a scanned init would draw other numbers).
            per_layer = type(self)(layer_layout.with_scan_layers(self.config, False),
                                   self.logical_axis_rules)
            return layer_layout.to_stacked(per_layer.init_params(rng), self.config)
        with nn.logical_axis_rules(self.logical_axis_rules):
            return nn.meta.unbox(self._boxed_init(rng))

    def abstract_params(self) -> Params:
        """Shapes and dtypes of the params (`jax.ShapeDtypeStruct` leaves); allocates nothing."""
        return nn.meta.unbox(jax.eval_shape(self._boxed_init, jax.random.key(0)))

    def params_logical_axes(self) -> Params:
        """Logical axis names of every parameter: pytree of `PartitionSpec`, params' structure."""
        boxed = jax.eval_shape(self._boxed_init, jax.random.key(0))
        return nn.get_partition_spec(boxed)

    def num_params(self) -> int:
        """Total number of parameters (from shapes only)."""
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_params())))

    def _rngs(self, dropout_rng: Array | None) -> tuple[dict[str, Array], bool]:
        if dropout_rng is None:
            return {}, True
        return {"dropout": dropout_rng}, False

    def token_log_probs(self, params: Params, batch: Batch) -> Array:
        """Teacher-forced log p(target token) at every scored position.

        Args:
          params: model params.
          batch: needs `decoder_target_tokens`, `decoder_loss_weights` and the model's inputs;
            optionally `decoder_loss_positions` (decoder-only, see `loss_targets`).

        Returns:
          float32 `[B, T]` (`[B, K]` at `decoder_loss_positions`, in the order of
          `loss_targets`), 0 where the loss weight is 0.
        """
        logits = self.logits(params, batch)
        targets, weights = loss_targets(batch)
        log_probs = _target_log_probs(logits, targets)
        return jnp.where(weights > 0, log_probs, 0.0)

    def loss_fn(self, params: Params, batch: Batch,
                dropout_rng: Array | None = None) -> tuple[Array, dict[str, Array]]:
        """Mean token cross-entropy over `decoder_loss_weights`.

        Args:
          params: model params.
          batch: model inputs + `decoder_target_tokens`, `decoder_loss_weights` (and
            optionally `decoder_loss_positions`: the logits are computed only there, see
            `loss_targets`; the loss is the same).
          dropout_rng: PRNG key enabling dropout (training); None = deterministic.

        Returns:
          (loss, aux): loss = loss_sum / max(num_tokens, 1); aux holds float32 scalars
          `loss_sum` (weighted sum of token negative log-likelihoods), `num_tokens` (sum of
          weights) and `num_correct` (weighted count of argmax == target).
        """
        logits = self.logits(params, batch, dropout_rng)
        targets, weights = loss_targets(batch)
        weights = weights.astype(jnp.float32)
        nll = -_target_log_probs(logits, targets)
        loss_sum = jnp.sum(nll * weights)
        num_tokens = jnp.sum(weights)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        aux = {"loss_sum": loss_sum, "num_tokens": num_tokens,
               "num_correct": jnp.sum(correct * weights)}
        return loss_sum / jnp.maximum(num_tokens, 1.0), aux

    def _greedy_loop(self, first_logits: Array, cache: Any,
                     step_fn: Callable[[Array, Any, Array], tuple[Array, Any]],
                     max_decode_length: int) -> tuple[Array, Array]:
        """Greedy decoding with a KV cache, stopping once every row has produced EOS.

        Args:
          first_logits: float32 `[B, vocab]`, logits of the first generated token.
          cache: the filled "cache" collection after the prefill call.
          step_fn: (previous tokens int32 [B], cache, step int32) -> (logits [B, vocab],
            new cache); feeds the token generated at `step - 1`.
          max_decode_length: number of tokens to generate at most (static).

        Returns:
          (tokens int32 `[B, max_decode_length]` with EOS kept and 0 after it, number of
          generated steps int32 scalar).
        """
        batch_size = first_logits.shape[0]
        first = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)
        out = jnp.zeros((batch_size, max_decode_length), jnp.int32).at[:, 0].set(first)
        done = first == self.eos_id

        def cond(state):
            step, _, done, _, _ = state
            return (step < max_decode_length) & ~jnp.all(done)

        def body(state):
            step, out, done, prev, cache = state
            logits, cache = step_fn(prev, cache, step)
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            token = jnp.where(done, self.pad_id, token)
            out = lax.dynamic_update_slice(out, token[:, None], (0, step))
            return step + 1, out, done | (token == self.eos_id), token, cache

        state = (jnp.array(1, jnp.int32), out, done, first, cache)
        steps, out, _, _, _ = lax.while_loop(cond, body, state)
        return out, steps


class TrainableModel(Protocol):
    """What the trainer and the evaluator call on a model: a `BaseModel`, or a test fake with
    these members (tests/trainer_testlib.BagModel). Scoring needs a `BaseModel`."""

    decoder_only: bool
    supports_packing: bool

    def init_params(self, rng: Array) -> Params: ...

    def params_logical_axes(self) -> Params: ...

    def loss_fn(self, params: Params, batch: Batch,
                dropout_rng: Array | None = None) -> tuple[Array, dict[str, Array]]: ...

    def greedy_decode(self, params: Params, batch: Batch, max_decode_length: int) -> Array: ...

    def batch_builder(self, vocab: Any = None) -> BatchBuilder: ...


def loss_targets(batch: Batch) -> tuple[Array, Array]:
    """(targets, loss weights) where the logits are taken: `decoder_target_tokens` and
    `decoder_loss_weights` `[B, T]`, or, when the batch has `decoder_loss_positions` int
    `[B, K]` (decoder-only; -1 = no position), their values at those positions `[B, K]`
    (weight 0 at -1). The batch builders list every position of non-zero weight there, so the
    weighted sums equal the full batch's."""
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    positions = batch.get("decoder_loss_positions")
    if positions is None:
        return targets, weights
    index = jnp.maximum(positions, 0).astype(jnp.int32)
    weights = jnp.take_along_axis(weights, index, axis=1)
    return (jnp.take_along_axis(targets, index, axis=1),
            jnp.where(positions >= 0, weights, jnp.zeros_like(weights)))


def _target_log_probs(logits: Array, targets: Array) -> Array:
    """float32 log_softmax(logits)[target]: `[B, T, V], [B, T] -> [B, T]`."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                        axis=-1)[..., 0]
    return target_logits - log_z


@gin.register
class EncoderDecoderModel(BaseModel):
    """T5 wrapper. See the module docstring for batch features and the method contracts."""

    kind = "t5"
    decoder_only = False
    batch_builder_cls = EncoderDecoderBatches
    config_cls = T5Config

    def _make_module(self) -> T5Transformer:
        return T5Transformer(self.config)

    def flops(self) -> RowFlops:
        return t5_flops(self.config)

    def _init_args(self) -> tuple[Any, ...]:
        return (jnp.ones((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32))

    def encode(self, params: Params, batch: Batch, dropout_rng: Array | None = None) -> Array:
        """Encoder output `[B, S, d_model]` (compute dtype) for `encoder_input_tokens`."""
        rngs, deterministic = self._rngs(dropout_rng)
        return self._apply({"params": params}, batch["encoder_input_tokens"],
                           deterministic=deterministic, rngs=rngs,
                           method=T5Transformer.encode)

    def logits(self, params: Params, batch: Batch, dropout_rng: Array | None = None) -> Array:
        """Teacher-forced float32 logits `[B, T, vocab]`; a packed batch
        (`encoder_segment_ids` / `decoder_segment_ids`) keeps its segments apart."""
        rngs, deterministic = self._rngs(dropout_rng)
        return self._apply({"params": params}, batch["encoder_input_tokens"],
                           batch["decoder_input_tokens"], deterministic=deterministic,
                           encoder_segment_ids=batch.get("encoder_segment_ids"),
                           decoder_segment_ids=batch.get("decoder_segment_ids"), rngs=rngs)

    def greedy_decode(self, params: Params, batch: Batch, max_decode_length: int) -> Array:
        """Greedy decoding; the encoder runs once, the decoder uses a KV cache.

        Args:
          params: model params.
          batch: needs `encoder_input_tokens` int `[B, S]`.
          max_decode_length: maximum number of generated tokens (static).

        Returns:
          int32 `[B, max_decode_length]`: generated tokens (no start token), EOS (id 1)
          included, 0 after it. The loop ends early once every row has produced EOS.
        """
        return self._greedy_decode(params, batch, max_decode_length)[0]

    def _greedy_decode(self, params: Params, batch: Batch,
                       max_decode_length: int) -> tuple[Array, Array]:
        """`greedy_decode` plus the number of decoding steps run (for tests)."""
        encoder_tokens = batch["encoder_input_tokens"]
        batch_size = encoder_tokens.shape[0]
        if max_decode_length <= 0:
            return jnp.zeros((batch_size, 0), jnp.int32), jnp.array(0, jnp.int32)
        encoded = self.encode(params, batch)

        def run_decoder(variables, tokens):
            logits, mutated = self._apply(
                variables, encoded, encoder_tokens, tokens, decode=True,
                max_length=max_decode_length, mutable=["cache"], method=T5Transformer.decode)
            return logits[:, -1], mutated["cache"]

        # First call: creates the cache (self-attention slots + projected encoder keys/values).
        start = jnp.full((batch_size, 1), self.config.decoder_start_id, jnp.int32)
        first_logits, cache = run_decoder({"params": params}, start)

        def step_fn(prev, cache, step):
            del step
            return run_decoder({"params": params, "cache": cache}, prev[:, None])

        return self._greedy_loop(first_logits, cache, step_fn, max_decode_length)


def _decoder_only_positions(tokens: Array, pad_id: int) -> tuple[Array, Array]:
    """(positions int32 [B, T] counting only real tokens, valid bool [B, T])."""
    valid = tokens != pad_id
    positions = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
    return positions, valid


@gin.register
class DecoderOnlyModel(BaseModel):
    """LLaMA wrapper. See the module docstring for batch features and the method contracts."""

    kind = "llama"
    decoder_only = True
    batch_builder_cls = DecoderOnlyBatches
    config_cls = LlamaConfig

    def _make_module(self) -> LlamaTransformer:
        return LlamaTransformer(self.config)

    def flops(self) -> RowFlops:
        return llama_flops(self.config)

    def _init_args(self) -> tuple[Any, ...]:
        return (jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32),
                jnp.ones((1, 1), bool))

    def logits(self, params: Params, batch: Batch, dropout_rng: Array | None = None) -> Array:
        """Teacher-forced float32 logits `[B, T, vocab]` for `decoder_input_tokens`; a packed
        batch brings `decoder_segment_ids` and per-segment `decoder_positions`. With
        `decoder_loss_positions` `[B, K]` the output head runs only there: `[B, K, vocab]`
        (a -1 position gives position 0's logits, weighted 0 by `loss_targets`)."""
        tokens = batch["decoder_input_tokens"]
        positions, valid = _decoder_only_positions(tokens, self.pad_id)
        segment_ids = batch.get("decoder_segment_ids")
        if segment_ids is not None:
            positions = batch["decoder_positions"].astype(jnp.int32)
        logit_positions = batch.get("decoder_loss_positions")
        if logit_positions is not None:
            logit_positions = jnp.maximum(logit_positions, 0)
        rngs, deterministic = self._rngs(dropout_rng)
        return self._apply({"params": params}, tokens, positions, valid,
                           deterministic=deterministic, segment_ids=segment_ids,
                           logit_positions=logit_positions, rngs=rngs)

    def greedy_decode(self, params: Params, batch: Batch, max_decode_length: int) -> Array:
        """Greedy continuation of prompts with a KV cache.

        Args:
          params: model params.
          batch: `decoder_input_tokens` int `[B, P]`: bos + prompt, padded with 0 on either
            side (rows are left-aligned internally so all prompts end at the same slot).
          max_decode_length: maximum number of generated tokens (static).

        Returns:
          int32 `[B, max_decode_length]`: the generated tokens only, EOS (id 2 for LLaMA)
          included, 0 after it. The loop ends early once every row has produced EOS.
        """
        return self._greedy_decode(params, batch, max_decode_length)[0]

    def _greedy_decode(self, params: Params, batch: Batch,
                       max_decode_length: int) -> tuple[Array, Array]:
        """`greedy_decode` plus the number of decoding steps run (for tests)."""
        prompt = batch["decoder_input_tokens"].astype(jnp.int32)
        batch_size, prompt_len = prompt.shape
        if max_decode_length <= 0:
            return jnp.zeros((batch_size, 0), jnp.int32), jnp.array(0, jnp.int32)
        # Move padding to the left (stable sort keeps token order), so the prompt's last token
        # sits in slot P - 1 of every row and the cache index is shared by the batch.
        order = jnp.argsort((prompt != self.pad_id).astype(jnp.int32), axis=1, stable=True)
        prompt = jnp.take_along_axis(prompt, order, axis=1)
        positions, valid = _decoder_only_positions(prompt, self.pad_id)
        lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
        cache_len = prompt_len + max_decode_length
        key_mask = jnp.concatenate(
            [valid, jnp.ones((batch_size, max_decode_length), bool)], axis=1)

        def run(variables, tokens, token_positions):
            logits, mutated = self._apply(variables, tokens, token_positions, key_mask,
                                          decode=True, max_length=cache_len,
                                          mutable=["cache"])
            return logits[:, -1], mutated["cache"]

        first_logits, cache = run({"params": params}, prompt, positions)

        def step_fn(prev, cache, step):
            # Step s feeds the token generated at s - 1, which sits at position len + s - 1.
            token_positions = (lengths + step - 1)[:, None]
            return run({"params": params, "cache": cache}, prev[:, None], token_positions)

        return self._greedy_loop(first_logits, cache, step_fn, max_decode_length)


MODEL_CLASSES: dict[str, type[BaseModel]] = {
    EncoderDecoderModel.kind: EncoderDecoderModel,
    DecoderOnlyModel.kind: DecoderOnlyModel,
}


def model_to_dict(model: BaseModel) -> dict[str, Any]:
    """JSON-serialisable description: `{"model_kind": ..., "config": {...}}`."""
    return {"model_kind": model.kind, "config": dataclasses.asdict(model.config)}


def model_from_dict(spec: Mapping[str, Any],
                    logical_axis_rules: partitioning.LogicalRules | None = None) -> BaseModel:
    """Rebuilds a model wrapper from `model_to_dict` output.

    Args:
      spec: `{"model_kind": "t5" | "llama", "config": {field: value}}`.
      logical_axis_rules: rules for the new wrapper (default rules when None).

    Returns:
      The model wrapper.
    """
    kind = spec.get("model_kind")
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model_kind {kind!r}; known: {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[kind]
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    config = dict(spec.get("config", {}))
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"unknown {cls.config_cls.__name__} fields {sorted(unknown)}")
    return cls(cls.config_cls(**config), logical_axis_rules)


# `TrainConfig.model_kind`'s names of the two kinds. Deprecated: the model decides its kind.
KIND_NAMES: dict[bool, str] = {False: "encoder_decoder", True: "decoder_only"}
_DEPRECATION_SHOWN: set[str] = set()


def check_declared_kind(model: TrainableModel, declared: str | None, what: str) -> None:
    """Checks a deprecated declaration of a model's kind (e.g. `TrainConfig.model_kind`).

    Unset (None) passes silently; a name that agrees with the model passes with one
    deprecation line on stderr (once per setting and process).

    Args:
      model: the model; its `decoder_only` decides.
      declared: "encoder_decoder", "decoder_only" or None.
      what: the setting, for the messages.

    Raises:
      UsageError: an unknown name, or one that contradicts the model.
    """
    if declared is None:
        return
    names = sorted(KIND_NAMES.values())
    if declared not in names:
        raise UsageError(f"{what} must be one of {names} or unset, got {declared!r}")
    actual = KIND_NAMES[bool(model.decoder_only)]
    if declared != actual:
        raise UsageError(f"{what} = {declared!r} contradicts the model ({type(model).__name__} "
                         f"is {actual}): remove {what}, the model decides its kind")
    if what not in _DEPRECATION_SHOWN:
        _DEPRECATION_SHOWN.add(what)
        print(f"activeit-jax: deprecated: {what} (the model decides its kind); remove it from "
              "the config (the setting goes in the next release)", file=sys.stderr)
