"""Vocabularies: one interface (`Vocabulary`, seqio's Python face), two implementations.

- SentencePiece (`get_vocabulary`): `SentencePieceVocabulary` (T5 ids: pad 0, eos 1, unk 2, no
  bos; or a LLaMA `.model` with `require_t5_ids=False`), with seqio's sentinel ids.
- Hugging Face `tokenizers` (`hf_tokenizer.HFTokenizerVocabulary`): a `tokenizer.json` with
  the model's own BOS/EOS/PAD, add-BOS convention and chat template.

Neither imports seqio or TensorFlow: the commands encode and decode text in Python only. Where
a vocabulary meets seqio (a seqio task of `activeit_jax.tasks`), `seqio_vocabulary.adapt`
turns it into a `seqio.Vocabulary` with the same ids (`light=False` loads seqio's own
SentencePiece class directly).

`load_vocabulary(path)` picks the implementation from what the path is; `save_vocabulary`
stores a vocabulary beside a checkpoint's weights and `vocabulary_from_checkpoint` reads it
back, so a checkpoint that carries its tokenizer needs no `--vocab`.

`get_vocabulary` loads a SentencePiece model with sentinel ids (`<extra_id_N>`) appended, and
fails early with the path in the message.
`train_sentencepiece` trains a small deterministic model, e.g. the bundled
`data/sample/vocab/sample_spm.model` (1000 pieces + 100 sentinels = 1100 ids; the tiny T5
config rounds its embedding up to 1152).

The bundled model keeps text verbatim (identity normalisation, no whitespace collapsing, byte
fallback for unseen characters), so `decode(encode(prompt)) == prompt` holds for the
Tk-Instruct prompts with their newlines and leading spaces; the original T5 vocabulary maps
newlines to spaces.
"""
from __future__ import annotations

import abc
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from activeit_jax.core import io_utils
from activeit_jax.data.errors import VocabularyError

if TYPE_CHECKING:
    import seqio

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_EXTRA_IDS = 100
SAMPLE_VOCAB_RELPATH = os.path.join("data", "sample", "vocab", "sample_spm.model")
# Beside a checkpoint's weights: tokenizer.json + tokenizer_meta.json (Hugging Face tokenizers),
# or spiece.model + tokenizer_meta.json (SentencePiece). The metadata file, written last,
# says which.
META_FILE = "tokenizer_meta.json"
SPM_FILE = "spiece.model"
SPM_KIND = "sentencepiece"


class Vocabulary(abc.ABC):
    """The vocabulary interface of the project: seqio's `Vocabulary` in plain Python.

    Same ids and text as seqio's: `encode` adds no special token; `decode` maps ids past the
    base vocabulary to `unk_id` (when there is one), stops after the first EOS and decodes;
    `vocab_size` counts the extra ids. Subclasses implement `_encode`, `_decode`,
    `_base_vocab_size`, `eos_id` and `unk_id`.

    Args:
      extra_ids: ids reserved after the base vocabulary (seqio's sentinels).
    """

    def __init__(self, extra_ids: int = 0) -> None:
        self._extra_ids = extra_ids or 0

    @property
    def bos_id(self) -> int | None:
        return None

    @property
    @abc.abstractmethod
    def eos_id(self) -> int | None:
        """The end-of-sequence id."""

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    @abc.abstractmethod
    def unk_id(self) -> int | None:
        """The unknown-token id, or None."""

    @property
    def extra_ids(self) -> int:
        return self._extra_ids

    @property
    def vocab_size(self) -> int:
        """Ids in the vocabulary, extra ids included."""
        return self._base_vocab_size + self.extra_ids

    @property
    @abc.abstractmethod
    def _base_vocab_size(self) -> int:
        """Ids without the extra ids."""

    @abc.abstractmethod
    def _encode(self, s: str) -> Sequence[int]:
        """Token ids of `s`."""

    @abc.abstractmethod
    def _decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (already cut after the first EOS)."""

    def encode(self, s: str) -> Sequence[int]:
        """Token ids of `s`, without EOS."""
        return self._encode(s)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to and including the first EOS (ids past the base vocabulary read
        as unk)."""
        clean = [int(i) for i in ids]
        if self.unk_id is not None:
            size = self._base_vocab_size
            clean = [self.unk_id if i >= size else i for i in clean]
        if self.eos_id is not None and self.eos_id in clean:
            clean = clean[:clean.index(self.eos_id) + 1]
        return self._decode(clean)


