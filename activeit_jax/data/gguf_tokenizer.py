"""The tokenizer that a llama.cpp GGUF file describes in its metadata, as a `tokenizers` BPE.

A GGUF carries no tokenizer.json: it lists the tokens (`tokenizer.ggml.tokens`), their types
(`tokenizer.ggml.token_type`: 1 normal, 3 control, 4 user-defined ...), the BPE merges, the
special ids, `add_bos_token`, the pre-tokenizer family (`tokenizer.ggml.pre`) and the chat
template. For byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM2, Llama-3,
Qwen2) we rebuild the tokenizer that transformers builds from the same file
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), so both give the same ids:

- model: BPE over the tokens (spelled in GPT-2's byte alphabet; a token written with other
  characters is re-spelled from its UTF-8 bytes) with the file's merges;
- pre-tokenizer: byte-level with GPT-2's split regex, or the family's own split regex for the
  families listed in `SPLIT_PATTERNS` (Llama-3, Qwen2);
- control tokens become special added tokens, user-defined tokens plain added tokens, both
  matched whole in the text;
- decoder: byte-level.

Known gap, shared with transformers: llama.cpp's "smollm" family also isolates every digit
before splitting, which changes the ids only where a run of spaces precedes a digit.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from activeit_jax.data.errors import VocabularyError

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Split regexes of the pre-tokenizer families whose merges were learned on other splits than
# GPT-2's (as published with those models).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERNS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies.

    Bytes that are printable Latin-1 characters (other than space and the soft hyphen) stand
    for themselves; the remaining bytes, in increasing order, take the characters from
    U+0100 upwards, so that every byte has a visible, whitespace-free spelling.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _spelled(token: str, alphabet: set[str]) -> str:
    """The token in the byte alphabet (re-spelled from its UTF-8 bytes if it is not)."""
    if set(token) <= alphabet:
        return token
    table = byte_alphabet()
    return "".join(table[b] for b in token.encode("utf-8"))


def build_bpe_tokenizer(tokens: Sequence[str], merges: Sequence[str],
                        token_types: Sequence[int] | None, pre: str | None) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` from GGUF tokenizer metadata.

    Args:
      tokens: `tokenizer.ggml.tokens` (id order).
      merges: `tokenizer.ggml.merges` ("left right" strings, rank order).
      token_types: `tokenizer.ggml.token_type`, or None.
      pre: `tokenizer.ggml.pre` (the pre-tokenizer family), or None.

    Returns:
      The tokenizer (no normalizer, no post-processor: special tokens are never added).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    alphabet = set(byte_alphabet().values())
    vocab = {_spelled(token, alphabet): index for index, token in enumerate(tokens)}
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ValueError(f"merge {merge!r} is not two space-separated tokens")
        pairs.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    split = SPLIT_PATTERNS.get(pre or "")
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    types = list(token_types or ())
    # A control token spelled outside the byte alphabet would be a new id beyond the model's
    # embedding (a mislabel in the file), so only alphabet-spelled ones are added.
    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types)
               if kind == TOKEN_TYPE_CONTROL and set(t) <= alphabet]
    if control:
        tokenizer.add_special_tokens(control)
    user = [AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types)
            if kind == TOKEN_TYPE_USER_DEFINED and t in vocab]
    if user:
        tokenizer.add_tokens(user)
    return tokenizer


def vocabulary_from_gguf_metadata(metadata: Mapping[str, Any], source: str | None = None
                                  ) -> Any:
    """An `HFTokenizerVocabulary` from a GGUF file's tokenizer metadata.

    Args:
      metadata: {key: value} of the file's metadata (`tokenizer.ggml.*`,
        `tokenizer.chat_template`); arrays as Python lists.
      source: the file, for messages.

    Returns:
      The vocabulary (BPE tokenizer, bos/eos/unk/pad ids, add_bos, chat template).

    Raises:
      VocabularyError: not a byte-level BPE vocabulary, or missing/inconsistent metadata.
    """
    from activeit_jax.data import hf_tokenizer

    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise VocabularyError(f"tokenizer.ggml.model {model!r} is not supported (only 'gpt2', "
                              "byte-level BPE)", source)
    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        missing = "tokenizer.ggml.tokens" if not tokens else "tokenizer.ggml.merges"
        raise VocabularyError(f"metadata {missing} is missing", source)
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        raise VocabularyError(f"tokenizer.ggml.token_type has {len(types)} entries for "
                              f"{len(tokens)} tokens", source)
    try:
        tokenizer = build_bpe_tokenizer(tokens, merges, types,
                                        metadata.get("tokenizer.ggml.pre"))
    except Exception as err:  # tokenizers raises plain Exceptions on bad merges
        raise VocabularyError(f"cannot build the BPE tokenizer ({err})", source) from None
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise VocabularyError("metadata tokenizer.ggml.eos_token_id is missing", source)
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    return hf_tokenizer.HFTokenizerVocabulary(
        tokenizer, eos_id=eos, bos_id=bos, unk_id=metadata.get("tokenizer.ggml.unknown_token_id"),
        pad_id=metadata.get("tokenizer.ggml.padding_token_id"), add_bos=add_bos,
        chat_template=metadata.get("tokenizer.chat_template"), source=source)
