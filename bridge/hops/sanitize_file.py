"""``d4-bridge sanitize-file IN OUT``: the sanitizer engine on a pcap file, with progress."""

from __future__ import annotations

import sys

from bridge.allocator import tune_malloc
from bridge.config import Config
from bridge.pcap import PcapFormatError
from bridge.sanitize.offline import sanitize_file
from bridge.sanitize.policy import PolicyError, policy_from_config


def run(cfg: Config) -> int:
    """Sanitize ``sanitize.input`` into ``sanitize.output``; print what was kept, cut and dropped.

    Exit status: 0 done, 2 bad policy or unreadable input.
    """
    scfg = cfg.sanitize
    if not scfg.input or not scfg.output:
        print("d4-bridge sanitize-file: IN and OUT are required", file=sys.stderr)
        return 2
    try:
        policy = policy_from_config(scfg)
    except PolicyError as exc:
        print(f"d4-bridge sanitize-file: invalid policy: {exc}", file=sys.stderr)
        return 2
    if policy.less_safe():
        # before the work starts, so that it is seen even when the run is interrupted
        print(f"WARNING {policy.less_safe()}", file=sys.stderr)
    tune_malloc()  # the engine's per-batch arrays are reused, not mapped afresh every batch
    try:
        summary = sanitize_file(scfg.input, scfg.output, policy, progress=True)
    except (OSError, PcapFormatError) as exc:
        print(f"d4-bridge sanitize-file: {exc}", file=sys.stderr)
        return 2
    print(f"policy {policy.name} version {policy.version}" + (f" key {policy.key_fingerprint}" if policy.key_fingerprint else ""),
          file=sys.stderr)
    for line in summary.lines():
        print(line, file=sys.stderr)
    from bridge.sanitize import kernels

    if not kernels.AOT:
        print("note: compiled loops came from the JIT (about 1 s of start-up); `python -m bridge.aot` "
              "builds them ahead of time", file=sys.stderr)
    return 0
