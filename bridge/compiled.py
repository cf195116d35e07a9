"""The packet loops, compiled: the ahead-of-time build when it is present and current, numba's JIT
otherwise. Both come from the same source modules (the units below).

A process that finds every unit it uses built ahead of time never imports numba: that saves
about 60 MB of resident memory per process (numba and llvmlite loaded), another 30-80 MB of
LLVM state for the JIT's work, and up to a second of CPU at start. ``python -m bridge.aot``
builds the units (``make setup`` does it); without a C compiler everything runs through the JIT.

A stale build (its sources changed since) is ignored: each build records a hash of its sources.
D4_JIT=1 in the environment forces the JIT (for comparisons and debugging; outside the
D4BRIDGE_* namespace, which is configuration).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Export:
    """One compiled function: the source module numba compiles it from, the extension module the
    ahead-of-time build puts it in, and its signature there (numba's notation)."""

    jit_module: str
    aot_module: str
    signature: str


@dataclass(frozen=True)
class Unit:
    """One package's compiled loops. ``runtime`` says, per extension module, whether it links
    numba's reference-counting runtime: only loops that allocate their results need it, and
    without it a loop pays no atomic count per array it hands to an inlined helper."""

    package: str
    exports: dict[str, Export]
    runtime: dict[str, bool]
    extra_sources: tuple[str, ...] = ()  # numba-free modules whose constants the loops compile in

    @property
    def directory(self) -> Path:
        return ROOT.joinpath(*self.package.split(".")[1:])

    @property
    def hash_file(self) -> Path:
        return self.directory / f"{next(iter(self.runtime))}.sha256"

    def source_hash(self) -> str:
        """SHA-256 over the sources of the compiled loops."""
        h = hashlib.sha256()
        names = sorted({e.jit_module for e in self.exports.values()}) + list(self.extra_sources)
        for name in names:
            h.update((self.directory / f"{name}.py").read_bytes())
        return h.hexdigest()


def _unit(package: str, runtime: dict[str, bool], extra: tuple[str, ...], **exports: tuple[str, str, str]) -> Unit:
    return Unit(package, {k: Export(*v) for k, v in exports.items()}, runtime, extra)


_SCAN = ("void(u1[::1], i8, b1, i8[:, ::1], i8, b1, i8[::1], i1[::1], i8[::1], i8[::1], "
         "i8[:, ::1], i8[:, ::1], i8[:, ::1], i8[:, ::1], i8[:, ::1], i8[::1], i8[::1])")
_APPLY = ("i8(u1[::1], i8[::1], i8[::1], i8[:, ::1], u4[::1], i8[:, ::1], u8[:, ::1], i8[:, ::1], u8[::1], "
          "i8[:, ::1], i8[:, ::1], i8, i8, i8, i8, i8, i1[::1], i8[::1], i8[::1], i8[:, ::1], u1[::1], i8[::1], "
          "i8[::1], b1[::1])")
_CLASSIFY = ("void(u1[::1], i8, b1, u1[::1], b1[::1], i8[::1], i8[::1], i8[::1], u1[::1], u4[::1], u1[::1], "
             "u2[::1], u2[::1], u4[::1], u4[::1], b1[::1], u8[::1])")
_UPDATE = ("void(i8[::1], i8[::1], u4[::1], b1[::1], u1[::1], u4[::1], u2[::1], u2[::1], i8, i8, i8, i8[::1], "
           "i8[::1], i8[::1], i8[::1], i8[::1], i8[:, ::1], i8[::1], i8[::1], i8[:, ::1], u4[::1], u2[::1], "
           "u2[::1], i4[::1], i4[::1])")

UNITS = {
    "records": _unit(
        "bridge", {"_recordloops": True}, (),
        walk_records=("recordloops", "_recordloops", "Tuple((i8[::1], i8, i8))(u1[::1], i8, b1)"),
        chunk_ends=("recordloops", "_recordloops", "Tuple((i8[::1], i8, i8))(u1[::1], i8)"),
        scale_fracs=("recordloops", "_recordloops", "void(u1[::1], b1)"),
    ),
    "sanitize": _unit(
        "bridge.sanitize", {"_kernels": True, "_kernels_walk": False}, ("layout",),
        record_offsets=("walk", "_kernels", "i8[::1](u1[::1])"),
        map4=("remap", "_kernels", "u4[::1](u4[::1], i8[:], i8[:, ::1])"),
        map6=("remap", "_kernels", "void(u8[::1], u8[::1], i8[:], u8[:, ::1])"),
        embedded=("remap", "_kernels", "Tuple((i8[::1], i8[::1], u4[::1]))(u8[::1], u8[::1])"),
        set_embedded=("remap", "_kernels", "void(u8[::1], u8[::1], i8[::1], i8[::1], u4[::1])"),
        cache_lookup=("remap", "_kernels", "i8[::1](u8[:, ::1], u8[:, ::1], b1[::1], u8[:, ::1], u8[:, ::1], i8)"),
        cache_insert=("remap", "_kernels", "void(u8[:, ::1], u8[:, ::1], b1[::1], u8[:, ::1], u8[:, ::1], i8)"),
        scan=("walk", "_kernels_walk", _SCAN),
        apply=("walk", "_kernels_walk", _APPLY),
    ),
    "backscatter": _unit(
        "bridge.backscatter", {"_kernels": True}, ("classes",),
        count_records=("loops", "_kernels", "i8(u1[::1])"),
        classify_records=("loops", "_kernels", _CLASSIFY),
        dedup=("loops", "_kernels", "Tuple((b1[::1], i8))(u8[::1], i8[::1], i4[::1], u8[::1], i8[::1], i4[::1], i8, i8)"),
        update_vectors=("loops", "_kernels", _UPDATE),
    ),
}


def _load_aot(unit: Unit) -> dict[str, object] | None:
    if os.environ.get("D4_JIT") == "1":
        return None
    try:
        if unit.hash_file.read_text().strip() != unit.source_hash():
            log.warning("%s: ahead-of-time loops are stale (run python -m bridge.aot); using the JIT", unit.package)
            return None
        modules = {name: importlib.import_module(f"{unit.package}.{name}") for name in unit.runtime}
    except (OSError, ImportError):
        return None
    return {name: getattr(modules[e.aot_module], name) for name, e in unit.exports.items()}


def kernels(name: str) -> SimpleNamespace:
    """The compiled functions of unit ``name`` as attributes; ``.aot`` says which build they are."""
    unit = UNITS[name]
    funcs = _load_aot(unit)
    aot = funcs is not None
    if funcs is None:
        funcs = {k: getattr(importlib.import_module(f"{unit.package}.{e.jit_module}"), k) for k, e in unit.exports.items()}
    return SimpleNamespace(aot=aot, **funcs)
