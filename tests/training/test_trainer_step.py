"""Train-step mechanics on the 8 CPU devices: sharding, gradient accumulation, optimizers.

Uses the fake `BagModel` (tests/trainer_testlib.py) so the tests exercise the trainer only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from activeit_jax import partitioning
from activeit_jax.models import SpecialIds, batches
from activeit_jax.training import inputs as train_data, state as ts, step as train_step
from tests.trainer_testlib import TEST_RULES, BagModel, mesh, random_batch


def _setup(mesh_shape, model, batch, *, optimizer="adamw", lr=1e-2, microbatches=1,
           warmup=0):
    m = mesh(mesh_shape)
    schedule = ts.make_schedule("constant", lr, warmup)
    opt = ts.make_optimizer(optimizer, schedule, max_grad_norm=None)
    params = model.init_params(jax.random.PRNGKey(0))
    specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), TEST_RULES)
    state_sh = ts.train_state_shardings(m, opt, params, specs)
    state = jax.jit(lambda p: ts.create_train_state(p, opt), out_shardings=state_sh)(params)
    batch_sh = partitioning.batch_shardings(m, batch, TEST_RULES)
    step = train_step.make_train_step(model, opt, schedule, mesh=m, state_shardings=state_sh,
                                   batch_sharding=batch_sh, num_microbatches=microbatches,
                                   use_dropout=False, donate=False, rules=TEST_RULES)
    return m, state, state_sh, batch_sh, step


def _grads(mesh_shape, model, batch, microbatches=1):
    m, state, state_sh, batch_sh, _ = _setup(mesh_shape, model, batch)

    def f(params, b):
        loss_sum, tokens, grads = train_step.loss_and_grads(model, params, b, None, microbatches,
                                                         m, state_sh.params)
        return loss_sum / tokens, jax.tree.map(lambda g: g / tokens, grads)

    fn = jax.jit(f, in_shardings=(state_sh.params, batch_sh))
    with partitioning.mesh_context(m, TEST_RULES):
        loss, grads = fn(state.params, train_step.put_batch(batch, batch_sh))
    return float(loss), jax.device_get(grads)


def _reference_loss(model, params, batch):
    """Token-weighted mean cross-entropy in numpy (independent of the trainer)."""
    logits = np.asarray(model._logits(params, batch["encoder_input_tokens"],
                                      batch["decoder_input_tokens"]), np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    w = batch["decoder_loss_weights"]
    return float((nll * w).sum() / w.sum())


def test_sharded_step_matches_unsharded():
    model = BagModel()
    batch = random_batch(0, 16)
    loss1, grads1 = _grads((1, 1, 1), model, batch)
    loss8, grads8 = _grads((2, 2, 2), model, batch)
    ref = _reference_loss(model, model.init_params(jax.random.PRNGKey(0)), batch)
    assert loss1 == pytest.approx(ref, rel=1e-5)
    assert loss8 == pytest.approx(loss1, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads8, grads1)
    # And one full optimizer step lands on the same parameters.
    params = {}
    for shape in [(1, 1, 1), (2, 2, 2)]:
        m, state, _, batch_sh, step = _setup(shape, model, batch)
        with partitioning.mesh_context(m, TEST_RULES):
            new_state, metrics = step(state, train_step.put_batch(batch, batch_sh),
                                      jax.random.PRNGKey(0))
        params[shape] = jax.device_get(new_state.params)
        if shape == (2, 2, 2):
            # The state is really sharded as the rules say.
            assert new_state.params["mlp"]["wi"].sharding.spec == P("fsdp", "model")
            moments = [x for x in jax.tree.leaves(new_state.opt_state) if x.shape == (64, 16)]
            assert len(moments) == 2  # Adam mu and nu of the embedding, sharded like it
            assert all(x.sharding.spec == P("model", "fsdp") for x in moments)
            assert int(new_state.step) == 1
            assert float(metrics["loss"]) == pytest.approx(loss1, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 params[(2, 2, 2)], params[(1, 1, 1)])


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 2, 2)])
def test_accumulated_microbatches_equal_large_batch(mesh_shape):
    model = BagModel()
    batch = random_batch(1, 16)  # rows hold different numbers of target tokens
    loss1, grads1 = _grads(mesh_shape, model, batch, microbatches=1)
    loss4, grads4 = _grads(mesh_shape, model, batch, microbatches=4 if mesh_shape[0] == 1
                           else 2)
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads4, grads1)
    # A plain mean of per-microbatch mean losses would differ: the test can tell them apart.
    micro = [{k: v[i::4] for k, v in batch.items()} for i in range(4)]
    params = model.init_params(jax.random.PRNGKey(0))
    naive = np.mean([_reference_loss(model, params, mb) for mb in micro])
    assert abs(naive - loss1) > 1e-4


def test_microbatch_split_is_strided():
    batch = {"x": jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)}
    split = train_step.split_microbatches(batch, 4)
    assert split["x"].shape == (4, 2, 3)
    np.testing.assert_array_equal(split["x"][:, :, 0], [[0, 4], [1, 5], [2, 6], [3, 7]])


def test_tiny_model_overfits_small_batch():
    model = BagModel()
    batch = random_batch(2, 8)
    m, state, _, batch_sh, step = _setup((2, 2, 2), model, batch, lr=3e-2)
    placed = train_step.put_batch(batch, batch_sh)
    losses = []
    with partitioning.mesh_context(m, TEST_RULES):
        for _ in range(150):
            state, metrics = step(state, placed, jax.random.PRNGKey(0))
            losses.append(float(metrics["loss"]))
    assert losses[0] > 3.5          # about log(64) at init
    assert losses[-1] < 0.25        # memorised


def test_adafactor_step_sharded_and_decreases_loss():
    model = BagModel()
    batch = random_batch(3, 8)
    m, state, state_sh, batch_sh, step = _setup((2, 2, 2), model, batch, optimizer="adafactor",
                                                lr=1e-2)
    placed = train_step.put_batch(batch, batch_sh)
    with partitioning.mesh_context(m, TEST_RULES):
        first = None
        for _ in range(20):
            state, metrics = step(state, placed, jax.random.PRNGKey(0))
            first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < first - 0.1
    # Factored second moments of a [16, 32] matrix are vectors sharded like its dimensions.
    leaves = jax.tree.leaves(state.opt_state)
    assert any(x.ndim == 1 and x.sharding.spec in (P("fsdp"), P("model")) for x in leaves)


def test_learning_rate_metric_follows_warmup():
    model = BagModel()
    batch = random_batch(4, 8)
    m, state, _, batch_sh, step = _setup((1, 1, 1), model, batch, lr=1e-2, warmup=4)
    placed = train_step.put_batch(batch, batch_sh)
    rates = []
    with partitioning.mesh_context(m, TEST_RULES):
        for _ in range(6):
            state, metrics = step(state, placed, jax.random.PRNGKey(0))
            rates.append(float(metrics["learning_rate"]))
    np.testing.assert_allclose(rates, [0, 2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2], rtol=1e-6)


def test_schedules():
    constant = ts.make_schedule("constant", 1.0, 4)
    assert [float(constant(i)) for i in (0, 2, 4, 100)] == [0.0, 0.5, 1.0, 1.0]
    linear = ts.make_schedule("linear", 1.0, 2, 6)
    np.testing.assert_allclose([float(linear(i)) for i in range(7)],
                               [0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    cosine = ts.make_schedule("cosine", 1.0, 2, 6)
    np.testing.assert_allclose([float(cosine(i)) for i in (2, 4, 6)], [1.0, 0.5, 0.0],
                               atol=1e-7)
    with pytest.raises(ValueError):
        ts.make_schedule("linear", 1.0, 2)
    with pytest.raises(ValueError):
        ts.make_schedule("rsqrt", 1.0)


def test_encdec_features_match_seqio_converter():
    import seqio
    import tensorflow as tf
    inputs = [[5, 6, 7, 1], [8, 1]]
    targets = [[9, 10, 1], [11, 12, 13, 14, 1]]
    ours = batches.encdec_features(inputs, targets, 6, 5)
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.int32(i), "targets": np.int32(t)} for i, t in zip(inputs, targets)),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                          "targets": tf.TensorSpec([None], tf.int32)})
    rows = list(seqio.EncDecFeatureConverter(pack=False)(
        ds, {"inputs": 6, "targets": 5}).as_numpy_iterator())
    for key in ours:
        np.testing.assert_array_equal(ours[key], np.stack([r[key] for r in rows]), err_msg=key)


def test_decoder_only_features_weight_response_only():
    ids = SpecialIds(pad=0, eos=2, bos=1)
    feats = batches.decoder_only_features([[5, 6], []], [[7, 8], []], 6, ids)
    np.testing.assert_array_equal(feats["decoder_input_tokens"][0], [1, 5, 6, 7, 8, 0])
    np.testing.assert_array_equal(feats["decoder_target_tokens"][0], [5, 6, 7, 8, 2, 0])
    np.testing.assert_array_equal(feats["decoder_loss_weights"][0], [0, 0, 1, 1, 1, 0])
    # An empty (filler) row is all padding and carries no loss.
    assert not feats["decoder_input_tokens"][1].any()
    assert not feats["decoder_loss_weights"][1].any()


def _examples(n):
    return [train_data.EncodedExample(task_name="t", label="gen", instance_id=str(i),
                                      inputs=(i + 2, 1), targets=((i + 3, 1), (i + 4, 1)),
                                      references=("a", "b")) for i in range(n)]


def test_epoch_batcher_is_deterministic_and_pads_last_batch():
    examples = _examples(10)
    a = train_data.EpochBatcher(examples, 4, seed=7, source_length=4, target_length=3)
    b = train_data.EpochBatcher(examples, 4, seed=7, source_length=4, target_length=3)
    assert a.steps_per_epoch() == 3
    for epoch in range(2):
        for step in range(3):
            for key, value in a.batch(epoch, step).items():
                np.testing.assert_array_equal(value, b.batch(epoch, step)[key])
    # Each epoch covers every example once, in an epoch-dependent order.
    seen = [np.concatenate([a.batch(e, s)["encoder_input_tokens"][:, 0] for s in range(3)])
            for e in range(2)]
    assert sorted(seen[0][seen[0] > 0].tolist()) == list(range(2, 12))
    assert seen[0].tolist() != seen[1].tolist()
    last = a.batch(0, 2)
    assert last["decoder_loss_weights"][2:].sum() == 0  # two padding rows
    with pytest.raises(IndexError):
        a.batch(0, 3)


def _pack_with_seqio(inputs, targets, source_length, target_length):
    """The reference: examples packed (in order) by `seqio.EncDecFeatureConverter(pack=True)`."""
    import seqio
    import tensorflow as tf

    def gen():
        for src, tgt in zip(inputs, targets):
            yield {"inputs": np.asarray(src, np.int32), "targets": np.asarray(tgt, np.int32)}

    ds = tf.data.Dataset.from_generator(gen, output_signature={
        "inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    ds = seqio.EncDecFeatureConverter(pack=True)(
        ds, {"inputs": source_length, "targets": target_length})
    rows = list(ds.as_numpy_iterator())
    return {k: np.stack([np.asarray(r[k], np.int32) for r in rows]) for k in rows[0]}


def test_seqio_packing_adds_segments_and_restarts_decoder_inputs():
    packed = _pack_with_seqio([[5, 6, 1], [7, 1]], [[8, 1], [9, 10, 1]], 8, 6)
    assert packed["encoder_input_tokens"].shape == (1, 8)  # both examples in one row
    np.testing.assert_array_equal(packed["encoder_input_tokens"][0], [5, 6, 1, 7, 1, 0, 0, 0])
    np.testing.assert_array_equal(packed["encoder_segment_ids"][0], [1, 1, 1, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(packed["decoder_target_tokens"][0], [8, 1, 9, 10, 1, 0])
    # Each segment's decoder input starts from 0 (BOS), not from the previous segment's EOS.
    np.testing.assert_array_equal(packed["decoder_input_tokens"][0], [0, 8, 0, 9, 10, 0])
    np.testing.assert_array_equal(packed["decoder_positions"][0], [0, 1, 0, 1, 2, 0])
    # The models layer's packing (the builders') writes the same rows.
    ours = batches.pack_encdec([[5, 6, 1], [7, 1]], [[8, 1], [9, 10, 1]], 8, 6)
    for key, value in packed.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_tiny_t5_overfits_small_batch():
    from activeit_jax.models import EncoderDecoderModel, T5Config
    model = EncoderDecoderModel(T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1), logical_axis_rules=TEST_RULES)
    batch = random_batch(5, 8, vocab_size=128)
    m, state, _, batch_sh, step = _setup((2, 2, 2), model, batch, lr=1e-2)
    placed = train_step.put_batch(batch, batch_sh)
    with partitioning.mesh_context(m, TEST_RULES):
        for i in range(120):
            state, metrics = step(state, placed, jax.random.PRNGKey(0))
            if i == 0:
                first = float(metrics["loss"])
    assert first > 4.0             # about log(128) at init
    assert float(metrics["loss"]) < 0.1
