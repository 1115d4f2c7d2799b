"""HF `tokenizers` vocabularies: encode/decode against transformers, special ids, persistence,
`load_vocabulary` dispatch and the checkpoint fallback."""
import json

import numpy as np
import pytest

from activeit_jax.data import hf_tokenizer, niv2, self_instruct, vocab
from activeit_jax.data.errors import VocabularyError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad_me>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}")


def _sample_texts(sample_data, limit=60):
    tasks = niv2.read_niv2_split(sample_data / "niv2", "test")
    texts = [t.definition for t in tasks] + [i.input for t in tasks for i in t.instances[:3]]
    alpaca = self_instruct.load_self_instruct(sample_data / "self_instruct" / "alpaca_sample.json")
    texts += [t.definition for t in alpaca]
    return texts[:limit]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, sample_data):
    """A small byte-level BPE trained on the sample, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_sample_texts(sample_data, 400), trainer)
    directory = tmp_path_factory.mktemp("hf_tok")
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE}))
    return directory


@pytest.fixture(scope="module")
def hf_vocab(hf_dir):
    return vocab.load_vocabulary(hf_dir)


def test_encode_matches_transformers_and_keeps_special_tokens_whole(hf_dir, hf_vocab,
                                                                   sample_data):
    import transformers
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    texts = _sample_texts(sample_data) + ["héllo wörld ☃ 日本語", "  two  spaces\n\ttab", ""]
    for text in texts:
        assert hf_vocab.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    ids = hf_vocab.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == hf_vocab.special_tokens["<|im_start|>"] == 1
    assert ids[-1] == hf_vocab.end_of_turn_id == 2
    assert hf_vocab.encode("a<|im_end|>b").count(2) == 1  # one id, not pieces


def test_special_ids_and_padding_choice(hf_vocab):
    # The declared pad is the EOS (as SmolLM2's); padding must not hide EOS tokens in prompts,
    # so the unknown token pads instead.
    assert (hf_vocab.bos_id, hf_vocab.eos_id, hf_vocab.unk_id) == (1, 2, 0)
    assert hf_vocab.pad_id == 0 and hf_vocab.add_bos is False
    assert hf_vocab.chat_template == CHAT_TEMPLATE
    assert hf_vocab.special_tokens == {t: i for i, t in enumerate(SPECIALS)}
    assert hf_vocab.vocab_size == hf_vocab.tokenizer.get_vocab_size() == 600
    pick = hf_tokenizer.choose_pad_id
    assert pick(5, bos_id=1, eos_id=2, unk_id=0, end_of_turn_id=None, special_tokens={}) == 5
    assert pick(2, bos_id=1, eos_id=2, unk_id=None, end_of_turn_id=None,
                special_tokens={"<x>": 7, "<my_pad>": 9, "<y>": 11}) == 9
    assert pick(None, bos_id=1, eos_id=2, unk_id=None, end_of_turn_id=None,
                special_tokens={"<a>": 1, "<b>": 2, "<c>": 4, "<d>": 3}) == 4
    with pytest.raises(VocabularyError, match="padding"):
        pick(None, bos_id=1, eos_id=2, unk_id=None, end_of_turn_id=None,
             special_tokens={"<a>": 1})


def test_decode_stops_at_eos_and_skips_padding(hf_vocab):
    text = "Definition: answer with yes or no.\n"
    ids = hf_vocab.encode(text)
    assert hf_vocab.decode(ids) == text
    assert hf_vocab.decode([hf_vocab.bos_id] + ids + [hf_vocab.eos_id] + ids) == text
    assert hf_vocab.decode([hf_vocab.pad_id] * 3 + ids + [hf_vocab.pad_id]) == text
    # Other special tokens stay in the text, so encode(decode(ids)) gives the ids back.
    marked = hf_vocab.encode("user<pad_me>\nhi")
    assert 3 in marked and hf_vocab.encode(hf_vocab.decode(marked)) == marked


def test_tf_encode_decode_match_python(hf_vocab):
    import tensorflow as tf

    from activeit_jax.data import seqio_vocabulary
    python_vocab = hf_vocab
    hf_vocab = seqio_vocabulary.adapt(python_vocab)  # seqio's face: TensorFlow ops
    assert seqio_vocabulary.adapt(python_vocab) is hf_vocab and hf_vocab == python_vocab
    assert hf_vocab.chat_template == python_vocab.chat_template  # the rest: the vocabulary's
    texts = ["héllo <|im_start|> wörld", "", "plain text"]
    for text in texts:
        np.testing.assert_array_equal(hf_vocab.encode_tf(tf.constant(text)).numpy(),
                                      hf_vocab.encode(text))
    ragged = hf_vocab.encode_tf(tf.constant(texts))
    assert [row.tolist() for row in ragged.numpy()] == [hf_vocab.encode(t) for t in texts]
    ids = hf_vocab.encode("decode me")
    batch = tf.constant([ids + [hf_vocab.eos_id, 5, 6], ids + [hf_vocab.pad_id] * 3])
    assert [s.decode() for s in hf_vocab.decode_tf(batch).numpy()] == ["decode me"] * 2


def test_save_load_round_trip(tmp_path, hf_vocab, sample_data):
    hf_vocab.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json",
                                                           "tokenizer_meta.json"]
    loaded = hf_tokenizer.HFTokenizerVocabulary.load(tmp_path)
    assert loaded == hf_vocab
    for attr in ("vocab_size", "eos_id", "bos_id", "pad_id", "unk_id", "add_bos",
                 "chat_template", "end_of_turn_id", "special_tokens"):
        assert getattr(loaded, attr) == getattr(hf_vocab, attr), attr
    for text in _sample_texts(sample_data, 20):
        assert loaded.encode(text) == hf_vocab.encode(text)
    assert isinstance(vocab.load_vocabulary(tmp_path), hf_tokenizer.HFTokenizerVocabulary)


def test_add_bos_from_post_processor_and_config_errors(tmp_path, hf_dir):
    from tokenizers import Tokenizer, processors
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text("{{ x }}")
    v = vocab.load_vocabulary(tmp_path / "tokenizer.json")
    assert v.add_bos is True and v.chat_template == "{{ x }}"
    assert v.encode("hi") == tok.encode("hi", add_special_tokens=False).ids  # still no BOS
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>"}))
    with pytest.raises(VocabularyError, match="tokenizer_config.json: no eos_token"):
        vocab.load_vocabulary(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(VocabularyError, match="eos_token '<nope>' is not in"):
        vocab.load_vocabulary(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(VocabularyError, match="tokenizer.json: not a valid tokenizer.json"):
        vocab.load_vocabulary(tmp_path)


def test_load_vocabulary_dispatch_and_checkpoint_fallback(tmp_path, sample_data, hf_vocab):
    spm = vocab.load_vocabulary(sample_data / "vocab" / "sample_spm.model")
    assert type(spm).__name__ == "SentencePieceVocabulary" and spm.vocab_size == 1100
    with pytest.raises(VocabularyError, match="no tokenizer_meta.json or tokenizer.json"):
        vocab.load_vocabulary(tmp_path)
    with pytest.raises(VocabularyError, match="vocabulary not found"):
        vocab.load_vocabulary(tmp_path / "missing.json")
    assert vocab.vocabulary_from_checkpoint(tmp_path) is None
    with pytest.raises(VocabularyError, match=f"no vocabulary: give --vocab, or start from .*"
                                              f"; checkpoint {tmp_path} stores no tokenizer"):
        vocab.resolve_vocabulary(None, tmp_path)
    # A SentencePiece vocabulary stored with a checkpoint comes back with its extra ids.
    vocab.save_vocabulary(spm, tmp_path)
    stored = vocab.vocabulary_from_checkpoint(tmp_path)
    assert stored.vocab_size == 1100 and stored.encode("Output: yes") == spm.encode("Output: yes")
    assert vocab.resolve_vocabulary(None, tmp_path).vocab_size == 1100
    assert vocab.resolve_vocabulary(hf_vocab, tmp_path) is hf_vocab


def test_vocabulary_must_fit_the_embedding(hf_vocab):
    hf_tokenizer.check_fits_embedding(hf_vocab, 600)
    with pytest.raises(VocabularyError, match="600 ids but the model's embedding has only 512"):
        hf_tokenizer.check_fits_embedding(hf_vocab, 512, "tok.json")
