"""T5 encoder-decoder in Flax linen: v1.1 / LM-adapted by default, original T5 as an option.

T5 v1.1 (and the LM-adapted checkpoints such as t5-large-lm-adapt): RMS layer norm without
bias, relative position buckets shared by all layers of a stack, gated-GELU feed-forward
(Hugging Face "gated-gelu" = `gelu_new`, the tanh approximation), untied output head, no
attention scaling (folded into the query init). The original T5 uses a ReLU feed-forward and
ties the output head to the token embedding, scaling the decoder output by `d_model ** -0.5`
first (`feed_forward_proj="relu", tie_word_embeddings=True`).

Parameter tree (t5x names; logical axes in brackets):
  token_embedder/embedding                          [vocab, embed]
  encoder/relpos_bias/rel_embedding                 [relpos_buckets, heads]
  encoder/layers_{i}/pre_attention_layer_norm/scale [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel [embed, heads, kv]; out [heads, kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale, mlp/{wi_0,wi_1 | wi}/kernel [embed, mlp],
    mlp/wo/kernel [mlp, embed]
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
    pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp}
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel [embed, vocab]        (untied head only)

With `scan_layers`, each stack's `layers_{i}` subtrees become one `layers` subtree whose
parameters carry a leading `[layers]` axis (`encoder/layers/mlp/wo/kernel [layers, mlp, embed]`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from activeit_jax.data.vocab import EOS_ID, PAD_ID
from activeit_jax.models import layers

Array = jax.Array

_FEED_FORWARD_PROJS = ("relu", "gelu", "gelu_new", "silu", "gated-relu", "gated-gelu",
                       "gated-gelu_new", "gated-silu")


@gin.register
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 model (defaults: T5 v1.1 small shapes, LM-adapted).

    Attributes:
      vocab_size: output vocabulary (32128 for the public checkpoints).
      d_model: width of the residual stream (logical axis `embed`).
      d_kv: width of one attention head (`kv`).
      d_ff: feed-forward hidden width (`mlp`).
      num_heads: attention heads (`heads`).
      num_encoder_layers, num_decoder_layers: stack depths.
      relative_attention_num_buckets: relative position buckets (`relpos_buckets`).
      relative_attention_max_distance: distance beyond which buckets saturate.
      feed_forward_proj: "gated-gelu" (v1.1), "relu" (original T5), or another
        `[gated-]{relu,gelu,gelu_new,silu}`; as in Hugging Face, "gated-gelu" means gelu_new.
      tie_word_embeddings: output head = token embedding transposed (original T5).
      scale_decoder_outputs: multiply the decoder output by d_model**-0.5 before the head;
        None = same as `tie_word_embeddings` (original T5 does both, v1.1 neither).
      layer_norm_epsilon: RMS norm epsilon.
      dropout_rate: dropout everywhere (0 for inference; 0.1 was the pre-training value).
      dtype: compute dtype name, "float32" or "bfloat16" (parameters stay float32).
      pad_id, eos_id, decoder_start_id: special token ids (T5: 0, 1, 0; the SentencePiece
        vocabulary's, `data.vocab.PAD_ID` / `EOS_ID`; decoding starts from padding).
      remat: rematerialise each layer in the backward pass (saves activation memory).
      scan_layers: run each stack as one `nn.scan` over parameters stacked on a leading
        `layers` axis (`encoder/layers/...` instead of `encoder/layers_{i}/...`): one layer
        per stack is compiled instead of all of them. None: scan when a stack has
        `layers.AUTO_SCAN_MIN_LAYERS` layers or more (`scans_layers`). Default False (the
        model gin files of T5-base and larger set True; docs/speed.md, "Scanning layers").
        Checkpoints of either layout load into both (`layer_layout.convert_layout`). Not in
        the repr (a training run's fingerprint names the layout itself, `run_dir.run_args`).
    """
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    scale_decoder_outputs: bool | None = None
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.0
    dtype: str = "float32"
    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    decoder_start_id: int = PAD_ID
    remat: bool = False
    scan_layers: bool | None = dataclasses.field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.feed_forward_proj not in _FEED_FORWARD_PROJS:
            raise ValueError(f"unsupported feed_forward_proj {self.feed_forward_proj!r}; "
                             f"supported: {_FEED_FORWARD_PROJS}")
        jnp.dtype(self.dtype)  # fails early on a bad dtype name

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """Activation name for `layers.activation_fn` (Hugging Face semantics)."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def scans_layers(self) -> bool:
        """Whether both stacks run as scans over stacked parameters (`scan_layers`)."""
        if self.scan_layers is None:
            return (max(self.num_encoder_layers, self.num_decoder_layers)
                    >= layers.AUTO_SCAN_MIN_LAYERS)
        return bool(self.scan_layers)

    @property
    def scales_decoder_outputs(self) -> bool:
        if self.scale_decoder_outputs is None:
            return self.tie_word_embeddings
        return self.scale_decoder_outputs

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's relative position -> bucket map (Mesh TensorFlow / Hugging Face formula).

    Computed in NumPy float32 on the host, mirroring the reference's float32 op order, so the
    buckets equal Hugging Face's exactly (a log rounding at a bucket edge would otherwise move
    a distance into the neighbouring bucket).

    Args:
      relative_position: int array, memory position - query position.
      bidirectional: encoder (True) or causal decoder (False).
      num_buckets: number of buckets.
      max_distance: distances at or beyond this share the last bucket.

    Returns:
      int32 array of buckets in [0, num_buckets), same shape.
    """
    rel = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    # Clamp to 1 before the log: small distances take the exact branch anyway.
    log_ratio = (np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact))
                 / np.float32(math.log(max_distance / max_exact))
                 * np.float32(num_buckets - max_exact))
    if_large = np.minimum(max_exact + log_ratio.astype(np.int64), num_buckets - 1)
    return (buckets + np.where(is_small, rel, if_large)).astype(np.int32)


