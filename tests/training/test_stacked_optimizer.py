"""The optimizer on stacked layers (`scan_layers`) updates each layer as the per-layer layout
does: Adafactor's factoring, block-RMS clipping and parameter scale, and the weight-decay mask,
look at one layer's slice, not at the whole stack."""
import jax
import numpy as np
import optax
import pytest

from activeit_jax import partitioning
from activeit_jax.models import DecoderOnlyModel, LlamaConfig, layer_layout
from activeit_jax.training import state as ts

CONFIG = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=3,
                     num_heads=4, num_kv_heads=2, dtype="float32")
# Factor every matrix of these tiny shapes (optax's default needs dimensions >= 128).
FACTORED = {"min_dim_size_to_factor": 4}


def batch():
    tokens = np.random.default_rng(0).integers(3, 64, (2, 8)).astype(np.int32)
    return {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, 1),
            "decoder_loss_weights": np.ones((2, 8), np.float32)}


def train(model, optimizer, params, steps=3):
    loss_grad = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch())[0]))

    @jax.jit
    def step(params, state):
        updates, state = optimizer.update(loss_grad(params), state, params)
        return optax.apply_updates(params, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


@pytest.mark.parametrize("name,kwargs", [("adamw", {}), ("adafactor", FACTORED)])
def test_stacked_updates_equal_per_layer_updates(name, kwargs):
    per_layer = DecoderOnlyModel(CONFIG)
    scanned = DecoderOnlyModel(layer_layout.with_scan_layers(CONFIG, True))
    params = per_layer.init_params(jax.random.key(0, impl="rbg"))
    make = lambda stacked: ts.make_optimizer(  # noqa: E731
        name, optax.constant_schedule(1e-2), weight_decay=0.1, adafactor_kwargs=kwargs,
        stacked_layers=stacked)
    expected = train(per_layer, make(False), params)
    stacked_start = layer_layout.to_stacked(params, scanned.config)
    got = layer_layout.to_per_layer(train(scanned, make(True), stacked_start), CONFIG)
    # AdamW divides by sqrt(v): a gradient entry near 0 amplifies float rounding.
    tolerance = 1e-5 if name == "adamw" else 1e-6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance),
                 got, expected)
    if name == "adafactor":  # the per-layer view is what makes them equal
        whole = layer_layout.to_per_layer(train(scanned, make(False), stacked_start), CONFIG)
        assert any(not np.allclose(a, b, rtol=1e-4, atol=1e-5)
                   for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(expected)))


def test_stacked_optimizer_state_follows_the_parameters_shardings():
    scanned = DecoderOnlyModel(layer_layout.with_scan_layers(CONFIG, True))
    optimizer = ts.make_optimizer("adafactor", optax.constant_schedule(1e-2),
                                  adafactor_kwargs=FACTORED, stacked_layers=True)
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    specs = partitioning.logical_to_mesh_specs(scanned.params_logical_axes())
    shapes = scanned.abstract_params()
    state_sh = ts.train_state_shardings(mesh, optimizer, shapes, specs)
    state = jax.jit(lambda p: ts.create_train_state(p, optimizer), out_shardings=state_sh)(
        jax.jit(scanned.init_params)(jax.random.key(0, impl="rbg")))
    P = jax.sharding.PartitionSpec
    specs_of = [s.spec for s in jax.tree.leaves(state_sh.opt_state)]
    # Factored statistics of the stacked [layers, embed, mlp] kernels keep embed on fsdp.
    assert P(None, "fsdp") in specs_of and P(None, "model") in specs_of
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(state_sh.opt_state)
