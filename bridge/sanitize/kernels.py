"""The sanitizer's compiled loops (walk.py, remap.py), from the ahead-of-time build when it is
present and current, numba's JIT otherwise (see bridge/compiled.py)."""

from __future__ import annotations

from bridge.compiled import kernels

_k = kernels("sanitize")
AOT = _k.aot
scan, apply, record_offsets = _k.scan, _k.apply, _k.record_offsets
map4, map6, embedded, set_embedded = _k.map4, _k.map6, _k.embedded, _k.set_embedded
cache_lookup, cache_insert = _k.cache_lookup, _k.cache_insert
