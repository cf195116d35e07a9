"""Crypto-PAn prefix-preserving address anonymization (Xu, Fan, Ammar, Moon 2002), IPv4 and IPv6.

Construction (compatible with the reference Crypto-PAn 1.0 code and its ports):
key K = 32 bytes, AES key = K[0:16], pad = AES(K[16:32]); for bit i of an n-bit address a,
f_i = MSB(AES(a[0:i] || pad[i:128])) and the result is a XOR f. IPv6 uses the same
construction over 128 bits.

The n inputs of one address do not depend on each other's output, and the input for bit i
depends only on the first i bits, so the blocks of a batch's addresses are built level by level
with numpy, each distinct prefix once, and encrypted in one AES-ECB call per level. Results are
kept in a bounded cache, so each distinct address costs at most its 32 (IPv4) or 128 (IPv6)
AES blocks once per process, and far fewer where addresses share prefixes.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bridge.sanitize.valuecache import ValueCache


class CryptoPAn:
    """Crypto-PAn with batched AES and a per-process result cache."""

    def __init__(self, key: bytes, cache_size: int = 1 << 20) -> None:
        if len(key) != 32:
            raise ValueError("Crypto-PAn key must be 32 bytes")
        self._cipher = Cipher(algorithms.AES(key[:16]), modes.ECB())
        enc = self._cipher.encryptor()
        pad = enc.update(key[16:32]) + enc.finalize()
        self._pad_words = np.frombuffer(pad, dtype=">u8").astype(np.uint64)
        self._cache_size = cache_size
        # compiled hash tables: every site of every batch is looked up
        self._v4 = ValueCache(self._compute_v4, 1, cache_size)
        self._v6 = ValueCache(self._compute_v6, 2, cache_size)

    def _compute(self, addrs: np.ndarray, nbits: int) -> np.ndarray:
        """Anonymize distinct addresses given as (n, nbits/8) big-endian uint8 rows.

        The AES input for bit i of an address depends only on its first i bits, so addresses
        sharing a prefix share those blocks: a telescope's dense /16 needs about 65,000 AES
        blocks instead of 32 per address. Sorted, the addresses with a common i-bit prefix are
        neighbours, so each level's distinct prefixes are found in one linear pass (over the
        address as two 64-bit words, high first)."""
        n = len(addrs)
        if n == 0:
            return addrs.copy()
        full = np.zeros((n, 16), dtype=np.uint8)
        full[:, :nbits // 8] = addrs
        words = full.view(">u8").astype(np.uint64)  # (n, 2)
        order = np.lexsort((words[:, 1], words[:, 0]))
        words = words[order]
        pad = self._pad_words
        flips = np.zeros((n, 2), dtype=np.uint64)
        same_before = np.ones(n - 1, dtype=bool)  # equal in the whole words before this level's
        enc = self._cipher.encryptor()
        one = np.uint64(1)
        for i in range(nbits):
            w, used = divmod(i, 64)
            if used == 0 and w:
                same_before &= words[1:, w - 1] == words[:-1, w - 1]
            part = words[:, w] >> np.uint64(64 - used) if used else np.zeros(n, dtype=np.uint64)
            first = np.ones(n, dtype=bool)
            first[1:] = ~(same_before & (part[1:] == part[:-1]))
            heads = words[first]
            blocks = np.empty((len(heads), 2), dtype=np.uint64)
            for k in range(2):
                # bits of the address before bit i, the pad's from bit i on
                keep = min(max(i - 64 * k, 0), 64)
                mask = np.uint64(((1 << keep) - 1) << (64 - keep)) if keep else np.uint64(0)
                blocks[:, k] = (heads[:, k] & mask) | (pad[k] & ~mask)
            cipher = np.frombuffer(enc.update(blocks.astype(">u8").tobytes()), dtype=np.uint8)[::16]
            bit = (cipher >> 7).astype(np.uint64)[np.cumsum(first) - 1]
            flips[:, w] |= bit << np.uint64(63 - used)
        out = np.empty_like(addrs)
        out[order] = (words ^ flips).astype(">u8").view(np.uint8).reshape(n, 16)[:, :nbits // 8]
        return out

    def _compute_v4(self, keys: np.ndarray) -> np.ndarray:
        """Anonymize distinct IPv4 addresses held in (n, 1) uint64 keys."""
        rows = keys.ravel().astype(">u4").view(np.uint8).reshape(-1, 4)
        return self._compute(rows, 32).view(">u4").ravel().astype(np.uint64)

    def _compute_v6(self, keys: np.ndarray) -> np.ndarray:
        """Anonymize distinct IPv6 addresses held in (n, 2) uint64 keys (high, low halves)."""
        rows = keys.astype(">u8").view(np.uint8).reshape(-1, 16)
        return self._compute(rows, 128).view(">u8").reshape(-1, 2).astype(np.uint64)

    def anonymize_v4(self, vals: np.ndarray) -> np.ndarray:
        """Anonymize uint32 IPv4 addresses (duplicates allowed)."""
        return self._v4.map(np.asarray(vals, dtype=np.uint32).astype(np.uint64)).ravel().astype(np.uint32)

    def anonymize_v6(self, halves: np.ndarray) -> np.ndarray:
        """Anonymize IPv6 addresses given as (n, 2) uint64 rows of (high, low) halves."""
        return self._v6.map(halves)

    def anonymize_rows(self, addrs: np.ndarray) -> np.ndarray:
        """Anonymize (n, 4) or (n, 16) uint8 rows of big-endian addresses (duplicates allowed)."""
        if addrs.shape[1] == 4:
            vals = np.ascontiguousarray(addrs).view(">u4").ravel()
            return self.anonymize_v4(vals).astype(">u4").view(np.uint8).reshape(-1, 4)
        halves = np.ascontiguousarray(addrs).view(">u8").reshape(-1, 2).astype(np.uint64)
        return self.anonymize_v6(halves).astype(">u8").view(np.uint8).reshape(-1, 16)

    def anonymize(self, address: str) -> str:
        """Anonymize one textual address (convenience for tests and tools)."""
        import ipaddress

        ip = ipaddress.ip_address(address)
        row = np.frombuffer(ip.packed, dtype=np.uint8)[None, :]
        return str(ipaddress.ip_address(self.anonymize_rows(row)[0].tobytes()))
