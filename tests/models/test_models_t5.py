"""T5 against the PyTorch reference: random tiny Hugging Face models, imported and compared.

Both variants: v1.1 (gated-GELU, untied head, no output scaling) and the original T5 (ReLU,
tied head scaled by d_model**-0.5).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from activeit_jax.models import EncoderDecoderModel, T5Config, hf_convert  # noqa: E402
from activeit_jax.models.t5 import relative_position_bucket  # noqa: E402

VOCAB = 1152
MAX_DECODE = 8
# Largest |logit difference| seen per test, printed by test_report_max_logit_diff (-s).
MAX_LOGIT_DIFF: dict[str, float] = {}


def make_hf_t5(variant: str, seed: int = 0):
    """A random tiny T5ForConditionalGeneration (t5_tiny.gin shapes) in eval mode.

    Args:
      variant: "v1_1" (gated-gelu, untied head) or "original" (relu, tied + scaled head).
    """
    torch.manual_seed(seed)
    v11 = variant == "v1_1"
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        dropout_rate=0.0, feed_forward_proj="gated-gelu" if v11 else "relu",
        tie_word_embeddings=not v11, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(cfg)
    if v11:
        # transformers 5 ties lm_head to the embedding even for v1.1 configs; real v1.1 /
        # LM-adapted checkpoints have their own head, so give the reference one.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 64))
        model.all_tied_weights_keys.pop("lm_head.weight", None)
    return model.eval()


_IMPORTED: dict[str, tuple] = {}


def _imported_pair(variant: str, tmp_path_factory) -> tuple:
    """(variant, HF model, HF dir, our model, our params), built once per variant."""
    if variant not in _IMPORTED:
        hf_model = make_hf_t5(variant)
        hf_dir = tmp_path_factory.mktemp(f"hf_t5_{variant}")
        hf_model.save_pretrained(hf_dir)
        model, params = hf_convert.import_hf(hf_dir)
        _IMPORTED[variant] = (variant, hf_model, hf_dir, model, params)
    return _IMPORTED[variant]


@pytest.fixture(scope="module", params=["v1_1", "original"])
def t5_pair(request, tmp_path_factory):
    """Both variants, weights imported from the Hugging Face save."""
    return _imported_pair(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def t5_v11(tmp_path_factory):
    """The v1.1 variant only (for tests of code paths shared by both variants)."""
    return _imported_pair("v1_1", tmp_path_factory)


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Padded encoder/decoder batch, B=3, S=9, T=7 (0 = pad, 1 = eos)."""
    rng = np.random.default_rng(seed)
    enc_lens, dec_lens = [9, 5, 2], [7, 4, 1]
    enc = np.zeros((3, 9), np.int32)
    targets = np.zeros((3, 7), np.int32)
    for i, (n, m) in enumerate(zip(enc_lens, dec_lens)):
        enc[i, :n] = rng.integers(2, VOCAB, n)
        enc[i, n - 1] = 1
        targets[i, :m] = rng.integers(2, VOCAB, m)
        targets[i, m - 1] = 1
    dec_in = np.zeros_like(targets)
    dec_in[:, 1:] = targets[:, :-1]
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets != 0).astype(np.float32)}


def hf_logits(hf_model, batch) -> np.ndarray:
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
                       attention_mask=torch.tensor(batch["encoder_input_tokens"] != 0),
                       decoder_input_ids=torch.tensor(batch["decoder_input_tokens"],
                                                      dtype=torch.long))
    return out.logits.float().numpy()


def test_config_variant_detected(t5_pair):
    variant, _, _, model, params = t5_pair
    cfg = model.config
    if variant == "v1_1":
        assert (cfg.feed_forward_proj, cfg.tie_word_embeddings, cfg.scales_decoder_outputs) == (
            "gated-gelu", False, False)
        assert "logits_dense" in params["decoder"]
    else:
        assert (cfg.feed_forward_proj, cfg.tie_word_embeddings, cfg.scales_decoder_outputs) == (
            "relu", True, True)
        assert "logits_dense" not in params["decoder"]