def get_vocabulary(path: str | os.PathLike, extra_ids: int = DEFAULT_EXTRA_IDS,
                   require_t5_ids: bool = True, light: bool = True
                   ) -> "SentencePieceVocabulary | seqio.SentencePieceVocabulary":
    """Loads a SentencePiece model as a seqio vocabulary, checking it now rather than later.

    seqio loads the model lazily (at the first encode), which would turn a wrong path into an
    obscure TensorFlow error deep inside a data pipeline; this loads it right away.

    Args:
      path: the `.model` file.
      extra_ids: sentinel ids appended after the pieces (T5: 100).
      require_t5_ids: check pad/eos/unk = 0/1/2 (T5 models). False admits e.g. a LLaMA
        tokenizer model (unk 0, bos 1, eos 2) for decoder-only use.
      light: True (default): the TensorFlow-free `SentencePieceVocabulary`; False: seqio's
        `SentencePieceVocabulary` (imports seqio and TensorFlow), for code that hands it to
        seqio itself.

    Returns:
      The vocabulary; `vocab_size` = pieces + extra_ids.

    Raises:
      VocabularyError: the file is missing, unreadable, not a SentencePiece model, or (with
        require_t5_ids) its pad/eos/unk ids are not T5's 0/1/2. The message names the path.
    """
    import sentencepiece as spm

    path = os.fspath(path)
    if not os.path.isfile(path):
        where = "a directory, not a file" if os.path.isdir(path) else "not found"
        raise VocabularyError(f"SentencePiece model {where}", path)
    processor = spm.SentencePieceProcessor()
    try:
        with open(path, "rb") as handle:
            processor.LoadFromSerializedProto(handle.read())
    except OSError as err:
        raise VocabularyError(f"cannot read SentencePiece model ({err.strerror})", path) from None
    except Exception as err:  # sentencepiece raises RuntimeError/OSError on a bad proto
        raise VocabularyError(f"not a valid SentencePiece model ({err})", path) from None
    ids = (processor.pad_id(), processor.eos_id(), processor.unk_id())
    if require_t5_ids and ids != (PAD_ID, EOS_ID, UNK_ID):
        raise VocabularyError(f"pad/eos/unk ids are {ids}; T5 models need (0, 1, 2)", path)
    if extra_ids < 0:
        raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
    if light:
        return SentencePieceVocabulary(path, extra_ids)
    # Imported late (TensorFlow is slow to import; errors above need none of it), with the
    # GPUs hidden from TensorFlow.
    from activeit_jax.data.seqio_vocabulary import seqio

    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    vocabulary.vocab_size  # noqa: B018 (forces seqio's own load, so it fails here if at all)
    return vocabulary


class SentencePieceVocabulary:
    """`seqio.SentencePieceVocabulary`'s `encode` / `decode` / sizes on SentencePiece alone.

    The scorer and the evaluator only encode and decode text; seqio brings TensorFlow, whose
    import costs seconds of every command's start-up. Same ids and text as seqio's: `encode`
    is `EncodeAsIds` (no EOS); sentinels are pieces `<extra_id_N>` as in seqio; `decode` maps
    ids past the vocabulary to unk, stops after the first EOS and decodes.

    Args:
      path: the `.model` file.
      extra_ids: sentinel ids after the pieces (counted in `vocab_size`).
    """

    def __init__(self, path: str | os.PathLike, extra_ids: int = DEFAULT_EXTRA_IDS):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
        self.sentencepiece_model_file = os.fspath(path)
        self.extra_ids = extra_ids
        with open(self.sentencepiece_model_file, "rb") as handle:
            proto = sentencepiece_model_pb2.ModelProto.FromString(handle.read())
        # seqio's sentinels: user-defined pieces "<extra_id_N>", N descending after the pieces.
        for i in reversed(range(extra_ids)):
            proto.pieces.add(piece=f"\u2581<extra_id_{i}>", score=0.0,
                             type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
        self.tokenizer = spm.SentencePieceProcessor()
        self.tokenizer.LoadFromSerializedProto(proto.SerializeToString())

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.GetPieceSize()

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id()

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id()

    @property
    def unk_id(self) -> int:
        return self.tokenizer.unk_id()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        pieces, unk = self.tokenizer.GetPieceSize(), self.unk_id
        ids = [unk if int(i) >= pieces else int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id) + 1]
        return self.tokenizer.DecodeIds(ids)


