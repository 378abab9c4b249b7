"""A TensorBoard scalar writer with no dependency: the event-file format written by hand.

TensorBoard reads `events.out.tfevents.*` files: TFRecords (length, masked CRC-32C of the
length, data, masked CRC-32C of the data) of `Event` protocol buffers. The trainers only
log scalars, so the two messages they need are encoded here directly:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

(tensorboardX writes the same bytes, but importing it imports PyTorch when that is
installed: seconds per process.)
"""

import os
import socket
import struct
import time

_FILE_VERSION = 'brain.Event:2'


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack('<Q', len(data))
    return (
        length
        + struct.pack('<I', _masked(crc32c(length)))
        + data
        + struct.pack('<I', _masked(crc32c(data)))
    )


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as the protobuf wire format encodes it.
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, **content: bytes) -> bytes:
    """An encoded `Event`: `file_version=` (text) or `summary=` (an encoded `Summary`)."""
    out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time)  # wall_time: fixed64.
    out += _varint(2 << 3) + _varint(int(step))
    if 'file_version' in content:
        out += _field(3, content['file_version'])
    if 'summary' in content:
        out += _field(5, content['summary'])
    return out


def scalar_summary(tag: str, value: float) -> bytes:
    """An encoded `Summary` holding one scalar."""
    value_msg = _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack('<f', value)
    return _field(1, value_msg)


class ScalarWriter:
    """Appends scalar events to a new `events.out.tfevents.*` file in `logdir`."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, 'ab')
        self._file.write(record(event(time.time(), file_version=_FILE_VERSION.encode())))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._file.write(record(event(time.time(), step, summary=scalar_summary(tag, value))))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
