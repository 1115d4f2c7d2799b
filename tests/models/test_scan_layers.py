"""Scanned layer stacks (`scan_layers`) against the unrolled ones, and the two param layouts.

The scanned model runs the same arithmetic in a loop, so in float32 its logits, losses and
gradients equal the unrolled model's (up to XLA's summation order in a few reductions) and its
greedy decodes are identical; the stacked and per-layer layouts convert exactly both ways,
through checkpoints and the Hugging Face tensor tables too.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest

from activeit_jax import partitioning
from activeit_jax.models import (
    DecoderOnlyModel,
    EncoderDecoderModel,
    LlamaConfig,
    T5Config,
    checkpoints,
    hf_convert,
    layer_layout,
    make_decoder_only_batch,
    make_prompt_batch,
)

VOCAB = 256
# float32 tolerances: the forward pass runs the same ops in the same order; the backward pass
# of a scan accumulates a few sums (e.g. the embedding's gradient) in another order, so
# gradients are compared to 1e-5 of each array's largest entry.
VALUES = dict(rtol=1e-6, atol=1e-6)


def assert_grad_close(actual, desired) -> None:
    np.testing.assert_allclose(actual, desired, rtol=1e-5,
                               atol=1e-5 * float(np.abs(desired).max()))


def llama_config(**overrides) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=3,
                       num_heads=4, num_kv_heads=2, dtype="float32", **overrides)


def t5_config(**overrides) -> T5Config:
    return T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                    num_encoder_layers=3, num_decoder_layers=2, **overrides)


@functools.lru_cache(maxsize=None)
def pair(model_cls, config):
    """(unrolled model, scanned model, per-layer params, the same params stacked), built
    once per config."""
    unrolled = model_cls(config)
    scanned = model_cls(layer_layout.with_scan_layers(config, True))
    params = jax.jit(unrolled.init_params)(jax.random.key(0, impl="rbg"))
    return unrolled, scanned, params, layer_layout.to_stacked(params, scanned.config)


def llama_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, VOCAB, n).tolist() for n in (6, 2, 9)]
    responses = [rng.integers(3, VOCAB, n).tolist() for n in (3, 5, 1)]
    return make_decoder_only_batch(prompts, responses, length=14)


def t5_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    enc = np.zeros((3, 9), np.int32)
    targets = np.zeros((3, 6), np.int32)
    for i, (n, m) in enumerate(zip([9, 5, 2], [6, 3, 1])):
        enc[i, :n] = rng.integers(2, VOCAB, n)
        targets[i, :m] = rng.integers(2, VOCAB, m)
    dec_in = np.zeros_like(targets)
    dec_in[:, 1:] = targets[:, :-1]
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets != 0).astype(np.float32)}


def assert_same_values_and_gradients(unrolled, scanned, params, stacked, batch) -> None:
    np.testing.assert_allclose(jax.jit(scanned.logits)(stacked, batch),
                               jax.jit(unrolled.logits)(params, batch), **VALUES)
    np.testing.assert_allclose(jax.jit(scanned.token_log_probs)(stacked, batch),
                               jax.jit(unrolled.token_log_probs)(params, batch), **VALUES)
    grad = lambda model: jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))  # noqa: E731
    (loss, aux), grads = grad(unrolled)(params, batch)
    (scanned_loss, scanned_aux), scanned_grads = grad(scanned)(stacked, batch)
    np.testing.assert_allclose(float(scanned_loss), float(loss), **VALUES)
    assert float(scanned_aux["num_correct"]) == float(aux["num_correct"])
    # Compare in the per-layer layout: every layer's gradient on its own.
    jax.tree.map(assert_grad_close, layer_layout.to_per_layer(scanned_grads, scanned.config),
                 grads)
    assert all(float(np.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("remat", [False, pytest.param(True, marks=pytest.mark.e2e)])
def test_llama_scanned_equals_unrolled(remat):
    unrolled, scanned, params, stacked = pair(DecoderOnlyModel, llama_config(remat=remat))
    assert_same_values_and_gradients(unrolled, scanned, params, stacked, llama_batch())


@pytest.mark.parametrize("variant", ["v1_1", pytest.param("original_remat",
                                                           marks=pytest.mark.e2e)])
def test_t5_scanned_equals_unrolled(variant):
    overrides = ({} if variant == "v1_1" else
                 dict(feed_forward_proj="relu", tie_word_embeddings=True, remat=True))
    unrolled, scanned, params, stacked = pair(EncoderDecoderModel, t5_config(**overrides))
    assert_same_values_and_gradients(unrolled, scanned, params, stacked, t5_batch())


def test_packed_rows_scanned_equal_unrolled():
    """Segment ids and per-segment positions reach every scanned layer (training packs)."""
    unrolled, scanned, params, stacked = pair(DecoderOnlyModel, llama_config())
    batch = llama_batch()
    batch["decoder_segment_ids"] = np.where(batch["decoder_input_tokens"] != 0,
                                            1 + (np.arange(14) >= 7), 0).astype(np.int32)
    batch["decoder_positions"] = np.where(np.arange(14) >= 7, np.arange(14) - 7,
                                          np.arange(14))[None].repeat(3, 0).astype(np.int32)
    np.testing.assert_allclose(jax.jit(scanned.logits)(stacked, batch),
                               jax.jit(unrolled.logits)(params, batch), **VALUES)


@pytest.mark.parametrize("left_pad", [True, False])
def test_llama_scanned_greedy_decode_is_identical(left_pad):
    unrolled, scanned, params, stacked = pair(DecoderOnlyModel, llama_config())
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, VOCAB, n).tolist() for n in (5, 1, 8)]
    batch = make_prompt_batch(prompts, length=9, left_pad=left_pad)
    decode = lambda model, p: jax.jit(model._greedy_decode, static_argnums=2)(  # noqa: E731
        p, batch, 7)
    tokens, steps = decode(unrolled, params)
    scanned_tokens, scanned_steps = decode(scanned, stacked)
    np.testing.assert_array_equal(np.asarray(scanned_tokens), np.asarray(tokens))
    assert int(scanned_steps) == int(steps) == 7


def test_t5_scanned_greedy_decode_is_identical():
    """The self-attention cache and the cross-attention keys/values, stacked per layer."""
    unrolled, scanned, params, stacked = pair(EncoderDecoderModel, t5_config())
    batch = {"encoder_input_tokens": t5_batch()["encoder_input_tokens"]}
    decode = lambda model, p: jax.jit(model._greedy_decode, static_argnums=2)(  # noqa: E731
        p, batch, 6)
    tokens, steps = decode(unrolled, params)
    scanned_tokens, scanned_steps = decode(scanned, stacked)
    np.testing.assert_array_equal(np.asarray(scanned_tokens), np.asarray(tokens))
    assert int(scanned_steps) == int(steps)


def test_scanned_kv_cache_is_the_unrolled_caches_stacked():
    """The call that creates the cache scans per-layer slices; later calls carry the stacked
    cache and each layer writes its own slot: after a prefill and a step, the stacked cache
    is the unrolled model's per-layer caches stacked, heads-major."""
    unrolled, scanned, params, stacked = pair(DecoderOnlyModel, llama_config())
    prompt = make_prompt_batch([[5, 6, 7], [8, 9, 10]], length=4)["decoder_input_tokens"]
    positions = np.maximum(np.cumsum(prompt != 0, axis=1) - 1, 0)
    key_mask = np.ones((2, 10), bool)
    key_mask[0, 0] = False

    def prefill_and_step(model, p):
        apply = functools.partial(model.module.apply, decode=True, max_length=10,
                                  mutable=["cache"])
        _, first = apply({"params": p}, prompt, positions, key_mask)
        logits, second = apply({"params": p, **first}, np.array([[11], [12]], np.int32),
                               positions[:, -1:] + 1, key_mask)
        return logits, second["cache"]

    logits, cache = prefill_and_step(unrolled, params)
    scanned_logits, scanned_cache = prefill_and_step(scanned, stacked)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)  # op by op
    close(scanned_logits, logits)
    # [layers, batch, kv heads, cache length, head dim], one running index for the stack.
    assert scanned_cache["layers"]["attention"]["cached_key"].shape == (3, 2, 2, 10, 8)
    assert int(scanned_cache["index"]) == int(cache["index"]) == 5
    per_layer = {k: v for k, v in cache.items() if k != "index"}
    jax.tree.map(close, scanned_cache["layers"],
                 layer_layout.to_stacked(per_layer, scanned.config)["layers"])


