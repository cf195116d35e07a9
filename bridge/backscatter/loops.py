"""The hub's compiled loops (numba; built ahead of time by bridge/aot.py): the classifier's walk
over canonical pcap records and the aggregator's de-duplication and vector updates.

Callers reach them through ``bridge.compiled.kernels("backscatter")``, so a hub process with the
ahead-of-time build never imports numba. classify.py and aggregate.py document the rules.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bridge.backscatter.classes import MALFORMED, MASSCAN, MIRAI, NOT_IPV4, OTHER, RST, SCAN, SYN_ACK

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


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
def count_records(buf: np.ndarray) -> int:  # pragma: no cover - jitted
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
def classify_records(buf, linktype, nsec, icmp_class, icmp_quotes, offsets, lengths, ts, cls, victim, proto, port,
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


@njit(cache=True, nogil=True)
def dedup(digest, ts, sensor, table_h, table_t, table_s, horizon, window_ns):  # pragma: no cover - jitted
    """Mark copies: the same packet from another sensor within window_ns, or a replay (same sensor, same time).

    A SYN-ACK retransmission (same bytes, same sensor, later time) is not a copy.
    Entries older than ``horizon`` may be reused (the slowest active sensor is
    past them, so no copy can still come); a full probe run overwrites its oldest.
    """
    n = digest.shape[0]
    mask = table_h.shape[0] - 1
    dup = np.zeros(n, np.bool_)
    overflow = 0
    for i in range(n):
        h = digest[i]
        if h == 0:
            h = np.uint64(1)  # 0 marks an empty slot
        t = ts[i]
        s = sensor[i]
        slot = np.int64(h & np.uint64(mask))
        free = -1
        oldest = slot
        for _ in range(16):
            th = table_h[slot]
            if th == 0:
                if free < 0:
                    free = slot
                break
            if th == h:
                dt = abs(table_t[slot] - t)
                if (table_s[slot] != s and dt <= window_ns) or (table_s[slot] == s and dt == 0):
                    dup[i] = True
                    break
            if free < 0 and table_t[slot] < horizon:
                free = slot
            if table_t[slot] < table_t[oldest]:
                oldest = slot
            slot = (slot + 1) & mask
        if not dup[i]:
            if free < 0:
                free = oldest
                overflow += 1
            table_h[free] = h
            table_t[free] = t
            table_s[free] = s
    return dup, overflow


@njit(cache=True, nogil=True)
def update_vectors(rows, ts, ip_len, mismatch, cls, tele, port, spoofed, site, sensor, bucket_ns, packets, nbytes,
            first, last, mism, ring, head, max_ppm, classes, tele0, port0, spoofed0, site0, sensor0):  # pragma: no cover
    nb = ring.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        t = ts[i]
        b = t // bucket_ns
        if packets[r] == 0:
            first[r] = t
            last[r] = t
            head[r] = b
            for k in range(nb):
                ring[r, k] = 0
            tele0[r] = tele[i]
            port0[r] = port[i]
            spoofed0[r] = spoofed[i]
            site0[r] = site
            sensor0[r] = sensor
        else:
            if t < first[r]:
                first[r] = t
            if t > last[r]:
                last[r] = t
        packets[r] += 1
        nbytes[r] += ip_len[i]
        if mismatch[i]:
            mism[r] += 1
        classes[r, cls[i] - 7] += 1
        if b > head[r]:
            steps = b - head[r]
            if steps >= nb:
                for k in range(nb):
                    ring[r, k] = 0
            else:
                for s in range(1, steps + 1):
                    ring[r, (head[r] + s) % nb] = 0
            head[r] = b
        if b > head[r] - nb:
            ring[r, b % nb] += 1
            total = 0
            for k in range(nb):
                total += ring[r, k]
            if total > max_ppm[r]:
                max_ppm[r] = total
