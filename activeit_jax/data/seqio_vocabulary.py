"""Our vocabularies as `seqio.Vocabulary` objects, for the seqio tasks (`seqio_tasks`,
`activeit_jax.tasks`): the one place besides `seqio_tasks` that imports seqio and TensorFlow.

The commands never come here: they encode and decode in Python (`vocab.Vocabulary`). A seqio
task needs TensorFlow faces of both (`_encode_tf` / `_decode_tf`), which `adapt` adds:

  a seqio vocabulary                 -> itself;
  `vocab.SentencePieceVocabulary`    -> `seqio.SentencePieceVocabulary` of the same model file
                                        and extra ids (the same ids and text);
  any other `vocab.Vocabulary`       -> `SeqioVocabulary`, which calls it through
  (`HFTokenizerVocabulary`)             `tf.py_function`.

`import_tensorflow` imports TensorFlow with the accelerators hidden from it (as t5x and
MaxText do), so a seqio input pipeline never takes GPU memory that JAX needs.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from activeit_jax.data import vocab as vocab_lib


def import_tensorflow() -> Any:
    """TensorFlow, with every GPU hidden from it (JAX owns the accelerators; TensorFlow only
    runs the CPU input pipeline of seqio tasks)."""
    import tensorflow as tf
    try:
        tf.config.experimental.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices are already initialised (hidden then, or not)
        pass
    return tf


tf = import_tensorflow()
import seqio  # noqa: E402  (after TensorFlow's accelerators are hidden)


class SeqioVocabulary(seqio.Vocabulary):
    """A `vocab.Vocabulary` behind seqio's interface: Python calls go to it, TensorFlow calls
    through `tf.py_function`.

    Args:
      vocabulary: the wrapped vocabulary (e.g. an `HFTokenizerVocabulary`).
    """

    def __init__(self, vocabulary: vocab_lib.Vocabulary) -> None:
        super().__init__(extra_ids=vocabulary.extra_ids)
        self.vocabulary = vocabulary

    def __getattr__(self, name: str) -> Any:
        # chat_template, add_bos, end_of_turn_id, special_tokens, tokenizer ...: the wrapped
        # vocabulary's (only called for names seqio's class does not define).
        if name == "vocabulary":
            raise AttributeError(name)
        return getattr(self.vocabulary, name)

    @property
    def bos_id(self) -> int | None:
        return self.vocabulary.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocabulary.eos_id

    @property
    def pad_id(self) -> int:
        return self.vocabulary.pad_id

    @property
    def unk_id(self) -> int | None:
        return self.vocabulary.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self.vocabulary._base_vocab_size  # noqa: SLF001 (the same interface)

    def _encode(self, s: str) -> list[int]:
        return list(self.vocabulary.encode(s))

    def _decode(self, ids: Iterable[int]) -> str:
        return self.vocabulary._decode(list(ids))  # noqa: SLF001 (already cleaned by seqio)

    def _encode_tf(self, s: Any) -> Any:
        """int32 `[T]` for a scalar string; a ragged int32 tensor with one more (ragged)
        dimension for a string tensor of any shape."""
        def encode_flat(strings: Any) -> tuple[np.ndarray, np.ndarray]:
            flat = np.asarray(strings.numpy(), dtype=object).reshape(-1)  # scalar: bytes
            rows = [self._encode(x.decode("utf-8")) for x in flat]
            values = np.asarray([i for row in rows for i in row], np.int32)
            return values, np.asarray([len(row) for row in rows], np.int64)

        s = tf.convert_to_tensor(s, tf.string)
        values, lengths = tf.py_function(encode_flat, [s], Tout=(tf.int32, tf.int64))
        values.set_shape([None])
        if s.shape.rank == 0:
            return values
        lengths.set_shape([None])
        ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
        if s.shape.rank > 1:
            ragged = tf.RaggedTensor.from_uniform_row_length(ragged, tf.shape(s)[-1])
        return ragged

    def _decode_tf(self, ids: Any) -> Any:
        """int `[..., T]` -> strings `[...]` (as `decode`, row by row)."""
        def decode_flat(batch: Any) -> np.ndarray:
            array = batch.numpy()
            flat = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 0)
            return np.asarray([self.decode(row.tolist()).encode("utf-8") for row in flat],
                              dtype=object)

        ids = tf.convert_to_tensor(ids)
        out = tf.py_function(decode_flat, [ids], Tout=tf.string)
        return tf.reshape(out, tf.shape(ids)[:-1])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SeqioVocabulary):
            other = other.vocabulary
        return self.vocabulary == other

    def __hash__(self) -> int:
        return hash(self.vocabulary)

    def __repr__(self) -> str:
        return f"SeqioVocabulary({self.vocabulary!r})"


# id(our vocabulary) -> (it, its seqio face): one face per vocabulary, however many tasks use it.
_ADAPTED: dict[int, tuple[Any, seqio.Vocabulary]] = {}


def adapt(vocabulary: Any) -> seqio.Vocabulary:
    """`vocabulary` as a `seqio.Vocabulary` with the same ids and text (see the module
    docstring); the same object for the same vocabulary.

    Raises:
      TypeError: neither a seqio vocabulary nor one of ours.
    """
    if isinstance(vocabulary, seqio.Vocabulary):
        return vocabulary
    cached = _ADAPTED.get(id(vocabulary))
    if cached is not None and cached[0] is vocabulary:
        return cached[1]
    if isinstance(vocabulary, vocab_lib.SentencePieceVocabulary):
        adapted = seqio.SentencePieceVocabulary(vocabulary.sentencepiece_model_file,
                                                extra_ids=vocabulary.extra_ids)
    elif isinstance(vocabulary, vocab_lib.Vocabulary):
        adapted = SeqioVocabulary(vocabulary)
    else:
        raise TypeError(f"not a vocabulary seqio can use: {type(vocabulary).__name__}")
    _ADAPTED[id(vocabulary)] = (vocabulary, adapted)
    return adapted
