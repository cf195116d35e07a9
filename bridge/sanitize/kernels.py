"""The sanitizer's compiled loops: the ahead-of-time module when it is built and current
(aot.py), numba's JIT otherwise. Both come from the same source (walk.py, remap.py).

A stale build (sources changed since) is ignored: the build records a hash of the sources.
D4_SANITIZE_JIT=1 in the environment forces the JIT (for comparisons and debugging; outside the
D4BRIDGE_* namespace, which is configuration).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = ("walk.py", "remap.py", "layout.py")
HASH_FILE = HERE / "_kernels.sha256"


def source_hash() -> str:
    """SHA-256 over the sources of the compiled loops."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()


def _load_aot():
    """The ahead-of-time modules (allocating kernels, and the walk built without the
    reference-counting runtime), or None."""
    if os.environ.get("D4_SANITIZE_JIT") == "1":
        return None
    try:
        if HASH_FILE.read_text().strip() != source_hash():
            log.warning("sanitizer: ahead-of-time kernels are stale (run python -m bridge.sanitize.aot); using the JIT")
            return None
        return (importlib.import_module("bridge.sanitize._kernels"),
                importlib.import_module("bridge.sanitize._kernels_walk"))
    except (OSError, ImportError):
        return None


_aot = _load_aot()
AOT = _aot is not None
if _aot is not None:
    _core, _walk = _aot
    scan, apply = _walk.scan, _walk.apply
    record_offsets, map4, map6, embedded, set_embedded = (_core.record_offsets, _core.map4, _core.map6, _core.embedded,
                                                           _core.set_embedded)
    cache_lookup, cache_insert = _core.cache_lookup, _core.cache_insert
else:
    from bridge.sanitize.remap import cache_insert, cache_lookup, embedded, map4, map6, set_embedded  # noqa: F401
    from bridge.sanitize.walk import apply, record_offsets, scan  # noqa: F401
