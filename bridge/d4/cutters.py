"""Cut non-pcap D4 payload streams into records (pure core).

D4 frames split the byte stream anywhere; d4-core's workers put the pieces back together and
cut lines (types 3, 4, 8, 254) or JSON objects (type 2 meta headers). These cutters do the same
for ``D4Record`` records: whole lines, closed by size or age; whole JSON objects.
"""

from __future__ import annotations

import json

META_LIMIT = 1_000_000  # bytes of a type-2 stream allowed to hold no complete JSON object


class CutError(ValueError):
    """A stream that cannot be cut as its type requires; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LineCutter:
    """Whole lines in, records of at most ``max_bytes`` out (closed by size, age or close).

    A line longer than ``max_bytes`` is cut, as d4-core's workers force a newline on long lines.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.tail = bytearray()  # bytes after the last newline
        self.open = bytearray()  # whole lines waiting to be closed into a record
        self.opened_at = 0.0

    @property
    def buffered(self) -> int:
        return len(self.tail) + len(self.open)

    def feed(self, data: bytes, now: float) -> list[bytes]:
        """Add bytes; return the records closed by size."""
        self.tail += data
        cut = self.tail.rfind(b"\n") + 1
        if not cut and len(self.tail) >= self.max_bytes:
            cut = len(self.tail)
        if not cut:
            return []
        if not self.open:
            self.opened_at = now
        self.open += self.tail[:cut]
        del self.tail[:cut]
        out: list[bytes] = []
        while len(self.open) >= self.max_bytes:
            end = self.open.rfind(b"\n", 0, self.max_bytes) + 1 or self.max_bytes
            out.append(bytes(self.open[:end]))
            del self.open[:end]
        return out

    def due(self, now: float, max_age: float) -> list[bytes]:
        """The open record, once it is ``max_age`` seconds old."""
        if self.open and now - self.opened_at >= max_age:
            out = [bytes(self.open)]
            self.open.clear()
            return out
        return []

    def close(self) -> list[bytes]:
        """End of stream: the open record and an unterminated last line."""
        out = [bytes(b) for b in (self.open, self.tail) if b]
        self.open.clear()
        self.tail.clear()
        return out


class JsonObjectCutter:
    """A type-2 meta-header stream in, complete JSON objects (with a string ``type``) out."""

    def __init__(self, limit: int = META_LIMIT) -> None:
        self.limit = limit
        self.buf = bytearray()
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[dict, bytes]]:
        """Add bytes; return ``(object, its raw bytes)`` for every complete object.

        Raises CutError('bad_meta_header') for non-UTF-8 data, a JSON value that is not an
        object with a string ``type``, or ``limit`` bytes without a complete object.
        """
        self.buf += data
        out: list[tuple[dict, bytes]] = []
        while self.buf.strip():
            try:
                text = self.buf.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data":
                    raise CutError("bad_meta_header", "not UTF-8") from None
                text = self.buf[: exc.start].decode("utf-8")  # a character cut by a frame boundary
            start = len(text) - len(text.lstrip())
            try:
                obj, end = self._decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                if len(self.buf) > self.limit:
                    raise CutError("bad_meta_header", f"no JSON object in {len(self.buf)} bytes") from None
                return out  # incomplete: wait for more
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                raise CutError("bad_meta_header", 'JSON value is not an object with a string "type"')
            out.append((obj, text[start:end].encode("utf-8")))
            del self.buf[: len(text[:end].encode("utf-8"))]
        return out
