"""The sanitize hop's per-transaction tally feeds the drop counters and the self-check counter."""

from __future__ import annotations

from collections import Counter

from prometheus_client import REGISTRY

from bridge.hops.sanitize import SELF_CHECK, Tally


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_self_check_drops_count_as_drops_and_as_leaks_stopped():
    before = (sample("d4bridge_sanitize_leaks_total"), sample("d4bridge_sanitize_dropped_total", reason=SELF_CHECK),
              sample("d4bridge_sanitize_dropped_total", reason="fragment"))
    Tally(packets_in=10, packets_out=7, dropped=Counter({SELF_CHECK: 2, "fragment": 1})).publish()
    after = (sample("d4bridge_sanitize_leaks_total"), sample("d4bridge_sanitize_dropped_total", reason=SELF_CHECK),
             sample("d4bridge_sanitize_dropped_total", reason="fragment"))
    assert [a - b for a, b in zip(after, before)] == [2, 2, 1]
