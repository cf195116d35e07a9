"""Backscatter classification of whole pcap batches (pure core; the loop is in loops.py).

Rules are CAIDA Corsaro's (``flowtuple_classify_packet`` / corsaro3
``corsaro_is_backscatter_packet``), see shared/reference/backscatter.md §H:

- TCP is backscatter iff SYN+ACK or RST; a pure SYN is a scan, tagged Mirai when
  seq == destination address and masscan when it has no options, TTL >= 200 and
  window 1024; anything else is ``other``.
- ICMP is backscatter iff its type is 0, 3, 4, 5, 11, 12, 14, 16 or 18; other
  types are requests (probes).
- UDP and other protocols are ``other``; only IPv4 is analysed.

Victim and attacked service: the outer source and source port, except for ICMP
3/4/5/11/12 quoting at least an IPv4 header, where the victim is the quoted
destination, the attacked protocol the quoted protocol and the attacked port
the quoted destination port; the quote's source differing from the outer
destination is an ICMP mismatch.

One compiled loop (loops.py) walks the canonical records and writes one row per packet into
column arrays, so a batch costs a few tens of nanoseconds per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bridge.backscatter.classes import CLASS_NAMES, FIRST_BACKSCATTER, ICMP_REQUEST
from bridge.compiled import kernels

_loops = kernels("backscatter")

_ICMP_CLASS = np.full(256, ICMP_REQUEST, dtype=np.uint8)
for _type, _name in ((0, "icmp_echo_reply"), (3, "icmp_unreachable"), (4, "icmp_source_quench"),
                     (5, "icmp_redirect"), (11, "icmp_time_exceeded"), (12, "icmp_parameter_problem"),
                     (14, "icmp_timestamp_reply"), (16, "icmp_info_reply"), (18, "icmp_mask_reply")):
    _ICMP_CLASS[_type] = CLASS_NAMES.index(_name)
_ICMP_QUOTES = np.zeros(256, dtype=np.bool_)
_ICMP_QUOTES[[3, 4, 5, 11, 12]] = True


@dataclass(frozen=True)
class Classified:
    """One row per packet of a batch (numpy columns).

    ``victim``/``proto``/``port``/``spoofed_port`` are set for backscatter rows
    only; ``telescope`` is the outer IPv4 destination; ``digest`` identifies a
    packet across vantage points (IP packet bytes without TTL and header
    checksum, which change along the path), set for backscatter rows only.
    """

    offsets: np.ndarray  # int64 record-header offset
    lengths: np.ndarray  # int64 record length including its 16-byte header
    ts_ns: np.ndarray  # int64
    cls: np.ndarray  # uint8 index into CLASS_NAMES
    victim: np.ndarray  # uint32
    proto: np.ndarray  # uint8 attacked protocol
    port: np.ndarray  # uint16 attacked (victim) port
    spoofed_port: np.ndarray  # uint16
    telescope: np.ndarray  # uint32
    ip_len: np.ndarray  # uint32
    mismatch: np.ndarray  # bool
    digest: np.ndarray  # uint64

    @property
    def count(self) -> int:
        return int(self.cls.shape[0])

    def backscatter(self) -> np.ndarray:
        """Boolean mask of backscatter rows."""
        return self.cls >= FIRST_BACKSCATTER


def classify(packets: bytes | bytearray | memoryview | np.ndarray, linktype: int = 1, nsec: bool = False) -> Classified:
    """Classify every record of a canonical pcap batch (see bridge.pcap)."""
    buf = packets if isinstance(packets, np.ndarray) else np.frombuffer(packets, dtype=np.uint8)
    n = _loops.count_records(buf)
    cols = Classified(
        offsets=np.empty(n, np.int64), lengths=np.empty(n, np.int64), ts_ns=np.empty(n, np.int64),
        cls=np.empty(n, np.uint8), victim=np.zeros(n, np.uint32), proto=np.zeros(n, np.uint8),
        port=np.zeros(n, np.uint16), spoofed_port=np.zeros(n, np.uint16), telescope=np.zeros(n, np.uint32),
        ip_len=np.zeros(n, np.uint32), mismatch=np.zeros(n, np.bool_), digest=np.zeros(n, np.uint64),
    )
    _loops.classify_records(buf, linktype, nsec, _ICMP_CLASS, _ICMP_QUOTES, cols.offsets, cols.lengths, cols.ts_ns, cols.cls,
              cols.victim, cols.proto, cols.port, cols.spoofed_port, cols.telescope, cols.ip_len, cols.mismatch,
              cols.digest)
    return cols


def class_counts(cols: Classified) -> np.ndarray:
    """Packets per class (index = class)."""
    return np.bincount(cols.cls, minlength=len(CLASS_NAMES))


def select_records(packets: bytes | np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate the records at ``offsets`` (with ``lengths``) into a new canonical buffer."""
    src = packets if isinstance(packets, np.ndarray) else np.frombuffer(packets, dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    gather = np.repeat(offsets - starts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return src[gather]