def test_dropout_differs_per_layer_and_only_with_rng():
    _, scanned, _, stacked = pair(DecoderOnlyModel, llama_config(dropout_rate=0.3))
    batch = llama_batch()
    logits = jax.jit(scanned.logits)
    np.testing.assert_array_equal(logits(stacked, batch), logits(stacked, batch))
    train_a = logits(stacked, batch, jax.random.key(1, impl="rbg"))
    assert not np.allclose(train_a, logits(stacked, batch))
    assert not np.allclose(train_a, logits(stacked, batch, jax.random.key(2, impl="rbg")))


@pytest.mark.parametrize("model_cls,config", [(DecoderOnlyModel, llama_config()),
                                              (EncoderDecoderModel, t5_config())])
def test_layouts_round_trip_exactly(model_cls, config):
    unrolled, scanned, params, stacked = pair(model_cls, config)
    assert layer_layout.params_are_stacked(params, config) is False
    assert layer_layout.params_are_stacked(stacked, scanned.config) is True
    assert layer_layout.params_are_stacked({"other": params}, config) is None
    back = layer_layout.to_per_layer(stacked, config)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    # The stacked tree is the scanned model's, and the scanned model's own init is the
    # per-layer init stacked: a seed gives the same model in both layouts.
    assert (jax.tree.structure(stacked)
            == jax.tree.structure(scanned.abstract_params()))
    jax.tree.map(np.testing.assert_array_equal,
                 jax.jit(scanned.init_params)(jax.random.key(0, impl="rbg")), stacked)
    # convert_layout goes either way and leaves a tree in its layout alone.
    assert layer_layout.convert_layout(stacked, scanned.config) is stacked
    jax.tree.map(np.testing.assert_array_equal,
                 layer_layout.convert_layout(stacked, config), params)
    with pytest.raises(ValueError, match="neither"):
        layer_layout.convert_layout({"x": params}, config)