def test_logits_token_log_probs_and_loss_match_torch(t5_pair):
    variant, hf_model, _, model, params = t5_pair
    batch = make_batch()
    ref = hf_logits(hf_model, batch)
    ours = np.asarray(jax.jit(model.logits)(params, batch))
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (3, 7, VOCAB)
    diff = float(np.max(np.abs(ours - ref)))
    MAX_LOGIT_DIFF[f"t5_{variant}"] = diff
    assert diff < 1e-4, diff

    # token_log_probs = torch log_softmax gathered at the targets, 0 at padding.
    ref_lp = torch.log_softmax(torch.tensor(ref), -1).gather(
        -1, torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)[..., None])[..., 0]
    ref_lp = np.where(batch["decoder_loss_weights"] > 0, ref_lp.numpy(), 0.0)
    ours_lp = np.asarray(jax.jit(model.token_log_probs)(params, batch))
    assert ours_lp.dtype == np.float32 and ours_lp.shape == (3, 7)
    np.testing.assert_allclose(ours_lp, ref_lp, atol=1e-4)
    assert np.all(ours_lp[batch["decoder_loss_weights"] == 0] == 0.0)

    # loss_fn = token-mean cross-entropy (torch's ignore_index mean).
    loss, aux = jax.jit(model.loss_fn)(params, batch)
    labels = np.where(batch["decoder_loss_weights"] > 0, batch["decoder_target_tokens"], -100)
    ref_loss = torch.nn.functional.cross_entropy(
        torch.tensor(ref).reshape(-1, VOCAB), torch.tensor(labels, dtype=torch.long).reshape(-1),
        ignore_index=-100).item()
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    assert float(aux["num_tokens"]) == 12.0
    np.testing.assert_allclose(float(aux["loss_sum"]), ref_loss * 12.0, rtol=1e-5)


def hf_greedy(hf_model, enc: np.ndarray, max_new_tokens: int, eos_id: int = 1) -> np.ndarray:
    """HF greedy generate, start token dropped, padded with 0 to max_new_tokens."""
    with torch.no_grad():
        out = hf_model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                                attention_mask=torch.tensor(enc != 0),
                                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                eos_token_id=eos_id, pad_token_id=0).numpy()[:, 1:]
    return np.pad(out, ((0, 0), (0, max_new_tokens - out.shape[1])))


def test_greedy_decode_matches_hf_generate(t5_pair):
    _, hf_model, _, model, params = t5_pair
    batch = make_batch(seed=1)
    decode = jax.jit(model.greedy_decode, static_argnums=2)
    ours = np.asarray(decode(params, {"encoder_input_tokens": batch["encoder_input_tokens"]},
                             MAX_DECODE))
    assert ours.dtype == np.int32 and ours.shape == (3, MAX_DECODE)
    np.testing.assert_array_equal(ours, hf_greedy(hf_model, batch["encoder_input_tokens"],
                                                  MAX_DECODE))


def test_greedy_decode_stops_at_eos_and_pads(t5_v11):
    """With EOS set to a token the model emits, rows end there, 0s follow, the loop stops."""
    _, hf_model, _, model, params = t5_v11
    enc = make_batch(seed=1)["encoder_input_tokens"]
    free = np.asarray(jax.jit(model.greedy_decode, static_argnums=2)(
        params, {"encoder_input_tokens": enc}, MAX_DECODE))
    eos = int(free[0, 2])
    assert eos not in free[0, :2], "test premise: the third token is new in row 0"
    eos_model = EncoderDecoderModel(dataclasses.replace(model.config, eos_id=eos))
    decode = jax.jit(eos_model._greedy_decode, static_argnums=2)
    tokens, steps = decode(params, {"encoder_input_tokens": enc}, MAX_DECODE)
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(tokens, hf_greedy(hf_model, enc, MAX_DECODE, eos_id=eos))
    assert tokens[0, 2] == eos and np.all(tokens[0, 3:] == 0)
    # A batch whose only row ends at step 3 stops the while loop after 3 steps.
    one_tokens, one_steps = decode(params, {"encoder_input_tokens": enc[:1]}, MAX_DECODE)
    assert int(one_steps) == 3
    np.testing.assert_array_equal(np.asarray(one_tokens)[0], tokens[0])


def test_bfloat16_compute_close_to_float32(t5_v11):
    _, _, _, model, params = t5_v11
    batch = make_batch()
    bf16 = EncoderDecoderModel(dataclasses.replace(model.config, dtype="bfloat16"))
    logits32 = np.asarray(jax.jit(model.logits)(params, batch))
    logits16 = jax.jit(bf16.logits)(params, batch)
    assert logits16.dtype == jnp.float32  # logits stay float32 in bf16 compute
    scale = np.abs(logits32).max()
    assert np.max(np.abs(np.asarray(logits16) - logits32)) < 0.05 * scale
    assert np.mean(np.argmax(logits16, -1) == np.argmax(logits32, -1)) > 0.8


