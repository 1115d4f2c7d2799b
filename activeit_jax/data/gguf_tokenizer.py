"""The tokenizer that a llama.cpp GGUF file describes in its metadata, as a `tokenizers` BPE.

A GGUF carries no tokenizer.json: it lists the tokens (`tokenizer.ggml.tokens`), their types
(`tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte), the BPE
merges or the SentencePiece scores, the special ids, `add_bos_token`, the pre-tokenizer family
(`tokenizer.ggml.pre`) and the chat template. We rebuild the tokenizer that transformers builds
from the same file (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), so both give the same
ids, for the two vocabulary types in common use (`tokenizer.ggml.model`):

"gpt2", byte-level BPE (SmolLM2, Llama-3, Qwen2):

- model: BPE over the tokens (spelled in GPT-2's byte alphabet; a token written with other
  characters is re-spelled from its UTF-8 bytes) with the file's merges;
- pre-tokenizer: byte-level with GPT-2's split regex, or the family's own split regex for the
  families listed in `SPLIT_PATTERNS` (Llama-3, Qwen2);
- decoder: byte-level.

"llama", SentencePiece (Llama-2, Mistral, TinyLlama):

- model: BPE with byte fallback (a character no token covers becomes its `<0xNN>` byte
  tokens), whose merges are rebuilt from the scores as llama.cpp's SentencePiece tokenizer
  applies them: every split of a token into two tokens is a merge, and merges producing a
  higher-scored token come first (`spm_merges`). The file stores no merges;
- normalizer: spaces become SentencePiece's `▁`, and one `▁` is prepended to every stretch of
  text between added tokens (at the start, and after each control / user-defined token),
  unless `tokenizer.ggml.add_space_prefix` is false; no pre-tokenizer, so runs of spaces can
  merge. This is llama.cpp's rule (a space before each raw-text fragment), SentencePiece's for
  plain text, and that of the `tokenizer.json` Llama-2 ships on the Hub (`--from_hf`);
- decoder: `▁` back to spaces, byte tokens back to bytes, the prepended space dropped;
- `add_bos_token`: true when the file does not say (llama.cpp's default for this type).

For both, control tokens become special added tokens and user-defined tokens plain added
tokens, both matched whole in the text.

Known gaps: llama.cpp's "smollm" family also isolates every digit before splitting, which
changes the ids only where a run of spaces precedes a digit (transformers has the same gap).
Transformers' own GGUF reader builds SentencePiece vocabularies differently in two places,
where we follow llama.cpp instead: it prepends `▁` only when the text does not already start
with a space (" hi" is "▁hi" there, "▁▁hi" in llama.cpp and SentencePiece) and not after an
added token ("<s>[INST]" gives "[INST]" there, "▁[INST]" in llama.cpp); and it ignores
`add_space_prefix = false`. Elsewhere the ids are the same (tests/models/test_gguf_spm_qwen2.py).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from activeit_jax.data.errors import VocabularyError

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
SPM_SPACE = "\u2581"  # SentencePiece's visible space, "▁"
# tokenizer.ggml.model values: byte-level BPE and SentencePiece (a tokenizer type, not a model).
BPE_TYPE, SENTENCEPIECE_TYPE = "gpt2", "llama"
SUPPORTED_MODELS = (BPE_TYPE, SENTENCEPIECE_TYPE)

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
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

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
    # A control token spelled outside the byte alphabet would be a new id beyond the model's
    # embedding (a mislabel in the file), so only alphabet-spelled ones are added.
    _add_typed_tokens(tokenizer, tokens, token_types, vocab,
                      control_ok=lambda token: set(token) <= alphabet)
    return tokenizer


def _add_typed_tokens(tokenizer: Any, tokens: Sequence[str], token_types: Sequence[int] | None,
                      vocab: Mapping[str, int], control_ok: Any = None) -> None:
    """Adds the control tokens as special tokens and the user-defined ones as plain added
    tokens (both matched whole in the text, never normalized)."""
    from tokenizers import AddedToken

    types = list(token_types or ())
    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types)
               if kind == TOKEN_TYPE_CONTROL and (control_ok is None or control_ok(t))]
    if control:
        tokenizer.add_special_tokens(control)
    user = [AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types)
            if kind == TOKEN_TYPE_USER_DEFINED and t in vocab]
    if user:
        tokenizer.add_tokens(user)


def spm_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """The BPE merges equivalent to llama.cpp's SentencePiece merging, best first.

    llama.cpp joins, at each step, the adjacent pair whose concatenation is a token with the
    highest score. As BPE merges: every way to cut a token into two tokens is a merge, ranked
    by the score of the token it makes (highest first); cuts of the same token rank longer left
    parts first, then by the ids of the parts. (The order transformers derives, so that both
    give the same ids.)

    Args:
      tokens: the vocabulary in id order.
      scores: `tokenizer.ggml.scores`, one per token.

    Returns:
      (left, right) pairs in rank order.
    """
    # A token listed twice keeps its last id and score and its first place (as in transformers;
    # llama.cpp's token -> id map also keeps the last id).
    ids = {token: index for index, token in enumerate(tokens)}
    ranked = []
    for place, (token, score) in enumerate(dict(zip(tokens, scores)).items()):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-float(score), -len(left), -len(right), place, ids[left],
                               ids[right], left, right))
    ranked.sort()
    return [(entry[6], entry[7]) for entry in ranked]


def build_spm_tokenizer(tokens: Sequence[str], scores: Sequence[float],
                        token_types: Sequence[int] | None, unk_token: str | None,
                        add_space_prefix: bool = True) -> Any:
    """A SentencePiece-style (byte-fallback BPE) `tokenizers.Tokenizer` from GGUF metadata.

    Args:
      tokens: `tokenizer.ggml.tokens` (id order; spaces spelled "▁", bytes "<0xNN>").
      scores: `tokenizer.ggml.scores`.
      token_types: `tokenizer.ggml.token_type`, or None.
      unk_token: the unknown token's text (for a byte the vocabulary lacks), or None.
      add_space_prefix: prepend "▁" to each stretch of text between added tokens
        (`tokenizer.ggml.add_space_prefix`).

    Returns:
      The tokenizer (no pre-tokenizer, no post-processor: special tokens are never added).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(tokens, scores),
                                     unk_token=unk_token, fuse_unk=True, byte_fallback=True))
    # A normalizer, not a Metaspace pre-tokenizer: it runs on each stretch of text between
    # added tokens and prepends unconditionally, as llama.cpp does per raw-text fragment.
    spaces = normalizers.Replace(" ", SPM_SPACE)
    tokenizer.normalizer = (normalizers.Sequence([normalizers.Prepend(SPM_SPACE), spaces])
                            if add_space_prefix else spaces)
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    _add_typed_tokens(tokenizer, tokens, token_types, vocab)
    return tokenizer


