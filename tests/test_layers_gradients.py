"""The hand-written pieces of the attention (chosen for XLA's CPU speed, see docs/speed.md)
compute what the plain expressions compute, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np

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
