"""Aggregation and attack detection against generated ground truth (backscatter.md §H test shapes)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from bridge import records
from bridge import traffic as T
from bridge.backscatter.aggregate import PROFILES, Aggregator, DetectorConfig
from bridge.backscatter.classify import classify
from bridge.backscatter.telescope import PrefixSet, Telescopes

START = 1_700_000_000 * 10**9
BATCH = 2000


def _batches(g: T.GeneratedTraffic, size: int = BATCH):
    for lo in range(0, g.count, size):
        hi = min(g.count, lo + size)
        end = g.offsets[hi] if hi < g.count else len(g.packets)
        yield g.packets[g.offsets[lo]:end]


def _run(agg: Aggregator, views: list[tuple[str, T.GeneratedTraffic]], finish: bool = True) -> list[dict]:
    """Feed several sites' captures interleaved batch by batch, as a hub receives them."""
    streams = [((site, f"sensor-{site}"), list(_batches(g))) for site, g in views]
    events: list[dict] = []
    for i in range(max(len(b) for _, b in streams)):
        for (site, sensor), batches in streams:
            if i < len(batches):
                events += agg.process(classify(batches[i]), site, sensor)
    return events + (agg.finish() if finish else [])


def _check_truth(events: list[dict], truth: list[T.SimulatedAttack]) -> None:
    declared = [e for e in events if e["status"] == "declared"]
    final = [e for e in events if e["status"] == "final"]
    assert len(declared) == len(truth) == len(final), [e["attack_id"] for e in declared]
    for t in truth:
        mine = [e for e in final if e["victim"] == t.victim]
        assert len(mine) == 1, t
        e = mine[0]
        assert e["protocol"] == t.protocol
        assert e["ports"] == ([] if t.port is None else [t.port])
        assert abs(e["estimated_pps"] - t.pps) <= 0.2 * t.pps, (e["estimated_pps"], t)
        assert e["monitored_addresses"] == t.monitored_addresses
        assert e["icmp_mismatches"] == 0
        assert {x["attack_id"] for x in events if x["victim"] == t.victim} == {e["attack_id"]}
        seqs = [x["seq"] for x in events if x["victim"] == t.victim]
        assert seqs == list(range(len(seqs)))


@pytest.fixture(scope="module")
def reference() -> T.GeneratedTraffic:
    scenario = T.Scenario(attacks=T.reference_attacks(30, 600), bursts=(
        T.Burst("syn_flood", "198.51.100.99", 22, 20, 100, 30),
        T.Burst("udp_flood", "198.51.100.98", 53, 20, 200, 30),
    ), seed=21)
    return T.generate(scenario, START, 1000, 150)


def test_every_attack_shape_detected_with_right_victim_port_and_rate(reference: T.GeneratedTraffic) -> None:
    agg = Aggregator(Telescopes(["10.1.0.0/16"]))
    events = _run(agg, [("site-a", reference)])
    _check_truth(events, reference.truth)
    router = next(e for e in events if e["victim"] == "203.0.113.40")
    assert router["classes"] == {"icmp_time_exceeded": router["packets"]}
    syn = next(e for e in events if e["victim"] == "198.51.100.10" and e["status"] == "final")
    truth = reference.truth[0]
    assert syn["packets"] == truth.observed_packets
    assert 0.9 * truth.observed_packets < syn["telescope_addresses"] <= truth.observed_packets
    assert syn["sites"] == {"site-a": syn["packets"]} and syn["sensors"] == {"sensor-site-a": syn["packets"]}
    assert syn["max_packets_per_minute"] >= 30
    assert any(e["status"] == "update" for e in events)
    assert agg.stats.events["declared"] == 5 and agg.active_attacks == 0
    for e in events:
        records.decode(records.encode("BackscatterEvent", e), expect="BackscatterEvent")


@pytest.mark.parametrize("kind", ["mirai", "masscan", "icmp_echo", "syn_scan", "backscatter_noise"])
def test_scans_and_noise_give_no_event(kind: str) -> None:
    g = T.generate(T.Scenario(background=((kind, 1.0),), seed=5), START, 600, 50)
    agg = Aggregator(Telescopes(["10.1.0.0/16"]))
    assert _run(agg, [("site-a", g)]) == []


