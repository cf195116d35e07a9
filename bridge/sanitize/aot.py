"""Ahead-of-time build of the sanitizer's compiled loops (numba.pycc), for fast start-up.

`python -m bridge.sanitize.aot` compiles walk.py and remap.py into the extension modules
bridge/sanitize/_kernels*.so (plus _kernels.sha256, the hash of the sources they were built from).
When that module is present and current, `kernels` uses it and a process never
imports numba (saving ~0.7 s of CPU at start: numba's import and JIT-cache load), which matters
for one-shot commands such as `sanitize-file`. Without it everything works through the JIT.
The build needs a C compiler and the Python headers (it is a build step, like `make setup`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from numba.pycc import CC

from bridge.sanitize import remap, walk

# module -> whether it links numba's reference-counting runtime -> exported name ->
# (compiled function, signature). scan and apply allocate nothing and are built without the
# runtime (see walk.py), the others allocate their results.
MODULES = {
    "_kernels": (True, {
        "record_offsets": (walk.record_offsets, "i8[::1](u1[::1])"),
        "map4": (remap.map4, "u4[::1](u4[::1], i8[:], i8[:, ::1])"),
        "map6": (remap.map6, "void(u8[::1], u8[::1], i8[:], u8[:, ::1])"),
        "embedded": (remap.embedded, "Tuple((i8[::1], i8[::1], u4[::1]))(u8[::1], u8[::1])"),
        "set_embedded": (remap.set_embedded, "void(u8[::1], u8[::1], i8[::1], i8[::1], u4[::1])"),
        "cache_lookup": (remap.cache_lookup, "i8[::1](u8[:, ::1], u8[:, ::1], b1[::1], u8[:, ::1], u8[:, ::1], i8)"),
        "cache_insert": (remap.cache_insert, "void(u8[:, ::1], u8[:, ::1], b1[::1], u8[:, ::1], u8[:, ::1], i8)"),
    }),
    "_kernels_walk": (False, {
        "scan": (walk.scan, "void(u1[::1], i8, b1, i8[:, ::1], i8, b1, i8[::1], i1[::1], i8[::1], i8[::1], "
                            "i8[:, ::1], i8[:, ::1], i8[:, ::1], i8[:, ::1], i8[:, ::1], i8[::1], i8[::1])"),
        "apply": (walk.apply, "i8(u1[::1], i8[::1], i8[::1], i8[:, ::1], u4[::1], i8[:, ::1], u8[:, ::1], "
                              "i8[:, ::1], u8[::1], i8[:, ::1], i8[:, ::1], i8, i8, i8, i8, i8, i1[::1], i8[::1], "
                              "i8[::1], i8[:, ::1], u1[::1], i8[::1], i8[::1], b1[::1])"),
    }),
}


def build(output_dir: Path | None = None) -> list[Path]:
    """Compile the kernels into output_dir (default: this package); returns the module paths."""
    out = output_dir or Path(__file__).resolve().parent
    paths = []
    for module, (use_nrt, exports) in MODULES.items():
        cc = CC(module)
        cc.output_dir = str(out)
        cc.verbose = False
        cc.use_nrt = use_nrt
        for name, (func, sig) in exports.items():
            cc.export(name, sig)(func.py_func)
        cc.compile()
        paths.append(next(out.glob(f"{module}.*.so")))
    from bridge.sanitize.kernels import HASH_FILE, source_hash

    (out / HASH_FILE.name).write_text(source_hash() + "\n")
    return paths


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(path)