def test_stacked_params_carry_the_layers_axis_and_shard():
    _, scanned, _, stacked = pair(DecoderOnlyModel, llama_config())
    axes = scanned.params_logical_axes()
    P = jax.sharding.PartitionSpec
    assert axes["layers"]["attention"]["query"]["kernel"] == P("layers", "embed", "heads", "kv")
    assert axes["layers"]["input_norm"]["scale"] == P("layers", "embed")
    assert axes["token_embedder"]["embedding"] == P("vocab", "embed")
    assert ("layers", None) in partitioning.DEFAULT_LOGICAL_AXIS_RULES
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    shardings = partitioning.params_shardings(scanned, mesh)
    assert shardings["layers"]["mlp"]["wi_0"]["kernel"].spec == P(None, "fsdp", "model")
    placed = jax.device_put(stacked, shardings)
    logits = jax.jit(scanned.logits)(placed, llama_batch())
    assert logits.shape == (3, 14, VOCAB)


@pytest.mark.parametrize("save_scanned", [False, True])
def test_checkpoints_load_into_either_layout(tmp_path, save_scanned):
    unrolled, scanned, params, stacked = pair(DecoderOnlyModel, llama_config())
    saved_model, saved = (scanned, stacked) if save_scanned else (unrolled, params)
    loading, expected = (unrolled, params) if save_scanned else (scanned, stacked)
    checkpoints.save_model(tmp_path / "ckpt", saved_model, saved)
    # The other layout converts while loading, onto a mesh, exactly.
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    shardings = partitioning.params_shardings(loading, mesh)
    restored = checkpoints.restore_params(tmp_path / "ckpt", loading, shardings)
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    jax.tree.map(lambda a, s: a.sharding == s or pytest.fail(f"{a.sharding} != {s}"),
                 restored, shardings)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
    # Its own layout restores as before.
    jax.tree.map(np.testing.assert_array_equal,
                 jax.device_get(checkpoints.load_model(tmp_path / "ckpt")[1]), saved)
    # Another model's checkpoint is still one precise line.
    wider = DecoderOnlyModel(layer_layout.with_scan_layers(
        dataclasses.replace(llama_config(), hidden_size=48), not save_scanned))
    with pytest.raises(checkpoints.CheckpointError, match="do not match the model config"):
        checkpoints.restore_params(tmp_path / "ckpt", wider)


