"""Mesh construction, logical-axis rules, and sharded == unsharded model outputs on 8 CPUs."""
from __future__ import annotations

import functools

import gin
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from activeit_jax import partitioning
from activeit_jax.core import gin_utils
from activeit_jax.core.errors import UsageError
from activeit_jax.models import (
    DecoderOnlyModel,
    EncoderDecoderModel,
    LlamaConfig,
    T5Config,
    make_decoder_only_batch,
)

needs_8_devices = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")


def test_make_mesh_fills_minus_one():
    mesh = partitioning.make_mesh({"data": -1, "model": 2}, devices=jax.devices()[:8])
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
    assert partitioning.resolve_axis_sizes({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "model": 1}
    mesh = partitioning.make_mesh(devices=jax.devices()[:2])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "model": 1}


@pytest.mark.parametrize("sizes,message", [
    ({"data": -1, "model": -1}, "only one"),
    ({"data": 3}, "needs 3 devices"),
    ({"data": -1, "model": 3}, "not a multiple"),
    ({"tensor": 2}, "unknown mesh axes"),
])
def test_make_mesh_errors(sizes, message):
    with pytest.raises(ValueError, match=message):
        partitioning.resolve_axis_sizes(sizes, 8)


def test_rules_resolve_params_and_activations():
    rules = partitioning.DEFAULT_LOGICAL_AXIS_RULES
    to_mesh = functools.partial(partitioning.logical_to_mesh_specs, rules=rules)
    # Parameters: embed goes to fsdp, mlp/heads/vocab to model.
    assert to_mesh(P("embed", "mlp")) == P("fsdp", "model")
    assert to_mesh(P("embed", "heads", "kv")) == P("fsdp", "model", None)
    assert to_mesh(P("vocab", "embed")) == P("model", "fsdp")
    # Activations: batch takes data+fsdp first, so embed stays whole.
    assert to_mesh(P("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    assert to_mesh(P("batch", "length", "vocab")) == P(("data", "fsdp"), None, "model")


def test_partitioning_gin_binds_rules():
    gin.clear_config()
    try:
        gin_utils.parse_gin(["partitioning.gin", "models/t5_tiny.gin"], [])
        config = gin.get_configurable(partitioning.PartitioningConfig)()
        model = gin.get_configurable(EncoderDecoderModel)()
    finally:
        gin.clear_config()
    assert partitioning.normalize_rules(config.logical_axis_rules) == \
        partitioning.DEFAULT_LOGICAL_AXIS_RULES
    assert dict(config.axis_sizes) == {"data": -1, "fsdp": 1, "model": 1}
    assert isinstance(model, EncoderDecoderModel) and model.config.d_model == 64
    assert model.logical_axis_rules == partitioning.DEFAULT_LOGICAL_AXIS_RULES


def tiny_t5() -> EncoderDecoderModel:
    return EncoderDecoderModel(T5Config(vocab_size=1152, d_model=64, d_kv=16, d_ff=128,
                                        num_heads=4, num_encoder_layers=2,
                                        num_decoder_layers=2))


def tiny_llama() -> DecoderOnlyModel:
    return DecoderOnlyModel(LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128,
                                        num_layers=2, num_heads=4, num_kv_heads=2))


def t5_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    enc = rng.integers(2, 1152, (8, 10)).astype(np.int32)
    enc[::2, 6:] = 0
    targets = rng.integers(2, 1152, (8, 6)).astype(np.int32)
    targets[1::2, 4:] = 0
    dec_in = np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]], 1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets != 0).astype(np.float32)}