def _tokenizer_from_metadata(metadata: Mapping[str, Any], model: str, tokens: Sequence[str],
                             types: Sequence[int] | None, source: str | None) -> Any:
    """The `tokenizers.Tokenizer` of a "gpt2" or "llama" vocabulary."""
    if model == BPE_TYPE:
        merges = metadata.get("tokenizer.ggml.merges")
        if merges is None:
            raise VocabularyError("metadata tokenizer.ggml.merges is missing", source)
        return build_bpe_tokenizer(tokens, merges, types, metadata.get("tokenizer.ggml.pre"))
    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None:
        raise VocabularyError("metadata tokenizer.ggml.scores is missing (a SentencePiece "
                              "vocabulary needs them)", source)
    if len(scores) != len(tokens):
        raise VocabularyError(f"tokenizer.ggml.scores has {len(scores)} entries for "
                              f"{len(tokens)} tokens", source)
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    unk_token = tokens[unk] if unk is not None and 0 <= unk < len(tokens) else None
    return build_spm_tokenizer(tokens, scores, types, unk_token,
                               bool(metadata.get("tokenizer.ggml.add_space_prefix", True)))


def vocabulary_from_gguf_metadata(metadata: Mapping[str, Any], source: str | None = None
                                  ) -> Any:
    """An `HFTokenizerVocabulary` from a GGUF file's tokenizer metadata.

    Args:
      metadata: {key: value} of the file's metadata (`tokenizer.ggml.*`,
        `tokenizer.chat_template`); arrays as Python lists.
      source: the file, for messages.

    Returns:
      The vocabulary (tokenizer, bos/eos/unk/pad ids, add_bos, chat template).

    Raises:
      VocabularyError: neither a byte-level BPE ("gpt2") nor a SentencePiece ("llama")
        vocabulary, or missing/inconsistent metadata.
    """
    from activeit_jax.data import hf_tokenizer

    tokenizer_type = metadata.get("tokenizer.ggml.model")
    if tokenizer_type not in SUPPORTED_MODELS:
        raise VocabularyError(f"tokenizer.ggml.model {tokenizer_type!r} is not supported "
                              "(only 'gpt2', "
                              "byte-level BPE, and 'llama', SentencePiece)", source)
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise VocabularyError("metadata tokenizer.ggml.tokens is missing", source)
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        raise VocabularyError(f"tokenizer.ggml.token_type has {len(types)} entries for "
                              f"{len(tokens)} tokens", source)
    try:
        tokenizer = _tokenizer_from_metadata(metadata, tokenizer_type, tokens, types, source)
    except VocabularyError:
        raise
    except Exception as err:  # tokenizers raises plain Exceptions on bad merges
        raise VocabularyError(f"cannot build the {tokenizer_type} tokenizer ({err})",
                              source) from None
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise VocabularyError("metadata tokenizer.ggml.eos_token_id is missing", source)
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", tokenizer_type == SENTENCEPIECE_TYPE)) \
        and bos is not None
    return hf_tokenizer.HFTokenizerVocabulary(
        tokenizer, eos_id=eos, bos_id=bos, unk_id=metadata.get("tokenizer.ggml.unknown_token_id"),
        pad_id=metadata.get("tokenizer.ggml.padding_token_id"), add_bos=add_bos,
        chat_template=metadata.get("tokenizer.chat_template"), source=source)
