"""KV-cached greedy decoding with early stop (heads-major cache) gives the tokens of a plain
full-length loop: no cache, the whole prefix re-run each step, argmax, padding after EOS."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from activeit_jax.models import EncoderDecoderModel, T5Config

STEPS = 7


def _reference(model, params, enc, eos):
    """Full-length greedy loop without a cache or early stop."""
    logits_fn = jax.jit(model.logits)
    out = np.zeros((enc.shape[0], STEPS), np.int32)
    done = np.zeros(enc.shape[0], bool)
    for step in range(STEPS):
        dec_in = np.zeros((enc.shape[0], STEPS), np.int32)
        dec_in[:, 1:step + 1] = out[:, :step]
        logits = np.asarray(logits_fn(params, {"encoder_input_tokens": enc,
                                               "decoder_input_tokens": dec_in}))
        token = logits[:, step].argmax(-1)
        out[:, step] = np.where(done, 0, token)
        done |= token == eos
    return out


def test_cached_early_stop_equals_full_loop():
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                      num_encoder_layers=2, num_decoder_layers=2)
    model = EncoderDecoderModel(config)
    params = model.init_params(jax.random.key(3))
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 64, (4, 12)).astype(np.int32)
    enc[1, 7:] = 0  # a padded source
    free = _reference(model, params, enc, eos=-1)
    eos = int(free[0, 2])  # a token row 0 emits at step 3: rows end at different steps
    eos_model = EncoderDecoderModel(dataclasses.replace(config, eos_id=eos))
    expected = _reference(eos_model, params, enc, eos)
    tokens, steps = jax.jit(eos_model._greedy_decode, static_argnums=2)(
        params, {"encoder_input_tokens": jnp.asarray(enc)}, STEPS)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    ended = [(row == eos).argmax() + 1 if eos in row else STEPS for row in expected]
    assert int(steps) == max(ended)  # the loop ran until the last row ended, no further
    # Row 0 alone ends at step 3: the loop stops there, with the same tokens.
    one, one_steps = jax.jit(eos_model._greedy_decode, static_argnums=2)(
        params, {"encoder_input_tokens": jnp.asarray(enc[:1])}, STEPS)
    assert int(one_steps) == 3 < STEPS
    np.testing.assert_array_equal(np.asarray(one)[0], expected[0])
