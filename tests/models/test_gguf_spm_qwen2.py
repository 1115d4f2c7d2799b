"""GGUF files beyond byte-level LLaMA: the SentencePiece ("llama") tokenizer type of Llama-2,
Mistral and TinyLlama files, and the "qwen2" architecture; each against transformers reading
the same small synthetic file (ids of the same strings, logits of the same random model).

SentencePiece ids are also checked against sentencepiece itself and against llama.cpp's rule
for text around added tokens (each stretch of text between them tokenized on its own, with
its own space prefix). Where transformers' GGUF reader departs from llama.cpp (text starting
with a space, text right after an added token) we follow llama.cpp; see data/gguf_tokenizer.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from activeit_jax.models import gguf_convert, hf_convert  # noqa: E402
from tests import gguf_testlib as lib  # noqa: E402

TEXTS = [
    "Given a sentence, answer yes or no.",
    " one leading space", "   three leading spaces", "trailing spaces   ", "two  inner  spaces",
    "line one\nline two\ttabbed\r\n", "numbers 12345 and 3.14",
    "héllo wörld", "日本語のテキスト", "snowman ☃ and llama 🦙", "Ünïcödé façade — naïve",
    "<|im_start|>user\nhi there<|im_end|>\n", "a<|im_end|>b", "", " ",
    "<s>[INST] Is it? [/INST] Yes.</s>",
]
ADDED = ("<|im_start|>", "<|im_end|>", "<s>", "</s>")


@pytest.fixture(scope="module")
def sp(sample_data):
    return lib.sample_spm(sample_data)


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory, sp):
    directory = tmp_path_factory.mktemp("spm")
    return lib.write_tiny_llama_gguf(directory / "tiny-spm.gguf", lib.spm_vocab(sp),
                                     add_bos=None)  # Llama-2 files predate the flag


@pytest.fixture(scope="module")
def bpe(sample_data):
    return lib.sample_bpe(sample_data)


def _reference_tokenizer(path):
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _llama_cpp_ids(vocab, sp, text: str) -> list[int]:
    """llama.cpp's SentencePiece rule: added tokens are cut out first; every stretch of text
    between them is tokenized on its own (sentencepiece, which adds the space prefix)."""
    ids: list[int] = []
    for part in re.split("(" + "|".join(map(re.escape, ADDED)) + ")", text):
        if part in ADDED:
            ids.append(sp.piece_to_id(part))
        elif part:
            ids.extend(sp.encode(part))
    return ids


def test_spm_ids_match_transformers_sentencepiece_and_llama_cpp(spm_gguf, sp):
    vocab = gguf_convert.import_gguf(spm_gguf).vocabulary
    reference = _reference_tokenizer(spm_gguf)
    byte_ids = {i for i in range(sp.get_piece_size()) if sp.is_byte(i)}
    fell_back, compared = False, 0
    for text in TEXTS:
        ours = vocab.encode(text)
        assert ours == _llama_cpp_ids(vocab, sp, text), text
        plain = not any(token in text for token in ADDED)
        if plain:
            assert ours == sp.encode(text), text
        if plain and not text[:1].isspace():
            assert ours == reference(text, add_special_tokens=False)["input_ids"], text
            compared += 1
        fell_back |= bool(byte_ids & set(ours))
        assert vocab.tokenizer.decode(ours, skip_special_tokens=False) == \
            reference.decode(ours, skip_special_tokens=False), text
    assert compared >= 10 and fell_back  # CJK / emoji went through <0xNN> byte tokens
    assert vocab.tokenizer.decode(vocab.encode("日本語 ok")) == "日本語 ok"
    # BOS: added by default for this type (the file does not say), as transformers does.
    assert vocab.add_bos and vocab.bos_id == 1 and vocab.eos_id == 2
    assert reference("hi")["input_ids"] == [vocab.bos_id] + vocab.encode("hi")
    assert vocab.pad_id == 0 and vocab.unk_id == 0  # <unk>: never produced with byte fallback
    assert vocab.special_tokens == {"<s>": 1, "</s>": 2}
    assert vocab.encode("<|im_start|>") == [sp.piece_to_id("<|im_start|>")]
    # A leading space is kept as its own "▁" (llama.cpp, sentencepiece), not merged into the
    # space prefix.
    assert vocab.encode(" hi") != vocab.encode("hi")


def test_spm_vocabulary_survives_a_checkpoint(tmp_path, spm_gguf):
    from activeit_jax.data import hf_tokenizer
    vocab = gguf_convert.import_gguf(spm_gguf).vocabulary
    vocab.save(tmp_path / "vocab")
    stored = hf_tokenizer.HFTokenizerVocabulary.load(tmp_path / "vocab")
    assert stored == vocab and stored.add_bos
    assert [stored.encode(t) for t in TEXTS] == [vocab.encode(t) for t in TEXTS]


def test_spm_space_prefix_and_bos_flags(tmp_path, sp):
    path = lib.write_tiny_llama_gguf(tmp_path / "no-prefix.gguf", lib.spm_vocab(sp),
                                     add_bos=False, add_space_prefix=False)
    vocab = gguf_convert.import_gguf(path).vocabulary
    first = vocab.tokenizer.id_to_token(vocab.encode("Given a sentence")[0])
    assert not first.startswith("\u2581") and not vocab.add_bos
    with_prefix = gguf_convert.import_gguf(lib.write_tiny_llama_gguf(
        tmp_path / "prefix.gguf", lib.spm_vocab(sp), add_space_prefix=True)).vocabulary
    assert with_prefix.tokenizer.id_to_token(with_prefix.encode("Given")[0]).startswith("\u2581")
    for text in ("Given a sentence", " spaced  out", "x\ny"):
        assert vocab.tokenizer.decode(vocab.encode(text)) == text


def _check_logits(path, model_class, text: str) -> None:
    imported = gguf_convert.import_gguf(path)
    reference = model_class.from_pretrained(path.parent, gguf_file=path.name,
                                            dtype=torch.float32).eval()
    ids = imported.vocabulary.encode(text)[:48]
    assert len(ids) >= 8
    ours = np.asarray(imported.model.logits(imported.params,
                                            {"decoder_input_tokens": np.array([ids])}))
    with torch.no_grad():
        ref = reference(torch.tensor([ids])).logits.numpy()
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-4 * scale, (np.abs(ours - ref).max(), scale)


def test_spm_llama_logits_match_transformers(spm_gguf):
    _check_logits(spm_gguf, transformers.LlamaForCausalLM, TEXTS[0] + " " + TEXTS[9])


@pytest.mark.parametrize("tied", [True, False])
def test_qwen2_matches_transformers(tmp_path, bpe, tied):
    path = lib.write_tiny_llama_gguf(tmp_path / "tiny-qwen2.gguf", bpe, arch="qwen2",
                                     pre="qwen2", tied=tied, rope_base=1e6)
    imported = gguf_convert.import_gguf(path)
    cfg = imported.model.config
    assert cfg.attention_bias and cfg.rope_theta == 1e6 and cfg.tie_word_embeddings == tied
    assert "bias" in imported.params["layers_0"]["attention"]["query"]
    _check_logits(path, transformers.Qwen2ForCausalLM, TEXTS[0] + " 12345 " + TEXTS[7])
    reference = _reference_tokenizer(path)
    for text in TEXTS:
        assert imported.vocabulary.encode(text) == \
            reference(text, add_special_tokens=False)["input_ids"], text
    # Its Hugging Face export is a Qwen2 that transformers reads with the same biases.
    hf_config = hf_convert.hf_config_from_model(imported.model)
    assert hf_config["architectures"] == ["Qwen2ForCausalLM"]


def test_unsupported_gguf_variants_are_one_line(tmp_path, sp, bpe):
    def refused(path, match):
        with pytest.raises(hf_convert.ConversionError, match=match) as info:
            gguf_convert.import_gguf(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)

    no_scores = lib.spm_vocab(sp)
    no_scores = lib.GGUFVocab("llama", no_scores.tokens, no_scores.types, pad_id=None)
    refused(lib.write_tiny_llama_gguf(tmp_path / "noscores.gguf", no_scores),
            "tokenizer.ggml.scores is missing")
    other = lib.GGUFVocab("bert", ["[PAD]", "[CLS]", "[SEP]"], [3, 3, 3])
    refused(lib.write_tiny_llama_gguf(tmp_path / "bert.gguf", other),
            "tokenizer.ggml.model 'bert' is not supported")
    # Biases in a "llama" file are not part of that architecture.
    biased = lib.write_tiny_llama_gguf(tmp_path / "llama-bias.gguf", bpe, qkv_bias=True)
    refused(biased, r"unexpected tensors .*self_attn.q_proj.bias")
