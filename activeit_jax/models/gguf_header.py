"""Bounded reading of a GGUF file's header, before `gguf.GGUFReader` sees the file.

`GGUFReader` trusts every count and length in the header: one metadata array of 2^62 uint8 in
a 57-byte file makes it loop forever (reads past the end return empty arrays, so its offset
never advances) while its memory grows without bound. `check_header` walks the same header
with every count, length, dimension and offset checked against the bytes that are left and
against sane caps, so a malformed file is refused with one line naming the file and the field,
in time linear in the header's size; it never reads more than one string at a time.

Layout (GGUF versions 2 and 3, little- or big-endian as the version field shows):

    magic "GGUF", version u32, tensor_count u64, kv_count u64,
    kv_count x (key: string, value_type u32, value),
    tensor_count x (name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64),
    padding to `general.alignment` (a u32 power of two, default 32), then the tensor data
    (each tensor at `offset` from there, a multiple of the alignment);
    string = u64 byte length + UTF-8 bytes; array = element type u32 + count u64 + elements.

llama.cpp reads no arrays of arrays, so neither do we.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
import struct

from activeit_jax.core.errors import ActiveITError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Sane caps beyond "it fits in the file" (real files: a few hundred tensors and keys, tensor
# names under 64 bytes, vocabularies of a few hundred thousand tokens).
MAX_TENSORS = 1 << 20
MAX_KEYS = 1 << 20
MAX_KEY_BYTES = 1 << 16
MAX_NAME_BYTES = 1 << 10
MAX_ARRAY_LENGTH = 1 << 28
# Strings are read one by one (numeric arrays are skipped whole): this bounds the work on any
# header to a few seconds (real files: under a million tokens and merges).
MAX_STRINGS = 1 << 23
MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF value types: fixed sizes (struct codes), then string and array.
_SCALARS = {0: ("B", "uint8"), 1: ("b", "int8"), 2: ("H", "uint16"), 3: ("h", "int16"),
            4: ("I", "uint32"), 5: ("i", "int32"), 6: ("f", "float32"), 7: ("?", "bool"),
            10: ("Q", "uint64"), 11: ("q", "int64"), 12: ("d", "float64")}
STRING, ARRAY = 8, 9
UINT32 = 4


class GGUFHeaderError(ActiveITError, ValueError):
    """A GGUF file whose header is truncated, inconsistent or beyond the caps."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the header: name, dims (GGUF order, innermost first), ggml type, offset
    from the start of the data section, and its size in bytes."""
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    """What `check_header` found: every key checked, every tensor within the file."""
    version: int
    byte_order: str  # "<" or ">"
    keys: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_start: int
    file_size: int


class _Cursor:
    """Reads the header front to back; every read is checked against the bytes left."""

    def __init__(self, buffer: mmap.mmap | bytes, size: int, source: str) -> None:
        self.buffer, self.size, self.source = buffer, size, source
        self.pos = 0
        self.order = "<"
        self.strings_left = MAX_STRINGS

    def truncated(self, field: str, what: str) -> GGUFHeaderError:
        return GGUFHeaderError(f"{self.source}: truncated or corrupt GGUF file: {field}: {what} "
                               f"(at byte {self.pos} of {self.size})")

    def malformed(self, field: str, what: str) -> GGUFHeaderError:
        return GGUFHeaderError(f"{self.source}: malformed GGUF file: {field}: {what}")

    def skip(self, nbytes: int, field: str, what: str) -> int:
        if nbytes > self.size - self.pos:
            raise self.truncated(field, f"{what} runs past the end of the file")
        start = self.pos
        self.pos += nbytes
        return start

    def scalar(self, code: str, field: str) -> int | float | bool:
        start = self.skip(struct.calcsize(code), field, f"a {struct.calcsize(code)}-byte number")
        return struct.unpack_from(self.order + code, self.buffer, start)[0]

    def string(self, field: str, max_bytes: int) -> str:
        self.strings_left -= 1
        if self.strings_left < 0:
            raise self.malformed(field, f"more than {MAX_STRINGS} strings in the header")
        length = self.scalar("Q", field)
        start = self.skip(length, field, f"a string of {length} bytes")
        if length > max_bytes:
            raise self.malformed(field, f"a string of {length} bytes (at most {max_bytes})")
        try:
            return bytes(self.buffer[start:start + length]).decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.malformed(field, f"a string that is not UTF-8 ({err.reason} at byte "
                                        f"{err.start})") from None


def _value(cursor: _Cursor, value_type: int, field: str) -> object:
    """Reads (and checks) one metadata value; returns scalars, None for strings and arrays."""
    if value_type in _SCALARS:
        return cursor.scalar(_SCALARS[value_type][0], field)
    if value_type == STRING:
        cursor.string(field, cursor.size)
        return None
    if value_type != ARRAY:
        raise cursor.malformed(field, f"unknown value type {value_type}")
    element = cursor.scalar("I", f"{field} (element type)")
    count = cursor.scalar("Q", f"{field} (length)")
    if count > MAX_ARRAY_LENGTH:
        raise cursor.malformed(field, f"an array of {count} elements (at most "
                                      f"{MAX_ARRAY_LENGTH})")
    if element in _SCALARS:
        code, name = _SCALARS[element]
        nbytes = count * struct.calcsize(code)
        cursor.skip(nbytes, field, f"an array of {count} {name} ({nbytes} bytes)")
    elif element == STRING:
        # Every string takes at least its 8-byte length: check the whole array first.
        if count * 8 > cursor.size - cursor.pos:
            raise cursor.truncated(field, f"an array of {count} strings runs past the end of "
                                          "the file")
        if count > cursor.strings_left:
            raise cursor.malformed(field, f"an array of {count} strings (at most {MAX_STRINGS} "
                                          "strings in a header)")
        _string_array(cursor, count, field)
    elif element == ARRAY:
        raise cursor.malformed(field, "an array of arrays (llama.cpp reads none)")
    else:
        raise cursor.malformed(field, f"an array of unknown value type {element}")
    return None


def _string_array(cursor: _Cursor, count: int, field: str) -> None:
    """Checks `count` strings in a row (`_Cursor.string`'s checks in a tight loop: token lists
    and merges hold hundreds of thousands)."""
    unpack = struct.Struct(cursor.order + "Q").unpack_from
    buffer, size, pos = cursor.buffer, cursor.size, cursor.pos
    cursor.strings_left -= count
    for index in range(count):
        if size - pos < 8:
            cursor.pos = pos
            raise cursor.truncated(f"{field}[{index}]", "a string length runs past the end of "
                                                        "the file")
        (length,) = unpack(buffer, pos)
        pos += 8
        if length > size - pos:
            cursor.pos = pos
            raise cursor.truncated(f"{field}[{index}]", f"a string of {length} bytes runs past "
                                                        "the end of the file")
        try:
            buffer[pos:pos + length].decode("utf-8")
        except UnicodeDecodeError as err:
            raise cursor.malformed(f"{field}[{index}]", f"a string that is not UTF-8 "
                                                        f"({err.reason} at byte {err.start})"
                                   ) from None
        pos += length
    cursor.pos = pos


def _metadata(cursor: _Cursor, count: int) -> tuple[tuple[str, ...], int]:
    """Reads the key/value section; returns (keys, alignment)."""
    keys: dict[str, None] = {}
    alignment = DEFAULT_ALIGNMENT
    for index in range(count):
        key = cursor.string(f"metadata key #{index}", MAX_KEY_BYTES)
        if key in keys:
            raise cursor.malformed(key, "the key appears twice in the metadata")
        keys[key] = None
        value_type = cursor.scalar("I", f"{key} (value type)")
        value = _value(cursor, value_type, key)
        if key == "general.alignment":
            if value_type != UINT32 or not value or value & (value - 1):
                raise cursor.malformed(key, f"must be a uint32 power of two, got {value!r} "
                                            f"(type {value_type})")
            alignment = int(value)
    return tuple(keys), alignment


def _tensor_infos(cursor: _Cursor, count: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    """Reads the tensor-info section: (name, dims, ggml type, offset) per tensor."""
    infos, names = [], set()
    for index in range(count):
        name = cursor.string(f"tensor #{index} name", MAX_NAME_BYTES)
        if name in names:
            raise cursor.malformed(f"tensor {name}", "the name appears twice")
        names.add(name)
        n_dims = cursor.scalar("I", f"tensor {name} (n_dims)")
        if n_dims > MAX_DIMS:
            raise cursor.malformed(f"tensor {name}", f"{n_dims} dimensions (at most {MAX_DIMS})")
        dims = tuple(cursor.scalar("Q", f"tensor {name} (dims)") for _ in range(n_dims))
        ggml_type = cursor.scalar("I", f"tensor {name} (type)")
        offset = cursor.scalar("Q", f"tensor {name} (offset)")
        infos.append((name, dims, ggml_type, offset))
    return infos


def _tensor_bytes(cursor: _Cursor, name: str, dims: tuple[int, ...], ggml_type: int) -> int:
    """The size of a tensor's data, from its dims and ggml type (block quantizations)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise cursor.malformed(f"tensor {name}", f"unknown ggml type {ggml_type}") from None
    if dims and dims[0] % block:
        raise cursor.malformed(f"tensor {name}", f"its first dimension {dims[0]} is not a "
                                                 f"multiple of the type's block of {block}")
    elements = 1
    for dim in dims:
        elements *= dim  # Python integers: no wrap-around, unlike numpy's uint64 product
    return elements // block * type_size


