"""``d4-bridge analyze`` against the real broker: three sites, crash and restarts mid-attack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
                        f"source_idle_seconds = 8\nupdate_seconds = 1\n")
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
