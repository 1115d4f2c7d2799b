"""Small synthetic llama.cpp GGUF files for the GGUF import tests (written with gguf.GGUFWriter).

`write_tiny_llama_gguf` writes a 2-layer LLaMA (hidden 256, so every K-quant block fits a row)
with a tokenizer trained on the bundled sample, every tensor in a chosen ggml type. As
llama.cpp's converter writes them:

- "llama" files have their query/key rows in llama.cpp's interleaved rotary order, so an
  import that forgets to undo that order gives other logits than transformers; "qwen2" files
  keep Hugging Face's order and carry query/key/value biases;
- the tokenizer is a byte-level BPE (`bpe_vocab`: tokens, token types, merges; "gpt2") or a
  SentencePiece model (`spm_vocab`: pieces, scores, token types with `<0xNN>` byte pieces;
  "llama", as for Llama-2 / Mistral / TinyLlama).
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 2
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}")

# One layer's tensors cycle through the supported block types; the other keeps floats.
LAYER_TYPES = ({"attn_q": "Q4_K", "attn_k": "Q6_K", "attn_v": "Q8_0", "attn_output": "Q4_0",
                "ffn_gate": "Q4_1", "ffn_up": "Q2_K", "ffn_down": "Q3_K"},
               {"attn_q": "Q5_K", "attn_k": "F16", "attn_v": "BF16", "attn_output": "F32",
                "ffn_gate": "Q8_0", "ffn_up": "F16", "ffn_down": "Q6_K"})


def sample_bpe(sample_data: pathlib.Path, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on sample NIV2 definitions (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from activeit_jax.data import niv2
    texts = [t.definition for t in niv2.read_niv2_split(sample_data / "niv2", "test")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


@dataclasses.dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer metadata of a GGUF file (llama.cpp's token types: 1 normal, 2 unknown,
    3 control, 4 user-defined, 6 byte)."""
    model: str  # tokenizer.ggml.model: "gpt2" or "llama"
    tokens: Sequence[str]
    types: Sequence[int]
    merges: Sequence[str] | None = None
    scores: Sequence[float] | None = None
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int | None = 0
    pad_id: int | None = 2


