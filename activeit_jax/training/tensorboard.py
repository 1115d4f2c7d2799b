"""TensorBoard scalars without TensorFlow: an event file written by hand.

An event file is a TFRecord file of `Event` protocol buffers: each record is its length
(uint64, little-endian), the masked CRC-32C of those 8 bytes, the bytes, and their masked
CRC-32C. The first event carries the file version; each scalar is an `Event{wall_time, step,
summary{value{tag, metadata{plugin "scalars"}, tensor{float32 scalar}}}}`, the form
`tf.summary.scalar` writes. The few protobuf fields involved are encoded here, so TensorBoard
(`tensorboard --logdir OUT`) reads the files while training needs neither TensorFlow nor a
protobuf package. tests/training/test_trainer.py reads them back with TensorFlow's own reader.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from typing import BinaryIO, Mapping


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files use it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    """Event: wall_time (1, double), step (2, int64), then `body` (its other fields)."""
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


_SCALARS_METADATA = _field(9, _field(1, _field(1, b"scalars")))  # metadata.plugin_data.name
# TensorProto of a float32 scalar: dtype DT_FLOAT (1), empty shape (2), float_val (5, packed).
_FLOAT_TENSOR = b"\x08\x01" + _field(2, b"")


def _scalar_value(tag: str, value: float) -> bytes:
    tensor = _FLOAT_TENSOR + _field(5, struct.pack("<f", value))
    return _field(1, _field(1, tag.encode("utf-8")) + _SCALARS_METADATA + _field(8, tensor))


class EventFileWriter:
    """Appends scalar events to a new event file in `logdir` (created when missing).

    Args:
      logdir: the run's TensorBoard directory.
    """

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.activeit")
        self.path = os.path.join(logdir, name)
        self._file: BinaryIO | None = open(self.path, "ab")
        self._record(_event(time.time(), 0, _field(3, b"brain.Event:2")))

    def _record(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(header + _masked_crc(header) + data + _masked_crc(data))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One event at `step` holding every `tag -> value` (written as float32)."""
        body = b"".join(_scalar_value(tag, float(value)) for tag, value in values.items())
        self._record(_event(time.time(), int(step), _field(5, body)))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
