"""The ahead-of-time loops (when built) behave like the JIT's, accept the buffers the hops pass,
keep numba out of the hops, and a stale or disabled build falls back to the JIT."""

from __future__ import annotations

import importlib
import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bridge import assembler, compiled, egress_framing
from bridge.backscatter import aggregate, classify
from bridge.backscatter.telescope import Telescopes
from bridge.pcap import global_header, pack_record

AOT = all(compiled.kernels(name).aot for name in compiled.UNITS)
needs_aot = pytest.mark.skipif(not AOT, reason="ahead-of-time loops not built (python -m bridge.aot)")


def _jit(name: str) -> object:
    unit = compiled.UNITS[name]
    return type("Jit", (), {k: staticmethod(getattr(importlib.import_module(f"{unit.package}.{e.jit_module}"), k))
                            for k, e in unit.exports.items()})


def _traffic(seed: int = 7) -> bytes:
    """SYN-ACKs from a few victims to a /24 telescope."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(400):
        victim = bytes([198, 51, 100, int(rng.integers(1, 6))])
        tele = bytes([192, 0, 2, int(rng.integers(0, 256))])
        ip = bytes.fromhex("4500002800004000f006") + b"\0\0" + victim + tele
        tcp = bytes.fromhex("0050") + int(rng.integers(1024, 65535)).to_bytes(2, "big") + bytes.fromhex("000000010000000150121000" "00000000")
        out.append(pack_record(10**18 + i * 7_000_000, b"\0" * 12 + b"\x08\x00" + ip + tcp))
    return b"".join(out)


def _hub_run() -> list:
    config = aggregate.DetectorConfig(min_packets=5, min_ppm=1, min_duration_s=1.0)
    agg = aggregate.Aggregator(Telescopes(["192.0.2.0/24"]), config)
    records = _traffic()
    events = []
    for sensor, batch in (("a", records), ("b", records), ("c", _traffic(8))):  # b: copies of a's packets
        events += agg.process(classify.classify(batch, 1, False), "site", sensor)
    events += agg.finish()
    cols = classify.classify(records)
    return [json.dumps(e, sort_keys=True, default=str) for e in events] + [repr(agg.stats),
                                                                          [c.tolist() for c in vars(cols).values()]]


def _records_run() -> list:
    records = _traffic()
    big_endian = bytearray(struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    pos = 0
    while pos < len(records):  # the same records with big-endian headers, which the walk swaps
        header = struct.unpack_from("<IIII", records, pos)
        big_endian += struct.pack(">IIII", *header) + records[pos + 16:pos + 16 + header[2]]
        pos += 16 + header[2]
    batches = []
    for stream in (global_header(1, 65535, False) + records, bytes(big_endian)):
        a = assembler.PcapAssembler(max_age=0.1)
        for at in range(0, len(stream), 999):  # chunks cut anywhere, as frames cut a stream
            batches += a.feed(stream[at:at + 999])
        batches += a.close()
    framed = egress_framing.frame_payloads(records, 1500)
    return [[bytes(b.packets) for b in batches], [bytes(f) for f in framed],
            egress_framing.convert_precision(records, False, True)]


def test_the_runs_exercise_the_loops() -> None:
    hub = _hub_run()
    assert len(hub) > 2 and "duplicates=400" in hub[-2]
    batches, framed, _ = _records_run()
    assert len(batches) >= 2 and len(framed) > 2


@needs_aot
@pytest.mark.parametrize("unit, modules, run", [("backscatter", (classify, aggregate), _hub_run),
                                                ("records", (assembler, egress_framing), _records_run)])
def test_aot_and_jit_agree(monkeypatch, unit, modules, run) -> None:
    aot = run()
    for module in modules:
        monkeypatch.setattr(module, "_loops", _jit(unit))
    assert run() == aot


@needs_aot
def test_hops_never_import_numba() -> None:
    """A hop's first records (read-only bytes from a socket or a record) go through the built loops."""
    check = textwrap.dedent("""
        import sys
        from bridge.hops import analyze, egress, ingress, queue, sanitize, sink, export
        from bridge import assembler, egress_framing
        from bridge.backscatter import aggregate
        from bridge.pcap import global_header, pack_record
        aggregate.warm_up(); egress_framing.warm_up()
        records = b"".join(pack_record(10**18 + i, b"\\0" * 60) for i in range(10))
        a = assembler.PcapAssembler(max_age=0.1)
        a.feed(global_header(1, 65535, False) + records); a.close()
        print("numba" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_stale_missing_or_disabled_build_falls_back_to_the_jit(monkeypatch) -> None:
    unit = compiled.UNITS["records"]
    monkeypatch.setattr(compiled.Unit, "source_hash", lambda self: "0" * 64)
    assert compiled._load_aot(unit) is None
    monkeypatch.undo()
    missing = compiled.Unit("bridge.nowhere", unit.exports, unit.runtime)
    assert compiled._load_aot(missing) is None
    monkeypatch.setenv("D4_JIT", "1")
    assert compiled._load_aot(unit) is None
    jit = compiled.kernels("records")
    assert not jit.aot and hasattr(jit.walk_records, "signatures")
    assert len(unit.source_hash()) == 64
