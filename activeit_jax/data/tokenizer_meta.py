"""`tokenizer_meta.json`: the description of a stored vocabulary, read with every field checked.

A checkpoint stores its vocabulary as `tokenizer_meta.json` beside `tokenizer.json` (Hugging
Face tokenizers) or `spiece.model` (SentencePiece), see `data.vocab.save_vocabulary`. The file
is read back by `read_tokenizer_meta`, which refuses a value of the wrong type with one line
naming the file and the field (`eos_id: "abc"` or `[1]`, a list as `chat_template`,
`format_version: "9"`, a `model_file` that is a path) instead of a traceback later.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

from activeit_jax.core import json_text
from activeit_jax.data.errors import VocabularyError

META_FILE = "tokenizer_meta.json"
_MAX_BYTES = 64 << 20  # chat templates are a few KB; a file this large is not ours


def _integer(low: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {type(value).__name__} {_short(value)}"
        return None if value >= low else f"must be >= {low}, got {value}"
    return check


def _kind(expected: type, words: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if isinstance(value, expected) else \
            f"expected {words}, got {type(value).__name__} {_short(value)}"
    return check


def _file_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a file name, got {type(value).__name__} {_short(value)}"
    if not value or os.path.basename(value) != value or value in (".", ".."):
        return f"expected a plain file name beside {META_FILE}, got {value!r}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# field -> (check, None allowed). Fields absent from the file are not checked here.
FIELD_CHECKS: dict[str, tuple[Callable[[Any], str | None], bool]] = {
    "format": (_kind(str, "a string"), False),
    "format_version": (_integer(0), False),
    "kind": (_kind(str, "a string"), False),
    "vocab_size": (_integer(0), False),
    "bos_id": (_integer(0), True), "eos_id": (_integer(0), True),
    "unk_id": (_integer(0), True), "pad_id": (_integer(0), True),
    "declared_pad_id": (_integer(0), True), "end_of_turn_id": (_integer(0), True),
    "add_bos": (_kind(bool, "true or false"), False),
    "chat_template": (_kind(str, "a string"), True),
    "source": (_kind(str, "a string"), True),
    "model_file": (_file_name, False),
    "extra_ids": (_integer(0), False),
}


def check_tokenizer_meta(meta: dict[str, Any], path: str) -> None:
    """Checks the type (and range) of every known field of a parsed `tokenizer_meta.json`.

    Raises:
      VocabularyError: `<path>: field '<name>': <what is wrong>`.
    """
    for field, (check, nullable) in FIELD_CHECKS.items():
        if field not in meta or (nullable and meta[field] is None):
            continue
        problem = check(meta[field])
        if problem:
            raise VocabularyError(problem, path, field)


def read_tokenizer_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checked content of a `tokenizer_meta.json`.

    Raises:
      VocabularyError: missing, unreadable, not UTF-8, not JSON (nested too deeply
        included), not an object, or a field of the wrong type (one line naming the file).
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) > _MAX_BYTES:
            raise VocabularyError(f"larger than {_MAX_BYTES >> 20} MB: not a tokenizer "
                                  "metadata file", path)
        with open(path, encoding="utf-8") as handle:
            meta = json_text.loads(handle.read())
    except FileNotFoundError:
        raise VocabularyError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise VocabularyError(f"cannot read ({err})", path) from None
    except json.JSONDecodeError as err:
        raise VocabularyError(f"tokenizer metadata is not valid JSON ({err})", path) from None
    if not isinstance(meta, dict):
        raise VocabularyError("tokenizer metadata must be a JSON object", path)
    check_tokenizer_meta(meta, path)
    return meta
