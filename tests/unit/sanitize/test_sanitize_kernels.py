"""The ahead-of-time kernels (when built) behave exactly like the JIT ones; stale builds are ignored."""

from __future__ import annotations

import pytest
from sanitize_corpus import PNAT, cases, records

from bridge.sanitize import engine, kernels, policy_from_flags, remap, walk
from bridge.sanitize.engine import Sanitizer

JIT = {"scan": walk.scan, "apply": walk.apply, "record_offsets": walk.record_offsets, "map4": remap.map4,
       "map6": remap.map6, "embedded": remap.embedded, "set_embedded": remap.set_embedded,
       "cache_lookup": remap.cache_lookup, "cache_insert": remap.cache_insert}


@pytest.mark.skipif(not kernels.AOT, reason="ahead-of-time loops not built (python -m bridge.aot)")
@pytest.mark.parametrize("flags", [{"pnat": PNAT}, {"pnat": PNAT, "mac": "zero", "on_unparseable": "cut", "payload": "cut:8"},
                                   {"srcipmap": "10.0.0.0/8:44.0.0.0/8", "dstipmap": "192.168.0.0/16:46.1.0.0/16"}])
def test_aot_and_jit_agree(monkeypatch, flags):
    corpus = cases()
    outputs = []
    for table in (None, JIT):
        if table:
            for name, func in table.items():
                monkeypatch.setattr(kernels, name, func)
        s = Sanitizer(policy_from_flags(**flags))
        outputs.append([(r.packets, r.reasons) for lt in sorted({c.linktype for c in corpus})
                        for r in [s.sanitize_batch(lt, records([c for c in corpus if c.linktype == lt]))]])
    assert outputs[0] == outputs[1]
    assert engine.kernels is kernels