class RelativePositionBiases(nn.Module):
    """Per-head attention bias from bucketed relative positions, shared by a stack's layers.

    Attributes:
      num_buckets, max_distance, num_heads: shapes and the bucket formula's parameters.
      bidirectional: True for the encoder, False for the causal decoder.
    """
    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, query_length: int, key_length: int,
                 query_offset: Array | int = 0) -> Array:
        """The bias of queries at positions `query_offset + [0, T)` attending to keys at
        `[0, S)`.

        Args:
          query_length: T (static).
          key_length: S (static).
          query_offset: position of the first query (int32 scalar while decoding).

        Returns:
          float32 bias `[1, heads, T, S]`.
        """
        table = layers.param_with_axes(
            self, "rel_embedding", nn.initializers.normal(stddev=1.0),
            (self.num_buckets, self.num_heads), ("relpos_buckets", "heads"))
        # The bias depends on key - query only: one value per diagonal, C = T + S of them
        # (the last is slack for the skew below). Diagonal c holds distance c - (T - 1).
        num_diagonals = query_length + key_length
        distance = np.arange(num_diagonals) - (query_length - 1)
        if isinstance(query_offset, int):
            buckets = jnp.asarray(relative_position_bucket(
                distance - query_offset, self.bidirectional, self.num_buckets,
                self.max_distance))
        else:  # every |distance| >= max_distance shares the saturated bucket
            span = self.max_distance
            bucket_of = jnp.asarray(relative_position_bucket(
                np.arange(-span, span + 1), self.bidirectional, self.num_buckets, span))
            buckets = bucket_of[jnp.clip(distance - query_offset, -span, span) + span]
        per_diagonal = jnp.take(table.astype(jnp.float32).T, buckets, axis=1)  # [heads, C]
        return _toeplitz(per_diagonal, query_length, key_length)[None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _toeplitz(per_diagonal: Array, query_length: int, key_length: int) -> Array:
    """`[H, T, S]` with `out[h, t, s] = per_diagonal[h, s - t + T - 1]`.

    Forward: a gather with constant indices, which XLA fuses into each consumer as one index
    load per element (the skew below, fused the same way, costs two integer divisions per
    element of every layer's `[B, H, T, S]` logits: a third of a scoring step at T = S = 824).
    Backward: the transpose of the skew, a sum over rows, not the `T x S` scatter a gather's
    gradient would be (XLA's CPU scatter made the bias's backward a fifth of a tiny T5's
    training step).

    Args:
      per_diagonal: `[H, T + S]`, the value of each diagonal (the last entry is unused).
      query_length, key_length: T, S.
    """
    index = (np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
             + query_length - 1).astype(np.int32)
    return jnp.take(per_diagonal, jnp.asarray(index), axis=1)


def _skewed_toeplitz(per_diagonal: Array, query_length: int, key_length: int) -> Array:
    """`_toeplitz` by skewing: row t of `T` copies read with a stride one shorter is the copy
    shifted left by t. Reshapes, slices and a broadcast: linear, with a cheap transpose."""
    heads, width = per_diagonal.shape
    rows = jnp.broadcast_to(per_diagonal[:, None, :], (heads, query_length, width))
    skewed = rows.reshape(heads, query_length * width)[:, :query_length * (width - 1)]
    skewed = skewed.reshape(heads, query_length, width - 1)
    return skewed[:, :, query_length - 1:query_length - 1 + key_length]


def _toeplitz_fwd(per_diagonal: Array, query_length: int, key_length: int
                  ) -> tuple[Array, Array]:
    return _toeplitz(per_diagonal, query_length, key_length), per_diagonal


def _toeplitz_bwd(query_length: int, key_length: int, per_diagonal: Array,
                  grad: Array) -> tuple[Array]:
    _, transpose = jax.vjp(
        lambda p: _skewed_toeplitz(p, query_length, key_length), per_diagonal)
    return transpose(grad)


_toeplitz.defvjp(_toeplitz_fwd, _toeplitz_bwd)


def _attention(cfg: T5Config, name: str) -> layers.MultiHeadAttention:
    return layers.MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads, head_dim=cfg.d_kv, scale=1.0,
        dropout_rate=cfg.dropout_rate, dtype=cfg.compute_dtype,
        query_init_scale=1.0 / cfg.d_kv, name=name)


