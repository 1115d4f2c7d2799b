"""Reading a Hugging Face directory's files defensively: a safetensors header bounded by its
file (a hostile length of 2^40 must not allocate), every tensor's bytes inside the file, and
JSON files whose errors name the file and line. Errors are `ConversionError`s naming the file.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any

from activeit_jax.core import json_text
from activeit_jax.models.hf_configs import ConversionError

# The safetensors library refuses headers above 100 MB; a real header is kilobytes.
MAX_SAFETENSORS_HEADER = 100_000_000


def read_safetensors_header(path: str) -> tuple[dict[str, Any], int]:
    """(header dict, byte offset of the data section) of a safetensors file.

    Raises:
      ConversionError: naming `path`, for a truncated file, a header length beyond the bound
        or the file, a header that is not a JSON object, or a tensor whose entry is
        malformed or whose bytes lie past the end of the file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, less "
                                  "than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ConversionError(f"{path}: safetensors header length {header_len} is beyond "
                                  f"{'the file' if header_len > size - 8 else 'the 100 MB bound'}"
                                  f" ({size} bytes): a truncated or foreign file")
        raw = handle.read(header_len)
    try:
        header = json_text.loads(raw)
    except ValueError as err:
        raise ConversionError(f"{path}: safetensors header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: safetensors header is not a JSON object")
    data_size = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            ok = isinstance(info["dtype"], str) and isinstance(info["shape"], list)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ConversionError(f"{path}: tensor {key!r}: malformed header entry {info!r:.120}")
        if not 0 <= begin <= end <= data_size:
            raise ConversionError(f"{path}: tensor {key!r} lies at bytes {begin}..{end} of a "
                                  f"{data_size}-byte data section: the file is truncated")
    return header, 8 + header_len


def read_json(path: str, what: str) -> Any:
    """A JSON file of a Hugging Face directory; a garbled one names the file and line."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json_text.loads(handle.read())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: line {err.lineno} column {err.colno}: {what} is not "
                              f"valid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: cannot read {what} ({err})") from None
