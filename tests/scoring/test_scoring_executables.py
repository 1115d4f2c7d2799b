"""Shapes compiled ahead of their calls on the compile threads (`row_scorer._Executables`)."""
import jax
import numpy as np

from activeit_jax import partitioning, scoring
from activeit_jax.models import EncoderDecoderModel, T5Config
from activeit_jax.scoring import row_scorer

TINY = T5Config(vocab_size=1152, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                num_encoder_layers=2, num_decoder_layers=2)


def _rows(rng, lengths):
    return [(list(rng.integers(2, 1000, s)) + [1], list(rng.integers(2, 1000, t)) + [1])
            for s, t in lengths]


def test_each_shape_compiles_once_and_scores_equal_one_row_per_call():
    model = EncoderDecoderModel(TINY)
    mesh = partitioning.make_mesh({"data": -1}, jax.devices()[:1])
    params = jax.device_put(jax.device_get(model.init_params(jax.random.key(0))),
                            partitioning.params_shardings(model, mesh))
    config = scoring.ScoreConfig(num_instances=1, num_perturbations=1, max_source_length=256,
                                 max_target_length=16, max_decode_length=8, batch_size=4,
                                 batch_tokens=None)
    scorer = scoring.RowScorer.from_config(model, params, mesh, config)
    rng = np.random.default_rng(0)
    rows = _rows(rng, [(5, 3), (200, 9), (40, 2), (7, 12), (120, 5), (33, 1)])
    logp, ntok, _ = scorer.score_async(rows).result()
    shapes = set(scorer.score_shapes)
    assert len(shapes) >= 2  # shapes compiled side by side
    assert scorer.num_compilations == len(shapes)
    # The same rows again reuse every executable: no shape is compiled twice.
    again, _, _ = scorer.score_async(rows).result()
    assert scorer.num_compilations == len(shapes)
    np.testing.assert_array_equal(again, logp)
    # Each row alone, unpadded, through the plain jitted model.
    log_probs = jax.jit(model.token_log_probs)
    for (source, target), ours, count in zip(rows, logp, ntok):
        tgt = np.asarray([target], np.int32)
        dec_in = np.zeros_like(tgt)
        dec_in[:, 1:] = tgt[:, :-1]
        batch = {"encoder_input_tokens": np.asarray([source], np.int32),
                 "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
                 "decoder_loss_weights": np.ones_like(tgt)}
        assert count == len(target)
        np.testing.assert_allclose(ours, float(np.sum(log_probs(params, batch))), rtol=2e-5)


def test_an_unprepared_shape_is_compiled_on_its_first_call():
    calls = []
    jitted = jax.jit(lambda params, batch: batch["x"] * params)
    mesh = partitioning.make_mesh({"data": -1}, jax.devices()[:1])
    executables = row_scorer._Executables(jitted, mesh, None)
    for n in (3, 3, 5):
        calls.append(np.asarray(executables(2.0, {"x": np.arange(n, dtype=np.float32)})))
    assert len(executables) == 2
    np.testing.assert_array_equal(calls[2], 2.0 * np.arange(5))
