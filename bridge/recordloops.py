"""Compiled loops over packed pcap records (numba; built ahead of time by bridge/aot.py).

Callers reach them through ``bridge.compiled.kernels("records")``, so a process with the
ahead-of-time build never imports numba. A record header is 16 bytes: seconds, sub-second
fraction, captured length, original length (little-endian in the canonical form).
"""

from __future__ import annotations

import numpy as np
from numba import njit

RECORD_HEADER_LEN = 16


@njit(cache=True, nogil=True)
def walk_records(buf: np.ndarray, limit: int, big_endian: bool) -> tuple[np.ndarray, int, int]:  # pragma: no cover - jitted
    """Find the ends of the complete records at the start of ``buf``.

    Returns (ends, status, bad_caplen). Big-endian record headers of complete
    records are byte-swapped in place, so the bytes up to ends[-1] are canonical.
    """
    n = buf.shape[0]
    ends = np.empty(n // RECORD_HEADER_LEN + 1, np.int64)
    k = 0
    pos = 0
    while pos + 16 <= n:
        if big_endian:
            caplen = (buf[pos + 8] << 24) | (buf[pos + 9] << 16) | (buf[pos + 10] << 8) | buf[pos + 11]
        else:
            caplen = buf[pos + 8] | (buf[pos + 9] << 8) | (buf[pos + 10] << 16) | (buf[pos + 11] << 24)
        if caplen > limit:
            return ends[:k], 1, caplen
        end = pos + 16 + caplen
        if end > n:
            break
        if big_endian:
            for f in range(4):
                base = pos + 4 * f
                a = buf[base]
                b = buf[base + 1]
                buf[base] = buf[base + 3]
                buf[base + 1] = buf[base + 2]
                buf[base + 2] = b
                buf[base + 3] = a
        ends[k] = end
        k += 1
        pos = end
    return ends[:k], 0, 0


@njit(cache=True, nogil=True)
def chunk_ends(buf: np.ndarray, limit: int) -> tuple[np.ndarray, int, int]:  # pragma: no cover - jitted
    """Ends of runs of whole records, each run <= limit bytes unless one record is larger.

    Returns (ends, records, bad_at): bad_at is -1, or the offset of a record that runs past
    the end of the buffer.
    """
    n = buf.shape[0]
    ends = np.empty(n // 16 + 1, np.int64)
    k = 0
    records = 0
    start = 0  # start of the open run
    pos = 0
    while pos < n:
        if pos + 16 > n:
            return ends[:k], records, pos
        caplen = buf[pos + 8] | (buf[pos + 9] << 8) | (buf[pos + 10] << 16) | (np.int64(buf[pos + 11]) << 24)
        end = pos + 16 + caplen
        if end > n:
            return ends[:k], records, pos
        if end - start > limit and pos > start:
            ends[k] = pos
            k += 1
            start = pos
        records += 1
        pos = end
    if pos > start:
        ends[k] = pos
        k += 1
    return ends[:k], records, -1


@njit(cache=True, nogil=True)
def scale_fracs(buf: np.ndarray, to_nsec: bool) -> None:  # pragma: no cover - jitted
    n = buf.shape[0]
    pos = 0
    while pos + 16 <= n:
        frac = buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16) | (np.int64(buf[pos + 7]) << 24)
        frac = frac * 1000 if to_nsec else frac // 1000
        for i in range(4):
            buf[pos + 4 + i] = (frac >> (8 * i)) & 0xFF
        caplen = buf[pos + 8] | (buf[pos + 9] << 8) | (buf[pos + 10] << 16) | (np.int64(buf[pos + 11]) << 24)
        pos += 16 + caplen
