"""Ahead-of-time build of the packet loops (numba.pycc), for a small and fast process.

`python -m bridge.aot [ROOT]` compiles every unit of bridge/compiled.py into extension modules
beside its sources (under ROOT, default this package: ROOT is the directory of the `bridge`
package), plus a hash of the sources each was built from. When they are present and current, a
process uses them and never imports numba (see compiled.py). The build needs a C compiler and
the Python headers (it is a build step, like `make setup`).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from numba.pycc import CC

from bridge.compiled import ROOT, UNITS, Unit


def build_unit(unit: Unit, root: Path) -> list[Path]:
    """Compile one unit into its package directory under ``root``; returns the module paths."""
    out = root.joinpath(*unit.package.split(".")[1:])
    paths = []
    for module, runtime in unit.runtime.items():
        cc = CC(module)
        cc.output_dir = str(out)
        cc.verbose = False
        cc.use_nrt = runtime
        for name, export in unit.exports.items():
            if export.aot_module == module:
                func = getattr(importlib.import_module(f"{unit.package}.{export.jit_module}"), name)
                cc.export(name, export.signature)(func.py_func)
        cc.compile()
        paths.append(next(out.glob(f"{module}.*.so")))
    (out / unit.hash_file.name).write_text(unit.source_hash() + "\n")
    return paths


def build(root: Path | None = None) -> list[Path]:
    """Compile every unit; returns the module paths."""
    return [path for unit in UNITS.values() for path in build_unit(unit, root or ROOT)]


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(path)
