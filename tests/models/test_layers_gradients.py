"""The hand-written pieces of the attention (chosen for XLA's CPU speed, see docs/speed.md)
compute what the plain expressions compute, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from activeit_jax.models import layers, t5


def _random(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_softmax_and_its_gradient_equal_jax_nn_softmax():
    x, g = _random((2, 3, 5, 7), 0), _random((2, 3, 5, 7), 1)
    ours, ours_vjp = jax.vjp(layers.softmax, x)
    ref, ref_vjp = jax.vjp(lambda v: jax.nn.softmax(v, axis=-1), x)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours_vjp(g)[0], ref_vjp(g)[0], rtol=1e-5, atol=1e-6)


def test_shared_bias_gradient_sums_the_broadcast_axes():
    x, g = _random((4, 3, 5, 6), 2), _random((4, 3, 5, 6), 3)
    for bias_shape in ((1, 3, 5, 6), (1, 3, 1, 6), (4, 3, 5, 6)):
        bias = _random(bias_shape, 4)
        ours = jax.vjp(layers.add_shared_bias, x, bias)[1](g)
        ref = jax.vjp(lambda a, b: a + b, x, bias)[1](g)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_toeplitz_bias_equals_a_gather_and_so_does_its_gradient():
    heads, q_len, k_len = 3, 5, 9
    per_diagonal = _random((heads, q_len + k_len), 5)
    index = np.arange(k_len)[None, :] - np.arange(q_len)[:, None] + q_len - 1
    gathered = lambda d: d[:, index]  # noqa: E731 - the plain [H, T, S] gather
    np.testing.assert_array_equal(t5._toeplitz(per_diagonal, q_len, k_len),
                                  gathered(per_diagonal))
    # The skew whose transpose is the backward builds the same matrix.
    np.testing.assert_array_equal(t5._skewed_toeplitz(per_diagonal, q_len, k_len),
                                  gathered(per_diagonal))
    g = _random((heads, q_len, k_len), 6)
    ours = jax.vjp(lambda d: t5._toeplitz(d, q_len, k_len), per_diagonal)[1](g)[0]
    ref = jax.vjp(gathered, per_diagonal)[1](g)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_grouped_attention_equals_repeated_kv_heads():
    """Query heads folded into the query length give Hugging Face's `repeat_kv` attention."""
    q, k, v = _random((2, 4, 6, 8), 7), _random((2, 5, 2, 8), 8), _random((2, 5, 2, 8), 9)
    mask = jnp.asarray(np.random.default_rng(0).random((2, 1, 4, 5)) > 0.3)
    bias = _random((1, 6, 4, 5), 10)
    ours = layers.dot_product_attention(q, k, v, mask, bias, 0.5, 0.0, True, jnp.float32)
    k_rep, v_rep = jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k_rep) * 0.5 + bias
    weights = jax.nn.softmax(jnp.where(mask, logits, -1e10), axis=-1)
    ref = jnp.einsum("bhts,bshd->bthd", weights, v_rep)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,rows", [(6, 2), (7, 2), (9, 3)])
def test_attention_in_row_chunks_equals_one_call_and_so_do_gradients(batch, rows):
    """CPU attention in chunks of rows (`layers._attend`, 7 = 3 x 2 + a last row alone) gives
    one call's values, and its gradient is the one call's."""
    q, k, v = (_random((batch, 2, 2 * 5, 4), 11), _random((batch, 2, 6, 4), 12),
               _random((batch, 2, 6, 4), 13))
    bias = _random((1, 4, 5, 6), 14)
    mask = jnp.asarray(np.random.default_rng(1).random((batch, 1, 1, 6)) > 0.3)
    whole = layers._attention_core(q, k, v, bias, mask, 0.5, 4)
    chunked = layers._attend(q, k, v, bias, mask, 0.5, 4, rows)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    g = _random(whole.shape, 15)
    ours = jax.vjp(lambda *a: layers._attend(*a, mask, 0.5, 4, rows), q, k, v, bias)[1](g)
    ref = jax.vjp(lambda *a: layers._attention_core(*a, mask, 0.5, 4), q, k, v, bias)[1](g)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_cpu_attention_chunks_hold_at_least_two_rows():
    big = 8 << 20  # bytes per row: every batch is over the threshold
    assert layers._rows_per_chunk(64, big) == 2
    assert layers._rows_per_chunk(39, big) == 3
    assert layers._rows_per_chunk(53, big) == 2  # prime: 26 chunks of 2, then the last row
    assert layers._rows_per_chunk(3, big) == 3  # too few rows to chunk
    assert layers._rows_per_chunk(64, 1024) == 64  # a decoding step's small tensor