def bpe_vocab(tokenizer) -> GGUFVocab:
    """A byte-level `tokenizers` BPE as llama.cpp writes it (the SPECIALS are control)."""
    model_json = json.loads(tokenizer.to_str())
    vocab = model_json["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json["model"]["merges"]]
    return GGUFVocab("gpt2", tokens, [3 if t in SPECIALS else 1 for t in tokens], merges)


SPM_USER_DEFINED = ("<|im_start|>", "<|im_end|>")


def sample_spm(sample_data: pathlib.Path, vocab_size: int = 600):
    """A SentencePiece BPE with Llama-2's settings (byte fallback, digits split, identity
    normalization, a dummy prefix, whitespace kept), trained on sample NIV2 text; <unk> 0,
    <s> 1, </s> 2, and two user-defined pieces."""
    import sentencepiece as spm

    from activeit_jax.data import niv2
    tasks = niv2.read_niv2_split(sample_data / "niv2", "test")
    texts = [t.definition for t in tasks] + [i.input for t in tasks for i in t.instances]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, user_defined_symbols=list(SPM_USER_DEFINED),
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def spm_vocab(sp) -> GGUFVocab:
    """A SentencePiece model as llama.cpp's converter writes it (pieces, scores, types)."""
    tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = []
    for i, piece in enumerate(tokens):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif piece in SPM_USER_DEFINED:
            types.append(4)
        else:
            types.append(1)
    scores = [sp.get_score(i) for i in range(len(tokens))]
    return GGUFVocab("llama", tokens, types, scores=scores, pad_id=None)


def _interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter order: each head's halves -> interleaved pairs (written here
    independently of the importer: row h*D/2 + i moves to row 2i + h)."""
    rows, cols = weight.shape
    d = rows // heads
    out = np.empty_like(weight)
    for head in range(heads):
        for half in range(2):
            for i in range(d // 2):
                out[head * d + 2 * i + half] = weight[head * d + half * d // 2 + i]
    return out


def _random_blocks(qtype, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of a type gguf-py cannot quantize, kept only when every value they
    decode to is finite and below 2 in magnitude (random half-float scales can be huge)."""
    import gguf
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    need = rows * cols // block
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < need:
        cand = rng.integers(0, 256, (4 * need, nbytes), dtype=np.uint8)
        with np.errstate(invalid="ignore", over="ignore"):
            values = gguf.quants.dequantize(cand, qtype)
        ok = np.isfinite(values).all(axis=1) & (np.abs(values).max(axis=1) < 2.0)
        kept.append(cand[ok])
    return np.concatenate(kept)[:need].reshape(rows, cols // block * nbytes)


def _encode(values: np.ndarray, type_name: str, rng: np.random.Generator):
    """(array to write, raw ggml type or None) for `values` in `type_name`."""
    import gguf
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name == "F32":
        return values.astype(np.float32), None
    if type_name == "F16":
        return values.astype(np.float16), None
    try:
        return gguf.quants.quantize(values.astype(np.float32), qtype), qtype
    except NotImplementedError:
        return _random_blocks(qtype, *values.shape, rng), qtype


def _write_vocab(writer, vocab: GGUFVocab, extra_tokens: int, pre: str | None,
                 add_bos: bool | None, add_space_prefix: bool | None) -> None:
    tokens = list(vocab.tokens) + [f"<extra_{i}>" for i in range(extra_tokens)]
    writer.add_tokenizer_model(vocab.model)
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(list(vocab.types) + [1] * extra_tokens)
    if vocab.merges is not None:
        writer.add_token_merges(list(vocab.merges))
    if vocab.scores is not None:
        writer.add_token_scores(list(vocab.scores) + [0.0] * extra_tokens)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if add_space_prefix is not None:
        writer.add_add_space_prefix(add_space_prefix)


def write_tiny_llama_gguf(path: pathlib.Path, tokenizer: Any, *, arch: str = "llama",
                          tied: bool = False, extra_tokens: int = 0, pre: str | None = None,
                          layer_types: tuple[Mapping[str, str], ...] = LAYER_TYPES,
                          seed: int = 0, add_bos: bool | None = False,
                          add_space_prefix: bool | None = None,
                          rope_base: float = 50000.0,
                          qkv_bias: bool | None = None) -> pathlib.Path:
    """Writes a 2-layer LLaMA-family GGUF; returns `path`.

    Args:
      path: the file to write.
      tokenizer: a `tokenizers` BPE (written as `bpe_vocab` does) or a `GGUFVocab`.
      arch: general.architecture: "llama" (rotary rows interleaved), "qwen2" (query/key/value
        biases, rows in Hugging Face order), or another value (an unsupported file).
      tied: leave out output.weight.
      extra_tokens: tokens listed beyond the embedding rows (an inconsistent file).
      pre: tokenizer.ggml.pre.
      layer_types: ggml type name per layer and tensor (norms and biases are F32, the
        embedding F16 and the output head BF16).
      seed: weights seed.
      add_bos: tokenizer.ggml.add_bos_token (None: not written).
      add_space_prefix: tokenizer.ggml.add_space_prefix (None: not written).
      rope_base: {arch}.rope.freq_base.
      qkv_bias: write query/key/value biases (None: for "qwen2" only).
    """
    import gguf

    rng = np.random.default_rng(seed)
    vocab = tokenizer if isinstance(tokenizer, GGUFVocab) else bpe_vocab(tokenizer)
    rows = len(vocab.tokens)
    interleaved = arch != "qwen2"
    qkv_bias = arch == "qwen2" if qkv_bias is None else qkv_bias

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(rope_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(rows)
    _write_vocab(writer, vocab, extra_tokens, pre, add_bos, add_space_prefix)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, shape: tuple[int, ...], type_name: str, scale: float = 0.5,
               heads: int | None = None) -> None:
        values = rng.normal(0.0, scale, shape).astype(np.float32)
        if heads is not None and interleaved:
            values = _interleave_rotary(values, heads)
        data, raw = _encode(values, type_name, rng)
        writer.add_tensor(name, data, raw_dtype=raw)

    tensor("token_embd.weight", (rows, HIDDEN), "F16")
    head_dim = HIDDEN // HEADS
    for i, types_i in enumerate(layer_types):
        norm = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        tensor(f"blk.{i}.attn_q.weight", (HEADS * head_dim, HIDDEN), types_i["attn_q"],
               heads=HEADS)
        tensor(f"blk.{i}.attn_k.weight", (KV_HEADS * head_dim, HIDDEN), types_i["attn_k"],
               heads=KV_HEADS)
        tensor(f"blk.{i}.attn_v.weight", (KV_HEADS * head_dim, HIDDEN), types_i["attn_v"])
        if qkv_bias:
            for name, heads in (("attn_q", HEADS), ("attn_k", KV_HEADS), ("attn_v", KV_HEADS)):
                writer.add_tensor(f"blk.{i}.{name}.bias",
                                  rng.normal(0.0, 0.5, heads * head_dim).astype(np.float32))
        tensor(f"blk.{i}.attn_output.weight", (HIDDEN, HEADS * head_dim),
               types_i["attn_output"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight",
                          rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), types_i["ffn_gate"])
        tensor(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), types_i["ffn_up"])
        tensor(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), types_i["ffn_down"])
    writer.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
    if not tied:
        tensor("output.weight", (rows, HIDDEN), "BF16", scale=0.2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
