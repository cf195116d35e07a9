"""What a d4-core analyzer-queue item means (pure core: no Redis, no Kafka, no metrics).

Type-1 items are absolute paths of rotated captures,
``<data>/<sensor uuid>/1/YYYY/MM/DD/<sensor uuid>-YYYY-MM-DD-HHMMSS.cap.gz``
(shared/reference/d4-protocol.md §3.9). This module derives the sensor and a
stable session id from such a path, streams a file's decompressed bytes in
bounded chunks, names what went wrong with a file (the DLQ/metric reason), and
packs line items (types 3, 8, extended types) into bounded record payloads.
"""

from __future__ import annotations

import re
import uuid
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO, Iterator, Sequence

from bridge.pcap import PcapFormatError

GZIP_MAGIC = b"\x1f\x8b"
READ_BYTES = 1 << 20  # compressed bytes read at a time
OUT_BYTES = 1 << 20  # decompressed bytes produced at a time: bounds memory whatever the ratio

FAILURE_REASONS = (
    "missing",          # the path does not exist (already removed, wrong mount)
    "unreadable",       # permissions, a directory, an I/O error
    "empty",            # a zero-byte file: not even a pcap global header
    "truncated_gzip",   # gzip stream ends inside a member (copy cut short, disk full)
    "corrupt_gzip",     # bad gzip header, bad deflate data, CRC or length mismatch, trailing garbage
    "not_pcap",         # the (decompressed) bytes do not start with a pcap magic number
    "truncated_pcap",   # the pcap stream ends inside a header or a record
    "corrupt_pcap",     # a record longer than the file's snaplen: the stream lost its framing
    "item_too_large",   # a line item that cannot fit in one record
    "crash_loop",       # the consumer died CRASH_LIMIT times with this item in hand (queue hop)
)

# PcapStreamError reasons (bridge.assembler) -> queue failure reasons.
_PCAP_REASONS = {"bad_magic": "not_pcap", "truncated": "truncated_pcap", "record_too_long": "corrupt_pcap"}

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_DASHED = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NAME_UUID = re.compile(r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})-\d{4}-\d{2}-\d{2}-")
_SESSION_NS = uuid.UUID("5e7d9a64-4a10-4c1c-9a58-d4b41d9e0001")


@dataclass(frozen=True)
class QueueType:
    """How a queue's ``--type`` reads: the list key part, the D4 type of its records, files or lines."""

    key: str  # ``analyzer:<key>:<queue uuid>``: the type number, or the extended type name
    d4_type: int
    meta_type: str | None
    files: bool

    @classmethod
    def parse(cls, text: str) -> "QueueType":
        """``1`` (pcap file paths), another type number (lines), or an extended type name (lines, type 254)."""
        text = str(text).strip()
        if text.isdigit():
            number = int(text)
            if number in (2, 254):
                raise ValueError(f"type {number} queues are named by their extended type (e.g. --type ja3-jl)")
            if not 0 < number < 254:
                raise ValueError(f"type {number} is not a D4 type (1..253, or an extended type name)")
            return cls(str(number), number, None, number == 1)
        if not text or not re.fullmatch(r"[A-Za-z0-9._-]+", text):
            raise ValueError(f"bad queue type {text!r}: a D4 type number or an extended type name")
        return cls(text, 254, text, False)


class ItemError(Exception):
    """A queue item that cannot be (fully) turned into records; ``reason`` is in FAILURE_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _uuid_hex(text: str) -> str | None:
    if _HEX32.match(text) or _DASHED.match(text):
        return text.replace("-", "").lower()
    return None


def sensor_uuid_from_path(path: str) -> str | None:
    """The sensor uuid (32 lowercase hex) named by a d4-core data path, or None.

    The directory layout ``<uuid>/<type>/YYYY/MM/DD/`` is tried first, then a file
    name of the form ``<uuid>-YYYY-MM-DD-...`` (files moved out of the layout).
    """
    parts = PurePosixPath(path).parts
    for i in range(len(parts) - 5):
        sensor = _uuid_hex(parts[i])
        year, month, day = parts[i + 2:i + 5]
        if (sensor and parts[i + 1].isdigit() and len(year) == 4 and year.isdigit()
                and len(month) == 2 and month.isdigit() and len(day) == 2 and day.isdigit()):
            return sensor
    match = _NAME_UUID.match(parts[-1]) if parts else None
    return match.group(1).replace("-", "").lower() if match else None


def session_id_for_path(path: str) -> str:
    """A stable session id for a file: the same after a restart, so re-done batches match."""
    return str(uuid.uuid5(_SESSION_NS, path))


def site_sensor_uuid(site: str) -> str:
    """The sensor uuid used for a site's items that name no sensor (stable per site name)."""
    return uuid.uuid5(_SESSION_NS, "site:" + site).hex


