"""Backscatter classification of whole pcap batches (pure core, numba).

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

One jitted loop walks the canonical records and writes one row per packet into
column arrays, so a batch costs a few tens of nanoseconds per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

CLASS_NAMES = (
    "not_ipv4", "malformed", "other", "scan", "mirai", "masscan", "icmp_request",
    "syn_ack", "rst", "icmp_echo_reply", "icmp_unreachable", "icmp_source_quench", "icmp_redirect",
    "icmp_time_exceeded", "icmp_parameter_problem", "icmp_timestamp_reply", "icmp_info_reply",
    "icmp_mask_reply",
)
"""Packet classes; ``Classified.cls`` holds indexes into this tuple."""

FIRST_BACKSCATTER = CLASS_NAMES.index("syn_ack")
"""Classes from this index on are backscatter."""

(NOT_IPV4, MALFORMED, OTHER, SCAN, MIRAI, MASSCAN, ICMP_REQUEST, SYN_ACK, RST) = range(9)

_ICMP_CLASS = np.full(256, ICMP_REQUEST, dtype=np.uint8)
for _type, _name in ((0, "icmp_echo_reply"), (3, "icmp_unreachable"), (4, "icmp_source_quench"),
                     (5, "icmp_redirect"), (11, "icmp_time_exceeded"), (12, "icmp_parameter_problem"),
                     (14, "icmp_timestamp_reply"), (16, "icmp_info_reply"), (18, "icmp_mask_reply")):
    _ICMP_CLASS[_type] = CLASS_NAMES.index(_name)
_ICMP_QUOTES = np.zeros(256, dtype=np.bool_)
_ICMP_QUOTES[[3, 4, 5, 11, 12]] = True

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


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


@njit(cache=True, nogil=True, inline="always")
def _be16(buf: np.ndarray, p: int) -> int:  # pragma: no cover - jitted
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@njit(cache=True, nogil=True, inline="always")
def _be32(buf: np.ndarray, p: int) -> int:  # pragma: no cover - jitted
    return (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])


@njit(cache=True, nogil=True, inline="always")
def _le32(buf: np.ndarray, p: int) -> int:  # pragma: no cover - jitted
    return (np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 1]) << 8) | np.int64(buf[p])


@njit(cache=True, nogil=True)
def _count_records(buf: np.ndarray) -> int:  # pragma: no cover - jitted
    n = buf.shape[0]
    pos = 0
    k = 0
    while pos + 16 <= n:
        end = pos + 16 + _le32(buf, pos + 8)
        if end > n:
            break
        k += 1
        pos = end
    return k


@njit(cache=True, nogil=True)
def _l3_offset(buf: np.ndarray, data: int, end: int, linktype: int) -> int:  # pragma: no cover - jitted
    """Offset of the IPv4 header inside one frame, or -1."""
    if linktype == 1:  # Ethernet, with any number of 802.1Q / 802.1ad tags
        if data + 14 > end:
            return -1
        ethertype = _be16(buf, data + 12)
        p = data + 14
        while (ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100) and p + 4 <= end:
            ethertype = _be16(buf, p + 2)
            p += 4
        return p if ethertype == 0x0800 else -1
    if linktype == 101 or linktype == 12 or linktype == 228:  # raw IP
        return data if data < end and (buf[data] >> 4) == 4 else -1
    if linktype == 0:  # BSD loopback: AF_INET (2) in host byte order
        if data + 4 > end:
            return -1
        family = _le32(buf, data)
        return data + 4 if family == 2 or family == 0x02000000 else -1
    if linktype == 113:  # Linux cooked capture v1
        return data + 16 if data + 16 <= end and _be16(buf, data + 14) == 0x0800 else -1
    return -1


@njit(cache=True, nogil=True)
def _classify(buf, linktype, nsec, icmp_class, icmp_quotes, offsets, lengths, ts, cls, victim, proto, port,
              spoofed, tele, ip_len, mismatch, digest):  # pragma: no cover - jitted
    n = buf.shape[0]
    pos = 0
    i = 0
    while pos + 16 <= n:
        caplen = _le32(buf, pos + 8)
        data = pos + 16
        end = data + caplen
        if end > n:
            break
        offsets[i] = pos
        lengths[i] = 16 + caplen
        frac = _le32(buf, pos + 4)
        ts[i] = _le32(buf, pos) * 1_000_000_000 + (frac if nsec else frac * 1000)
        pos = end
        c = NOT_IPV4
        l3 = _l3_offset(buf, data, end, linktype)
        if l3 >= 0:
            c = MALFORMED
            if l3 + 20 <= end and (buf[l3] >> 4) == 4 and (buf[l3] & 15) >= 5:
                ihl = (buf[l3] & 15) * 4
                total = _be16(buf, l3 + 2)
                l4 = l3 + ihl
                l4end = min(end, l3 + total)
                ttl = buf[l3 + 8]
                p = buf[l3 + 9]
                src = _be32(buf, l3 + 12)
                dst = _be32(buf, l3 + 16)
                tele[i] = dst
                ip_len[i] = total
                c = OTHER
                if (_be16(buf, l3 + 6) & 0x1FFF) != 0:
                    c = OTHER  # a later fragment carries no transport header
                elif p == 6:
                    if l4 + 16 > l4end:
                        c = MALFORMED
                    else:
                        flags = buf[l4 + 13]
                        if (flags & 0x04) != 0 or (flags & 0x12) == 0x12:
                            c = RST if (flags & 0x04) != 0 else SYN_ACK
                            victim[i] = src
                            proto[i] = 6
                            port[i] = _be16(buf, l4)
                            spoofed[i] = _be16(buf, l4 + 2)
                        elif (flags & 0x3F) == 0x02:
                            if _be32(buf, l4 + 4) == dst:
                                c = MIRAI
                            elif (buf[l4 + 12] >> 4) == 5 and ttl >= 200 and _be16(buf, l4 + 14) == 1024:
                                c = MASSCAN
                            else:
                                c = SCAN
                elif p == 1:
                    if l4 + 8 > l4end:
                        c = MALFORMED
                    else:
                        t = buf[l4]
                        c = icmp_class[t]
                        if c >= SYN_ACK:
                            victim[i] = src
                            proto[i] = 1
                            q = l4 + 8
                            if icmp_quotes[t] and q + 20 <= l4end and (buf[q] >> 4) == 4 and (buf[q] & 15) >= 5:
                                qihl = (buf[q] & 15) * 4
                                if q + qihl <= l4end:
                                    victim[i] = _be32(buf, q + 16)
                                    inner = buf[q + 9]
                                    proto[i] = inner
                                    mismatch[i] = _be32(buf, q + 12) != dst
                                    if (inner == 6 or inner == 17) and q + qihl + 4 <= l4end:
                                        spoofed[i] = _be16(buf, q + qihl)
                                        port[i] = _be16(buf, q + qihl + 2)
                if c >= SYN_ACK:
                    h = _FNV_OFFSET
                    for b in range(l3, l4end):
                        off = b - l3
                        if off == 8 or off == 10 or off == 11:
                            continue
                        h = (h ^ np.uint64(buf[b])) * _FNV_PRIME
                    digest[i] = h
        cls[i] = c
        i += 1


def classify(packets: bytes | bytearray | memoryview | np.ndarray, linktype: int = 1, nsec: bool = False) -> Classified:
    """Classify every record of a canonical pcap batch (see bridge.pcap)."""
    buf = packets if isinstance(packets, np.ndarray) else np.frombuffer(packets, dtype=np.uint8)
    n = _count_records(buf)
    cols = Classified(
        offsets=np.empty(n, np.int64), lengths=np.empty(n, np.int64), ts_ns=np.empty(n, np.int64),
        cls=np.empty(n, np.uint8), victim=np.zeros(n, np.uint32), proto=np.zeros(n, np.uint8),
        port=np.zeros(n, np.uint16), spoofed_port=np.zeros(n, np.uint16), telescope=np.zeros(n, np.uint32),
        ip_len=np.zeros(n, np.uint32), mismatch=np.zeros(n, np.bool_), digest=np.zeros(n, np.uint64),
    )
    _classify(buf, linktype, nsec, _ICMP_CLASS, _ICMP_QUOTES, cols.offsets, cols.lengths, cols.ts_ns, cols.cls,
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
