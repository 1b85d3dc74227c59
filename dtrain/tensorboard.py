"""TensorBoard's event files, written without TensorFlow or the tensorboard package.

An event file is a sequence of records (TFRecord framing, little-endian)::

    uint64 length | uint32 masked CRC32C of those 8 bytes | data | uint32 masked CRC32C of data

each ``data`` one ``Event`` protocol buffer, encoded here by hand (the field numbers of
tensorboard/compat/proto/event.proto, summary.proto and tensor.proto)::

    Event        {1: wall_time (double), 2: step (int64), 3: file_version (string) | 5: summary}
    Summary      {1: value (repeated Value)}
    Value        {1: tag (string), 2: simple_value (float32) | 9: metadata, 8: tensor}
    Metadata     {1: plugin_data {1: plugin_name (string), 2: content (bytes)}}
    TensorProto  {1: dtype (DT_STRING = 7), 2: tensor_shape (empty: a scalar), 8: string_val (bytes)}

A file starts with ``Event{file_version: "brain.Event:2"}``. TensorBoard reads every file of a
folder whose name holds ``tfevents``, in the order of their names, as one run.

**Where they go.** In a local folder, an :class:`EventFile` is one file, appended to and
flushed (TensorBoard shows it as it grows). Files cannot be appended to on fsspec URLs
(``memory://``, ``s3://``...): there each flush writes the events since the previous one as an
event file of its own, whole (``dtrain.storage.Location``: a temporary name moved into place),
named to sort after the ones before, so TensorBoard reads them in turn as one run and never
sees half a file.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from typing import BinaryIO

import numpy as np

from .storage import Location

FILE_VERSION = b"brain.Event:2"
_KERAS_MODEL_PLUGIN = b"graph_keras_model"  # TensorBoard's Graphs tab draws a Keras model's JSON
_DT_STRING = 7
_file_numbers = itertools.count()  # tells apart the files this process names in the same second


# -- CRC32C (Castagnoli), with TFRecord's mask ----------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# -- protocol buffers, by hand ----------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _message(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or an embedded message."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, body: bytes, wall_time: float | None = None) -> bytes:
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"An event's step must be an integer >= 0, received {step!r}.")
    wall = time.time() if wall_time is None else wall_time
    return b"\x09" + struct.pack("<d", wall) + b"\x10" + _varint(int(step)) + body


def version_event() -> bytes:
    """The event every file starts with."""
    return _event(0, _message(3, FILE_VERSION))


def scalar_event(tag: str, value: float, step: int) -> bytes:
    """``Event{step, summary{value{tag, simple_value}}}``: a point of TensorBoard's Scalars tab
    (stored as float32, as TensorBoard keeps scalars)."""
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, as float32 holds it
        number = np.asarray(value, dtype="<f4").tobytes()
    value_proto = _message(1, tag.encode()) + b"\x15" + number
    return _event(step, _message(5, _message(1, value_proto)))


def keras_model_event(model_json: str) -> bytes:
    """A Keras model's JSON at step 0 under the tag "keras", as Keras' TensorBoard writes it
    (``write_graph=True``): TensorBoard's Graphs tab draws its layers."""
    plugin = _message(1, _message(1, _KERAS_MODEL_PLUGIN) + _message(2, b"1"))
    tensor = b"\x08" + _varint(_DT_STRING) + _message(2, b"") + _message(8, model_json.encode())
    value_proto = _message(1, b"keras") + _message(9, plugin) + _message(8, tensor)
    return _event(0, _message(5, _message(1, value_proto)))


# -- files --------------------------------------------------------------------------------------------


def _file_name() -> str:
    """``events.out.tfevents.<seconds>.<host>.<pid>.<n>``, as TensorFlow names them (``n`` padded:
    the names of one writer's files sort in the order they were written)."""
    return f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_numbers):06d}"


class EventFile:
    """The events of one TensorBoard run, in ``folder`` (a local path or an fsspec URL, created if
    missing). Making one writes the file's first event, so a folder that cannot be written is an
    error here (OSError), before anything else is done."""

    def __init__(self, folder: str) -> None:
        self.location = Location(folder, what="a TensorBoard log folder")
        self.location.make()
        self._pending: list[bytes] = []  # (URLs) the records since the last flush
        self._file: BinaryIO | None = None
        if self.location.is_url:
            self.location.write(_file_name(), record(version_event()))
        else:
            self._file = open(self.location.path(_file_name()), "xb")  # noqa: SIM115 - closed by close()
            self._file.write(record(version_event()))
            self._file.flush()

    def add(self, event: bytes) -> None:
        """One event (``scalar_event``...), written at the next flush at the latest."""
        if self._file is not None:
            self._file.write(record(event))
        else:
            self._pending.append(record(event))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.add(scalar_event(tag, value, step))

    def flush(self) -> None:
        """Locally: to the file. On URLs: the events since the last flush, as a new file."""
        if self._file is not None:
            self._file.flush()
        elif self._pending:
            self.location.write(_file_name(), record(version_event()) + b"".join(self._pending))
            self._pending = []

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