def _mlp(cfg: T5Config) -> layers.MlpBlock:
    return layers.MlpBlock(intermediate_dim=cfg.d_ff, activation=cfg.activation,
                           gated=cfg.is_gated, dropout_rate=cfg.dropout_rate,
                           dtype=cfg.compute_dtype, name="mlp")


_HIDDEN = ("batch", "length", "embed")


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward block of the encoder."""
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool) -> Array:
        """Args: x `[B, S, embed]`, mask bool `[B, 1, 1, S]`, bias `[1, H, S, S]`."""
        cfg = self.config
        norm = functools.partial(layers.RMSNorm, cfg.layer_norm_epsilon, cfg.compute_dtype)
        dropout = nn.Dropout(cfg.dropout_rate)
        y = norm(name="pre_attention_layer_norm")(x)
        y = _attention(cfg, "attention")(y, y, mask, bias, deterministic=deterministic)
        x = layers.constrain(x + dropout(y, deterministic=deterministic), _HIDDEN)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=deterministic)
        return layers.constrain(x + dropout(y, deterministic=deterministic), _HIDDEN)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention + cross-attention + feed-forward block."""
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_mask: Array, bias: Array,
                 cross_mask: Array, deterministic: bool, decode: bool = False,
                 cache_index: Array | None = None, max_length: int | None = None,
                 cache_layer: Array | None = None) -> Array:
        """Args:
          x: `[B, T, embed]` decoder stream.
          encoded: `[B, S, embed]` encoder output.
          self_mask: bool `[1, 1, T, K]` causal mask (K = T, or the cache length).
          bias: `[1, H, T, K]` relative position bias.
          cross_mask: bool `[B, 1, 1, S]` encoder padding mask.
          deterministic: disables dropout.
          decode, cache_index, max_length, cache_layer: KV-cache decoding (see
            `MultiHeadAttention`).
        """
        cfg = self.config
        norm = functools.partial(layers.RMSNorm, cfg.layer_norm_epsilon, cfg.compute_dtype)
        dropout = nn.Dropout(cfg.dropout_rate)
        y = norm(name="pre_self_attention_layer_norm")(x)
        y = _attention(cfg, "self_attention")(
            y, y, self_mask, bias, deterministic=deterministic, decode=decode,
            cache_index=cache_index, max_length=max_length, cache_layer=cache_layer)
        x = layers.constrain(x + dropout(y, deterministic=deterministic), _HIDDEN)
        y = norm(name="pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention")(
            y, encoded, cross_mask, None, deterministic=deterministic, decode=decode,
            cache_cross_kv=True, cache_layer=cache_layer)
        x = layers.constrain(x + dropout(y, deterministic=deterministic), _HIDDEN)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=deterministic)
        return layers.constrain(x + dropout(y, deterministic=deterministic), _HIDDEN)


