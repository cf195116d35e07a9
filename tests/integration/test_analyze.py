"""``d4-bridge analyze`` against the real broker: three sites, crash and restarts mid-attack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError

from bridge import kafka, records
from bridge import traffic as T
from bridge.config import KafkaConfig

pytestmark = pytest.mark.integration

START = 1_700_000_000 * 10**9
SITES = {"a": ("10.1.0.0/16",), "b": ("10.2.0.0/16",), "c": ("10.2.128.0/17", "10.3.0.0/17")}
OFFSETS = {"a": -2.0, "b": 0.0, "c": 2.0}
SENSORS = {"a": "aa" * 16, "b": "bb" * 16, "c": "cc" * 16}


def _records(g: T.GeneratedTraffic, site: str, per_batch: int = 200) -> list[tuple[int, bytes]]:
    """(last packet time, encoded PcapBatch) for one site's capture."""
    out = []
    for seq, lo in enumerate(range(0, g.count, per_batch)):
        hi = min(g.count, lo + per_batch)
        end = g.offsets[hi] if hi < g.count else len(g.packets)
        rec = {"sensor_uuid": SENSORS[site], "site": site, "source": "d4", "session_id": f"s-{site}", "seq": seq,
               "linktype": 1, "snaplen": 65535, "ts_precision": "usec", "first_ts_ns": int(g.ts_ns[lo]),
               "last_ts_ns": int(g.ts_ns[hi - 1]), "packet_count": hi - lo,
               "packets": g.packets[g.offsets[lo]:end], "created_ns": records.now_ns(), "file_path": None,
               "batch_index": None, "sanitization": None, "lineage": None}
        out.append((int(g.ts_ns[hi - 1]), records.encode("PcapBatch", rec)))
    return out


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_orphans():
    """A test that fails half-way must not leave analyzers running after it."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class Analyzer:
    """One `d4-bridge analyze` process with its stdout in a file."""

    def __init__(self, tmp: Path, name: str, args: list[str]) -> None:
        self.out = tmp / f"{name}.jsonl"
        self.err = tmp / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "analyze", *args],
                                     stdout=self.out.open("w"), stderr=self.err.open("w"),
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _STARTED.append(self.proc)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.events()):
                return
            assert self.proc.poll() is None, self.err.read_text()[-3000:]
            time.sleep(0.3)
        raise AssertionError(f"timed out; events {len(self.events())}; log:\n{self.err.read_text()[-3000:]}")

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        try:
            assert self.proc.wait(60) in (0, -signal.SIGKILL), self.err.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the hop dumps its threads' stacks
            time.sleep(2)
            self.proc.kill()
            raise AssertionError(f"{self.out.stem} did not stop:\n{self.err.read_text()[-6000:]}") from None


def _topic_records(kcfg: KafkaConfig, topic: str, group: str, schema: str) -> list[dict]:
    consumer = Consumer(kafka.consumer_conf(kcfg, "test", group) | {"enable.partition.eof": True})
    consumer.subscribe([topic])
    out, idle = [], time.monotonic()
    while time.monotonic() - idle < 5:
        msg = consumer.poll(0.5)
        if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
            continue
        out.append(records.decode(msg.value(), expect=schema))
        idle = time.monotonic()
    consumer.close()
    return out


class Hub:
    """Topics, three sites' generated captures fed in time order, and analyzer command lines."""

    def __init__(self, tmp: Path, kcfg: KafkaConfig, unique) -> None:
        self.tmp, self.kcfg, self.unique = tmp, kcfg, unique
        self.in_topic, self.out_topic, self.group = unique("pcap"), unique("backscatter"), unique("analyze")
        kafka.create_topics(kcfg, 2, topics=[self.in_topic])
        self.prefixes = tuple(p for ps in SITES.values() for p in ps)
        self.g = T.generate(T.Scenario(telescope=self.prefixes, attacks=T.reference_attacks(10, 300), seed=31),
                            START, 720, 40)
        self.feed = sorted((rec for site in SITES
                            for rec in _records(T.site_view(self.g, SITES[site], OFFSETS[site]), site)),
                           key=lambda r: r[0])
        self.producer = kafka.make_producer(kcfg, "test")

    def produce_until(self, seconds: float) -> None:
        while self.feed and self.feed[0][0] < START + seconds * 1e9:
            value = self.feed.pop(0)[1]
            self.producer.produce(self.in_topic, value, key=records.decode(value)["sensor_uuid"].encode())
        assert self.producer.flush(30) == 0

    def start(self, name: str, snapshot_seconds: float) -> Analyzer:
        path = self.tmp / f"{name}.toml"
        path.write_text(f"[kafka]\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 500\n"
                        f"statistics_interval_ms = 0\nlinger_ms = 5\n"
                        f"[analyze]\nsnapshot_seconds = {snapshot_seconds}\n"
                        # pauses between the phases stay shorter than this; then silence ends the input
                        f"source_idle_seconds = 15\nupdate_seconds = 1\n")
        return Analyzer(self.tmp, name, [
            "--config", str(path), "--bootstrap", self.kcfg.bootstrap, "--telescope", ",".join(self.prefixes),
            "--site-telescope", ",".join(f"{s}={';'.join(p)}" for s, p in SITES.items()),
            "--topic", self.in_topic, "--out", self.out_topic, "--group", self.group, "--metrics-port", "0"])

    def check(self, runs: list[Analyzer]) -> None:
        """Every attack once: one declared, updates, one final with every packet counted once."""
        printed = [e for run in runs for e in run.events()]
        published = _topic_records(self.kcfg, self.out_topic, self.unique("check"), "BackscatterEvent")
        for events in (printed, published):
            idents = [(e["attack_id"], e["status"], e["seq"]) for e in events]
            assert len(idents) == len(set(idents)), "an event was reported twice"
        assert all(e in published for e in printed), "stdout shows published events only"
        for truth in self.g.truth:
            mine = sorted((e for e in published if e["victim"] == truth.victim), key=lambda e: e["seq"])
            assert [e["seq"] for e in mine] == list(range(len(mine))), "no event lost"
            assert mine[0]["status"] == "declared" and mine[-1]["status"] == "final"
            assert all(e["status"] == "update" for e in mine[1:-1])
            final = mine[-1]
            assert final["packets"] == truth.observed_packets, "every packet counted once across restarts and sites"
            assert final["protocol"] == truth.protocol
            assert final["ports"] == ([] if truth.port is None else [truth.port])
            assert abs(final["estimated_pps"] - truth.pps) <= 0.2 * truth.pps
            assert set(final["sites"]) == set(SITES) and final["monitored_addresses"] == 2 * 65536 + 32768


