"""Aggregation and attack detection against generated ground truth (backscatter.md §H test shapes)."""

from __future__ import annotations

import io
import ipaddress
import json

import numpy as np
import pytest

from bridge import records
from bridge import traffic as T
from bridge.backscatter.aggregate import PROFILES, Aggregator, DetectorConfig, activity_spans, merge_spans
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


def test_packets_too_late_for_a_final_attack_are_counted_not_a_second_attack() -> None:
    """Site b delivers after site a's time has passed its attack by more than the allowed lateness."""
    attacks = (T.Attack("syn_flood", "198.51.100.10", 443, 300_000, 0, 300),
               T.Attack("syn_flood", "198.51.100.20", 443, 300_000, 1000, 300))
    sites = {"a": ("10.1.0.0/17",), "b": ("10.1.128.0/17",)}
    g = T.generate(T.Scenario(attacks=attacks, background=(), seed=3), START, 1400, 0)
    agg = Aggregator(Telescopes(["10.1.0.0/16"]), DetectorConfig(allowed_lateness_s=30))
    events = []
    for site in ("a", "b"):  # all of a, then all of b: b's first attack ended long before
        for batch in _batches(T.site_view(g, sites[site], 0.0)):
            events += agg.process(classify(batch), site, site)
    events += agg.finish()
    b_first = T.site_view(g, sites["b"], 0.0)
    b_cols = classify(b_first.packets)
    expected = int(np.count_nonzero(b_cols.backscatter() & (b_cols.victim == int(ipaddress.IPv4Address("198.51.100.10")))))
    assert agg.stats.late == expected > 0
    assert sum(e["late_packets"] for e in events) == agg.stats.late, "each late packet reported in an event"
    assert sorted(e["victim"] for e in events if e["status"] == "declared") == ["198.51.100.10", "198.51.100.20"]
    final = {e["victim"]: e for e in events if e["status"] == "final"}
    assert set(final["198.51.100.10"]["sites"]) == {"a"} and set(final["198.51.100.20"]["sites"]) == {"a", "b"}


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


def test_spans_merge_in_any_order() -> None:
    spans: list[list[int]] = []
    for run in [(50, 60), (10, 20), (25, 30), (100, 110), (61, 99)]:
        merge_spans(spans, [run], gap_ns=5)
    assert spans == [[10, 30], [50, 110]]
    assert activity_spans(np.array([5, 1, 2, 40, 41], np.int64), 10) == [(1, 5), (40, 41)]


def _ticked(g: T.GeneratedTraffic, sites: dict[str, tuple[str, ...]], size: int = BATCH) -> list[tuple]:
    """(site, batch) in capture order across sites, as a hub's route stage would pass them."""
    out = []
    for site, prefixes in sites.items():
        view = T.site_view(g, prefixes, 0.0)
        out += [(int(classify(b).ts_ns.max()), site, b) for b in _batches(view, size)]
    return sorted(out, key=lambda x: x[0])


def test_events_follow_the_data_and_silence_ends_the_input() -> None:
    """Updates while the attack grows, paced in processing time; when every sensor falls silent,
    the finals come at once and equal an offline run's."""
    sites = {"a": ("10.1.0.0/17",), "b": ("10.1.128.0/17",)}
    g = T.generate(T.Scenario(attacks=T.reference_attacks(10, 200), seed=15), START, 260, 100)
    offline = Aggregator(Telescopes(["10.1.0.0/16"]))
    for _, site, batch in _ticked(g, sites, 200):
        offline.process(classify(batch), site, site)
    expected = {e["attack_id"]: e for e in offline.finish()}
    cfg = DetectorConfig(update_interval_s=2.0, source_idle_s=1.5)
    agg = Aggregator(Telescopes(["10.1.0.0/16"]), cfg)
    agg.tick(START, announcements=[("ghost", "elsewhere", 256)])  # announced, never sends: holds nothing back
    events, now = [], START
    for newest, site, batch in _ticked(g, sites, 200):
        cols = classify(batch)
        events += agg.process(cols, site, site, activity=False)
        now += 100_000_000  # 10 batches per second of processing time
        events += agg.tick(now, {"in/0": START}, [(site, site, "in/0", newest, activity_spans(cols.ts_ns, 20 * 10**9))])
    assert not any(e["status"] == "final" for e in events), "the attacks run to the end of the capture"
    updates = [e for e in events if e["status"] == "update"]
    assert updates and all(e["packets"] > 0 for e in updates)
    for attack_id in expected:
        mine = [e for e in events if e["attack_id"] == attack_id]
        assert [e["packets"] for e in mine] == sorted(e["packets"] for e in mine), "the figures only grow"
        assert len(mine) <= 2 + (now - START) / 2e9, "at most one update per update_interval_s"
    # nothing heard for 1 s: still waiting; 1.6 s: every sensor is silent, the input has ended
    assert agg.tick(now + 1_000_000_000, {"in/0": START}) == []
    finals = agg.tick(now + 1_600_000_000, {"in/0": START})
    assert {e["attack_id"] for e in finals} == set(expected) and all(e["status"] == "final" for e in finals)
    for e in finals:
        want = expected[e["attack_id"]]
        for k in ("packets", "bytes", "first_seen_ns", "last_seen_ns", "sites", "sensors", "telescope_addresses"):
            assert e[k] == want[k], k
        assert abs(e["estimated_pps"] - want["estimated_pps"]) <= 0.01 * want["estimated_pps"]
    assert agg.active_attacks == 0 and agg.stats.inputs_ended == 1