def train_sentencepiece(texts: Iterable[str], model_prefix: str | os.PathLike,
                        vocab_size: int = 1000, seed: int = 0) -> str:
    """Trains a deterministic unigram SentencePiece model with T5 ids.

    Settings: pad 0, eos 1, unk 2, no bos; identity normalisation, whitespace kept verbatim,
    byte fallback, digits split, character coverage 1.0; one thread, input read in the given
    order (no sampling/shuffling) and a fixed random seed, so the same texts give the same
    model on every machine.

    Args:
      texts: training texts (multi-line texts are fine).
      model_prefix: output prefix; writes `<prefix>.model` and `<prefix>.vocab`.
      vocab_size: number of pieces (before seqio's extra ids).
      seed: SentencePiece's random generator seed.

    Returns:
      The path of the `.model` file. Both files appear atomically (trained in a temporary
      directory, then renamed).
    """
    import sentencepiece as spm

    model_prefix = os.fspath(model_prefix)
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    spm.set_random_generator_seed(seed)
    tmp_dir = tempfile.mkdtemp(prefix=".spm_train.", dir=out_dir)
    try:
        tmp_prefix = os.path.join(tmp_dir, "m")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=tmp_prefix,
            vocab_size=vocab_size,
            model_type="unigram",
            pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            split_digits=True,
            character_coverage=1.0,
            max_sentence_length=1 << 20,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
        # The proto records the (random) temporary prefix; store the final base name instead,
        # so the same texts give byte-identical model files.
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        with open(tmp_prefix + ".model", "rb") as handle:
            proto.ParseFromString(handle.read())
        proto.trainer_spec.model_prefix = os.path.basename(model_prefix)
        with open(tmp_prefix + ".model", "wb") as handle:
            handle.write(proto.SerializeToString(deterministic=True))
        for ext in (".vocab", ".model"):  # .model last: its presence means "done"
            os.replace(tmp_prefix + ext, model_prefix + ext)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return model_prefix + ".model"