def test_short_bursts_give_no_event() -> None:
    bursts = tuple(T.Burst(k, f"198.51.100.{i + 1}", 80, 20, 10.0 * i, 30) for i, k in enumerate(T.ATTACK_KINDS))
    bursts += (T.Burst("syn_flood", "198.51.100.200", 80, 200, 0, 50),)  # many packets, but under 60 s
    g = T.generate(T.Scenario(bursts=bursts, seed=6), START, 600, 100)
    assert _run(Aggregator(Telescopes(["10.1.0.0/16"])), [("site-a", g)]) == []


def test_three_sites_with_clock_offsets_and_overlap_give_one_event_per_attack() -> None:
    sites = {"a": ("10.1.0.0/16",), "b": ("10.2.0.0/16",), "c": ("10.2.128.0/17", "10.3.0.0/17")}
    prefixes = tuple(p for ps in sites.values() for p in ps)
    g = T.generate(T.Scenario(telescope=prefixes, attacks=T.reference_attacks(10, 600), seed=8), START, 800, 200)
    views = [("a", T.site_view(g, sites["a"], -2.0)), ("b", T.site_view(g, sites["b"], 0.0)),
             ("c", T.site_view(g, sites["c"], 2.0))]
    agg = Aggregator(Telescopes(prefixes, sites))
    events = _run(agg, views)
    _check_truth(events, g.truth)
    overlap = PrefixSet(["10.2.128.0/17"]).contains(g.telescope_addr) & np.isin(
        g.kind, [T.KINDS.index(k) for k in T.BACKSCATTER_KINDS])
    assert agg.stats.duplicates == np.count_nonzero(overlap)
    final = [e for e in events if e["status"] == "final"]
    assert all(set(e["sites"]) == {"a", "b", "c"} for e in final)
    assert all(e["monitored_addresses"] == 2 * 65536 + 32768 for e in final)


def test_estimate_uses_the_union_of_contributing_sites_only() -> None:
    g = T.generate(T.Scenario(telescope=("10.1.0.0/16",), attacks=T.reference_attacks(0, 300)[:1], seed=9),
                   START, 300, 0)
    agg = Aggregator(Telescopes(["10.1.0.0/16"], {"a": ["10.1.0.0/16"], "idle": ["10.7.0.0/16"]}))
    events = _run(agg, [("a", g)])
    assert {e["monitored_addresses"] for e in events} == {65536}


def test_late_packets_are_dropped_and_counted() -> None:
    g = T.generate(T.Scenario(attacks=T.reference_attacks(0, 300)[:1], background=(), seed=3), START, 300, 0)
    agg = Aggregator(Telescopes(["10.1.0.0/16"]), DetectorConfig(allowed_lateness_s=30))
    batches = list(_batches(g, 100))
    agg.process(classify(batches[-1]), "a", "s")  # the newest data first: everything older than 30 s is late
    for b in batches[:-1]:
        agg.process(classify(b), "a", "s")
    last = classify(batches[-1]).ts_ns.max()
    expected_late = np.count_nonzero(g.ts_ns[:g.count - classify(batches[-1]).count] < last - 30 * 10**9)
    assert agg.stats.late == expected_late > 0


def test_state_is_bounded_and_eviction_counted() -> None:
    g = T.generate(T.Scenario(attacks=T.reference_attacks(0, 300)[:2], background=(("backscatter_noise", 1.0),),
                              seed=4), START, 300, 100)
    agg = Aggregator(Telescopes(["10.1.0.0/16"]), DetectorConfig(max_victims=6000))
    assert agg.capacity == 4096, "rows are allocated as victims appear"
    events = _run(agg, [("a", g)], finish=False)
    assert agg.capacity == 6000 and agg.stats.evicted > 0 and len(agg.index) <= 6000
    declared = {e["victim"] for e in events if e["status"] == "declared"}
    assert declared == {"198.51.100.10", "198.51.100.20"}, "attacks survive eviction of one-packet noise"


def test_snapshot_restore_replays_to_identical_events(reference: T.GeneratedTraffic) -> None:
    whole = _run(Aggregator(Telescopes(["10.1.0.0/16"])), [("a", reference)])
    batches = list(_batches(reference))
    first = Aggregator(Telescopes(["10.1.0.0/16"]))
    events = []
    cut = len(batches) // 3
    for b in batches[:cut]:
        events += first.process(classify(b), "a", "sensor-a")
    restored = Aggregator.restore(first.snapshot(), Telescopes(["10.1.0.0/16"]))
    for b in batches[cut:]:
        events += restored.process(classify(b), "a", "sensor-a")
    events += restored.finish()
    assert [(e["attack_id"], e["status"], e["seq"], e["packets"]) for e in events] == \
        [(e["attack_id"], e["status"], e["seq"], e["packets"]) for e in whole]
    assert events[-1]["telescope_addresses"] == whole[-1]["telescope_addresses"]