@needs_8_devices
@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_sharded_logits_equal_single_device(kind):
    """data=4 x model=2: params sharded by the rules, batch by data; same logits as 1 device."""
    rng = np.random.default_rng(0)
    if kind == "t5":
        model, batch = tiny_t5(), t5_batch(rng)
    else:
        model = tiny_llama()
        prompts = [rng.integers(3, 1024, n).tolist() for n in range(2, 10)]
        batch = make_decoder_only_batch(prompts, [[5, 6]] * 8, length=12)
    init = jax.jit(model.init_params)
    params = init(jax.random.key(0, impl="rbg"))
    reference = np.asarray(jax.jit(model.logits)(params, batch))

    mesh = partitioning.make_mesh({"data": 4, "fsdp": 1, "model": 2})
    shardings = partitioning.params_shardings(model, mesh)
    with partitioning.mesh_context(mesh, model.logical_axis_rules):
        if kind == "llama":  # create the params sharded, as a trainer would
            sharded_params = jax.jit(init, out_shardings=shardings)(
                jax.random.key(0, impl="rbg"))
        else:  # or place existing (e.g. converted) params
            sharded_params = partitioning.shard_params(params, shardings)
        sharded_batch = partitioning.shard_batch(batch, mesh)
        logits = jax.jit(model.logits)(sharded_params, sharded_batch)
    # Params really are split: the vocab x embed table over `model`, mlp kernels too.
    embedding = sharded_params["token_embedder"]["embedding"]
    assert embedding.sharding.spec == P("model", "fsdp")
    assert embedding.addressable_shards[0].data.shape == (embedding.shape[0] // 2, 64)
    # Logits come out split as the constraints say: batch over data, vocab over model.
    assert isinstance(logits.sharding, NamedSharding)
    assert logits.addressable_shards[0].data.shape == (2, logits.shape[1], logits.shape[2] // 2)
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5, rtol=1e-5)


@needs_8_devices
def test_sharded_greedy_decode_equals_single_device():
    model = tiny_t5()
    batch = {"encoder_input_tokens": t5_batch(np.random.default_rng(1))["encoder_input_tokens"]}
    params = jax.jit(model.init_params)(jax.random.key(0, impl="rbg"))
    decode = jax.jit(model.greedy_decode, static_argnums=2)
    reference = np.asarray(decode(params, batch, 6))

    mesh = partitioning.make_mesh({"data": -1, "model": 2})
    with partitioning.mesh_context(mesh, model.logical_axis_rules):
        sharded = partitioning.shard_params(params, partitioning.params_shardings(model, mesh))
        tokens = decode(sharded, partitioning.shard_batch(batch, mesh), 6)
    np.testing.assert_array_equal(np.asarray(tokens), reference)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_default_batch_spec_is_the_data_parallel_split(ndim):
    """The default rules split the batch over data x fsdp and replicate the rest (the spec the
    trainer hard-coded before partitioning owned every batch sharding)."""
    assert partitioning.batch_spec(ndim) == P(("data", "fsdp"), *([None] * (ndim - 1)))
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "model": 2}, devices=jax.devices()[:8])
    assert partitioning.batch_shard_count(mesh) == 4
    assert partitioning.microbatch_sharding(mesh, ndim + 1).spec == P(
        None, ("data", "fsdp"), *([None] * (ndim - 1)))


@needs_8_devices
def test_a_custom_batch_rule_moves_training_and_scoring_batches():
    """Changing the `batch` rule moves the trainer's, the evaluator's and the scorer's batches
    alike: each takes its sharding from `partitioning`."""
    from activeit_jax.scoring.row_scorer import RowScorer
    from activeit_jax.training import config as train_config, step as train_step, trainer
    rules = (("batch", "data"),) + tuple(r for r in partitioning.DEFAULT_LOGICAL_AXIS_RULES
                                         if r[0] != "batch")
    mesh = partitioning.make_mesh({"data": 4, "fsdp": 2, "model": 1}, devices=jax.devices()[:8])
    model = EncoderDecoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32,
                                         num_heads=2, num_encoder_layers=1,
                                         num_decoder_layers=1), rules)
    config = train_config.TrainConfig(batch_size=8, num_epochs=1, logical_axis_rules=rules)
    shapes = (("decoder_target_tokens", (8, 4)), ("encoder_input_tokens", (8, 6)))
    programs = trainer._train_programs(model, config, mesh, rules, 1, shapes)
    assert {k: s.spec for k, s in programs.batch_sh.items()} == {
        "decoder_target_tokens": P("data", None), "encoder_input_tokens": P("data", None)}
    assert partitioning.microbatch_sharding(mesh, 3, rules).spec == P(None, "data", None)
    twelve = train_config.TrainConfig(batch_size=12)
    train_step.validate_config(twelve, mesh, rules)  # 4 batch shards divide 12 ...
    with pytest.raises(UsageError, match=r"mesh shards \(8:"):  # ... the default 8 do not
        train_step.validate_config(twelve, mesh)
    params = jax.jit(model.init_params, out_shardings=partitioning.params_shardings(
        model, mesh))(jax.random.key(0))
    scorer = RowScorer(model, params, mesh, batch_size=8, decode_batch_size=8,
                       source_buckets=(8,), target_buckets=(4,), max_decode_length=4)
    assert scorer._matrix_sharding.spec == P("data", None)
    assert scorer.batch_size == 8 and scorer._dp == 4
