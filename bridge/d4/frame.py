"""D4 encapsulation protocol v1 frame codec (pure: bytes in, bytes out).

Wire format (shared/reference/d4-protocol.md §1): a 62-byte packed little-endian header
``<BB16sQ32sI`` = version, type, uuid (16 raw bytes), timestamp (seconds), HMAC-SHA256 (32 bytes),
payload size; then ``size`` payload bytes. The HMAC covers the header with its HMAC field zeroed
followed by the payload.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from dataclasses import dataclass
from typing import Callable

HEADER = struct.Struct("<BB16sQ32sI")
HEADER_SIZE = HEADER.size  # 62
HMAC_OFFSET = 26
HMAC_SIZE = 32
ZERO_HMAC = bytes(HMAC_SIZE)
# d4-core's data_default_size_limit: a header announcing more closes the connection.
MAX_PAYLOAD = 1_000_000
PROTOCOL_VERSION = 1


class FrameError(Exception):
    """A byte stream that is not a valid sequence of D4 frames.

    ``reason`` is short and machine-readable (it is used as a metric label value).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded 62-byte D4 header."""

    version: int
    type: int
    uuid: bytes
    timestamp: int
    hmac: bytes
    size: int

    @property
    def uuid_hex(self) -> str:
        """Sensor identity as d4-core writes it: 32 lowercase hex digits, no dashes."""
        return self.uuid.hex()

    def zeroed(self) -> bytes:
        """The header bytes with the HMAC field set to zero (the first part of the MAC input)."""
        return HEADER.pack(self.version, self.type, self.uuid, self.timestamp, ZERO_HMAC, self.size)


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete D4 frame: its header and exactly ``header.size`` payload bytes."""

    header: Header
    payload: bytes


class FrameSigner:
    """HMAC-SHA256 for one key; the keyed state is built once and copied per frame."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def mac(self, zeroed_header: bytes, payload: bytes | memoryview) -> bytes:
        """Return the 32-byte MAC of ``zeroed_header || payload``."""
        h = self._base.copy()
        h.update(zeroed_header)
        h.update(payload)
        return h.digest()

    def verify(self, frame: Frame) -> bool:
        """True when the frame's HMAC field matches (constant-time comparison)."""
        expected = self.mac(frame.header.zeroed(), frame.payload)
        return hmac.compare_digest(expected, frame.header.hmac)

    def encode(
        self,
        d4_type: int,
        uuid: bytes,
        payload: bytes | memoryview,
        timestamp: int | None = None,
        version: int = PROTOCOL_VERSION,
    ) -> bytes:
        """Build one signed frame (header + payload)."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the D4 limit {MAX_PAYLOAD}")
        if len(uuid) != 16:
            raise ValueError("uuid must be 16 raw bytes")
        ts = int(time.time()) if timestamp is None else timestamp
        zeroed = HEADER.pack(version, d4_type, uuid, ts, ZERO_HMAC, len(payload))
        mac = self.mac(zeroed, payload)
        return b"".join((zeroed[:HMAC_OFFSET], mac, zeroed[HMAC_OFFSET + HMAC_SIZE:], payload))


def encode_frame(
    d4_type: int,
    uuid: bytes,
    key: bytes,
    payload: bytes,
    timestamp: int | None = None,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """Build one signed D4 frame; ``timestamp`` defaults to the current Unix second."""
    return FrameSigner(key).encode(d4_type, uuid, payload, timestamp, version)


def verify_frame(frame: Frame, key: bytes) -> bool:
    """True when ``frame`` carries a valid HMAC for ``key`` (constant-time comparison)."""
    return FrameSigner(key).verify(frame)


HeaderCheck = Callable[[Header], None]


class FrameDecoder:
    """Incremental D4 stream decoder.

    ``feed`` accepts bytes in any chunking (a frame split anywhere, many frames in one chunk,
    chunks shorter than a header); ``next_frame`` returns complete frames one at a time, without
    recursion. A partial frame is kept until its remaining bytes arrive — it is never dropped.
    ``header_check`` runs as soon as a header is complete (before its payload is buffered) and may
    raise ``FrameError`` to reject the stream early. After an error the decoder stays failed.
    """

    __slots__ = ("_buf", "_pos", "_header", "_error", "_max_size", "_header_check")

    def __init__(self, max_size: int = MAX_PAYLOAD, header_check: HeaderCheck | None = None) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buf
        self._header: Header | None = None  # parsed header of the frame being received
        self._error: FrameError | None = None
        self._max_size = max_size
        self._header_check = header_check

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame (a partial frame)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        if self._pos:
            # bytearray deletes at the front in O(1) (it moves its start pointer)
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def peek_header(self) -> Header | None:
        """Parse and check the header of the next frame once its 62 bytes are in (else None).

        Raises ``FrameError`` like ``next_frame``; the header is checked only once.
        """
        if self._error is not None:
            raise self._error
        if self._header is not None:
            return self._header
        if len(self._buf) - self._pos < HEADER_SIZE:
            return None
        header = Header(*HEADER.unpack_from(self._buf, self._pos))
        try:
            if header.size > self._max_size:
                raise FrameError("size_too_large", f"header announces {header.size} bytes, limit {self._max_size}")
            if self._header_check is not None:
                self._header_check(header)
        except FrameError as exc:
            self._error = exc
            raise
        self._header = header
        return header

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None when more bytes are needed.

        Raises ``FrameError`` when the stream is invalid (size above the limit, or a
        ``header_check`` rejection); the same error is raised again on later calls.
        """
        header = self._header or self.peek_header()
        if header is None:
            return None
        start = self._pos + HEADER_SIZE
        end = start + header.size
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view:  # one copy (a bytearray slice would make two)
            payload = bytes(view[start:end])
        self._pos = end
        self._header = None
        return Frame(header, payload)

    def frames(self) -> list[Frame]:
        """All complete frames currently buffered.

        Frames before a damaged one are returned first; the ``FrameError`` is raised by the
        following call (so no good frame is lost with the error).
        """
        out: list[Frame] = []
        try:
            while (frame := self.next_frame()) is not None:
                out.append(frame)
        except FrameError:
            if not out:
                raise
        return out
