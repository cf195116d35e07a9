"""Crypto-PAn prefix-preserving address anonymization (Xu, Fan, Ammar, Moon 2002), IPv4 and IPv6.

Construction (compatible with the reference Crypto-PAn 1.0 code and its ports):
key K = 32 bytes, AES key = K[0:16], pad = AES(K[16:32]); for bit i of an n-bit address a,
f_i = MSB(AES(a[0:i] || pad[i:128])) and the result is a XOR f. IPv6 uses the same
construction over 128 bits.

The n inputs of one address do not depend on each other's output, so every input block of
every address of a batch is built with numpy and encrypted in ONE AES-ECB call. Results are
kept in a bounded cache, so each distinct address costs its 32 (IPv4) or 128 (IPv6) AES
blocks once per process.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# addresses per AES call: bounds the temporary input array (IPv6: 4096 * 128 * 16 B = 8 MiB)
_CHUNK = 4096


def _prefix_masks(nbits: int) -> np.ndarray:
    """(nbits, 16) uint8: row i has the top i bits of a 128-bit block set."""
    bits = np.tril(np.ones((nbits, 128), dtype=np.uint8), k=-1)
    return np.packbits(bits, axis=1)


class CryptoPAn:
    """Crypto-PAn with batched AES and a per-process result cache."""

    def __init__(self, key: bytes, cache_size: int = 1 << 20) -> None:
        if len(key) != 32:
            raise ValueError("Crypto-PAn key must be 32 bytes")
        self._cipher = Cipher(algorithms.AES(key[:16]), modes.ECB())
        enc = self._cipher.encryptor()
        pad = np.frombuffer(enc.update(key[16:32]) + enc.finalize(), dtype=np.uint8)
        self._masks = {n: _prefix_masks(n) for n in (32, 128)}
        self._pad_part = {n: pad[None, :] & ~m for n, m in self._masks.items()}
        self._cache_size = cache_size
        # IPv4: sorted arrays (vectorized lookups); IPv6: a dict of 16-byte keys
        self._v4_keys = np.empty(0, dtype=np.uint32)
        self._v4_vals = np.empty(0, dtype=np.uint32)
        self._v6: dict[bytes, bytes] = {}

    def _compute(self, addrs: np.ndarray, nbits: int) -> np.ndarray:
        """Anonymize distinct addresses given as (n, nbits/8) big-endian uint8 rows."""
        n = len(addrs)
        nbytes = nbits // 8
        out = np.empty_like(addrs)
        masks, pad_part = self._masks[nbits], self._pad_part[nbits]
        enc = self._cipher.encryptor()
        for start in range(0, n, _CHUNK):
            chunk = addrs[start:start + _CHUNK]
            full = np.zeros((len(chunk), 16), dtype=np.uint8)
            full[:, :nbytes] = chunk
            # input block i of each address: its first i bits, then the pad from bit i on
            blocks = (full[:, None, :] & masks[None, :, :]) | pad_part[None, :, :]
            cipher = np.frombuffer(enc.update(blocks.tobytes()), dtype=np.uint8).reshape(len(chunk), nbits, 16)
            flips = np.packbits(cipher[:, :, 0] >> 7, axis=1)
            out[start:start + len(chunk)] = chunk ^ flips
        return out

    def anonymize_v4(self, vals: np.ndarray) -> np.ndarray:
        """Anonymize uint32 IPv4 addresses (duplicates allowed)."""
        uniq, inverse = np.unique(np.asarray(vals, dtype=np.uint32), return_inverse=True)
        keys, known = self._v4_keys, self._v4_vals
        pos = np.searchsorted(keys, uniq)
        hit = pos < len(keys)
        hit[hit] = keys[pos[hit]] == uniq[hit]
        result = np.empty_like(uniq)
        result[hit] = known[pos[hit]]
        miss = uniq[~hit]
        if len(miss):
            fresh = self._compute(miss.astype(">u4").view(np.uint8).reshape(-1, 4), 32)
            fresh = fresh.view(">u4").ravel().astype(np.uint32)
            result[~hit] = fresh
            if len(keys) + len(miss) > self._cache_size:
                keys, known = np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.uint32)  # bounded memory
            at = np.searchsorted(keys, miss)  # miss is sorted: inserting keeps keys sorted
            self._v4_keys, self._v4_vals = np.insert(keys, at, miss), np.insert(known, at, fresh)
        return result[inverse.ravel()]

    def anonymize_rows(self, addrs: np.ndarray) -> np.ndarray:
        """Anonymize (n, 4) or (n, 16) uint8 rows of big-endian addresses (duplicates allowed)."""
        if len(addrs) == 0:
            return addrs.copy()
        if addrs.shape[1] == 4:
            vals = np.ascontiguousarray(addrs).view(">u4").ravel()
            return self.anonymize_v4(vals).astype(">u4").view(np.uint8).reshape(-1, 4)
        flat = np.ascontiguousarray(addrs).view("V16").ravel()
        uniq, inverse = np.unique(flat, return_inverse=True)
        cache = self._v6
        keys = [u.tobytes() for u in uniq]
        found = [cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            rows = np.frombuffer(b"".join(keys[i] for i in missing), dtype=np.uint8).reshape(-1, 16)
            fresh = self._compute(rows, 128)
            if len(cache) + len(missing) > self._cache_size:
                cache.clear()  # bounded memory; recomputation gives the same result
            for i, row in zip(missing, fresh):
                found[i] = cache[keys[i]] = row.tobytes()
        result = np.frombuffer(b"".join(found), dtype=np.uint8).reshape(-1, 16)
        return result[inverse.ravel()]

    def anonymize(self, address: str) -> str:
        """Anonymize one textual address (convenience for tests and tools)."""
        import ipaddress

        ip = ipaddress.ip_address(address)
        row = np.frombuffer(ip.packed, dtype=np.uint8)[None, :]
        return str(ipaddress.ip_address(self.anonymize_rows(row)[0].tobytes()))
