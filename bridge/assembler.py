"""pcap stream assembly: arbitrary chunks of a libpcap byte stream in, whole-record batches out.

D4 type-1 frames and file reads cut a pcap stream anywhere: inside the global
header, inside a record header, inside packet data. The assembler keeps the
unfinished tail, walks complete records once (a compiled loop over the buffer,
which also normalizes big-endian record headers in place) and packs them into
batches closed by size or age. It is a pure core: no I/O, no clocks it was not
given, no Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bridge.compiled import kernels
from bridge.pcap import (
    GLOBAL_HEADER_LEN,
    RECORD_HEADER,
    PcapFormatError,
    PcapHeader,
    global_header,
    pack_record,
    parse_global_header,
    record_limit,
    ts_ns,
)

DEFAULT_BATCH_BYTES = 256 * 1024
DEFAULT_MAX_AGE = 0.1
# A record is at most 16 + 262144 bytes; a batch must hold one and stay far below
# the broker's 1,000,000-byte record limit once Avro fields are added.
MAX_BATCH_BYTES = 900_000

_loops = kernels("records")
_WALK_TOO_LONG = 1  # walk_records' status for a record longer than the limit


class PcapStreamError(PcapFormatError):
    """The stream is not (or no longer) valid pcap.

    ``batches`` holds the batches completed from the good bytes before the damage,
    so a caller that catches the error loses no packet that preceded it.
    """

    def __init__(self, reason: str, detail: str, batches: list["PcapChunkBatch"] | None = None) -> None:
        super().__init__(reason, detail)
        self.batches = batches or []


@dataclass(frozen=True)
class PcapChunkBatch:
    """Whole canonical records of one stream, in order."""

    header: PcapHeader
    packets: bytes
    count: int
    first_ts_ns: int
    last_ts_ns: int


class PcapAssembler:
    """Reassemble one libpcap byte stream fed in arbitrary chunks.

    ``feed`` returns the batches that became full; ``flush_due`` closes the open
    batch once it is ``max_age`` seconds old; ``close`` ends the stream. Errors are
    raised as PcapStreamError carrying the batches made before the damage; after
    an error the assembler refuses further input.
    """

    def __init__(
        self,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_age: float | None = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_bytes <= 0:
            raise ValueError("batch_bytes must be positive")
        self.batch_bytes = min(batch_bytes, MAX_BATCH_BYTES)
        self.max_age = max_age
        self.clock = clock
        self.header: PcapHeader | None = None
        self.packets_total = 0
        self.bytes_total = 0
        self._limit = 0
        self._canonical: PcapHeader | None = None
        self._pending = bytearray()
        self._batch = bytearray()
        self._count = 0
        self._first_ts = 0
        self._last_ts = 0
        self._opened_at = 0.0
        self._failed: PcapStreamError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: the unfinished tail plus the open batch (for memory bounds)."""
        return len(self._pending) + len(self._batch)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[PcapChunkBatch]:
        """Add bytes of the stream; return the batches closed by size."""
        if self._failed is not None:
            raise PcapStreamError(self._failed.reason, "stream already failed: " + self._failed.detail)
        self._pending += chunk
        out: list[PcapChunkBatch] = []
        if self.header is None:
            if len(self._pending) < GLOBAL_HEADER_LEN:
                return out
            try:
                self.header = parse_global_header(bytes(self._pending[:GLOBAL_HEADER_LEN]))
            except PcapFormatError as exc:
                raise self._fail(exc.reason, exc.detail, out) from None
            self._limit = record_limit(self.header)
            # Batches carry the canonical (little-endian) form whatever the stream's order.
            self._canonical = PcapHeader(self.header.linktype, self.header.snaplen, self.header.nsec)
            del self._pending[:GLOBAL_HEADER_LEN]
        arr = np.frombuffer(self._pending, dtype=np.uint8)
        ends, status, bad = _loops.walk_records(arr, self._limit, self.header.big_endian)
        del arr  # release the buffer export before the bytearray is resized
        consumed = int(ends[-1]) if len(ends) else 0
        if consumed:
            self._take(ends, out)
            del self._pending[:consumed]
        if status == _WALK_TOO_LONG:
            raise self._fail(
                "record_too_long",
                f"record caplen {bad} above the stream's limit {self._limit} (snaplen {self.header.snaplen})",
                out,
            )
        return out

    def flush_due(self, now: float | None = None) -> list[PcapChunkBatch]:
        """Close the open batch if it has waited ``max_age`` seconds."""
        if self._count == 0 or self.max_age is None:
            return []
        if (self.clock() if now is None else now) - self._opened_at >= self.max_age:
            return [self._close_batch()]
        return []

    def flush(self) -> list[PcapChunkBatch]:
        """Close the open batch now, whatever its age (e.g. before a session ends)."""
        return [self._close_batch()] if self._count else []

    def close(self) -> list[PcapChunkBatch]:
        """End of stream: return the last batch; a cut record or header is an error."""
        if self._failed is not None:
            return []
        out = self.flush()
        if self.header is None and self._pending:
            raise self._fail("truncated", f"stream ended inside the global header ({len(self._pending)} bytes)", out)
        if self._pending:
            raise self._fail("truncated", f"stream ended inside a record ({len(self._pending)} bytes left)", out)
        return out

    def _fail(self, reason: str, detail: str, out: list[PcapChunkBatch]) -> PcapStreamError:
        out.extend(self.flush())
        self._pending.clear()
        self._failed = PcapStreamError(reason, detail, out)
        return self._failed

    def _take(self, ends: np.ndarray, out: list[PcapChunkBatch]) -> None:
        """Move the complete records (ending at ``ends``) from pending into batches."""
        assert self.header is not None
        nsec = self.header.nsec
        src = self._pending
        start = 0
        i = 0  # index of the first record not yet taken
        n = len(ends)
        while i < n:
            room = self.batch_bytes - len(self._batch)
            j = int(np.searchsorted(ends, start + room, side="right"))  # records i..j-1 fit
            if j <= i:
                if self._count:
                    out.append(self._close_batch())
                    continue
                j = i + 1  # a single record larger than the batch size still travels alone
            stop = int(ends[j - 1])
            last_start = int(ends[j - 2]) if j - 1 > i else start
            if self._count == 0:
                sec, frac = RECORD_HEADER.unpack_from(src, start)[:2]
                self._first_ts = ts_ns(sec, frac, nsec)
                self._opened_at = self.clock()
            sec, frac = RECORD_HEADER.unpack_from(src, last_start)[:2]
            self._last_ts = ts_ns(sec, frac, nsec)
            self._batch += src[start:stop]
            self._count += j - i
            i = j
            start = stop
            if len(self._batch) >= self.batch_bytes:
                out.append(self._close_batch())

    def _close_batch(self) -> PcapChunkBatch:
        assert self._canonical is not None
        batch = PcapChunkBatch(self._canonical, bytes(self._batch), self._count, self._first_ts, self._last_ts)
        self.packets_total += self._count
        self.bytes_total += len(self._batch)
        self._batch = bytearray()
        self._count = 0
        return batch


def warm_up() -> None:
    """Load the compiled record walk now (about a second of CPU), not under the first traffic."""
    assembler = PcapAssembler(max_age=None)
    assembler.feed(global_header(1, 65535, False) + pack_record(0, b"\0" * 60))
    assembler.close()