def check_header(path: str | os.PathLike) -> GGUFHeader:
    """Reads and checks a GGUF file's header, in time linear in its size.

    Args:
      path: the `.gguf` file.

    Returns:
      The header's summary (keys, tensors, alignment, where the data starts).

    Raises:
      GGUFHeaderError: one line naming the file and the field: not a GGUF file, another
        version, a count, length, dimension or offset that runs past the end of the file or
        beyond the caps, a repeated key or tensor name, a bad alignment, an unknown type.
    """
    source = os.fspath(path)
    size = os.path.getsize(source)
    with open(source, "rb") as handle:
        if size < 24:
            magic = handle.read(4)
            what = (f"it starts with {magic!r}, not {GGUF_MAGIC!r}" if magic != GGUF_MAGIC
                    else f"{size} bytes, shorter than a GGUF header")
            raise GGUFHeaderError(f"{source}: not a GGUF file ({what})")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _check(_Cursor(buffer, size, source))


def _check(cursor: _Cursor) -> GGUFHeader:
    magic = bytes(cursor.buffer[:4])
    if magic != GGUF_MAGIC:
        raise GGUFHeaderError(f"{cursor.source}: not a GGUF file (it starts with {magic!r}, "
                              f"not {GGUF_MAGIC!r})")
    cursor.pos = 4
    version = struct.unpack_from("<I", cursor.buffer, 4)[0]
    if version & 0xFFFF == 0:  # written on a big-endian machine
        cursor.order = ">"
        version = struct.unpack_from(">I", cursor.buffer, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        raise cursor.malformed("version", f"GGUF version {version} is not supported "
                                          f"(supported: {SUPPORTED_VERSIONS})")
    cursor.pos = 8
    tensor_count = cursor.scalar("Q", "tensor_count")
    kv_count = cursor.scalar("Q", "kv_count")
    left = cursor.size - cursor.pos
    # A key/value takes at least 13 bytes (length, type, one byte), a tensor info 24.
    for field, count, cap, least in (("kv_count", kv_count, MAX_KEYS, 13),
                                     ("tensor_count", tensor_count, MAX_TENSORS, 24)):
        if count > cap:
            raise cursor.malformed(field, f"{count} (at most {cap})")
        if count * least > left:
            raise cursor.truncated(field, f"{count} entries cannot fit in the {left} bytes "
                                          "left")
    keys, alignment = _metadata(cursor, kv_count)
    infos = _tensor_infos(cursor, tensor_count)
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = []
    for name, dims, ggml_type, offset in infos:
        nbytes = _tensor_bytes(cursor, name, dims, ggml_type)
        if offset % alignment:
            raise cursor.malformed(f"tensor {name}", f"offset {offset} is not a multiple of the "
                                                     f"alignment {alignment}")
        end = data_start + offset + nbytes
        if end > cursor.size:
            raise GGUFHeaderError(f"{cursor.source}: truncated GGUF file (tensor {name} ends "
                                  f"at byte {end}, the file has {cursor.size})")
        tensors.append(TensorInfo(name, dims, ggml_type, offset, nbytes))
    return GGUFHeader(version, cursor.order, keys, tuple(tensors), alignment, data_start,
                      cursor.size)