def _declared(events: list[dict]) -> int:
    return sum(e["status"] == "declared" for e in events)


def _finals(events: list[dict]) -> int:
    return sum(e["status"] == "final" for e in events)


def test_three_sites_crash_and_restarts_mid_attack(tmp_path: Path, kafka_config: KafkaConfig, unique) -> None:
    hub = Hub(tmp_path, kafka_config, unique)
    kafka.create_topics(kafka_config, 1, topics=[kafka.TOPIC_DLQ])
    hub.producer.produce(hub.in_topic, b"not a PcapBatch", key=b"x")  # goes to the dead-letter topic
    # 1: attacks under way; crash (SIGKILL) before any snapshot: the restart must replay everything
    hub.produce_until(150)
    first = hub.start("run1", 3600)
    first.wait_for(lambda evs: _declared(evs) == 5)
    time.sleep(1)
    first.stop(signal.SIGKILL)
    # 2: more of the attacks; restart, then a graceful stop (snapshot on the way out)
    hub.produce_until(260)
    second = hub.start("run2", 1)
    second.wait_for(lambda evs: any(e["status"] == "update" and e["last_seen_ns"] > START + 200e9 for e in evs))
    second.stop(signal.SIGTERM)
    # 3: the rest, past the idle timeout: restored from the snapshot, the attacks end
    hub.produce_until(10**6)
    third = hub.start("run3", 1)
    third.wait_for(lambda evs: _finals(evs) == 5)
    third.stop(signal.SIGTERM)
    assert _declared(second.events()) == 0 and _declared(third.events()) == 0
    hub.check([first, second, third])
    dead = [r for r in _topic_records(kafka_config, kafka.TOPIC_DLQ, unique("dlq"), "DeadLetter")
            if r["source_topic"] == hub.in_topic]
    assert dead and {(r["hop"], r["payload"]) for r in dead} == {("analyze", b"not a PcapBatch")}


