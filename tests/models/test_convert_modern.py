"""Modern LLaMA-family Hugging Face checkpoints through `--from_hf`: Qwen2 (query/key/value
biases), Llama-3 RoPE scaling, tied embeddings, and the tokenizer stored beside the weights;
each against transformers' PyTorch model on a small random config."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from activeit_jax.data import vocab as vocab_lib  # noqa: E402
from activeit_jax.models import (  # noqa: E402
    DecoderOnlyModel,
    checkpoints,  # noqa: E402
    hf_convert,
    llama,
    make_prompt_batch,
)

VOCAB = 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _widen(model):
    """Wider random weights (the default std 0.02 gives near-uniform logits), non-zero biases."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.2)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    return model.eval()


def make_qwen2(tie: bool = True):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    return _widen(transformers.Qwen2ForCausalLM(cfg))


def make_llama3(tie: bool = True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
        max_position_embeddings=512,
        # A short original context so that a 96-token input reaches every frequency band.
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32})
    return _widen(transformers.LlamaForCausalLM(cfg))


def _logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def _check_against_torch(hf_model, tmp_path, length: int = 96) -> DecoderOnlyModel:
    hf_model.save_pretrained(tmp_path)
    model, params = hf_convert.import_hf(tmp_path)
    tokens = np.random.default_rng(0).integers(3, VOCAB, (2, length)).astype(np.int32)
    ours = np.asarray(jax.jit(model.logits)(params, {"decoder_input_tokens": tokens}))
    diff = float(np.abs(ours - _logits(hf_model, tokens)).max())
    assert diff < 1e-4, diff
    # Greedy decoding too (KV cache, rotary at decode positions).
    prompt = tokens[:1, :40]
    batch = make_prompt_batch([prompt[0, 1:].tolist()], 40, bos_id=int(prompt[0, 0]))
    ours_gen = np.asarray(jax.jit(model.greedy_decode, static_argnums=2)(params, batch, 8))
    with torch.no_grad():
        ref_gen = hf_model.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=8,
                                    do_sample=False, eos_token_id=None,
                                    pad_token_id=0).numpy()[0, 40:]
    stop = list(ref_gen).index(model.config.eos_id) + 1 if model.config.eos_id in ref_gen else 8
    np.testing.assert_array_equal(ours_gen[0, :stop], ref_gen[:stop])
    return model, params


@pytest.mark.parametrize("tie", [True, False])
def test_qwen2_with_qkv_bias_matches_torch(tmp_path, tie):
    model, params = _check_against_torch(make_qwen2(tie), tmp_path)
    cfg = model.config
    assert cfg.attention_bias and cfg.rope_theta == 1e6 and cfg.tie_word_embeddings == tie
    attention = params["layers_0"]["attention"]
    assert attention["query"]["bias"].shape == (4, 16) and "bias" not in attention["out"]
    assert float(np.abs(attention["key"]["bias"]).sum()) > 0


def test_llama3_rope_scaling_matches_torch(tmp_path):
    model, _ = _check_against_torch(make_llama3(), tmp_path)
    cfg = model.config
    assert (cfg.rope_type, cfg.rope_factor, cfg.rope_original_max_position_embeddings) == (
        "llama3", 8.0, 32)
    assert cfg.tie_word_embeddings
    default = dataclasses.replace(cfg, rope_type="default")  # the scaling changes frequencies
    assert (llama.rotary_inv_freq(cfg) < llama.rotary_inv_freq(default)).sum() >= 6


@pytest.mark.parametrize("make", [make_qwen2, make_llama3])
def test_export_loads_in_transformers_with_same_logits(tmp_path, make):
    hf_model = make()
    hf_model.save_pretrained(tmp_path / "in")
    model, params = hf_convert.import_hf(tmp_path / "in")
    hf_convert.export_hf(model, jax.device_get(params), tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded) is type(hf_model)
    tokens = np.random.default_rng(1).integers(3, VOCAB, (1, 64))
    np.testing.assert_allclose(_logits(reloaded, tokens), _logits(hf_model, tokens), atol=1e-5)


def _write_tokenizer(directory, vocab_size: int, config: dict) -> None:
    """A byte-level BPE of `vocab_size` ids + tokenizer_config.json into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50 +
                            ["Definition: answer yes or no. Output: yes"] * 50, trainer)
    missing = vocab_size - tok.get_vocab_size()  # a small corpus has few merges: pad with
    tok.add_tokens([f"<extra_{i}>" for i in range(missing)])  # plain added tokens
    assert tok.get_vocab_size() == vocab_size
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def test_tokenizer_is_stored_and_gives_the_model_ids(tmp_path):
    hf_dir = tmp_path / "hf"
    make_qwen2().save_pretrained(hf_dir)
    # Qwen2-style: no BOS added, pad declared as <|endoftext|>, EOS <|im_end|>.
    _write_tokenizer(hf_dir, 300, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                   "bos_token": None, "add_bos_token": False,
                                   "chat_template": "{{ messages }}"})
    ckpt = tmp_path / "ckpt"
    model = checkpoints.import_hf_to_checkpoint(hf_dir, ckpt)
    assert (model.config.pad_id, model.config.bos_id, model.config.eos_id) == (0, None, 2)
    stored = vocab_lib.vocabulary_from_checkpoint(ckpt)
    reference = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = "the lazy fox<|im_end|> Output: yes"
    assert stored.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert stored.chat_template == "{{ messages }}" and stored.vocab_size == 300
    assert vocab_lib.resolve_vocabulary(None, ckpt) == stored


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    hf_dir = tmp_path / "hf"
    make_qwen2().save_pretrained(hf_dir)
    _write_tokenizer(hf_dir, VOCAB + 20, {"eos_token": "<|im_end|>"})
    ckpt = tmp_path / "ckpt"
    with pytest.raises(hf_convert.ConversionError,
                       match=f"tokenizer.json: the tokenizer has {VOCAB + 20} ids but the "
                             f"model's embedding has only {VOCAB} rows"):
        checkpoints.import_hf_to_checkpoint(hf_dir, ckpt)
    assert not os.path.exists(ckpt) and not os.path.exists(f"{ckpt}{checkpoints.TMP_SUFFIX}")


def test_unsupported_variants_are_named(tmp_path):
    base = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 8,
            "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2}
    cases = [({"attention_bias": True}, "attention_bias=true"),
             ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_type 'yarn'"),
             ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
               "use_sliding_window": True}, "use_sliding_window"),
             ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor")]
    for change, match in cases:
        with pytest.raises(hf_convert.ConversionError, match=match):
            hf_convert.llama_config_from_hf({**base, **change}, has_lm_head=True)
