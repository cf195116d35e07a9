"""Compiled address rewriting for the tcprewrite-style maps, and IPv4-in-IPv6 extraction.

Rule tables: see layout.py. Semantics (tcprewrite): srcipmap applies to sources, dstipmap to destinations, an address without a
direction takes the first match of both; then --pnat applies to the result; first match wins in
each list; a match keeps the host bits under TO's mask.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bridge.sanitize.layout import (
    LIST_DST, LIST_PNAT, LIST_SRC, ROLE_DST, ROLE_OTHER, ROLE_SRC, SLOT_6TO4, SLOT_LOW32, SLOT_NAT64_48, SLOT_NAT64_56,
    SLOT_NAT64_64, SLOT_TEREDO_CLIENT, SLOT_TEREDO_SERVER,
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


@njit(cache=True, inline="always")
def _nat64_local_slot(l):
    """Which RFC 6052 embedding an address of the local-use 64:ff9b:1::/48 has (low half l):
    under a /48, /56 or /64 prefix the IPv4 address sits around the zero u octet (bits 64-71)
    and the suffix after it is zero; otherwise the /96 form (the low 32 bits)."""
    if (l >> np.uint64(56)) == 0:
        if (l & np.uint64(0xFFFFFFFFFF)) == 0:
            return SLOT_NAT64_48
        if (l & np.uint64(0xFFFFFFFF)) == 0:
            return SLOT_NAT64_56
        if (l & np.uint64(0xFFFFFF)) == 0:
            return SLOT_NAT64_64
    return SLOT_LOW32


@njit(cache=True)
def embedded(hi, lo):
    """Find IPv4 addresses embedded in IPv6: in the low 32 bits of IPv4-mapped ::ffff:0:0/96,
    SIIT ::ffff:0:0:0/96, IPv4-compatible ::/96, NAT64 64:ff9b::/96, and ISATAP interface
    identifiers (::0:5efe:0:0/96 and ::200:5efe:0:0/96 under any prefix); in the local-use NAT64
    prefix 64:ff9b:1::/48 in any RFC 6052 form; 6to4 2002::/16; Teredo 2001::/32 server and
    inverted client. Returns (index, slot, value)."""
    n = hi.shape[0]
    idx = np.empty(2 * n, dtype=np.int64)
    slot = np.empty(2 * n, dtype=np.int64)
    val = np.empty(2 * n, dtype=np.uint32)
    k = 0
    for i in range(n):
        h = hi[i]
        l = lo[i]
        top = l >> np.uint64(32)
        if (h >> np.uint64(16)) == 0x0064FF9B0001:
            s = _nat64_local_slot(l)
            idx[k] = i
            slot[k] = s
            if s == SLOT_NAT64_48:
                val[k] = ((h & np.uint64(0xFFFF)) << np.uint64(16)) | ((l >> np.uint64(40)) & np.uint64(0xFFFF))
            elif s == SLOT_NAT64_56:
                val[k] = ((h & np.uint64(0xFF)) << np.uint64(24)) | ((l >> np.uint64(32)) & np.uint64(0xFFFFFF))
            elif s == SLOT_NAT64_64:
                val[k] = (l >> np.uint64(24)) & np.uint64(0xFFFFFFFF)
            else:
                val[k] = l & 0xFFFFFFFF
            k += 1
        elif (h == 0 and (top == 0xFFFF or top == 0xFFFF0000 or top == 0)) or (h == 0x0064FF9B00000000 and top == 0) \
                or (top & np.uint64(0xFDFFFFFF)) == 0x00005EFE:
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
        elif s == SLOT_TEREDO_CLIENT:
            lo[i] = (lo[i] & np.uint64(0xFFFFFFFF00000000)) | (~v & np.uint64(0xFFFFFFFF))
        elif s == SLOT_NAT64_48:
            hi[i] = (hi[i] & np.uint64(0xFFFFFFFFFFFF0000)) | (v >> np.uint64(16))
            lo[i] = (lo[i] & np.uint64(0xFF0000FFFFFFFFFF)) | ((v & np.uint64(0xFFFF)) << np.uint64(40))
        elif s == SLOT_NAT64_56:
            hi[i] = (hi[i] & np.uint64(0xFFFFFFFFFFFFFF00)) | (v >> np.uint64(24))
            lo[i] = (lo[i] & np.uint64(0xFF000000FFFFFFFF)) | ((v & np.uint64(0xFFFFFF)) << np.uint64(32))
        else:
            lo[i] = (lo[i] & np.uint64(0xFF00000000FFFFFF)) | (v << np.uint64(24))


# Multiplicative hashing (Fibonacci): the top bits of key * 2^64/phi index the table; the last
# key word is folded in with another odd multiplier first.
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_HASH_MUL2 = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(cache=True)
def _slot(first, last, shift):
    """The home slot of a key given by its first and last words (the same word for one)."""
    return np.int64(((first ^ (last * _HASH_MUL2)) * _HASH_MUL) >> shift)


@njit(cache=True)
def cache_lookup(keys, vals, used, query, out, bits):
    """Look up query keys (rows of one or two uint64 words) in an open-addressing hash table
    of 2**bits slots (keys, vals, used): out[i] = the value of query[i]; returns the indices of
    the queries not in the table."""
    mask = (np.int64(1) << bits) - 1
    shift = np.uint64(64 - bits)
    width = query.shape[1]
    miss = np.empty(query.shape[0], dtype=np.int64)
    m = 0
    for i in range(query.shape[0]):
        q0 = query[i, 0]
        q1 = query[i, width - 1]
        j = _slot(q0, q1, shift)
        found = False
        while used[j]:
            if keys[j, 0] == q0 and keys[j, width - 1] == q1:
                out[i, 0] = vals[j, 0]
                out[i, width - 1] = vals[j, width - 1]
                found = True
                break
            j = (j + 1) & mask
        if not found:
            miss[m] = i
            m += 1
    return miss[:m]


@njit(cache=True)
def cache_insert(keys, vals, used, new_keys, new_vals, bits):
    """Insert distinct keys that are not in the table yet (the caller keeps it at most half
    full, so every probe sequence ends)."""
    mask = (np.int64(1) << bits) - 1
    shift = np.uint64(64 - bits)
    width = new_keys.shape[1]
    for i in range(new_keys.shape[0]):
        j = _slot(new_keys[i, 0], new_keys[i, width - 1], shift)
        while used[j]:
            j = (j + 1) & mask
        for w in range(width):
            keys[j, w] = new_keys[i, w]
            vals[j, w] = new_vals[i, w]
        used[j] = True