def test_rebalance_to_a_second_analyzer_mid_attack(tmp_path: Path, kafka_config: KafkaConfig, unique) -> None:
    hub = Hub(tmp_path, kafka_config, unique)
    hub.produce_until(150)
    a = hub.start("a", 2)
    a.wait_for(lambda evs: _declared(evs) == 5)
    b = hub.start("b", 2)  # joins the group: partitions (and their state) move between the two
    deadline = time.monotonic() + 60
    while "restored (snapshot" not in b.err.read_text() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "restored (snapshot" in b.err.read_text(), b.err.read_text()[-3000:]
    hub.produce_until(10**6)
    deadline = time.monotonic() + 120
    while _finals(a.events() + b.events()) < 5 and time.monotonic() < deadline:
        time.sleep(0.3)
    for run in (a, b):
        run.stop(signal.SIGTERM)
    assert _declared(b.events()) == 0
    hub.check([a, b])


# --- the federation: sites announcing what they watch, one late, one interrupted, two analyzers --------

FED = {  # sensor uuid -> (site, prefixes, announces its monitored address count)
    "a1" * 16: ("north", ("10.1.0.0/16",), True),
    "b1" * 16: ("east", ("10.2.0.0/17",), True),
    "b2" * 16: ("east", ("10.2.128.0/17",), True),  # interrupted for 30 s mid-attack
    "c1" * 16: ("west", ("10.3.0.0/17",), False),  # announces nothing: --telescope covers it
    "c2" * 16: ("west", ("10.3.128.0/18",), True),
}
LATE_SITE = "west"  # on d4-core's 300 s file rotation: its packets come up to 300 s after the others'
ROTATION_S = 300
GAP = (150, 180)  # seconds of capture b2 misses
MONITORED = 65536 + 65536 + 32768 + 16384