def test_small_telescope_profile() -> None:
    # a /22 sees 1024/2^32 of a 1 Mpps flood: ~0.24 packets/s, ~14/min: under the default 30/min peak
    scenario = T.Scenario(telescope=("10.1.0.0/22",), attacks=(T.Attack("syn_flood", "198.51.100.10", 443, 1e6, 0, 600),), seed=12)
    g = T.generate(scenario, START, 600, 5)
    assert _run(Aggregator(Telescopes(["10.1.0.0/22"])), [("a", g)]) == []
    events = _run(Aggregator(Telescopes(["10.1.0.0/22"]), PROFILES["small"]), [("a", g)])
    assert [e["status"] for e in events if e["status"] != "update"] == ["declared", "final"]
    assert abs(events[-1]["estimated_pps"] - 1e6) < 0.2 * 1e6


def test_a_site_read_long_after_the_others_loses_nothing() -> None:
    """A consumer catching up serves partitions unevenly: one site's whole backlog may come last.

    (A site never heard of before cannot hold anything back: its copies of packets
    older than the other sites' lateness window may go unrecognised.)
    """
    sites = {"a": ("10.1.0.0/16",), "b": ("10.2.0.0/16",), "c": ("10.2.128.0/17",)}
    prefixes = tuple(p for ps in sites.values() for p in ps)
    g = T.generate(T.Scenario(telescope=prefixes, attacks=T.reference_attacks(10, 200), seed=13), START, 260, 50)
    agg = Aggregator(Telescopes(prefixes, sites))
    views = {site: list(_batches(T.site_view(g, sites[site], 1.0 if site == "c" else 0.0))) for site in sites}
    events = []
    for site in sites:  # every site has been heard of (as after a restart: the snapshot knows them) ...
        events += agg.process(classify(views[site].pop(0)), site, site)
    for site in sites:  # ... then the rest of a, then of b, then of c (whose packets b also saw)
        for batch in views[site]:
            events += agg.process(classify(batch), site, site)
    events += agg.finish()
    assert agg.stats.late == 0
    overlap = PrefixSet(["10.2.128.0/17"]).contains(g.telescope_addr) & np.isin(
        g.kind, [T.KINDS.index(k) for k in T.BACKSCATTER_KINDS])
    assert agg.stats.duplicates == np.count_nonzero(overlap), "copies found however late their twin is read"
    final = {e["victim"]: e["packets"] for e in events if e["status"] == "final"}
    assert final == {t.victim: t.observed_packets for t in g.truth}


def test_replays_are_dropped_but_retransmissions_counted() -> None:
    g = T.generate(T.Scenario(attacks=T.reference_attacks(0, 120)[:1], background=(), seed=14), START, 120, 0)
    batches = list(_batches(g, 50))
    agg = Aggregator(Telescopes(["10.1.0.0/16"]))
    for b in batches[:4] + batches[2:]:  # batches 2 and 3 delivered twice (a re-read after a crash)
        agg.process(classify(b), "a", "s")
    assert agg.stats.duplicates == 100
    # the same bytes again from the same sensor 3 s later: a SYN-ACK retransmission, not a copy
    retrans = bytearray(batches[-1])
    for off in classify(bytes(retrans)).offsets.tolist():
        sec = int.from_bytes(retrans[off:off + 4], "little") + 3
        retrans[off:off + 4] = sec.to_bytes(4, "little")
    agg.process(classify(bytes(retrans)), "a", "s")
    assert agg.stats.duplicates == 100
    [final] = agg.finish()
    assert final["packets"] == g.truth[0].observed_packets + classify(bytes(retrans)).count


def test_snapshot_of_another_version_is_refused_not_misread() -> None:
    """The analyze hop replays the partition when restore refuses; it must refuse, never misread."""
    blob = Aggregator(Telescopes(["10.1.0.0/16"])).snapshot()
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["version"] = -1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with pytest.raises(ValueError, match="snapshot version"):
        Aggregator.restore(buf.getvalue(), Telescopes(["10.1.0.0/16"]))
