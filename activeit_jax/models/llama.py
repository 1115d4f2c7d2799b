"""LLaMA-style decoder-only transformer in Flax linen.

Pre-norm RMSNorm, rotary position embeddings (Hugging Face `rotate_half` layout, so converted
checkpoints need no permutation; default or Llama-3 frequency scaling), SwiGLU feed-forward,
grouped-query attention (`num_kv_heads <= num_heads`), optional query/key/value biases (Qwen2),
untied output head by default (tied for SmolLM2, small Qwen2 and Llama-3.2 models).

Parameter tree (logical axes in brackets):
  token_embedder/embedding                       [vocab, embed]
  layers_{i}/input_norm/scale                    [embed]
  layers_{i}/attention/query/kernel              [embed, heads, kv]
  layers_{i}/attention/{key,value}/kernel        [embed, heads, kv]  (kv_heads heads)
  layers_{i}/attention/{query,key,value}/bias    [heads, kv]         (attention_bias only)
  layers_{i}/attention/out/kernel                [heads, kv, embed]
  layers_{i}/post_attention_norm/scale           [embed]
  layers_{i}/mlp/{wi_0 (gate), wi_1 (up)}/kernel [embed, mlp]; mlp/wo (down) [mlp, embed]
  final_norm/scale                               [embed]
  logits_dense/kernel                            [embed, vocab]  (untied head only)

With `scan_layers`, the `layers_{i}` subtrees become one `layers` subtree whose parameters
carry a leading `[layers]` axis (`layers/mlp/wo/kernel [layers, mlp, embed]`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from activeit_jax.models import layers

Array = jax.Array

_HIDDEN = ("batch", "length", "embed")


@gin.register
@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a LLaMA-style model (defaults: LLaMA-7B).

    Attributes:
      vocab_size: vocabulary size (32000 for LLaMA / LLaMA-2).
      hidden_size: residual width (`embed`).
      intermediate_size: SwiGLU hidden width (`mlp`).
      num_layers: decoder layers.
      num_heads: query heads (`heads`).
      num_kv_heads: key/value heads (grouped-query attention when < num_heads).
      head_dim: per-head width (`kv`); None = hidden_size // num_heads.
      rope_theta: rotary base frequency.
      rope_type: "default", or "llama3" (Llama-3.1's frequency scaling, with `rope_factor`,
        `rope_low_freq_factor`, `rope_high_freq_factor` and
        `rope_original_max_position_embeddings`; see `rotary_inv_freq`).
      attention_bias: biases on the query/key/value projections (Qwen2).
      rms_norm_eps: RMSNorm epsilon.
      tie_word_embeddings: output head = token embedding transposed.
      max_position_embeddings: context length the checkpoint was trained for; informational
        (RoPE needs no table), kept so that an export writes it back.
      dropout_rate: dropout on the embeddings, residual branches and attention weights
        (applied only when the wrapper gets a dropout rng; 0 disables it).
      dtype: compute dtype name, "float32" or "bfloat16" (parameters stay float32).
      pad_id, bos_id, eos_id: token ids. Every `pad_id` in the input is treated as padding,
        so it must be an id that text never produces (LLaMA's <unk> 0; the converters pick one
        with `hf_tokenizer.choose_pad_id`). `bos_id` None: the model takes no BOS (its
        tokenizer's add_bos is off, e.g. SmolLM2) and the batch builders prepend nothing.
      remat: rematerialise each layer in the backward pass.
      scan_layers: run the layers as one `nn.scan` over parameters stacked on a leading
        `layers` axis (`layers/...` instead of `layers_{i}/...`): one layer is compiled
        instead of `num_layers`. None: scan from `layers.AUTO_SCAN_MIN_LAYERS` layers on
        (`scans_layers`). Default False (configs/models/llama_7b.gin sets True; docs/speed.md,
        "Scanning layers", says why). Checkpoints of either layout load into both
        (`layer_layout.convert_layout`). Not in the repr (a training run's fingerprint
        names the layout itself, `run_dir.run_args`).
    """
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    attention_bias: bool = False
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    dropout_rate: float = 0.0
    dtype: str = "float32"
    pad_id: int = 0
    bos_id: int | None = 1
    eos_id: int = 2
    remat: bool = False
    scan_layers: bool | None = dataclasses.field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads when head_dim is None")
        if self.resolved_head_dim % 2:
            raise ValueError("rotary embeddings need an even head_dim")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not one of {ROPE_TYPES}")
        if self.rope_type == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ValueError("llama3 RoPE needs rope_high_freq_factor > rope_low_freq_factor")
        if self.pad_id in (self.bos_id, self.eos_id):
            raise ValueError(f"pad_id {self.pad_id} doubles as BOS/EOS: every padding id is "
                             "masked out, so it must be an id text never produces")
        jnp.dtype(self.dtype)

    @property
    def scans_layers(self) -> bool:
        """Whether the layers run as one scan over stacked parameters (`scan_layers`)."""
        if self.scan_layers is None:
            return self.num_layers >= layers.AUTO_SCAN_MIN_LAYERS
        return bool(self.scan_layers)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)


