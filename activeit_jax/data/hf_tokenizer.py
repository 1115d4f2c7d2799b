"""Hugging Face `tokenizers` vocabularies (tokenizer.json), behind the `vocab.Vocabulary`
interface (seqio's, in plain Python: no seqio or TensorFlow import; a seqio task wraps it with
`seqio_vocabulary.adapt`).

`HFTokenizerVocabulary` is the second implementation of the one vocabulary interface that the
prompts, the scorer, the trainer and the evaluator use (the first is SentencePiece,
`vocab.get_vocabulary`). It wraps a `tokenizers.Tokenizer` (typically byte-level BPE: SmolLM2,
Llama-3, Qwen2) and the model's own conventions:

  encode(text) -> list[int]   never adds special tokens; special/control tokens written in the
                              text (e.g. `<|im_start|>`) stay whole, as the tokenizer's added
                              tokens are matched before the BPE model runs.
  decode(ids) -> str          up to the first EOS (as seqio); padding, BOS and EOS ids dropped,
                              other special tokens kept as text (so they survive a round trip).
  bos_id / eos_id / unk_id    the model's ids (bos/unk may be None).
  pad_id                      an id used only for padding (see `choose_pad_id`).
  add_bos                     whether the model expects BOS before its input.
  chat_template               the model's jinja chat template, or None.
  end_of_turn_id              the token closing a chat turn (`<|im_end|>`, `<|eot_id|>` ...).
  special_tokens              {text: id} of the special (added, special=True) tokens.

On disk (`save` / `load`) a vocabulary is a directory holding `tokenizer.json` (the tokenizer,
verbatim) and `tokenizer_meta.json` (the ids above, add_bos, chat_template). A checkpoint stores
its tokenizer that way beside `config.json` (`vocab.vocabulary_from_checkpoint`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping

from activeit_jax.core import io_utils, json_text
from activeit_jax.data.errors import VocabularyError
from activeit_jax.data.vocab import Vocabulary

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_CHAT_TEMPLATE_FILE = "chat_template.jinja"
META_FORMAT = "activeit-jax-tokenizer"
META_VERSION = 1
KIND = "hf_tokenizers"

# Tokens that close a chat turn in the common chat templates (ChatML, Llama-3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>")


def choose_pad_id(declared: int | None, *, bos_id: int | None, eos_id: int | None,
                  unk_id: int | None, end_of_turn_id: int | None,
                  special_tokens: Mapping[str, int]) -> int:
    """An id that can mark padding without hiding real input.

    Our models treat every `pad_id` in their input as padding (masked, not attended), so the
    padding id must never be a token a prompt can contain. Tokenizers often declare the EOS as
    their pad token (SmolLM2: pad = eos = `<|im_end|>`, which chat prompts contain), or none at
    all (Llama-3). Order of preference: the declared pad token unless it doubles as BOS, EOS or
    end-of-turn; the unknown token (never produced by a byte-level BPE); a special token with
    "pad" in its name; the last other special token.

    Args:
      declared: the tokenizer's own pad id, or None.
      bos_id, eos_id, unk_id, end_of_turn_id: the tokenizer's ids (None = absent).
      special_tokens: {text: id} of the special tokens.

    Returns:
      The padding id.

    Raises:
      VocabularyError: no id qualifies (no pad, no unk, no spare special token).
    """
    taken = {i for i in (bos_id, eos_id, end_of_turn_id) if i is not None}
    if declared is not None and declared not in taken:
        return int(declared)
    if unk_id is not None and unk_id not in taken:
        return int(unk_id)
    spare = sorted((i, t) for t, i in special_tokens.items() if i not in taken)
    for token_id, text in spare:
        if "pad" in text.lower():
            return token_id
    if spare:
        return spare[-1][0]
    raise VocabularyError("no token can serve as padding (no pad or unknown token distinct "
                          "from BOS/EOS, and no spare special token)")


def _special_tokens(tokenizer: Any) -> dict[str, int]:
    """{content: id} of the tokenizer's added tokens marked special."""
    return {token.content: int(i) for i, token in tokenizer.get_added_tokens_decoder().items()
            if token.special}


def _find_end_of_turn(special_tokens: Mapping[str, int]) -> int | None:
    for text in END_OF_TURN_TOKENS:
        if text in special_tokens:
            return special_tokens[text]
    return None


