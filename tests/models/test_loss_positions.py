"""The decoder-only output head on the loss positions only (`decoder_loss_positions`): the same
losses, gradients and token log-probabilities as the head over every position."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from activeit_jax.models import DecoderOnlyModel, LlamaConfig, batches
from activeit_jax.models.wrappers import loss_targets
from activeit_jax.training import inputs as train_data

VOCAB = 512
CONFIG = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, bos_id=None, eos_id=2, pad_id=0)


def _sequences(seed: int = 0, rows: int = 5):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, VOCAB, int(n)).tolist() for n in rng.integers(0, 12, rows)]
    responses = [rng.integers(3, VOCAB, int(n)).tolist() for n in rng.integers(1, 6, rows)]
    prompts[0] = []  # no BOS and no prompt: the first response token is not scored
    return prompts, responses


def _without_positions(batch):
    return {k: v for k, v in batch.items() if k != "decoder_loss_positions"}


def _loss_and_grads(model, params, batch):
    (loss, aux), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch)
    return float(loss), {k: float(v) for k, v in aux.items()}, grads


@pytest.mark.parametrize("tied,packed", [(True, False), (False, False), (True, True)])
def test_loss_and_gradients_equal_the_full_head(tied, packed):
    model = DecoderOnlyModel(dataclasses.replace(CONFIG, tie_word_embeddings=tied))
    params = jax.jit(model.init_params)(jax.random.key(0))
    builder = model.batch_builder()
    prompts, responses = _sequences()
    if packed:
        full = builder.packed_train_batch(prompts, responses, 14, 6)
    else:
        full = builder.train_batch(prompts, responses, 14, 6)
    sparse = builder.add_loss_positions(full, (4, 8))
    assert sparse["decoder_loss_positions"].shape[1] < full["decoder_input_tokens"].shape[1]
    loss, aux, grads = _loss_and_grads(model, params, full)
    sparse_loss, sparse_aux, sparse_grads = _loss_and_grads(model, params, sparse)
    np.testing.assert_allclose(sparse_loss, loss, rtol=1e-6)
    for key in aux:
        np.testing.assert_allclose(sparse_aux[key], aux[key], rtol=1e-6)
    assert aux["num_tokens"] == float(full["decoder_loss_weights"].sum()) > 0
    for path, value in jax.tree_util.tree_leaves_with_path(grads):
        other = jax.tree_util.tree_leaves_with_path(sparse_grads)
        # Equal up to float summation order (the prompt positions add exact zeros).
        scale = float(np.abs(value).max())
        np.testing.assert_allclose(dict(other)[path], value, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))
    head = "token_embedder" if tied else "logits_dense"
    assert float(np.abs(jax.tree.leaves(sparse_grads[head])[0]).sum()) > 0


def test_token_log_probs_sum_equal_the_full_head():
    model = DecoderOnlyModel(CONFIG)
    params = jax.jit(model.init_params)(jax.random.key(1))
    builder = model.batch_builder()
    prompts, responses = _sequences(seed=3, rows=4)
    rows = [(p, r + [CONFIG.eos_id]) for p, r in zip(prompts, responses)]
    shape = (max(builder.score_lengths(r)[0] for r in rows) + 2,
             max(builder.score_lengths(r)[1] for r in rows) + 1)
    sparse = builder.score_batch(rows, shape)
    full = _without_positions(sparse)
    log_probs = jax.jit(model.token_log_probs)
    dense, gathered = np.asarray(log_probs(params, full)), np.asarray(log_probs(params, sparse))
    assert gathered.shape == (len(rows), shape[1]) and dense.shape == (len(rows), shape[0])
    np.testing.assert_allclose(gathered.sum(1), dense.sum(1), rtol=1e-6)
    targets, weights = jax.jit(loss_targets)(sparse)
    assert float(np.asarray(weights).sum()) == float(full["decoder_loss_weights"].sum())
    # Slot j of a row is its j-th scored target.
    first = int(np.flatnonzero(full["decoder_loss_weights"][1])[0])
    assert int(np.asarray(targets)[1, 0]) == int(full["decoder_target_tokens"][1, first])


def test_loss_positions_list_every_weighted_position():
    weights = np.asarray([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(batches.loss_positions(weights, 3),
                                  [[1, 2, -1], [0, 3, -1], [-1, -1, -1]])
    with pytest.raises(ValueError, match="row 0 has 2 scored positions, more than 1"):
        batches.loss_positions(weights, 1)


def test_epoch_batches_carry_fixed_width_positions():
    """Unpacked rows: one width (target_length + 1) for every batch, so one train-step shape;
    T5's batches are unchanged."""
    model = DecoderOnlyModel(CONFIG)
    prompts, responses = _sequences(rows=7)
    examples = [train_data.EncodedExample("t", "gen", str(i), tuple(p), (tuple(r),), ("",))
                for i, (p, r) in enumerate(zip(prompts, responses))]
    batcher = train_data.EpochBatcher(examples, 4, seed=0, source_length=12, target_length=6,
                                      builder=model.batch_builder())
    widths = {batcher.batch(0, s)["decoder_loss_positions"].shape for s in range(2)}
    assert widths == {(4, 7)}
    packed = train_data.EpochBatcher(examples, 2, seed=0, source_length=12, target_length=6,
                                     builder=model.batch_builder(), pack=True)
    batch = packed.batch(0, 0)
    assert batch["decoder_loss_positions"].shape[1] in (8, 16, 18)
    assert (batch["decoder_loss_positions"] >= 0).sum() == batch["decoder_loss_weights"].sum()