class Encoder(nn.Module):
    """Embedding -> encoder layers -> final RMS norm."""
    config: T5Config
    shared_embedding: layers.Embed

    @nn.compact
    def __call__(self, tokens: Array, deterministic: bool = True,
                 segment_ids: Array | None = None) -> Array:
        """Args: tokens int `[B, S]` (0 = pad); segment_ids int `[B, S]` of packed rows (a
        token attends only within its segment), or None.

        Returns `[B, S, embed]` in the compute dtype.
        """
        cfg = self.config
        # Packed segments are contiguous, so slot differences are the within-segment relative
        # positions wherever attention is allowed: the bias needs no per-segment positions.
        mask = (tokens != cfg.pad_id)[:, None, None, :]
        if segment_ids is not None:
            mask = mask & _same_segment(segment_ids, segment_ids)
        bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                      cfg.relative_attention_max_distance, cfg.num_heads,
                                      bidirectional=True, name="relpos_bias")(
            tokens.shape[1], tokens.shape[1])
        x = layers.constrain(self.shared_embedding(tokens), _HIDDEN)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        layer_cls = (nn.remat(EncoderLayer, static_argnums=(4,), prevent_cse=not cfg.scans_layers)
                     if cfg.remat else EncoderLayer)
        x = layers.layer_stack(
            lambda name: layer_cls(cfg, name=name),
            lambda layer, x, mask, bias, _: layer(x, mask, bias, deterministic),
            cfg.num_encoder_layers, cfg.scans_layers, x, mask, bias)
        x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Embedding -> decoder layers -> final RMS norm -> float32 logits."""
    config: T5Config
    shared_embedding: layers.Embed

    @nn.compact
    def __call__(self, encoded: Array, encoder_tokens: Array, tokens: Array,
                 deterministic: bool = True, decode: bool = False,
                 max_length: int | None = None, segment_ids: Array | None = None,
                 encoder_segment_ids: Array | None = None) -> Array:
        """Runs the decoder.

        Args:
          encoded: `[B, S, embed]` encoder output.
          encoder_tokens: int `[B, S]`, for the cross-attention padding mask.
          tokens: int `[B, T]` decoder inputs (targets shifted right, start id 0).
          deterministic: disables dropout.
          decode: KV-cache mode; the first call (empty cache) creates a cache of
            `max_length` slots, every call appends its T tokens.
          max_length: cache length (static), needed on every decode call.
          segment_ids, encoder_segment_ids: int `[B, T]` / `[B, S]` of packed rows (not with
            `decode`): a position attends to earlier positions and to encoder tokens of its
            own segment only.

        Returns:
          float32 logits `[B, T, vocab]`.
        """
        cfg = self.config
        q_len = tokens.shape[1]
        cache_exists = self.has_variable("cache", "index")
        if decode:
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            start = index.value
            index.value = start + q_len
            if max_length is None:
                raise ValueError("decode=True needs max_length (the cache length)")
            key_len = max_length
        else:
            start, key_len = 0, q_len
        query_positions = start + jnp.arange(q_len)
        key_positions = jnp.arange(key_len)
        self_mask = (key_positions[None, :] <= query_positions[:, None])[None, None]
        bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                      cfg.relative_attention_max_distance, cfg.num_heads,
                                      bidirectional=False, name="relpos_bias")(
            q_len, key_len, start)
        cross_mask = (encoder_tokens != cfg.pad_id)[:, None, None, :]
        if segment_ids is not None:
            self_mask = self_mask & _same_segment(segment_ids, segment_ids)
            cross_mask = cross_mask & _same_segment(segment_ids, encoder_segment_ids)

        x = layers.constrain(self.shared_embedding(tokens), _HIDDEN)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        layer_cls = DecoderLayer
        if cfg.remat and not decode:
            layer_cls = nn.remat(DecoderLayer, static_argnums=(6, 7, 9),
                                 prevent_cse=not cfg.scans_layers)

        def call(layer, x, encoded, self_mask, bias, cross_mask, cache_index, cache_layer):
            return layer(x, encoded, self_mask, bias, cross_mask, deterministic, decode,
                         cache_index, key_len if decode else None, cache_layer)

        x = layers.layer_stack(lambda name: layer_cls(cfg, name=name), call,
                               cfg.num_decoder_layers, cfg.scans_layers, x, encoded, self_mask,
                               bias, cross_mask, start if decode else None,
                               carry_cache=decode and cache_exists)
        x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="decoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if cfg.scales_decoder_outputs:
            # Original T5: the tied head sees the output rescaled by d_model**-0.5.
            x = x * jnp.asarray(cfg.d_model ** -0.5, x.dtype)
        if cfg.tie_word_embeddings:
            logits = self.shared_embedding.attend(x)
        else:
            logits = layers.DenseGeneral((cfg.vocab_size,), ("embed", "vocab"),
                                         dtype=cfg.compute_dtype, output_fp32=True,
                                         name="logits_dense")(x)
        return layers.constrain(logits, ("batch", "length", "vocab"))


def _same_segment(query_segments: Array, key_segments: Array) -> Array:
    """bool `[B, 1, T, S]`: query and key belong to the same packed segment."""
    return (query_segments[:, None, :, None] == key_segments[:, None, None, :])


class T5Transformer(nn.Module):
    """The full encoder-decoder; `encode` and `decode` are exposed for KV-cached decoding."""
    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, cfg.compute_dtype,
                                           name="token_embedder")
        self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
        self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

    def encode(self, encoder_input_tokens: Array, deterministic: bool = True,
               segment_ids: Array | None = None) -> Array:
        """`[B, S]` tokens -> `[B, S, embed]` encoder output."""
        return self.encoder(encoder_input_tokens, deterministic=deterministic,
                            segment_ids=segment_ids)

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               deterministic: bool = True, decode: bool = False,
               max_length: int | None = None, segment_ids: Array | None = None,
               encoder_segment_ids: Array | None = None) -> Array:
        """Decoder pass over `encoded`; returns float32 logits `[B, T, vocab]`."""
        return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                            deterministic=deterministic, decode=decode, max_length=max_length,
                            segment_ids=segment_ids, encoder_segment_ids=encoder_segment_ids)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 deterministic: bool = True, encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None) -> Array:
        """Teacher-forced forward pass: float32 logits `[B, T, vocab]`; with segment ids
        (both or neither), packed rows whose segments never see each other."""
        encoded = self.encode(encoder_input_tokens, deterministic=deterministic,
                              segment_ids=encoder_segment_ids)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           deterministic=deterministic, segment_ids=decoder_segment_ids,
                           encoder_segment_ids=encoder_segment_ids)