def _small_config(**overrides) -> T5Config:
    return T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                    num_encoder_layers=1, num_decoder_layers=1, **overrides)


def test_dropout_only_with_rng():
    # "rbg" keys: same semantics, far cheaper to compile on CPU than threefry.
    model = EncoderDecoderModel(_small_config(dropout_rate=0.3))
    params = jax.jit(model.init_params)(jax.random.key(0, impl="rbg"))
    batch = make_batch()
    logits = jax.jit(model.logits)
    eval_a, eval_b = logits(params, batch), logits(params, batch)
    train_a = logits(params, batch, jax.random.key(1, impl="rbg"))
    train_b = logits(params, batch, jax.random.key(2, impl="rbg"))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train_a, eval_a)
    assert not np.allclose(train_a, train_b)


@pytest.mark.e2e
def test_remat_keeps_loss_and_gradients():
    cfg = _small_config()
    model, remat = EncoderDecoderModel(cfg), EncoderDecoderModel(dataclasses.replace(cfg,
                                                                                  remat=True))
    params = jax.jit(model.init_params)(jax.random.key(0, impl="rbg"))
    batch = make_batch()
    (loss, _), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch)
    (remat_loss, _), remat_grads = jax.jit(jax.value_and_grad(remat.loss_fn, has_aux=True))(
        params, batch)
    np.testing.assert_allclose(float(remat_loss), float(loss), rtol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
                 remat_grads, grads)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["decoder"]["logits_dense"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (64, 256)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = np.arange(-3000, 3000)
    ref = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional, num_buckets,
                                                max_distance).numpy()
    np.testing.assert_array_equal(
        relative_position_bucket(rel, bidirectional, num_buckets, max_distance), ref)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_biases_match_hf_compute_bias_at_long_range(bidirectional):
    """Distances far beyond max_distance (saturated buckets) and a decode offset."""
    from activeit_jax.models.t5 import RelativePositionBiases
    hf_cfg = transformers.T5Config(num_heads=4, relative_attention_num_buckets=32,
                                   relative_attention_max_distance=128,
                                   is_decoder=not bidirectional)
    hf_attention = transformers.models.t5.modeling_t5.T5Attention(
        hf_cfg, has_relative_attention_bias=True, layer_idx=0)
    table = hf_attention.relative_attention_bias.weight.detach().numpy()
    module = RelativePositionBiases(32, 128, 4, bidirectional)
    q_len, k_len, offset = 3, 400, 350
    params = {"params": {"rel_embedding": table}}
    ours = module.apply(params, q_len, k_len, offset)
    traced = jax.jit(lambda p, o: module.apply(p, q_len, k_len, o))(params, jnp.int32(offset))
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(ours))  # decoding's path
    with torch.no_grad():
        ref = hf_attention.compute_bias(q_len, k_len, past_seen_tokens=offset).numpy()
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_params_logical_axes_cover_every_param():
    model = EncoderDecoderModel(T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128,
                                         num_heads=4, num_encoder_layers=2,
                                         num_decoder_layers=2))
    shapes = model.abstract_params()
    axes = model.params_logical_axes()
    assert jax.tree.structure(shapes) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert all(len(s.shape) == len(a) for s, a in zip(jax.tree.leaves(shapes), flat_axes))
    enc = axes["encoder"]
    assert enc["layers_0"]["attention"]["query"]["kernel"] == jax.sharding.PartitionSpec(
        "embed", "heads", "kv")
    assert enc["layers_0"]["mlp"]["wo"]["kernel"] == jax.sharding.PartitionSpec("mlp", "embed")
    assert enc["relpos_bias"]["rel_embedding"] == jax.sharding.PartitionSpec(
        "relpos_buckets", "heads")
    assert axes["token_embedder"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")


def test_report_max_logit_diff():
    """Prints the largest fp32 logit difference against PyTorch (run with -s)."""
    if not MAX_LOGIT_DIFF:
        pytest.skip("logit tests did not run")
    print(f"\nT5 max |logit diff| vs transformers: {MAX_LOGIT_DIFF}")
    assert max(MAX_LOGIT_DIFF.values()) < 1e-4