@pytest.mark.parametrize("model_cls,config", [(DecoderOnlyModel, llama_config()),
                                              (EncoderDecoderModel, t5_config())])
def test_hf_tensors_are_the_same_from_either_layout(model_cls, config):
    unrolled, scanned, params, stacked = pair(model_cls, config)
    tensors = hf_convert.params_to_hf(unrolled, jax.device_get(params))
    from_scanned = hf_convert.params_to_hf(scanned, jax.device_get(stacked))
    assert list(from_scanned) == list(tensors)  # same names, same (module) order
    for name in tensors:
        np.testing.assert_array_equal(from_scanned[name], tensors[name])
    # Import into a scanned config: the stacked layout, bit for bit.
    imported = hf_convert.params_from_hf(scanned, tensors)
    assert jax.tree.structure(imported) == jax.tree.structure(stacked)
    jax.tree.map(np.testing.assert_array_equal, imported, jax.device_get(stacked))


def test_default_is_unrolled_and_none_scans_stacks_of_twelve_layers_or_more():
    from activeit_jax.models.layers import AUTO_SCAN_MIN_LAYERS
    from activeit_jax.training import config as train_config, run_dir
    assert AUTO_SCAN_MIN_LAYERS == 12
    # Default False: models built in code and checkpoints without the field stay unrolled.
    assert not LlamaConfig(num_layers=30).scans_layers
    assert not T5Config(num_encoder_layers=24, num_decoder_layers=24).scans_layers
    assert LlamaConfig(num_layers=2, scan_layers=True).scans_layers
    # None: by the layer count.
    assert not llama_config(scan_layers=None).scans_layers  # 3 layers
    assert LlamaConfig(num_layers=12, scan_layers=None).scans_layers
    assert T5Config(num_encoder_layers=12, num_decoder_layers=2, scan_layers=None).scans_layers
    assert not T5Config(num_encoder_layers=8, num_decoder_layers=8,
                        scan_layers=None).scans_layers
    # The repr (a training run's fingerprint) is the one per-layer models always had; a run
    # of stacked layers names its layout, so it never resumes from per-layer train state.
    assert "scan_layers" not in repr(LlamaConfig(scan_layers=True))
    settings = train_config.TrainConfig()

    def args(config):
        return run_dir.run_args(DecoderOnlyModel(config), settings, None, False, "data", "val")
    assert "layers" not in args(llama_config())
    assert args(layer_layout.with_scan_layers(llama_config(), True))["layers"] == "stacked"


def test_model_gin_files_of_twelve_layers_or_more_scan():
    import os

    import gin
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name, scans in [("t5_small", False), ("t5_base", True), ("t5_large", True),
                        ("t5_xl", True), ("llama_7b", True), ("llama_tiny", False)]:
        with gin.unlock_config():
            gin.clear_config()
            gin.parse_config_file(os.path.join(root, "configs", "models", f"{name}.gin"))
            model = gin.query_parameter("MODEL/macro.value").scoped_configurable_fn()
            gin.clear_config()
        assert model.config.scans_layers == scans, name


def test_config_checks_take_scan_layers_as_bool_or_null():
    from activeit_jax.models import config_checks
    for value in (True, False, None):
        config_checks.check_config_values(LlamaConfig, {"scan_layers": value}, "config.json")
    with pytest.raises(config_checks.ModelConfigError, match="scan_layers"):
        config_checks.check_config_values(T5Config, {"scan_layers": "yes"}, "config.json")
