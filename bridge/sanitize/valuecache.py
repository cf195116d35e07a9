"""A bounded cache of keys -> values (each one or two 64-bit words) with compiled batch
lookups (remap.cache_lookup): the per-address results of Crypto-PAn and the keyed MAC hash are
looked up for every site of every batch, and sorting each batch to deduplicate it cost more
than the lookups."""

from __future__ import annotations

from typing import Callable

import numpy as np

from bridge.sanitize import kernels


class ValueCache:
    """Maps batches of keys, (n, width) uint64 rows, through `compute` (distinct keys, sorted,
    -> their values as rows of the same width), computing each key once while at most `limit`
    keys are held (then it starts afresh)."""

    def __init__(self, compute: Callable[[np.ndarray], np.ndarray], width: int = 1, limit: int = 1 << 20) -> None:
        self._compute = compute
        self._width = width
        self._limit = limit
        self._reset(10)

    def _reset(self, bits: int) -> None:
        self._bits = bits
        self._keys = np.zeros((1 << bits, self._width), dtype=np.uint64)
        self._vals = np.zeros((1 << bits, self._width), dtype=np.uint64)
        self._used = np.zeros(1 << bits, dtype=np.bool_)
        self._count = 0

    def _insert(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Insert distinct new keys, first making room at a load factor of at most one half."""
        if self._count + len(keys) > self._limit:
            self._reset(10)  # bounded memory: recomputation gives the same values
        bits = self._bits
        while 2 * (self._count + len(keys)) > (1 << bits):
            bits += 1
        if bits != self._bits:
            old_keys, old_vals = self._keys[self._used], self._vals[self._used]
            self._reset(bits)
            kernels.cache_insert(self._keys, self._vals, self._used, old_keys, old_vals, bits)
            self._count = len(old_keys)
        kernels.cache_insert(self._keys, self._vals, self._used, keys, vals, self._bits)
        self._count += len(keys)

    def map(self, query: np.ndarray) -> np.ndarray:
        """The values of keys, (n, width) uint64 rows (duplicates allowed), in a new array."""
        query = np.ascontiguousarray(query, dtype=np.uint64).reshape(-1, self._width)
        out = np.empty_like(query)
        miss = kernels.cache_lookup(self._keys, self._vals, self._used, query, out, self._bits)
        if len(miss):
            missed = query[miss]
            # (np.unique over rows sorts them as records: much slower for one word)
            fresh = np.unique(missed.ravel())[:, None] if self._width == 1 else np.unique(missed, axis=0)
            self._insert(fresh, np.ascontiguousarray(self._compute(fresh), dtype=np.uint64).reshape(-1, self._width))
            found = np.empty_like(missed)
            kernels.cache_lookup(self._keys, self._vals, self._used, missed, found, self._bits)
            out[miss] = found
        return out