class HFTokenizerVocabulary(Vocabulary):
    """A `tokenizers.Tokenizer` with the model's special ids, as a `vocab.Vocabulary`.

    Args:
      tokenizer: a `tokenizers.Tokenizer`, or its JSON text.
      eos_id: the model's end-of-sequence id (required: generation and targets end with it).
      bos_id: the beginning-of-sequence id, or None.
      unk_id: the unknown-token id, or None.
      pad_id: the declared pad id; replaced by `choose_pad_id`'s pick when None or when it
        doubles as BOS/EOS/end-of-turn.
      add_bos: the model expects BOS before its input (llama.cpp's `add_bos_token`).
      chat_template: the model's jinja chat template, or None.
      end_of_turn_id: the id closing a chat turn; None = looked up among the special tokens
        (`END_OF_TURN_TOKENS`).
      source: where the tokenizer came from (kept in the metadata, for messages).

    Raises:
      VocabularyError: an id is outside the vocabulary, or the tokenizer JSON is invalid.
    """

    def __init__(self, tokenizer: Any, *, eos_id: int, bos_id: int | None = None,
                 unk_id: int | None = None, pad_id: int | None = None, add_bos: bool = False,
                 chat_template: str | None = None, end_of_turn_id: int | None = None,
                 source: str | None = None) -> None:
        import tokenizers

        if isinstance(tokenizer, str):
            try:
                tokenizer = tokenizers.Tokenizer.from_str(tokenizer)
            except Exception as err:  # tokenizers raises its own Exception type
                raise VocabularyError(f"not a valid tokenizer.json ({err})", source) from None
        super().__init__(extra_ids=0)
        self._tokenizer = tokenizer
        self._source = source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._size = max(vocab.values()) + 1 if vocab else 0
        self._special = _special_tokens(tokenizer)
        self._eos_id = int(eos_id)
        self._bos_id = None if bos_id is None else int(bos_id)
        self._unk_id = None if unk_id is None else int(unk_id)
        self._declared_pad_id = None if pad_id is None else int(pad_id)
        self._end_of_turn_id = (int(end_of_turn_id) if end_of_turn_id is not None
                                else _find_end_of_turn(self._special))
        try:
            self._pad_id = choose_pad_id(self._declared_pad_id, bos_id=self._bos_id,
                                         eos_id=self._eos_id, unk_id=self._unk_id,
                                         end_of_turn_id=self._end_of_turn_id,
                                         special_tokens=self._special)
        except VocabularyError as err:  # name the tokenizer's file
            raise VocabularyError(err.message, source) from None
        self._add_bos = bool(add_bos)
        self._chat_template = chat_template
        for name in ("eos_id", "bos_id", "unk_id", "pad_id", "end_of_turn_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self._size:
                raise VocabularyError(f"{name} {value} is outside the vocabulary "
                                      f"(0..{self._size - 1})", source)
        if self._add_bos and self._bos_id is None:
            raise VocabularyError("add_bos is set but the tokenizer has no BOS token", source)

    # -- the interface ---------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tokenizer

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def add_bos(self) -> bool:
        return self._add_bos

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def source(self) -> str | None:
        """Where the tokenizer came from (the file named in its errors), or None."""
        return self._source

    @property
    def end_of_turn_id(self) -> int | None:
        return self._end_of_turn_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def _base_vocab_size(self) -> int:
        return self._size

    def encode(self, s: str) -> list[int]:
        """Token ids of `s`; no BOS/EOS added (special tokens written in `s` stay whole)."""
        return self._encode(s)

    def _encode(self, s: str) -> list[int]:
        return list(self._tokenizer.encode(s, add_special_tokens=False).ids)

    def _decode(self, ids: Iterable[int]) -> str:
        # `Vocabulary.decode` has already cut after the first EOS and mapped ids beyond the
        # vocabulary to unk; what is left to drop are the ids that carry no text.
        drop = {self._pad_id, self._eos_id, self._bos_id}
        kept = [int(i) for i in ids if int(i) not in drop and 0 <= int(i) < self._size]
        return self._tokenizer.decode(kept, skip_special_tokens=False)

    # -- persistence -----------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """What `tokenizer_meta.json` holds (ids, add_bos, chat template)."""
        return {"format": META_FORMAT, "format_version": META_VERSION, "kind": KIND,
                "vocab_size": self._size, "bos_id": self._bos_id, "eos_id": self._eos_id,
                "unk_id": self._unk_id, "pad_id": self._pad_id,
                "declared_pad_id": self._declared_pad_id, "add_bos": self._add_bos,
                "end_of_turn_id": self._end_of_turn_id, "chat_template": self._chat_template,
                "source": self._source}

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `tokenizer.json` and then `tokenizer_meta.json` into `directory`, each
        atomically (the metadata, written last, marks a complete tokenizer)."""
        directory = os.fspath(directory)
        io_utils.atomic_write_text(os.path.join(directory, TOKENIZER_FILE),
                                   self._tokenizer.to_str())
        io_utils.atomic_write_json(os.path.join(directory, META_FILE), self.metadata())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "HFTokenizerVocabulary":
        """Reads a directory written by `save`.

        Errors name the files read (`tokenizer.json` here, not the file the tokenizer was
        first converted from), and the vocabulary's `source` is this `tokenizer.json`.

        Raises:
          VocabularyError: a file is missing or malformed, or a field of `tokenizer_meta.json`
            has the wrong type (`data.tokenizer_meta`; named in the message).
        """
        from activeit_jax.data import tokenizer_meta

        directory = os.fspath(directory)
        meta_path = os.path.join(directory, META_FILE)
        meta = tokenizer_meta.read_tokenizer_meta(meta_path)
        if meta.get("format") != META_FORMAT or meta.get("kind", KIND) != KIND:
            raise VocabularyError(f"not an activeit-jax {KIND} tokenizer metadata file",
                                  meta_path)
        if meta.get("format_version", 0) > META_VERSION:
            raise VocabularyError(f"format_version {meta['format_version']} is newer than this "
                                  f"code ({META_VERSION})", meta_path)
        tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
        text = _read_text(tokenizer_path)
        if "eos_id" not in meta or meta["eos_id"] is None:
            raise VocabularyError("field 'eos_id' is missing", meta_path)
        import tokenizers
        try:
            tokenizer = tokenizers.Tokenizer.from_str(text)
        except Exception as err:  # tokenizers raises its own Exception type
            raise VocabularyError(f"not a valid tokenizer.json ({err})", tokenizer_path) from None
        try:
            vocabulary = cls(tokenizer, eos_id=meta["eos_id"], bos_id=meta.get("bos_id"),
                             unk_id=meta.get("unk_id"),
                             pad_id=meta.get("declared_pad_id", meta.get("pad_id")),
                             add_bos=bool(meta.get("add_bos", False)),
                             chat_template=meta.get("chat_template"),
                             end_of_turn_id=meta.get("end_of_turn_id"),
                             source=tokenizer_path)
        except VocabularyError as err:  # the ids of the metadata do not fit this tokenizer
            if err.path not in (None, tokenizer_path):
                raise
            raise VocabularyError(f"{err.message} (the ids come from {meta_path}: do the two "
                                  "files belong together?)", tokenizer_path) from None
        if meta.get("pad_id") is not None and vocabulary.pad_id != meta["pad_id"]:
            raise VocabularyError(f"field 'pad_id' is {meta['pad_id']}, but the tokenizer's "
                                  f"padding id is {vocabulary.pad_id}", meta_path)
        return vocabulary

    # -- identity ----------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        # Computed once: serialising a 150k-token tokenizer on every hash would be slow, and
        # the wrapped tokenizer is never changed after construction.
        if getattr(self, "_digest", None) is None:
            payload = json.dumps({k: v for k, v in self.metadata().items() if k != "source"},
                                 sort_keys=True) + self._tokenizer.to_str()
            self._digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()
        return self._digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HFTokenizerVocabulary):
            return False
        return self._fingerprint() == other._fingerprint()

    def __hash__(self) -> int:
        return hash(self._fingerprint())

    def __repr__(self) -> str:
        return (f"HFTokenizerVocabulary({self._source or 'in memory'}, size={self._size}, "
                f"bos={self._bos_id}, eos={self._eos_id}, pad={self._pad_id}, "
                f"add_bos={self._add_bos})")


# -- Hugging Face directories ---------------------------------------------------------------

def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise VocabularyError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise VocabularyError(f"cannot read ({err})", path) from None


def _read_json(path: str, what: str) -> dict[str, Any]:
    text = _read_text(path)
    try:
        value = json_text.loads(text)
    except json.JSONDecodeError as err:
        raise VocabularyError(f"{what} is not valid JSON ({err})", path) from None
    if not isinstance(value, dict):
        raise VocabularyError(f"{what} must be a JSON object", path)
    return value


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template_of(config: Mapping[str, Any], directory: str, config_path: str
                      ) -> str | None:
    """The default chat template: tokenizer_config.json's, or `chat_template.jinja`; a
    template that is not a string is refused (naming `config_path`)."""
    template = config.get("chat_template")
    field = "chat_template"
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template, field = named.get("default"), "chat_template[default].template"
    if template is not None and not isinstance(template, str):
        raise VocabularyError(f"expected a string (a jinja template), got "
                              f"{type(template).__name__}", config_path, field)
    if isinstance(template, str):
        return template
    path = os.path.join(directory, HF_CHAT_TEMPLATE_FILE)
    return _read_text(path) if os.path.exists(path) else None


def from_hf_tokenizer_files(tokenizer_json: str | os.PathLike,
                            tokenizer_config: str | os.PathLike | None = None
                            ) -> HFTokenizerVocabulary:
    """A vocabulary from a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).

    Special tokens come from `tokenizer_config.json` (bos/eos/pad/unk_token, add_bos_token,
    chat_template; `chat_template.jinja` beside it as newer transformers write it). Without
    an `add_bos_token` entry, BOS is expected when the tokenizer's own post-processor inserts
    it (Llama-3's tokenizer.json does).

    Args:
      tokenizer_json: the `tokenizer.json` file.
      tokenizer_config: its `tokenizer_config.json`; None = the one beside `tokenizer_json`
        if present.

    Returns:
      The vocabulary.

    Raises:
      VocabularyError: a file is missing or malformed, a named special token is not in the
        vocabulary, or no EOS token is declared.
    """
    tokenizer_json = os.fspath(tokenizer_json)
    directory = os.path.dirname(os.path.abspath(tokenizer_json))
    if tokenizer_config is None:
        candidate = os.path.join(directory, HF_TOKENIZER_CONFIG)
        tokenizer_config = candidate if os.path.exists(candidate) else None
    config = (_read_json(os.fspath(tokenizer_config), "tokenizer config")
              if tokenizer_config is not None else {})
    config_path = os.fspath(tokenizer_config) if tokenizer_config is not None else tokenizer_json
    import tokenizers
    try:
        tokenizer = tokenizers.Tokenizer.from_str(_read_text(tokenizer_json))
    except VocabularyError:
        raise
    except Exception as err:
        raise VocabularyError(f"not a valid tokenizer.json ({err})", tokenizer_json) from None

    def token_id(name: str) -> int | None:
        text = _token_text(config.get(name))
        if text is None:
            return None
        found = tokenizer.token_to_id(text)
        if found is None:
            raise VocabularyError(f"{name} {text!r} is not in {tokenizer_json}", config_path,
                                  name)
        return int(found)

    eos_id = token_id("eos_token")
    if eos_id is None:
        raise VocabularyError("no eos_token declared (needed to end targets and generation)",
                              config_path)
    bos_id = token_id("bos_token")
    add_bos = config.get("add_bos_token")
    if add_bos is None:  # what the tokenizer's own post-processor does
        with_special = tokenizer.encode("a", add_special_tokens=True).ids
        add_bos = bos_id is not None and bool(with_special) and with_special[0] == bos_id
    return HFTokenizerVocabulary(
        tokenizer, eos_id=eos_id, bos_id=bos_id, unk_id=token_id("unk_token"),
        pad_id=token_id("pad_token"), add_bos=bool(add_bos) and bos_id is not None,
        chat_template=_chat_template_of(config, directory, config_path), source=tokenizer_json)


def check_fits_embedding(vocabulary: Any, num_embeddings: int, source: str | None = None
                         ) -> None:
    """Raises when the vocabulary has more ids than the model has embedding rows.

    Args:
      vocabulary: any vocabulary (`vocab_size`).
      num_embeddings: the model's embedding rows (`vocab_size` of its config).
      source: the tokenizer file, for the message.

    Raises:
      VocabularyError: `vocabulary.vocab_size > num_embeddings`.
    """
    if vocabulary.vocab_size > num_embeddings:
        raise VocabularyError(f"the tokenizer has {vocabulary.vocab_size} ids but the model's "
                              f"embedding has only {num_embeddings} rows", source)