def load_vocabulary(path: str | os.PathLike, extra_ids: int = DEFAULT_EXTRA_IDS,
                    require_t5_ids: bool = True, light: bool = True) -> Any:
    """Loads a vocabulary, choosing the implementation from what `path` is.

    Args:
      path: a SentencePiece `.model` file; a Hugging Face `tokenizer.json` (its
        `tokenizer_config.json` beside it gives the special tokens); or a directory holding
        either `tokenizer_meta.json` (written by `save_vocabulary`, e.g. a checkpoint) or a
        Hugging Face `tokenizer.json`.
      extra_ids, require_t5_ids, light: for a SentencePiece model (see `get_vocabulary`).

    Returns:
      A `SentencePieceVocabulary` (seqio's with `light=False`) or an `HFTokenizerVocabulary`.

    Raises:
      VocabularyError: nothing loadable at `path` (the message names it).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, META_FILE)):
            return _load_saved(path, light)
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            return _hf_tokenizer().from_hf_tokenizer_files(os.path.join(path, "tokenizer.json"))
        raise VocabularyError(f"directory holds no {META_FILE} or tokenizer.json", path)
    if path.endswith(".json"):
        if not os.path.exists(path):
            raise VocabularyError("vocabulary not found", path)
        return _hf_tokenizer().from_hf_tokenizer_files(path)
    return get_vocabulary(path, extra_ids, require_t5_ids, light)  # its own "not found"


def save_vocabulary(vocabulary: Any, directory: str | os.PathLike) -> bool:
    """Stores a vocabulary in `directory` (e.g. beside a checkpoint's weights).

    A Hugging Face vocabulary writes `tokenizer.json` + `tokenizer_meta.json`; a SentencePiece
    vocabulary copies its model to `spiece.model` and records its extra ids in
    `tokenizer_meta.json`. The metadata file is written last (atomically), so its presence
    means a complete vocabulary.

    Args:
      vocabulary: an `HFTokenizerVocabulary`, a `SentencePieceVocabulary` or seqio's.
      directory: an existing directory.

    Returns:
      True when stored; False for other kinds of vocabulary (e.g. a test double), which
      cannot be stored and are left out.
    """

    directory = os.fspath(directory)
    hf = _hf_tokenizer()
    if isinstance(vocabulary, hf.HFTokenizerVocabulary):
        vocabulary.save(directory)
        return True
    model_file = getattr(vocabulary, "sentencepiece_model_file", None)
    if not isinstance(model_file, str) or not os.path.isfile(model_file):
        return False
    tmp = os.path.join(directory, f".{SPM_FILE}.tmp")
    shutil.copyfile(model_file, tmp)
    os.replace(tmp, os.path.join(directory, SPM_FILE))
    io_utils.atomic_write_json(os.path.join(directory, META_FILE), {
        "format": hf.META_FORMAT, "format_version": hf.META_VERSION, "kind": SPM_KIND,
        "model_file": SPM_FILE, "extra_ids": int(vocabulary.extra_ids),
        "source": os.path.abspath(model_file)})
    return True


def vocabulary_from_checkpoint(checkpoint_dir: str | os.PathLike, light: bool = True
                               ) -> Any | None:
    """The vocabulary stored beside a checkpoint's weights, or None when it has none.

    Raises:
      VocabularyError: the stored vocabulary is incomplete or malformed.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.exists(os.path.join(checkpoint_dir, META_FILE)):
        return None
    return _load_saved(checkpoint_dir, light)


def resolve_vocabulary(explicit: Any, checkpoint_dir: str | os.PathLike | None,
                       what: str = "--vocab", light: bool = True, *,
                       decoder_only: bool = False) -> Any:
    """The vocabulary to use: `explicit` (a vocabulary or a path for `load_vocabulary`) when
    given, else the one stored with `checkpoint_dir`.

    Args:
      explicit: a vocabulary object, a path, or None.
      checkpoint_dir: the checkpoint whose stored tokenizer is the fallback (None = none).
      what: how the user gives a vocabulary (e.g. "--vocab"), for the error message.
      light: False loads a SentencePiece model as seqio's class (see `get_vocabulary`).
      decoder_only: the model is decoder-only (the caller asks the model layer, e.g.
        `models.checkpoints.is_decoder_only_checkpoint(checkpoint_dir)`; the data layer
        does not read model configs): a SentencePiece path then gets no T5 sentinels and
        keeps its own special ids (a LLaMA `.model`).

    Raises:
      VocabularyError: neither is available (one line naming both places).
    """
    if isinstance(explicit, (str, os.PathLike)):
        return load_vocabulary(explicit, extra_ids=0 if decoder_only else DEFAULT_EXTRA_IDS,
                               require_t5_ids=not decoder_only, light=light)
    if explicit is not None:
        return explicit
    stored = vocabulary_from_checkpoint(checkpoint_dir, light) if checkpoint_dir else None
    if stored is None:
        where = (f"checkpoint {checkpoint_dir} stores no tokenizer" if checkpoint_dir
                 else "no checkpoint to take a tokenizer from")
        raise VocabularyError(f"no vocabulary: give {what}, or start from a checkpoint that "
                              f"stores its tokenizer (`activeit-jax convert` stores it); "
                              f"{where}")
    return stored


def _load_saved(directory: str, light: bool = True) -> Any:
    """Reads a `save_vocabulary` directory, dispatching on its metadata's kind."""
    from activeit_jax.data import tokenizer_meta

    hf = _hf_tokenizer()
    meta_path = os.path.join(directory, META_FILE)
    meta = tokenizer_meta.read_tokenizer_meta(meta_path)
    kind = meta.get("kind", hf.KIND)
    if kind == hf.KIND:
        return hf.HFTokenizerVocabulary.load(directory)
    if kind == SPM_KIND:
        return get_vocabulary(os.path.join(directory, meta.get("model_file", SPM_FILE)),
                              extra_ids=int(meta.get("extra_ids", 0)), require_t5_ids=False,
                              light=light)
    raise VocabularyError(f"unknown vocabulary kind {kind!r}", meta_path)


def _hf_tokenizer():
    """The Hugging Face implementation, imported on first use (it imports `tokenizers`)."""
    from activeit_jax.data import hf_tokenizer
    return hf_tokenizer
