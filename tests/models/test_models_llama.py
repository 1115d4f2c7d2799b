"""LLaMA-style decoder against the PyTorch reference (random tiny LlamaForCausalLM with GQA)."""
from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from activeit_jax.models import (  # noqa: E402
    DecoderOnlyModel,
    LlamaConfig,
    hf_convert,
    make_decoder_only_batch,
    make_prompt_batch,
)

VOCAB = 1024
MAX_DECODE = 8
MAX_LOGIT_DIFF: dict[str, float] = {}


def make_hf_llama(seed: int = 0, tie_word_embeddings: bool = False):
    """A random tiny LlamaForCausalLM (llama_tiny.gin shapes: 4 query heads, 2 kv heads)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = transformers.LlamaForCausalLM(cfg)
    # The default init (std 0.02) gives near-uniform logits; widen it so greedy decoding has
    # clear winners and the comparison tests real computation rather than ties.
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    hf_model = make_hf_llama()
    hf_dir = tmp_path_factory.mktemp("hf_llama")
    hf_model.save_pretrained(hf_dir)
    model, params = hf_convert.import_hf(hf_dir)
    return hf_model, hf_dir, model, params


def sample_sequences(seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, VOCAB, n).tolist() for n in (5, 3, 7)]
    responses = [rng.integers(3, VOCAB, n).tolist() for n in (4, 2, 1)]
    return prompts, responses


def hf_logits(hf_model, tokens: np.ndarray, position_ids: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {}
        if position_ids is not None:
            kwargs["position_ids"] = torch.tensor(position_ids, dtype=torch.long)
        out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                       attention_mask=torch.tensor(tokens != 0, dtype=torch.long), **kwargs)
    return out.logits.float().numpy()


def test_config_has_grouped_query_attention(llama_pair):
    _, _, model, params = llama_pair
    assert (model.config.num_heads, model.config.num_kv_heads) == (4, 2)
    attention = params["layers_0"]["attention"]
    assert attention["query"]["kernel"].shape == (64, 4, 16)
    assert attention["key"]["kernel"].shape == (64, 2, 16)
    assert attention["out"]["kernel"].shape == (4, 16, 64)


def test_logits_token_log_probs_and_loss_match_torch(llama_pair):
    hf_model, _, model, params = llama_pair
    batch = make_decoder_only_batch(*sample_sequences(), length=12)
    tokens = batch["decoder_input_tokens"]
    valid = tokens != 0
    ref = hf_logits(hf_model, tokens)
    ours = np.asarray(jax.jit(model.logits)(params, batch))
    assert ours.dtype == np.float32 and ours.shape == (3, 12, VOCAB)
    diff = float(np.max(np.abs(ours - ref)[valid]))
    MAX_LOGIT_DIFF["llama"] = diff
    assert diff < 1e-4, diff

    weights = batch["decoder_loss_weights"]
    ref_lp = torch.log_softmax(torch.tensor(ref), -1).gather(
        -1, torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)[..., None])[..., 0]
    ref_lp = np.where(weights > 0, ref_lp.numpy(), 0.0)
    ours_lp = np.asarray(jax.jit(model.token_log_probs)(params, batch))
    np.testing.assert_allclose(ours_lp, ref_lp, atol=1e-4)
    assert np.all(ours_lp[weights == 0] == 0.0) and np.all(ours_lp[weights > 0] < 0.0)

    loss, aux = jax.jit(model.loss_fn)(params, batch)
    assert float(aux["num_tokens"]) == 5 + 3 + 2  # responses + eos
    np.testing.assert_allclose(float(loss), -ref_lp.sum() / 10.0, rtol=1e-5)


def test_left_padding_matches_torch_with_position_ids(llama_pair):
    """Left-padded inputs: positions count real tokens only (HF: explicit position_ids)."""
    hf_model, _, model, params = llama_pair
    right = make_decoder_only_batch(*sample_sequences(), length=12)
    tokens = right["decoder_input_tokens"]
    lengths = (tokens != 0).sum(1)
    left = np.zeros_like(tokens)
    for i, n in enumerate(lengths):
        left[i, 12 - n:] = tokens[i, :n]
    valid = left != 0
    position_ids = np.maximum(np.cumsum(valid, 1) - 1, 0)
    ref = hf_logits(hf_model, left, position_ids)
    ours = np.asarray(jax.jit(model.logits)(params, {"decoder_input_tokens": left}))
    assert float(np.max(np.abs(ours - ref)[valid])) < 1e-4
    ours_right = np.asarray(jax.jit(model.logits)(params, right))
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(ours[i, 12 - n:], ours_right[i, :n], atol=1e-5)


def hf_greedy(hf_model, prompts: np.ndarray, max_new_tokens: int, eos_id: int = 2):
    """HF greedy generate on left-padded prompts; continuation only, 0-padded."""
    with torch.no_grad():
        out = hf_model.generate(input_ids=torch.tensor(prompts, dtype=torch.long),
                                attention_mask=torch.tensor(prompts != 0, dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                eos_token_id=eos_id, pad_token_id=0).numpy()
    out = out[:, prompts.shape[1]:]
    return np.pad(out, ((0, 0), (0, max_new_tokens - out.shape[1])))


def test_greedy_decode_matches_hf_generate(llama_pair):
    hf_model, _, model, params = llama_pair
    prompts, _ = sample_sequences(seed=1)
    left = make_prompt_batch(prompts, length=9, left_pad=True)
    right = make_prompt_batch(prompts, length=9, left_pad=False)
    ref = hf_greedy(hf_model, left["decoder_input_tokens"], MAX_DECODE)
    decode = jax.jit(model.greedy_decode, static_argnums=2)
    ours_left = np.asarray(decode(params, left, MAX_DECODE))
    ours_right = np.asarray(decode(params, right, MAX_DECODE))
    assert ours_left.dtype == np.int32 and ours_left.shape == (3, MAX_DECODE)
    np.testing.assert_array_equal(ours_left, ref)
    np.testing.assert_array_equal(ours_right, ref)


def test_greedy_decode_stops_at_eos_and_pads(llama_pair):
    hf_model, _, model, params = llama_pair
    prompts, _ = sample_sequences(seed=1)
    batch = make_prompt_batch(prompts, length=9)
    free = np.asarray(jax.jit(model.greedy_decode, static_argnums=2)(params, batch, MAX_DECODE))
    eos = int(free[0, 3])
    assert eos not in free[0, :3], "test premise: the fourth token is new in row 0"
    eos_model = DecoderOnlyModel(dataclasses.replace(model.config, eos_id=eos))
    decode = jax.jit(eos_model._greedy_decode, static_argnums=2)
    tokens, _ = decode(params, batch, MAX_DECODE)
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(
        tokens, hf_greedy(hf_model, batch["decoder_input_tokens"], MAX_DECODE, eos_id=eos))
    assert tokens[0, 3] == eos and np.all(tokens[0, 4:] == 0)
    one = {"decoder_input_tokens": batch["decoder_input_tokens"][:1]}
    one_tokens, steps = decode(params, one, MAX_DECODE)
    assert int(steps) == 4
    np.testing.assert_array_equal(np.asarray(one_tokens)[0], tokens[0])


@pytest.mark.e2e
def test_remat_keeps_loss_and_gradients():
    """llama_7b.gin turns remat on: same loss and gradients as without it."""
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=4, num_kv_heads=2)
    model = DecoderOnlyModel(cfg)
    remat = DecoderOnlyModel(dataclasses.replace(cfg, remat=True))
    params = jax.jit(model.init_params)(jax.random.key(0, impl="rbg"))
    batch = make_decoder_only_batch(*sample_sequences(), length=12)
    (loss, _), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch)
    (remat_loss, _), remat_grads = jax.jit(jax.value_and_grad(remat.loss_fn, has_aux=True))(
        params, batch)
    np.testing.assert_allclose(float(remat_loss), float(loss), rtol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
                 remat_grads, grads)
    assert float(np.abs(grads["layers_0"]["attention"]["key"]["kernel"]).sum()) > 0


def test_make_decoder_only_batch_layout():
    batch = make_decoder_only_batch([[5, 6, 7], [9] * 10], [[8], [4, 4]], length=6)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][0], [1, 5, 6, 7, 8, 0])
    np.testing.assert_array_equal(batch["decoder_target_tokens"][0], [5, 6, 7, 8, 2, 0])
    np.testing.assert_array_equal(batch["decoder_loss_weights"][0], [0, 0, 0, 1, 1, 0])
    # Too long: the prompt loses its start, the response and eos stay.
    np.testing.assert_array_equal(batch["decoder_input_tokens"][1], [1, 9, 9, 9, 4, 4])
    np.testing.assert_array_equal(batch["decoder_target_tokens"][1], [9, 9, 9, 4, 4, 2])
    np.testing.assert_array_equal(batch["decoder_loss_weights"][1], [0, 0, 0, 1, 1, 1])


def test_batches_without_bos():
    """A model whose tokenizer adds no BOS (SmolLM2): the sequence starts with the prompt."""
    batch = make_decoder_only_batch([[5, 6, 7], [], [9] * 10], [[8], [4, 4], [3]], length=5,
                                    bos_id=None)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][0], [5, 6, 7, 8, 0])
    np.testing.assert_array_equal(batch["decoder_target_tokens"][0], [6, 7, 8, 2, 0])
    np.testing.assert_array_equal(batch["decoder_loss_weights"][0], [0, 0, 1, 1, 0])
    # An empty prompt: nothing conditions the first response token, which goes unscored.
    np.testing.assert_array_equal(batch["decoder_input_tokens"][1], [4, 4, 0, 0, 0])
    np.testing.assert_array_equal(batch["decoder_loss_weights"][1], [1, 1, 0, 0, 0])
    # Too long: the prompt keeps its end, response and eos stay, all 6 slots used.
    np.testing.assert_array_equal(batch["decoder_input_tokens"][2], [9, 9, 9, 9, 3])
    np.testing.assert_array_equal(batch["decoder_target_tokens"][2], [9, 9, 9, 3, 2])
    np.testing.assert_array_equal(batch["decoder_loss_weights"][2], [0, 0, 0, 1, 1])
    prompts = make_prompt_batch([[5, 6, 7], [1, 2, 3, 4, 5, 6]], 4, bos_id=None)
    np.testing.assert_array_equal(prompts["decoder_input_tokens"],
                                  [[0, 5, 6, 7], [3, 4, 5, 6]])
    with pytest.raises(ValueError, match="prompt 1 is empty and the model takes no BOS"):
        make_prompt_batch([[5], []], 4, bos_id=None)


def test_config_rejects_a_padding_id_that_is_a_real_token():
    with pytest.raises(ValueError, match="pad_id 2 doubles as BOS/EOS"):
        LlamaConfig(pad_id=2, eos_id=2)
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        LlamaConfig(rope_type="yarn")
    assert hf_convert.llama_config_from_hf(
        {"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
         "num_attention_heads": 2, "pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 2},
        has_lm_head=True).pad_id == 0  # config.json's pad = eos gives way to 0


def test_report_max_logit_diff():
    if not MAX_LOGIT_DIFF:
        pytest.skip("logit tests did not run")
    print(f"\nLLaMA max |logit diff| vs transformers: {MAX_LOGIT_DIFF}")
    assert max(MAX_LOGIT_DIFF.values()) < 1e-4
