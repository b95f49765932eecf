"""TensorBoard's event files, scalars only, written without TensorFlow, tensorboardX or protobuf.

Why not tensorboardX: it imports PyTorch where PyTorch is installed (2.2 s of every ``zoo train``'s start on
a 2-core machine, for a writer of floats), and the zoo writes nothing but scalars. The format is small:
a file ``events.out.tfevents.<time>.<host>`` of TFRecord records (length, masked CRC-32C of the length,
the bytes, their masked CRC-32C), each an ``Event`` protocol buffer: the first names the file version,
each later one holds a step, a wall time and a ``Summary`` of tagged ``simple_value`` floats. Each
``add_scalars`` call is one record, written through to the file (a crash loses nothing logged before it).
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Mapping


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1     # the Castagnoli polynomial, reflected
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
  crc = crc32c(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1                     # protobuf's int64: two's complement in 10 bytes
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int | None = None, file_version: str | None = None,
           summary: bytes | None = None) -> bytes:
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)          # double wall_time = 1
  if step is not None:
    out += _varint(2 << 3 | 0) + _varint(step)                       # int64 step = 2
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())                   # string file_version = 3
  if summary is not None:
    out += _bytes_field(5, summary)                                  # Summary summary = 5
  return out


def _scalar(tag: str, value: float) -> bytes:
  # Summary.Value: string tag = 1, float simple_value = 2
  return _bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))


class EventWriter:
  """Appends scalars to a new event file in ``logdir`` (made if missing)."""

  def __init__(self, logdir: str | os.PathLike):
    Path(logdir).mkdir(parents=True, exist_ok=True)
    now = time.time()
    self.path = Path(logdir) / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
    self._file = open(self.path, "ab")
    self._write(_event(now, file_version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._file.write(header + _masked(header) + record + _masked(record))
    self._file.flush()

  def add_scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One event at ``step`` holding every ``tag: value`` of ``values``."""
    summary = b"".join(_scalar(tag, float(v)) for tag, v in values.items())
    self._write(_event(time.time(), step=int(step), summary=summary))

  def close(self) -> None:
    self._file.close()
