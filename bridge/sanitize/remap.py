"""Compiled address rewriting for the tcprewrite-style maps, and IPv4-in-IPv6 extraction.

Rule tables: see layout.py. Semantics (tcprewrite): srcipmap applies to sources, dstipmap to destinations, an address without a
direction takes the first match of both; then --pnat applies to the result; first match wins in
each list; a match keeps the host bits under TO's mask.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bridge.sanitize.layout import (
    LIST_DST, LIST_PNAT, LIST_SRC, ROLE_DST, ROLE_OTHER, ROLE_SRC, SLOT_6TO4, SLOT_LOW32, SLOT_TEREDO_CLIENT,
    SLOT_TEREDO_SERVER,
)


@njit(cache=True, inline="always")
def _ipmap_applies(lid, role):
    if lid == LIST_SRC:
        return role == ROLE_SRC or role == ROLE_OTHER
    if lid == LIST_DST:
        return role == ROLE_DST or role == ROLE_OTHER
    return False


@njit(cache=True)
def map4(vals, roles, rules):
    """Apply the IPv4 rules to uint32 values (in a new array)."""
    out = vals.copy()
    for i in range(vals.shape[0]):
        v = np.int64(vals[i])
        for stage in range(2):  # 0: ip maps (first match of the lists that apply), 1: pnat
            for r in range(rules.shape[0]):
                lid = rules[r, 0]
                if (lid == LIST_PNAT) if stage else _ipmap_applies(lid, roles[i]):
                    if (v & rules[r, 2]) == rules[r, 1]:
                        v = (v & ~rules[r, 4] & 0xFFFFFFFF) | (rules[r, 3] & rules[r, 4])
                        break
        out[i] = v
    return out


@njit(cache=True)
def map6(hi, lo, roles, rules):
    """Apply the IPv6 rules to (hi, lo) uint64 halves, in place."""
    for i in range(hi.shape[0]):
        h = hi[i]
        l = lo[i]
        for stage in range(2):
            for r in range(rules.shape[0]):
                lid = np.int64(rules[r, 0])
                if (lid == LIST_PNAT) if stage else _ipmap_applies(lid, roles[i]):
                    if (h & rules[r, 3]) == rules[r, 1] and (l & rules[r, 4]) == rules[r, 2]:
                        h = (h & ~rules[r, 7]) | (rules[r, 5] & rules[r, 7])
                        l = (l & ~rules[r, 8]) | (rules[r, 6] & rules[r, 8])
                        break
        hi[i] = h
        lo[i] = l


@njit(cache=True)
def embedded(hi, lo):
    """Find IPv4 addresses embedded in IPv6: in the low 32 bits of IPv4-mapped ::ffff:0:0/96,
    SIIT ::ffff:0:0:0/96, IPv4-compatible ::/96, NAT64 64:ff9b::/96 and the local-use
    64:ff9b:1::/48 (its /96 prefixes), and ISATAP interface identifiers (::0:5efe:0:0/96 and
    ::200:5efe:0:0/96 under any prefix); 6to4 2002::/16; Teredo 2001::/32 server and inverted
    client. Returns (index, slot, value)."""
    n = hi.shape[0]
    idx = np.empty(2 * n, dtype=np.int64)
    slot = np.empty(2 * n, dtype=np.int64)
    val = np.empty(2 * n, dtype=np.uint32)
    k = 0
    for i in range(n):
        h = hi[i]
        l = lo[i]
        top = l >> np.uint64(32)
        if (h == 0 and (top == 0xFFFF or top == 0xFFFF0000 or top == 0)) or \
                (h == 0x0064FF9B00000000 and top == 0) or (h >> np.uint64(16)) == 0x0064FF9B0001 or \
                (top & np.uint64(0xFDFFFFFF)) == 0x00005EFE:
            idx[k] = i
            slot[k] = SLOT_LOW32
            val[k] = l & 0xFFFFFFFF
            k += 1
        elif (h >> np.uint64(48)) == 0x2002:
            idx[k] = i
            slot[k] = SLOT_6TO4
            val[k] = (h >> np.uint64(16)) & 0xFFFFFFFF
            k += 1
        elif (h >> np.uint64(32)) == 0x20010000:
            idx[k] = i
            slot[k] = SLOT_TEREDO_SERVER
            val[k] = h & 0xFFFFFFFF
            k += 1
            idx[k] = i
            slot[k] = SLOT_TEREDO_CLIENT
            val[k] = ~l & 0xFFFFFFFF
            k += 1
    return idx[:k], slot[:k], val[:k]


@njit(cache=True)
def set_embedded(hi, lo, idx, slot, val):
    """Write the mapped IPv4 values back into their IPv6 addresses, in place."""
    for k in range(idx.shape[0]):
        i = idx[k]
        v = np.uint64(val[k])
        s = slot[k]
        if s == SLOT_LOW32:
            lo[i] = (lo[i] & np.uint64(0xFFFFFFFF00000000)) | v
        elif s == SLOT_6TO4:
            hi[i] = (hi[i] & np.uint64(0xFFFF00000000FFFF)) | (v << np.uint64(16))
        elif s == SLOT_TEREDO_SERVER:
            hi[i] = (hi[i] & np.uint64(0xFFFFFFFF00000000)) | v
        else:
            lo[i] = (lo[i] & np.uint64(0xFFFFFFFF00000000)) | (~v & np.uint64(0xFFFFFFFF))
