"""Building blocks shared by the T5 and LLaMA models (Flax linen, logically partitioned).

Why linen + `nn.with_logical_partitioning` / `nn.with_logical_constraint` (and not NNX or
hand-written `PartitionSpec`s): every parameter is created with logical axis names
(`("embed", "mlp")`, `("embed", "heads", "kv")` ...) and every main activation is constrained
with logical names (`("batch", "length", "embed")`). One rules table
(`activeit_jax.partitioning.DEFAULT_LOGICAL_AXIS_RULES`, bound in `configs/partitioning.gin`)
maps these names to mesh axes, exactly as in t5x, so data / FSDP / tensor parallelism is a
config change. Linen's functional `init`/`apply` returns plain pytrees of arrays, which is what
jit with explicit in/out shardings and orbax save/restore want, and the t5x/MaxText
pjit + orbax story around it is mature and well tested.

Numerics: parameters are float32; matmuls run in the configured compute `dtype` (e.g.
bfloat16); layer norms, attention softmax and output logits are computed in float32.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from activeit_jax.core.platform import target_platform

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

# Additive stand-in for -inf on masked attention logits: finite so that a fully masked row
# (a padding query) gives a uniform distribution instead of NaN.
_MASK_VALUE = -1e10


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
    """`nn.with_logical_constraint` (a no-op unless a mesh and rules are set)."""
    return nn.with_logical_constraint(x, tuple(axes))


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
                    axes: Sequence[str | None]) -> Array:
    """Creates a float32 parameter that carries its logical axis names."""
    if len(axes) != len(shape):
        raise ValueError(f"parameter {name}: {len(shape)} dims but logical axes {axes}")
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                        jnp.float32)


def activation_fn(name: str) -> Callable[[Array], Array]:
    """Activation by Hugging Face name: relu, gelu (exact), gelu_new (tanh approx.), silu."""
    table = {
        "relu": jax.nn.relu,
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(table)}")
    return table[name]


# `scan_layers=None` scans stacks of at least this many layers. Measured on SmolLM2-135M (30
# layers, CPU, docs/speed.md "Scanning layers"): scanning compiles its scoring call, decoding
# loop and train step 2x faster at the same step time; a stack of a few layers compiles quickly
# either way. (The configs' default is False, so existing checkpoints keep their exact numbers;
# the model gin files of 12 layers or more set True.)
AUTO_SCAN_MIN_LAYERS = 12

# Name of the stacked layer module of a scanned stack (`layer_stack`); per-layer stacks name
# their layers `layers_0`, `layers_1`, ... (see `models.layer_layout`).
STACKED_LAYERS = "layers"


def layer_stack(make_layer: Callable[[str], nn.Module], call: Callable[..., Array],
                num_layers: int, scan: bool, x: Array, *shared: Any,
                carry_cache: bool = False) -> Array:
    """Runs `num_layers` layers of the same shape over `x`: unrolled, or as one `nn.scan`.

    Unrolled, layer i is the submodule `layers_{i}` (its own parameters). Scanned (as t5x's
    and MaxText's `scan_layers`), one submodule `layers` holds every parameter stacked on a
    leading axis of logical name `layers` and XLA compiles the layer body once instead of
    `num_layers` times; dropout draws a separate rng per layer.

    The "cache" collection (the KV cache while decoding) of a scanned stack is stacked the
    same way, `[layers, ...]`, so a decoding loop carries it like any other pytree. The call
    that creates it scans it as per-layer slices; later calls (`carry_cache`) carry the whole
    stacked cache through the loop instead and each layer updates its slot in place
    (`MultiHeadAttention`'s `cache_layer`): scanned in and out, every decoding step would copy
    the whole cache two or three times over.

    Args:
      make_layer: name -> the layer module (possibly `nn.remat`-wrapped; created in the
        caller's compact scope).
      call: `(layer, x, *shared, cache_layer) -> x`, how to apply one layer (binds static
        arguments); `cache_layer` is this layer's int32 index in a carried stacked cache, or
        None.
      num_layers: stack depth.
      scan: scan (stacked parameters) rather than unroll.
      x: `[B, T, embed]`, the residual stream (the scan carry).
      shared: arrays (or None) every layer reads unchanged: masks, biases, rotary tables.
      carry_cache: the stacked "cache" collection exists already (a decoding step after the
        first call): carry it through the scan (scanned stacks only).

    Returns:
      `x` after the last layer.
    """
    if not scan:
        for i in range(num_layers):
            x = call(make_layer(f"layers_{i}"), x, *shared, None)
        return x

    def body(layer: nn.Module, carry: Array, *args: Any) -> tuple[Array, None]:
        *args, index = args
        return call(layer, carry, *args, index if carry_cache else None), None

    scanned = nn.scan(body, variable_axes={"params": 0} if carry_cache else
                      {"params": 0, "cache": 0},
                      variable_carry="cache" if carry_cache else False,
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(*(nn.broadcast,) * len(shared), 0), length=num_layers,
                      metadata_params={nn.PARTITION_NAME: STACKED_LAYERS})
    x, _ = scanned(make_layer(STACKED_LAYERS), x, *shared,
                   jnp.arange(num_layers, dtype=jnp.int32))
    return x


class DenseGeneral(nn.Module):
    """A bias-free linear map contracting the last `num_in_axes` input axes.

    Attributes:
      features: output feature shape, e.g. `(heads, kv)`.
      kernel_axes: logical names of the kernel `[*in_shape, *features]`.
      num_in_axes: how many trailing axes of the input are contracted.
      dtype: compute dtype.
      kernel_init: initializer of the float32 kernel (fan-in = contracted axes).
      output_fp32: accumulate and return float32 (used for the output logits).
      use_bias: add a float32 bias `[*features]` (logical axes: the kernel's output axes),
        zero-initialised (Qwen2's query/key/value projections).
    """
    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    num_in_axes: int = 1
    dtype: DType = jnp.float32
    kernel_init: Initializer | None = None
    output_fp32: bool = False
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Args: x `[..., *in_shape]`. Returns `[..., *features]`."""
        in_shape = x.shape[x.ndim - self.num_in_axes:]
        kernel_shape = (*in_shape, *self.features)
        in_axis = tuple(range(self.num_in_axes))
        out_axis = tuple(range(self.num_in_axes, len(kernel_shape)))
        init = self.kernel_init or nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)
        kernel = param_with_axes(self, "kernel", init, kernel_shape, self.kernel_axes)
        x_axes = tuple(range(x.ndim - self.num_in_axes, x.ndim))
        preferred = jnp.float32 if self.output_fp32 else None
        y = lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            ((x_axes, in_axis), ((), ())), preferred_element_type=preferred)
        if self.use_bias:
            bias = param_with_axes(self, "bias", nn.initializers.zeros, self.features,
                                   self.kernel_axes[self.num_in_axes:])
            y = y + bias.astype(y.dtype)
        return y if self.output_fp32 else y.astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table `[vocab, embed]`, optionally reused as the output projection.

    Attributes:
      num_embeddings: vocabulary size.
      features: embedding width.
      dtype: compute dtype of the looked-up vectors.
      embedding_init: initializer of the float32 table.
    """
    num_embeddings: int
    features: int
    dtype: DType = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self) -> None:
        self.embedding = param_with_axes(self, "embedding", self.embedding_init,
                                         (self.num_embeddings, self.features),
                                         ("vocab", "embed"))

    def __call__(self, ids: Array) -> Array:
        """Args: ids int `[B, T]`. Returns `[B, T, embed]` in `dtype`."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        """Tied output projection: `[B, T, embed] -> float32 logits [B, T, vocab]`."""
        return lax.dot_general(x.astype(self.dtype), self.embedding.astype(self.dtype),
                               (((x.ndim - 1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a scale and no bias (T5 and LLaMA), computed in fp32.

    Attributes:
      epsilon: added to the mean square.
      dtype: output dtype.
    """
    epsilon: float = 1e-6
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Args: x `[..., embed]`. Returns the normalised `x * scale` in `dtype`."""
        scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        x32 = x.astype(jnp.float32)
        y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return y.astype(self.dtype) * scale.astype(self.dtype)


class MlpBlock(nn.Module):
    """Feed-forward block: `wo(act(wi(x)))` or gated `wo(act(wi_0(x)) * wi_1(x))`.

    The gated form is T5 v1.1's gated-GELU and LLaMA's SwiGLU (wi_0 = gate, wi_1 = up).

    Attributes:
      intermediate_dim: hidden width (logical axis `mlp`).
      activation: activation name (see `activation_fn`).
      gated: use the gated form.
      dropout_rate: dropout on the hidden activations (T5 places it there).
      dtype: compute dtype.
    """
    intermediate_dim: int
    activation: str = "relu"
    gated: bool = False
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """Args: x `[B, T, embed]`. Returns `[B, T, embed]`."""
        act = activation_fn(self.activation)
        dense = functools.partial(DenseGeneral, features=(self.intermediate_dim,),
                                  kernel_axes=("embed", "mlp"), dtype=self.dtype)
        if self.gated:
            h = act(dense(name="wi_0")(x)) * dense(name="wi_1")(x)
        else:
            h = act(dense(name="wi")(x))
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        out = DenseGeneral((x.shape[-1],), ("mlp", "embed"), dtype=self.dtype, name="wo")(h)
        return out


def dot_product_attention(query: Array, key: Array, value: Array, mask: Array | None,
                          bias: Array | None, scale: float, dropout_rate: float,
                          deterministic: bool, dtype: DType,
                          dropout_rng: Array | None = None,
                          heads_major_kv: bool = False) -> Array:
    """Grouped-query attention with float32 logits and softmax.

    Args:
      query: `[B, T, H, D]`.
      key, value: `[B, S, K, D]` with K kv heads; H must be a multiple of K (head h uses kv
        head h // (H // K), the Hugging Face `repeat_kv` layout). K == H is plain multi-head.
      mask: bool, broadcastable to `[B, H, T, S]`; False = not attended. None = all.
      bias: float, broadcastable to `[B, H, T, S]` (T5 relative position bias) or None.
      scale: multiplies the query-key dot products (1.0 for T5, D**-0.5 for LLaMA).
      dropout_rate: dropout on the attention weights.
      deterministic: disables dropout.
      dtype: compute dtype of the two einsums' inputs.
      dropout_rng: PRNG key for the attention dropout.
      heads_major_kv: key and value are `[B, K, S, D]` (the KV-cache layout) instead.

    Returns:
      `[B, T, H, D]` in `dtype`.
    """
    batch, q_len, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1] if heads_major_kv else key.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads is not a multiple of {num_kv_heads} kv heads")
    groups = num_heads // num_kv_heads
    # Heads-major throughout, with the query heads that share a kv head folded into the
    # query length: both einsums are plain batched matmuls over (batch, kv head) and every
    # reshape of the [B, H, T, S] weights is free. A separate (often size-1) group axis made
    # XLA transpose the whole weights tensor around each einsum: 2x slower on CPU.
    q = jnp.swapaxes(query.astype(dtype), 1, 2).reshape(batch, num_kv_heads, groups * q_len,
                                                       head_dim)
    k = key.astype(dtype) if heads_major_kv else _heads_major(key.astype(dtype))
    v = value.astype(dtype) if heads_major_kv else _heads_major(value.astype(dtype))
    bias = None if bias is None else bias.astype(jnp.float32)
    if not deterministic and dropout_rate > 0.0:
        weights = _attention_weights(q, k, bias, mask, float(scale), num_heads)
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
        out = _weighted_values(weights, v)
    else:
        rows = _rows_per_chunk(batch, num_heads * q_len * k.shape[2] * 4)
        out = _attend(q, k, v, bias, mask, float(scale), num_heads, rows)
    return jnp.swapaxes(out.reshape(batch, num_heads, q_len, head_dim), 1, 2)


def _logits(q: Array, k: Array, scale: float, num_heads: int) -> Array:
    """Scaled float32 logits `[B, H, T, S]` of heads-major `q` `[B, K, G*T, D]` and `k`
    `[B, K, S, D]`."""
    batch, num_kv_heads, folded, _ = q.shape
    logits = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, num_heads, folded * num_kv_heads // num_heads, -1)
    return logits * jnp.float32(scale)


def _attention_weights(q: Array, k: Array, bias: Array | None, mask: Array | None,
                       scale: float, num_heads: int) -> Array:
    """Softmax weights `[B, H, T, S]` (see `_logits`)."""
    return _softmax_of(_logits(q, k, scale, num_heads), bias, mask)


def _softmax_of(logits: Array, bias: Array | None, mask: Array | None) -> Array:
    if bias is not None:
        logits = add_shared_bias(logits, bias)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.float32(_MASK_VALUE))
    return softmax(logits)


def _weighted_values(weights: Array, v: Array) -> Array:
    """`[B, H, T, S]` weights (query heads of a kv head adjacent) times `v` `[B, K, S, D]`."""
    batch, num_kv_heads = v.shape[:2]
    weights = weights.reshape(batch, num_kv_heads, -1, weights.shape[-1]).astype(v.dtype)
    return jnp.einsum("bkqs,bksd->bkqd", weights, v)


def _attention_core(q, k, v, bias, mask, scale: float, num_heads: int) -> Array:
    return _weighted_values(_attention_weights(q, k, bias, mask, scale, num_heads), v)


# XLA's CPU backend runs an attention softmax as separate passes over the whole `[B, H, T, S]`
# tensor (max, exp, sum, normalise, weighted sum), each streaming 268 MB from memory for a
# 64 x 4 x 512 x 512 scoring batch. Attending a few rows at a time (`lax.map`) keeps each pass
# in cache: 2 rows at a time, bias, mask, softmax and weighted sum take 57 ms instead of
# 147 ms, bit for bit the same. One row at a time is slower than the whole batch (the
# backend splits each pass over the rows between its threads), so a chunk has at least 2.
# Tensors under this size are attended whole (a decoding step's `[B, H, 1, S]`).
_CPU_CHUNKED_ATTENTION_BYTES = 16 << 20


def _rows_per_chunk(batch: int, bytes_per_row: int) -> int:
    """Rows of a batch attended together: all of them except on the CPU backend, where the
    smallest divisor of `batch` of at least 2 (2 when `batch` is prime: the last row then
    forms its own call) for a tensor of `_CPU_CHUNKED_ATTENTION_BYTES` or more. The backend
    is the one the program is compiled for (`core.platform.target_platform`: the mesh's)."""
    if (target_platform() != "cpu" or batch < 4
            or batch * bytes_per_row < _CPU_CHUNKED_ATTENTION_BYTES):
        return batch
    return next((rows for rows in range(2, batch // 2 + 1) if batch % rows == 0), 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attend(q: Array, k: Array, v: Array, bias: Array | None, mask: Array | None,
            scale: float, num_heads: int, rows: int) -> Array:
    """`_attention_core` over consecutive chunks of `rows` batch rows (`lax.map`, the rows
    left over in one more call): the same values as one call. Differentiated, it runs as one
    call (the training step's backward keeps the layout it was tuned with)."""
    batch = q.shape[0]
    if rows >= batch:
        return _attention_core(q, k, v, bias, mask, scale, num_heads)
    whole = (q, k, v, bias, mask)
    # Batch-sized leading axes are chunked, broadcast (size-1) ones shared by every chunk.
    per_row = [x is not None and x.shape[0] == batch for x in whole]
    mapped = batch // rows * rows

    def one_chunk(parts):
        args = [part if chunked else x for part, chunked, x in zip(parts, per_row, whole)]
        return _attention_core(*args, scale, num_heads)

    out = lax.map(one_chunk, [x[:mapped].reshape(batch // rows, rows, *x.shape[1:])
                              if chunked else None for x, chunked in zip(whole, per_row)])
    out = out.reshape(mapped, *out.shape[2:])
    if mapped == batch:
        return out
    rest = [x[mapped:] if chunked else x for x, chunked in zip(whole, per_row)]
    return jnp.concatenate([out, _attention_core(*rest, scale, num_heads)])


def _attend_fwd(q, k, v, bias, mask, scale, num_heads, rows):
    out, pullback = jax.vjp(
        lambda q_, k_, v_, b_: _attention_core(q_, k_, v_, b_, mask, scale, num_heads),
        q, k, v, bias)
    return out, (pullback, mask)


def _attend_bwd(scale, num_heads, rows, residuals, grad):
    pullback, mask = residuals
    grad_mask = None if mask is None else np.zeros(mask.shape, jax.dtypes.float0)
    return (*pullback(grad), grad_mask)


_attend.defvjp(_attend_fwd, _attend_bwd)


@jax.custom_vjp
def softmax(x: Array) -> Array:
    """Softmax over the last axis with the textbook gradient `y * (g - sum(g * y))`.

    `jax.nn.softmax`'s gradient, differentiated through its division, leaves XLA's CPU
    backend materialising broadcasts of the normaliser over the whole `[B, H, T, S]` tensor
    inside the attention backward; this form keeps it to two elementwise passes.
    """
    unnormalized = jnp.exp(x - lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


def _softmax_fwd(x: Array) -> tuple[Array, Array]:
    y = softmax(x)
    return y, y


def _softmax_bwd(y: Array, grad: Array) -> tuple[Array]:
    return (y * (grad - jnp.sum(grad * y, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@jax.custom_vjp
def add_shared_bias(x: Array, bias: Array) -> Array:
    """`x + bias`, `bias` of the same rank broadcast along size-1 axes (T5's `[1, H, T, S]`
    attention bias added to `[B, H, T, S]` logits).

    The gradient of `bias` sums `B` copies of the logits' gradient. Autodiff writes that as a
    reduction over the outer axis, which XLA's CPU backend runs at a few percent of memory
    bandwidth (0.15 s for one 8 x 4 x 1024 x 1024 tensor, a sixth of a tiny T5's training
    step); as a matrix product with a vector of ones it takes milliseconds.
    """
    return x + bias


def _add_shared_bias_fwd(x: Array, bias: Array) -> tuple[Array, Array]:
    return x + bias, bias  # kept for its shape: it lives on as every layer's input anyway


def _add_shared_bias_bwd(bias: Array, grad: Array) -> tuple[Array, Array]:
    outer = tuple(axis for axis, size in enumerate(bias.shape)
                  if size == 1 and grad.shape[axis] != 1)
    if outer == (0,):  # the common case: the outer axis as a product with ones
        ones = jnp.ones((grad.shape[0],), grad.dtype)
        grad_bias = jnp.tensordot(ones, grad, axes=1)[None]
    else:
        grad_bias = grad.sum(axis=outer, keepdims=True) if outer else grad
    return grad, grad_bias.astype(bias.dtype)


add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


def _heads_major(x: Array) -> Array:
    """`[B, S, K, D] -> [B, K, S, D]` (the KV-cache layout)."""
    return jnp.swapaxes(x, 1, 2)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotary position embedding, Hugging Face `rotate_half` layout, computed in float32.

    Args:
      x: `[B, T, H, D]`.
      cos, sin: `[B, T, D]` (the frequencies repeated twice along D).

    Returns:
      Rotated `x`, same shape and dtype.
    """
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head / grouped-query attention with an optional KV cache.

    Parameters: `query [embed, heads, kv]`, `key`/`value [embed, kv_heads, kv]`,
    `out [heads, kv, embed]` (kv_heads also uses the logical name `heads`).

    Cache (collection "cache", only with `decode=True`), heads-major so that a decoding step
    reads it in the layout the attention dots want (a `[B, L, K, D]` cache made XLA transpose
    the whole cache at every step, O(L) work per generated token):
      self-attention: `cached_key`/`cached_value [B, kv_heads, max_length, kv]`, written at
        `cache_index` each call; cross-attention (`cache_cross_kv`): the projected encoder
        keys/values `[B, kv_heads, S, kv]`, computed on the first call and reused afterwards.

    Attributes:
      num_heads, num_kv_heads, head_dim: shapes.
      scale: query-key scale (1.0 in T5, whose init folds it into the query kernel).
      dropout_rate: attention-weight dropout.
      dtype: compute dtype.
      query_init_scale: variance multiplier of the query kernel init (T5: 1 / head_dim).
      qkv_bias: query/key/value projections carry a bias `[heads, kv]` (Qwen2); the output
        projection never does.
    """
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float = 1.0
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    query_init_scale: float = 1.0
    qkv_bias: bool = False

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None,
                 bias: Array | None = None, *, deterministic: bool = True,
                 rotary: tuple[Array, Array] | None = None, decode: bool = False,
                 cache_index: Array | None = None, max_length: int | None = None,
                 cache_cross_kv: bool = False, cache_layer: Array | None = None) -> Array:
        """Attends from `inputs_q` to `inputs_kv`.

        Args:
          inputs_q: `[B, T, embed]`.
          inputs_kv: `[B, S, embed]` (same array for self-attention).
          mask: bool, broadcastable to `[B, H, T, S']` where S' is S, or `max_length` when
            decoding self-attention (the whole cache).
          bias: float, broadcastable like `mask`, or None.
          deterministic: disables dropout.
          rotary: (cos, sin) `[B, T, D]` to rotate queries and keys (LLaMA), or None.
          decode: use the KV cache.
          cache_index: int32 scalar, cache slot of the first of the T new tokens.
          max_length: cache length (first decode call only; shapes the cache).
          cache_cross_kv: this is cross-attention; cache the projected `inputs_kv` once.
          cache_layer: int32 scalar: the cache variables hold a whole scanned stack's cache
            `[layers, B, kv_heads, L, kv]` (`layer_stack`'s `carry_cache`) and this layer is
            slot `cache_layer`; it writes its new keys/values there in place and reads its
            slice. None: the variables are this layer's own.

        Returns:
          `[B, T, embed]` in `dtype`.
        """
        embed_dim = inputs_q.shape[-1]
        qkv_axes = ("batch", "length", "heads", "kv")
        fan_in = ((0,), (1, 2))
        query_proj = DenseGeneral(
            (self.num_heads, self.head_dim), ("embed", "heads", "kv"), dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(
                self.query_init_scale, "fan_in", "truncated_normal", *fan_in), name="query",
            use_bias=self.qkv_bias)
        key_proj = DenseGeneral((self.num_kv_heads, self.head_dim), ("embed", "heads", "kv"),
                                dtype=self.dtype, name="key", use_bias=self.qkv_bias)
        value_proj = DenseGeneral((self.num_kv_heads, self.head_dim), ("embed", "heads", "kv"),
                                  dtype=self.dtype, name="value", use_bias=self.qkv_bias)

        query = constrain(query_proj(inputs_q), qkv_axes)
        heads_major = False
        if decode and cache_cross_kv:
            # Encoder keys/values never change while decoding: project them once.
            cross_key = self.variable("cache", "cached_key",
                                      lambda: _heads_major(key_proj(inputs_kv)))
            cross_value = self.variable("cache", "cached_value",
                                        lambda: _heads_major(value_proj(inputs_kv)))
            key, value, heads_major = cross_key.value, cross_value.value, True
            if cache_layer is not None:
                key, value = (lax.dynamic_index_in_dim(kv, cache_layer, keepdims=False)
                              for kv in (key, value))
        else:
            key = constrain(key_proj(inputs_kv), qkv_axes)
            value = constrain(value_proj(inputs_kv), qkv_axes)
            if rotary is not None:
                query = apply_rotary(query, *rotary)
                key = apply_rotary(key, *rotary)
            if decode:
                batch = inputs_q.shape[0]
                cache_shape = (batch, self.num_kv_heads, max_length or 0, self.head_dim)
                cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape,
                                           key.dtype)
                cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape,
                                             value.dtype)
                key, value = _heads_major(key), _heads_major(value)
                if cache_layer is None:
                    start = (0, 0, cache_index, 0)
                    key = lax.dynamic_update_slice(cached_key.value, key, start)
                    value = lax.dynamic_update_slice(cached_value.value, value, start)
                    cached_key.value, cached_value.value = key, value
                else:  # this layer's slot of the stacked cache, updated in place
                    start = (cache_layer, 0, 0, cache_index, 0)
                    cached_key.value = lax.dynamic_update_slice(cached_key.value, key[None],
                                                                start)
                    cached_value.value = lax.dynamic_update_slice(cached_value.value,
                                                                  value[None], start)
                    key, value = (lax.dynamic_index_in_dim(kv.value, cache_layer,
                                                           keepdims=False)
                                  for kv in (cached_key, cached_value))
                heads_major = True

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(query, key, value, mask, bias, self.scale,
                                    self.dropout_rate, deterministic, self.dtype, dropout_rng,
                                    heads_major_kv=heads_major)
        out = constrain(out, qkv_axes)
        out = DenseGeneral((embed_dim,), ("heads", "kv", "embed"), num_in_axes=2,
                           dtype=self.dtype, name="out")(out)
        return out