def test_a_silent_sensor_stops_holding_event_time_back() -> None:
    sites = {"a": ("10.1.0.0/17",), "b": ("10.1.128.0/17",)}
    g = T.generate(T.Scenario(attacks=T.reference_attacks(10, 100), seed=16), START, 900, 20)
    agg = Aggregator(Telescopes(["10.1.0.0/16"]), DetectorConfig(source_idle_s=1.0))
    events, now = [], START
    for newest, site, batch in _ticked(g, sites):
        if site == "b" and newest > START + 150 * 10**9:
            continue  # b stops sending after 150 s of capture (an egress outage)
        cols = classify(batch)
        events += agg.process(cols, site, site, activity=False)
        now += 200_000_000
        events += agg.tick(now, {"in/0": START, "in/1": START},
                           [(site, site, f"in/{site == 'b':d}", newest, activity_spans(cols.ts_ns, 20 * 10**9))])
    assert {e["victim"] for e in events if e["status"] == "final"} == {t.victim for t in g.truth}, \
        "b went silent long ago: a alone moves event time past the attacks"


def test_estimate_counts_each_sensor_for_the_time_it_was_capturing() -> None:
    """The demo's shape: one sensor watches a quarter of the telescope from the start, the other three
    quarters join 80 s into a 120 s attack. Moore's n over the whole duration would say 44%."""
    g = T.generate(T.Scenario(attacks=(T.Attack("syn_flood", "198.51.100.10", 443, 400_000, 0, 120),), seed=17),
                   START, 120, 100)
    agg = Aggregator(Telescopes([], {"q": ["10.1.192.0/18"], "rest": ["10.1.0.0/17", "10.1.128.0/18"]}))
    events = []
    for _, site, batch in _ticked(g, {"q": ("10.1.192.0/18",), "rest": ("10.1.0.0/17", "10.1.128.0/18")}):
        cols = classify(batch)
        if site == "rest" and cols.ts_ns.max() < START + 80 * 10**9:
            continue
        events += agg.process(cols, site, site)
    [final] = [e for e in events + agg.finish() if e["status"] == "final"]
    assert final["monitored_addresses"] == 65536
    assert abs(final["estimated_pps"] - 400_000) <= 0.2 * 400_000, final["estimated_pps"]
    assert final["observed_pps"] * 2**32 / 65536 < 0.7 * 400_000, "the whole-duration estimate is far off"


def test_announced_counts_replace_prefixes_and_add_up_across_sites() -> None:
    """Two sites sanitized onto the same 192.168.0.0/16 watch two /16s: 131,072 addresses, not 65,536."""
    g = T.generate(T.Scenario(telescope=("10.1.0.0/16", "10.2.0.0/16"),
                              attacks=(T.Attack("syn_flood", "198.51.100.10", 443, 200_000, 0, 200),), seed=18),
                   START, 200, 50)
    agg = Aggregator(Telescopes([]))  # no prefixes at all: only the announcements tell
    agg.tick(START, announcements=[("s1", "north", 65536), ("s2", "south", 65536)])
    events = []
    for _, site, batch in _ticked(g, {"s1": ("10.1.0.0/16",), "s2": ("10.2.0.0/16",)}):
        events += agg.process(classify(batch), "hub", site)
    [final] = [e for e in events + agg.finish() if e["status"] == "final"]
    assert final["sites"].keys() == {"north", "south"} and final["monitored_addresses"] == 131072
    assert abs(final["estimated_pps"] - 200_000) <= 0.2 * 200_000
    unknown = Aggregator(Telescopes([]))
    for _, site, batch in _ticked(g, {"s1": ("10.1.0.0/16",)}):
        assert unknown.process(classify(batch), "hub", site) == []
    assert unknown.stats.outside_telescope > 0, "a sensor with neither announcement nor prefixes cannot count"