class MispServer:
    """A loopback MISP stand-in: records every POST (path, Authorization, body) and answers 200."""

    def __init__(self) -> None:
        import http.server
        import threading

        posts = self.posts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                posts.append((self.path, self.headers["Authorization"], json.loads(body)))
                reply = json.dumps(posts[-1][2]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _federation_feed(g: T.GeneratedTraffic) -> list[tuple[float, str, bytes]]:
    """(delivery time in capture seconds, sensor, PcapBatch) for every sensor's capture, in delivery order."""
    from bridge.backscatter.classify import select_records

    feed = []
    for sensor, (site, prefixes, _) in FED.items():
        view = T.site_view(g, prefixes, 0.0)
        t = (view.ts_ns - START) / 1e9
        keep = np.nonzero(~((t >= GAP[0]) & (t < GAP[1])) if sensor == "b2" * 16 else np.ones(view.count, bool))[0]
        ends = np.append(view.offsets[1:], len(view.packets))
        files = (t[keep] // ROTATION_S).astype(int) if site == LATE_SITE else np.zeros(keep.size, int)
        for f in np.unique(files).tolist():
            rows = keep[files == f]
            for lo in range(0, rows.size, 150):
                sel = rows[lo:lo + 150]
                packets = select_records(view.packets, view.offsets[sel], (ends - view.offsets)[sel]).tobytes()
                last = float(t[sel[-1]])
                # the late site's file is delivered when it closes: at the rotation, or at the end of the capture
                delivered = min((f + 1) * ROTATION_S, float(t[-1]) + 1) if site == LATE_SITE else last
                rec = {"sensor_uuid": sensor, "site": site if not FED[sensor][2] else "hub", "source": "d4",
                       "session_id": f"s-{sensor}", "seq": 0, "linktype": 1, "snaplen": 65535,
                       "ts_precision": "usec", "first_ts_ns": int(view.ts_ns[sel[0]]),
                       "last_ts_ns": int(view.ts_ns[sel[-1]]), "packet_count": int(sel.size), "packets": packets,
                       "created_ns": records.now_ns(), "file_path": None, "batch_index": None,
                       "sanitization": None, "lineage": None}
                rec["seq"] = len(feed)
                feed.append((delivered, sensor, records.encode("PcapBatch", rec)))
    feed.sort(key=lambda x: x[0])
    return feed


def _offline(feed: list[tuple[float, str, bytes]]) -> dict[str, dict]:
    """Final events of one in-process aggregator fed the same records in the same order."""
    from bridge.backscatter.aggregate import Aggregator
    from bridge.backscatter.classify import classify
    from bridge.backscatter.telescope import Telescopes

    agg = Aggregator(Telescopes(["10.3.0.0/17"]))
    agg.tick(START, announcements=[(s, site, sum(2 ** (32 - int(p.split("/")[1])) for p in prefixes))
                                   for s, (site, prefixes, announces) in FED.items() if announces])
    events = []
    for _, sensor, value in feed:
        rec = records.decode(value)
        events += agg.process(classify(rec["packets"]), rec["site"], sensor)
    return {e["attack_id"]: e for e in events + agg.finish() if e["status"] == "final"}


@pytest.mark.parametrize("analyzers", [2, 3])
def test_federation_three_sites_one_late_one_interrupted(tmp_path: Path, kafka_config: KafkaConfig, unique,
                                                         analyzers: int) -> None:
    """One complete, current report per attack: right rates in the finals, one id each, no false attack,
    finals at the end of the replay equal to an offline run's, MISP events for every final."""
    from pymisp import MISPEvent, MISPObject

    in_topic, rec_topic, out_topic, group = unique("pcap"), unique("records"), unique("bs"), unique("analyze")
    kafka.create_topics(kafka_config, 3, topics=[in_topic, rec_topic])
    g = T.generate(T.Scenario(telescope=tuple(p for _, ps, _ in FED.values() for p in ps),
                              attacks=T.reference_attacks(10, 300), seed=41), START, 360, 40)
    feed = _federation_feed(g)
    producer = kafka.make_producer(kafka_config, "test")
    for sensor, (site, prefixes, announces) in FED.items():  # what each site's egress announced, via the ingress
        if announces:
            data = json.dumps({"type": "d4-bridge-site", "site": site,
                               "monitored_addresses": sum(2 ** (32 - int(p.split("/")[1])) for p in prefixes)})
            producer.produce(rec_topic, records.encode("D4Record", {
                "sensor_uuid": sensor, "site": "hub", "source": "d4", "session_id": "m", "seq": 0, "d4_type": 2,
                "meta_type": None, "d4_timestamp": 0, "created_ns": records.now_ns(), "data": data.encode()}),
                key=sensor.encode())
    assert producer.flush(30) == 0
    misp, key_file, misp_dir = MispServer(), tmp_path / "misp.key", tmp_path / "misp"
    key_file.write_text("test-misp-key\n")
    conf = tmp_path / "fed.toml"
    conf.write_text("[kafka]\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 500\nstatistics_interval_ms = 0\n"
                    f"linger_ms = 5\n[analyze]\nsnapshot_seconds = 2\nsource_idle_seconds = 2.0\nupdate_seconds = 1\n"
                    f'records_topic = "{rec_topic}"\n')
    args = ["--config", str(conf), "--bootstrap", kafka_config.bootstrap, "--telescope", "10.3.0.0/17",
            "--topic", in_topic, "--out", out_topic, "--group", group, "--metrics-port", "0",
            "--misp-dir", str(misp_dir), "--misp-url", misp.url, "--misp-key-file", str(key_file)]
    runs = [Analyzer(tmp_path, f"fed-{i}", args) for i in range(analyzers)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all("restored (" in r.err.read_text() for r in runs):
            assert all(r.proc.poll() is None for r in runs), [r.err.read_text()[-2000:] for r in runs]
            time.sleep(0.2)
        assert all("restored (" in r.err.read_text() for r in runs), "every analyzer holds a detect partition"
        started = time.monotonic()
        for step in range(0, 420, 20):  # 20 s of capture every 0.25 s: the late site is silent between its files
            while feed and feed[0][0] < step + 20:
                _, sensor, value = feed.pop(0)
                producer.produce(in_topic, value, key=sensor.encode())
            assert producer.flush(30) == 0
            time.sleep(0.25)
        fed_s = time.monotonic() - started
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _finals([e for r in runs for e in r.events()]) < len(g.truth):
            assert all(r.proc.poll() is None for r in runs), [r.err.read_text()[-2000:] for r in runs]
            time.sleep(0.2)
        ended_s = time.monotonic() - started - fed_s
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(misp_dir.glob("*.json"))) < len(g.truth):
            time.sleep(0.2)
    finally:
        for r in runs:
            r.stop(signal.SIGTERM)
        misp.close()
    printed = [e for r in runs for e in r.events()]
    published = _topic_records(kafka_config, out_topic, unique("check"), "BackscatterEvent")
    idents = [(e["attack_id"], e["status"], e["seq"]) for e in published]
    assert len(idents) == len(set(idents)) and all(e in published for e in printed)
    assert {e["victim"] for e in published} == {t.victim for t in g.truth}, "no false attack"
    expected = _offline(_federation_feed(g))
    for truth in g.truth:
        mine = sorted((e for e in published if e["victim"] == truth.victim), key=lambda e: e["seq"])
        assert len({e["attack_id"] for e in mine}) == 1, "one attack id per attack"
        assert [e["seq"] for e in mine] == list(range(len(mine)))
        assert mine[0]["status"] == "declared" and mine[-1]["status"] == "final"
        assert any(e["status"] == "update" for e in mine), "updates followed the data"
        final = mine[-1]
        assert set(final["sites"]) == {"north", "east", "west"} and final["monitored_addresses"] == MONITORED
        assert abs(final["estimated_pps"] - truth.pps) <= 0.2 * truth.pps, (truth, final["estimated_pps"])
        assert mine[0]["packets"] < final["packets"], "the declaration had only part of the data"
        offline = expected[final["attack_id"]]
        for k in ("packets", "bytes", "first_seen_ns", "last_seen_ns", "sites", "sensors", "telescope_addresses"):
            assert final[k] == offline[k], k
        assert abs(final["estimated_pps"] - offline["estimated_pps"]) <= 0.01 * offline["estimated_pps"]
    assert sum(e["late_packets"] for e in published) == 0, "the late site's files all merged"
    assert ended_s < 15, f"finals {ended_s:.1f} s after the last record"
    # MISP: one file per attack, the final's figures, valid against pymisp's ddos template; pushed with the key
    files = sorted(misp_dir.glob("*.json"))
    assert len(files) == len(g.truth)
    for path in files:
        ev = MISPEvent()
        ev.load(path.read_text())
        [obj] = ev.objects
        strict = MISPObject("ddos", strict=True)
        for attr in obj.attributes:
            strict.add_attribute(attr.object_relation, attr.value)
        strict.to_json(strict=True)  # raises on a missing required or a repeated single attribute
    assert {p for p, _, _ in misp.posts} == {"/events/add"} and len(misp.posts) == len(g.truth)
    assert {auth for _, auth, _ in misp.posts} == {"test-misp-key"}