ROPE_TYPES = ("default", "llama3")


def _default_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    # float32 in the reference's op order: 1 / theta**(2i / D).
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return np.float32(1.0) / (np.float32(theta) ** exponents)


def rotary_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse rotary frequencies, float32 `[head_dim // 2]` (a host-side constant).

    Default RoPE: `1 / theta**(2i / D)`, in the reference's op order. Llama-3 ("llama3"):
    wavelengths `2 pi / f` shorter than `original / high_freq_factor` keep their frequency,
    those longer than `original / low_freq_factor` are divided by `factor`, and the band in
    between blends the two linearly in `original / wavelength`.
    """
    inv_freq = _default_inv_freq(config.resolved_head_dim, config.rope_theta)
    if config.rope_type == "default":
        return inv_freq
    factor = np.float32(config.rope_factor)
    low, high = np.float32(config.rope_low_freq_factor), np.float32(config.rope_high_freq_factor)
    original = np.float32(config.rope_original_max_position_embeddings)
    wavelength = np.float32(2 * np.pi) / inv_freq
    scaled = np.where(wavelength > original / low, inv_freq / factor, inv_freq)
    blend = (original / wavelength - low) / (high - low)
    blended = (1 - blend) * scaled / factor + blend * scaled
    in_band = (wavelength >= original / high) & (wavelength <= original / low)
    return np.where(in_band, blended, scaled).astype(np.float32)


def rotary_cos_sin(positions: Array, head_dim: int, theta: float,
                   inv_freq: np.ndarray | None = None) -> tuple[Array, Array]:
    """Rotary tables for absolute positions, float32, as Hugging Face's RoPE.

    Args:
      positions: int `[B, T]` absolute positions.
      head_dim: per-head width D (even).
      theta: base frequency (default RoPE, when `inv_freq` is None).
      inv_freq: float32 `[D // 2]` frequencies (`rotary_inv_freq`), overriding `theta`.

    Returns:
      (cos, sin), each float32 `[B, T, D]` (frequencies repeated twice along D).
    """
    if inv_freq is None:
        inv_freq = _default_inv_freq(head_dim, theta)
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class LlamaLayer(nn.Module):
    """Pre-norm grouped-query self-attention + SwiGLU block."""
    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array, deterministic: bool,
                 decode: bool = False, cache_index: Array | None = None,
                 max_length: int | None = None, cache_layer: Array | None = None) -> Array:
        """Args:
          x: `[B, T, embed]`.
          mask: bool `[B, 1, T, K]` (K = T, or the cache length when decoding).
          cos, sin: rotary tables `[B, T, head_dim]`.
          deterministic: disables dropout.
          decode, cache_index, max_length, cache_layer: KV-cache decoding (see
            `MultiHeadAttention`).
        """
        cfg = self.config
        norm = functools.partial(layers.RMSNorm, cfg.rms_norm_eps, cfg.compute_dtype)
        dropout = nn.Dropout(cfg.dropout_rate)
        head_dim = cfg.resolved_head_dim
        y = norm(name="input_norm")(x)
        y = layers.MultiHeadAttention(
            num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=head_dim,
            scale=head_dim ** -0.5, dropout_rate=cfg.dropout_rate, dtype=cfg.compute_dtype,
            qkv_bias=cfg.attention_bias, name="attention")(
                y, y, mask, None, deterministic=deterministic, rotary=(cos, sin), decode=decode,
                cache_index=cache_index, max_length=max_length, cache_layer=cache_layer)
        x = layers.constrain(x + dropout(y, deterministic=deterministic), _HIDDEN)
        y = norm(name="post_attention_norm")(x)
        y = layers.MlpBlock(intermediate_dim=cfg.intermediate_size, activation="silu",
                            gated=True, dtype=cfg.compute_dtype, name="mlp")(
            y, deterministic=deterministic)
        return layers.constrain(x + dropout(y, deterministic=deterministic), _HIDDEN)


class LlamaTransformer(nn.Module):
    """Embedding -> decoder layers -> RMSNorm -> float32 logits."""
    config: LlamaConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, key_mask: Array,
                 deterministic: bool = True, decode: bool = False,
                 max_length: int | None = None, segment_ids: Array | None = None,
                 logit_positions: Array | None = None) -> Array:
        """Runs the decoder.

        Args:
          tokens: int `[B, T]` input tokens.
          positions: int `[B, T]` absolute positions (skip left padding).
          key_mask: bool `[B, K]`, which keys may be attended (False = padding); K = T, or
            `max_length` when decoding (covers the whole cache).
          deterministic: disables dropout.
          decode: KV-cache mode; the first call (empty cache) creates `max_length` slots and
            every call appends its T tokens at the cache's running index.
          max_length: cache length (static), needed on every decode call.
          segment_ids: int `[B, T]` of a packed row (not with `decode`): a token attends only
            to earlier tokens of its own segment.
          logit_positions: int `[B, K]` in `[0, T)`: the output head runs only at these
            positions of each row (where a loss or a score is taken), so a response of K
            tokens after a long prompt pays K positions of the `vocab`-wide head, not T.

        Returns:
          float32 logits `[B, T, vocab]` (`[B, K, vocab]` with `logit_positions`).
        """
        cfg = self.config
        q_len = tokens.shape[1]
        cache_exists = self.has_variable("cache", "index")
        if decode:
            if max_length is None:
                raise ValueError("decode=True needs max_length (the cache length)")
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            start = index.value
            index.value = start + q_len
            key_len = max_length
        else:
            start, key_len = 0, q_len
        # Causality over cache slots (slot order = time order), AND the padding mask.
        slots_q = start + jnp.arange(q_len)
        causal = jnp.arange(key_len)[None, :] <= slots_q[:, None]
        mask = causal[None, None] & key_mask[:, None, None, :]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
        cos, sin = rotary_cos_sin(positions, cfg.resolved_head_dim, cfg.rope_theta,
                                  rotary_inv_freq(cfg))

        embedder = layers.Embed(cfg.vocab_size, cfg.hidden_size, cfg.compute_dtype,
                                embedding_init=nn.initializers.normal(stddev=0.02),
                                name="token_embedder")
        x = layers.constrain(embedder(tokens), _HIDDEN)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        layer_cls = LlamaLayer
        if cfg.remat and not decode:
            # Inside a scan the loop already keeps XLA from merging the recomputation into
            # the forward pass, so remat's own CSE barrier is not needed there.
            layer_cls = nn.remat(LlamaLayer, static_argnums=(5, 6, 8),
                                 prevent_cse=not cfg.scans_layers)

        def call(layer, x, mask, cos, sin, cache_index, cache_layer):
            return layer(x, mask, cos, sin, deterministic, decode, cache_index,
                         key_len if decode else None, cache_layer)

        x = layers.layer_stack(lambda name: layer_cls(cfg, name=name), call, cfg.num_layers,
                               cfg.scans_layers, x, mask, cos, sin, start if decode else None,
                               carry_cache=decode and cache_exists)
        if logit_positions is not None:
            x = jnp.take_along_axis(x, logit_positions[..., None].astype(jnp.int32), axis=1)
        x = layers.RMSNorm(cfg.rms_norm_eps, cfg.compute_dtype, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = embedder.attend(x)
        else:
            logits = layers.DenseGeneral((cfg.vocab_size,), ("embed", "vocab"),
                                         dtype=cfg.compute_dtype, output_fp32=True,
                                         name="logits_dense")(x)
        return layers.constrain(logits, ("batch", "length", "vocab"))
