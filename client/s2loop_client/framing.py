"""The TCP framing of s2loop, written once: every TCP reader and writer (the SDK's sync
and async transports, the server's door, the bench clients and floors) uses it.

A frame is a 4-byte little-endian unsigned length, then that many bytes of msgpack
(``contract.FRAME_HEADER_BYTES``, ``contract.MAX_FRAME_BYTES``). Requests and answers
are frames; an answer's status is carried in it: an answer map, or ``{"error":
{"status", "kind", "message", ...}}`` (:func:`status_of`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from s2loop_client.contract import FRAME_HEADER_BYTES, MAX_FRAME_BYTES

HEADER = struct.Struct("<I")
assert HEADER.size == FRAME_HEADER_BYTES
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack


class FrameTooLarge(ValueError):
    """A frame header announces more bytes than the reader accepts: the stream cannot be
    read on (the sender's frames and ours are out of step), so the connection ends."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes is over the limit of {limit} bytes")
        self.size, self.limit = size, limit


def frame(payload: bytes) -> bytes:
    """``payload`` as one frame (header and body), ready to write."""
    return _pack_header(len(payload)) + payload


def split(buffer: bytearray, limit: int = MAX_FRAME_BYTES) -> list[bytes]:
    """Take every complete frame's payload out of ``buffer`` (what stays is the start of
    the next frame); :class:`FrameTooLarge` when a header announces over ``limit``."""
    out: list[bytes] = []
    start, have = 0, len(buffer)
    while have - start >= 4:
        (size,) = _unpack_header(buffer, start)
        if size > limit:
            del buffer[:start]
            raise FrameTooLarge(size, limit)
        end = start + 4 + size
        if end > have:
            break
        out.append(bytes(buffer[start + 4 : end]))
        start = end
    if start:
        del buffer[:start]
    return out


def feed(buffer: bytearray, data: bytes, limit: int = MAX_FRAME_BYTES) -> list[bytes]:
    """:func:`split` of ``buffer + data``; when nothing is buffered and ``data`` is exactly
    one frame (a request in lockstep, the common case), without copying it through
    ``buffer``."""
    if not buffer and len(data) >= 4:
        (size,) = _unpack_header(data)
        if len(data) == 4 + size and size <= limit:
            return [data[4:]]
    buffer += data
    return split(buffer, limit)


def status_of(answer: Any) -> int:
    """The status an answer carries: its error's ``status`` (WebSocket and TCP answers
    have no status line), else 200 for an answer map."""
    if type(answer) is dict:
        err = answer.get("error")
        if err is not None:
            status = err.get("status") if isinstance(err, dict) else None
            return status if type(status) is int and 400 <= status <= 599 else 500
    return 200


def read_frame(sock: socket.socket, buffer: bytearray, limit: int = MAX_FRAME_BYTES) -> bytes:
    """The next frame's payload from a blocking socket: one ``recv`` for a frame that is
    in already (every single answer), more for a large one. Bytes read past the frame
    stay in ``buffer``. ``ConnectionResetError`` when the peer closes first;
    ``NoAnswerBytes`` when it closes before a single byte of the frame."""
    end = None
    first = not buffer
    if first:  # lockstep: one recv holds the whole answer, taken without the buffer
        chunk = sock.recv(65536)
        if len(chunk) >= 4:
            (size,) = _unpack_header(chunk)
            if len(chunk) == 4 + size and size <= limit:
                return chunk[4:]
        if not chunk:
            raise NoAnswerBytes("the server closed the connection before answering")
        buffer += chunk
    while True:
        if end is None and len(buffer) >= 4:
            (size,) = _unpack_header(buffer)
            if size > limit:
                raise FrameTooLarge(size, limit)
            end = 4 + size
        if end is not None and len(buffer) >= end:
            payload = bytes(buffer[4:end])
            del buffer[:end]
            return payload
        chunk = sock.recv(max(65536, (end or 0) - len(buffer)))
        if not chunk:
            if first and not buffer:
                raise NoAnswerBytes("the server closed the connection before answering")
            raise ConnectionResetError("the server closed the connection in a frame")
        buffer += chunk


async def read_frame_async(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> bytes:
    """The next frame's payload from an asyncio stream; :class:`NoAnswerBytes` when the
    peer closed before a single byte of it, ``asyncio.IncompleteReadError`` when in it."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise NoAnswerBytes("the server closed the connection before answering") from None
        raise
    (size,) = _unpack_header(header)
    if size > limit:
        raise FrameTooLarge(size, limit)
    return await reader.readexactly(size)


class NoAnswerBytes(ConnectionResetError):
    """The peer closed the connection before a single byte of the answer: on a kept
    connection (the server closes idle ones) the request may be sent again."""
