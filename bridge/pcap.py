"""libpcap format helpers (pure core: bytes in, bytes out).

Inside d4-bridge packet records always use the canonical form: a little-endian
16-byte record header ``<IIII`` (ts_sec, ts_frac, caplen, origlen) followed by
``caplen`` captured bytes, concatenated. The sub-second unit (micro- or
nanoseconds) travels beside the bytes. Streams and files in big-endian order are
normalized on the way in, so no later hop has to care.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
RECORD_HEADER = struct.Struct("<IIII")
GLOBAL_HEADER = struct.Struct("<IHHiIII")

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
MAX_SNAPLEN = 262144  # libpcap's MAXIMUM_SNAPLEN: larger records are garbage

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113


class PcapFormatError(ValueError):
    """Bytes that are not a libpcap stream; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PcapHeader:
    """What a pcap global header says about the records that follow."""

    linktype: int
    snaplen: int
    nsec: bool
    big_endian: bool = False


def global_header(linktype: int, snaplen: int, nsec: bool) -> bytes:
    """Return a little-endian pcap 2.4 global header."""
    magic = MAGIC_NSEC if nsec else MAGIC_USEC
    return GLOBAL_HEADER.pack(magic, 2, 4, 0, 0, snaplen, linktype)


def parse_global_header(data: bytes) -> PcapHeader:
    """Parse the first 24 bytes of a pcap stream in either byte order."""
    if len(data) < GLOBAL_HEADER_LEN:
        raise PcapFormatError("truncated", f"global header needs 24 bytes, got {len(data)}")
    for order, big in (("<", False), (">", True)):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            _, _major, _minor, _tz, _sig, snaplen, linktype = struct.unpack_from(order + "IHHiIII", data)
            # The FCS bits live in the upper half of the link-type field (pcap-savefile(5)).
            return PcapHeader(linktype & 0x0FFFFFFF, snaplen, magic == MAGIC_NSEC, big)
    raise PcapFormatError("bad_magic", f"not a libpcap stream (magic {data[:4].hex()})")


def record_limit(header: PcapHeader) -> int:
    """Largest caplen accepted for a stream: its snaplen, but never above 262144.

    Writers are known to put 0 or a bogus huge snaplen in the header, so a zero or
    oversized snaplen falls back to libpcap's own maximum.
    """
    if 0 < header.snaplen <= MAX_SNAPLEN:
        return header.snaplen
    return MAX_SNAPLEN


def ts_ns(ts_sec: int, ts_frac: int, nsec: bool) -> int:
    """Convert a record timestamp to nanoseconds since the epoch."""
    return ts_sec * 1_000_000_000 + (ts_frac if nsec else ts_frac * 1000)


def record_offsets(packets: bytes | memoryview) -> np.ndarray:
    """Offsets of every record header in canonical packed records.

    Raises PcapFormatError when the records do not tile the buffer exactly.
    """
    view = memoryview(packets)
    total = len(view)
    offsets: list[int] = []
    pos = 0
    unpack = RECORD_HEADER.unpack_from
    while pos < total:
        if pos + RECORD_HEADER_LEN > total:
            raise PcapFormatError("truncated", f"record header at {pos} cut at {total}")
        caplen = unpack(view, pos)[2]
        offsets.append(pos)
        pos += RECORD_HEADER_LEN + caplen
    if pos != total:
        raise PcapFormatError("truncated", f"record at {offsets[-1]} runs past the end ({pos} > {total})")
    return np.asarray(offsets, dtype=np.int64)


def iter_packets(packets: bytes | memoryview, nsec: bool = False) -> Iterator[tuple[int, int, int, memoryview]]:
    """Yield ``(ts_ns, caplen, origlen, data)`` for canonical packed records."""
    view = memoryview(packets)
    unpack = RECORD_HEADER.unpack_from
    pos = 0
    total = len(view)
    while pos < total:
        sec, frac, caplen, origlen = unpack(view, pos)
        start = pos + RECORD_HEADER_LEN
        yield ts_ns(sec, frac, nsec), caplen, origlen, view[start:start + caplen]
        pos = start + caplen


def pack_record(ts_nanos: int, data: bytes, nsec: bool = False, origlen: int | None = None) -> bytes:
    """Build one canonical record from a timestamp in nanoseconds and packet bytes."""
    sec, rem = divmod(ts_nanos, 1_000_000_000)
    frac = rem if nsec else rem // 1000
    return RECORD_HEADER.pack(sec, frac, len(data), len(data) if origlen is None else origlen) + data


def read_pcap(path: str | Path) -> tuple[PcapHeader, bytes]:
    """Read a whole pcap file (either byte order) into canonical records.

    Meant for tests and small files; streaming readers use the assembler.
    """
    from bridge.assembler import PcapAssembler  # local: the assembler imports this module

    data = Path(path).read_bytes()
    assembler = PcapAssembler(batch_bytes=max(len(data), 1), max_age=None)
    batches = assembler.feed(data) + assembler.close()
    header = assembler.header or parse_global_header(data)
    return PcapHeader(header.linktype, header.snaplen, header.nsec), b"".join(b.packets for b in batches)


def write_pcap(target: str | Path | BinaryIO, header: PcapHeader, packets: bytes) -> None:
    """Write canonical records as a little-endian pcap file."""
    blob = global_header(header.linktype, header.snaplen, header.nsec) + packets
    if isinstance(target, (str, Path)):
        Path(target).write_bytes(blob)
    else:
        target.write(blob)
