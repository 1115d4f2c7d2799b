"""The TensorFlow-free vocabulary gives seqio's ids and text."""
import numpy as np

from activeit_jax.data import vocab as vocab_lib


def test_light_vocabulary_matches_seqio(sample_data, vocab):
    light = vocab_lib.get_vocabulary(vocab.sentencepiece_model_file)  # light: the default
    vocab = vocab_lib.get_vocabulary(vocab.sentencepiece_model_file, light=False)  # seqio's
    assert type(light) is vocab_lib.SentencePieceVocabulary
    assert type(vocab).__module__.startswith("seqio")
    assert light.vocab_size == vocab.vocab_size
    texts = ["Definition: Answer the question.\n\n Positive Example 1 -\nInput: 2 + 2?",
             "  leading spaces, émoji 🙂 and numbers 12345", "a <extra_id_5> b", ""]
    for text in texts:
        assert light.encode(text) == list(vocab.encode(text))
    rng = np.random.default_rng(0)
    for _ in range(20):  # sentinels map to unk, decoding stops after EOS, pads vanish
        ids = rng.integers(0, vocab.vocab_size, 12).tolist()
        assert light.decode(ids) == vocab.decode(ids)
