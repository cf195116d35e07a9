"""A bounded uint64 -> uint64 cache with compiled batch lookups (remap.cache_lookup): the
per-address results of Crypto-PAn and the keyed MAC hash are looked up for every site of every
batch, and sorting each batch to deduplicate it cost more than the lookups."""

from __future__ import annotations

from typing import Callable

import numpy as np

from bridge.sanitize import kernels


class ValueCache:
    """Maps batches of uint64 keys through `compute` (distinct, sorted keys -> values),
    computing each key once while at most `limit` keys are held (then it starts afresh)."""

    def __init__(self, compute: Callable[[np.ndarray], np.ndarray], limit: int = 1 << 20) -> None:
        self._compute = compute
        self._limit = limit
        self._reset(10)

    def _reset(self, bits: int) -> None:
        self._bits = bits
        self._keys = np.zeros(1 << bits, dtype=np.uint64)
        self._vals = np.zeros(1 << bits, dtype=np.uint64)
        self._used = np.zeros(1 << bits, dtype=np.bool_)
        self._count = 0

    def _grow(self, need: int) -> None:
        """Room for `need` more keys at a load factor of at most one half."""
        if self._count + need > self._limit:
            self._reset(10)  # bounded memory: recomputation gives the same values
        bits = self._bits
        while 2 * (self._count + need) > (1 << bits):
            bits += 1
        if bits != self._bits:
            keys, vals = self._keys[self._used], self._vals[self._used]
            self._reset(bits)
            kernels.cache_insert(self._keys, self._vals, self._used, keys, vals, bits)
            self._count = len(keys)

    def map(self, query: np.ndarray) -> np.ndarray:
        """The values of uint64 keys (duplicates allowed), in a new array."""
        query = np.ascontiguousarray(query, dtype=np.uint64)
        out = np.empty(len(query), dtype=np.uint64)
        miss = kernels.cache_lookup(self._keys, self._vals, self._used, query, out, self._bits)
        if len(miss):
            fresh_keys = np.unique(query[miss])
            fresh = np.ascontiguousarray(self._compute(fresh_keys), dtype=np.uint64)
            out[miss] = fresh[np.searchsorted(fresh_keys, query[miss])]
            self._grow(len(fresh_keys))
            kernels.cache_insert(self._keys, self._vals, self._used, fresh_keys, fresh, self._bits)
            self._count += len(fresh_keys)
        return out