def pcap_failure(exc: PcapFormatError) -> ItemError:
    """Map an assembler error to the queue's failure reason."""
    return ItemError(_PCAP_REASONS.get(exc.reason, "corrupt_pcap"), exc.detail)


def file_chunks(f: BinaryIO, read_bytes: int = READ_BYTES, out_bytes: int = OUT_BYTES) -> Iterator[bytes]:
    """Yield the content of a capture file, gunzipped when it is gzip, in chunks of at most ``out_bytes``.

    gzip is recognised by its magic number, not by the file name, so a plain
    ``.cap`` and a ``.cap.gz`` both work whatever they are called. Concatenated
    gzip members and zero padding are accepted, as gzip(1) does. Damage raises
    ItemError after every byte before it has been yielded.
    """
    data = f.read(read_bytes)
    while 0 < len(data) < len(GZIP_MAGIC):  # short reads: enough bytes to recognise gzip
        more = f.read(read_bytes)
        if not more:
            break
        data += more
    if not data:
        raise ItemError("empty", "zero-byte file")
    if not data.startswith(GZIP_MAGIC):
        while data:
            yield data
            data = f.read(read_bytes)
        return
    yield from _gunzip(data, f, read_bytes, out_bytes)


def _gunzip(data: bytes, f: BinaryIO, read_bytes: int, out_bytes: int) -> Iterator[bytes]:
    decomp = None  # the current member's decompressor; None between members
    consumed = len(data)  # compressed bytes read so far, for error details
    while True:
        if not data:
            data = f.read(read_bytes)
            consumed += len(data)
            if not data:
                if decomp is not None:
                    raise ItemError("truncated_gzip", f"gzip stream ends inside a member after {consumed} bytes")
                return
        if decomp is None:
            data = data.lstrip(b"\0")  # zero padding after a member, as gzip(1) accepts
            if not data:
                continue
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while True:
            before = decomp.copy()
            try:
                out = decomp.decompress(data, out_bytes)
            except zlib.error:
                # zlib drops the output of a failing call: replay it in small steps from the copy,
                # so every byte before the damage is still yielded.
                yield from _salvage(before, data, consumed)  # raises ItemError at the damage
            data = decomp.unconsumed_tail
            if out:
                yield out
            # A full output chunk may leave output pending inside zlib: ask again before reading more.
            if decomp.eof or (not data and len(out) < out_bytes):
                break
        if decomp.eof:
            data = decomp.unused_data
            decomp = None


def _salvage(decomp: "zlib._Decompress", data: bytes, consumed: int) -> Iterator[bytes]:
    """Decompress ``data`` one byte at a time up to the error, yielding what it gives, then raise it.

    Only runs on damaged files; byte steps make the output stop exactly where zlib
    detects the damage (a CRC error keeps every data byte).
    """
    out = bytearray()
    for pos in range(len(data)):
        try:
            out += decomp.decompress(data[pos:pos + 1])
        except zlib.error as exc:
            if out:
                yield bytes(out)
            raise ItemError("corrupt_gzip", f"{exc} (within the first {consumed} compressed bytes)") from None
        if len(out) >= OUT_BYTES:
            yield bytes(out)
            out.clear()
    if out:
        yield bytes(out)
    raise ItemError("corrupt_gzip", f"deflate data refused within the first {consumed} compressed bytes")


def line_payloads(items: Sequence[bytes], max_bytes: int) -> tuple[list[list[int]], list[int]]:
    """Group line items into record payloads of at most ``max_bytes`` (a newline after each line).

    Returns (groups, too_large): each group lists item indexes in order; items
    that cannot fit in a record alone are listed in ``too_large``.
    """
    groups: list[list[int]] = []
    too_large: list[int] = []
    size = 0
    for i, item in enumerate(items):
        need = len(item) + (0 if item.endswith(b"\n") else 1)
        if need > max_bytes:
            too_large.append(i)
            continue
        if not groups or size + need > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += need
    return groups, too_large


def join_lines(items: Sequence[bytes]) -> bytes:
    """One record payload: the lines, each ending with exactly the newline d4-core split on."""
    return b"".join(item if item.endswith(b"\n") else item + b"\n" for item in items)
