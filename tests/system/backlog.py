"""Each hop under a backlog of 10x its buffer: its memory is sampled while the backlog builds and drains.

Used by tests/system/test_resource_bounds.py (flatness) and bench/bench_chain.py (peak RSS per hop).
A backlog builds where a hop's downstream stops: the broker is frozen with SIGSTOP (ingress,
queue), the upstream D4 server is not there yet (egress), or the input topic already holds the
backlog when the hop starts (sanitize, analyze). Every run also checks that the backlog was
delivered in full, so a hop cannot look flat by dropping data.
"""

from __future__ import annotations

import gzip
import itertools
import signal
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bridge import kafka, records, traffic
from bridge.assembler import PcapAssembler
from bridge.broker import EmbeddedBroker, free_port, wait_for_port
from bridge.config import KafkaConfig
from bridge.pcap import global_header

from system.harness import HopProcess, digests_of, metric, read_topic, rss_mb, wait_metrics

HOST = "127.0.0.1"
KEY = "backlog-key"
MB = 1024 * 1024
FACTOR = 10
_lineage = itertools.count()  # unique source offsets: egress drops a second record of one lineage
SETTLE_S = 5.0


@dataclass
class Trace:
    """RSS of one hop over a backlog run."""

    hop: str
    buffer_mb: float
    backlog_mb: float
    warm_mb: float = 0.0  # after start and a first small load (imports, JIT, client buffers)
    peak_mb: float = 0.0
    end_mb: float = 0.0
    delivered: float = 0.0
    expected: float = 0.0
    samples: list[float] = field(default_factory=list)

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.warm_mb


class Sampler(threading.Thread):
    """RSS of a process every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            try:
                self.samples.append(rss_mb(self.pid))
            except OSError:
                return

    def finish(self) -> list[float]:
        self.stop_event.set()
        self.join(2)
        return self.samples


def telescope_packets(megabytes: float, seed: int = 7) -> bytes:
    """Backscatter-sized telescope packets (canonical records), about ``megabytes`` of them."""
    scenario = traffic.Scenario(telescope=("10.1.0.0/16",), seed=seed,
                                attacks=traffic.reference_attacks(0, 3600))
    rate = 20_000.0
    # about 80 bytes per record on average
    seconds = megabytes * MB / 80 / rate
    return traffic.generate(scenario, 1_700_000_000 * 10**9, seconds, rate).packets


def batches(packets: bytes, batch_bytes: int = 262144) -> list:
    a = PcapAssembler(batch_bytes=batch_bytes, max_age=None)
    return a.feed(global_header(1, 65535, False) + packets) + a.close()


def produce_backlog(kcfg: KafkaConfig, topic: str, packets: bytes, sanitized: bool) -> int:
    """Put the packets on ``topic`` as PcapBatch records; return the number of packets."""
    producer = kafka.make_producer(kcfg, "backlog")
    count = 0
    for i, b in enumerate(batches(packets)):
        rec = records.pcap_batch(b, sensor_uuid=uuidlib.UUID(int=1).hex, site="backlog", source="d4",
                                 session_id="backlog", seq=i)
        if sanitized:
            rec["sanitization"] = {"policy_name": "test", "policy_version": "0", "key_fingerprint": "",
                                   "sanitized_ns": records.now_ns(), "packets_in": b.count,
                                   "packets_dropped": 0, "packets_cut": 0}
            rec["lineage"] = {"topic": "d4.pcap", "partition": 0, "offset": next(_lineage)}
        producer.produce(topic, records.encode("PcapBatch", rec), key=rec["sensor_uuid"])
        count += b.count
    assert producer.flush(60) == 0
    return count


class Rig:
    """A dedicated broker (so freezing it disturbs no other test) and a work directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.broker = EmbeddedBroker(log_file=work / "broker.log").start()
        self.kcfg = KafkaConfig(bootstrap=self.broker.bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500,
                                statistics_interval_ms=0, linger_ms=5)

    def freeze(self) -> None:
        assert self.broker.proc is not None
        self.broker.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.broker.proc is not None
        self.broker.proc.send_signal(signal.SIGCONT)

    def topics(self, *names: str, partitions: int = 1) -> None:
        kafka.create_topics(self.kcfg, partitions, topics=list(names))

    def hop(self, name: str, *args: str, env: dict[str, str] | None = None, **kw) -> HopProcess:
        return HopProcess(name, [args[0], "--bootstrap", self.broker.bootstrap, *args[1:]], self.work, env=env, **kw)

    def close(self) -> None:
        self.thaw()
        self.broker.stop()


def _wait_counter(hop: HopProcess, name: str, target: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        try:
            value = metric(hop.metrics(), name)
        except OSError:
            pass
        if value >= target:
            break
        time.sleep(0.2)
    return value


def ingress_backlog(rig: Rig, buffer_mb: float = 2.0) -> Trace:
    """Sensors send 10x the in-flight bound while the broker is frozen, then it thaws."""
    rig.topics("bk-ingress", "bk-records")
    port = free_port()
    hop = rig.hop("ingress", "ingress", "--listen", f"{HOST}:{port}", "--no-tls", "--hmac-key", KEY,
                  "--topic", "bk-ingress",
                  env={"D4BRIDGE_INGRESS_MAX_INFLIGHT_BYTES": str(int(buffer_mb * MB)),
                       "D4BRIDGE_INGRESS_RECORDS_TOPIC": "bk-records"}).start()
    trace = Trace("ingress", buffer_mb, FACTOR * buffer_mb)
    try:
        wait_for_port(HOST, port, 60, hop.proc)
        wait_metrics(hop)
        warm = telescope_packets(buffer_mb, seed=1)
        backlog = telescope_packets(FACTOR * buffer_mb, seed=2)
        _send(rig.work, port, warm)
        _wait_counter(hop, "d4bridge_ingress_packets_total", 1, 30)
        trace.warm_mb = rss_mb(hop.pid)
        sampler = Sampler(hop.pid)
        sampler.start()
        rig.freeze()
        sender = _send(rig.work, port, backlog, wait=False)
        time.sleep(6)  # the backlog builds against the frozen broker
        rig.thaw()
        assert sender.wait(120) == 0, sender.log_tail()
        expected = sum(b.count for b in batches(warm)) + sum(b.count for b in batches(backlog))
        trace.delivered = _wait_counter(hop, "d4bridge_ingress_packets_total", expected, 60)
        trace.expected = expected
        time.sleep(SETTLE_S)  # internal stages (analyze's detector, egress's sessions) drain after the count
        trace.samples = sampler.finish()
        trace.peak_mb = max(trace.samples + [trace.warm_mb])
        trace.end_mb = rss_mb(hop.pid)
    finally:
        hop.stop(20)
    return trace


def _send(work: Path, port: int, packets: bytes, wait: bool = True) -> HopProcess:
    path = work / f"send-{uuidlib.uuid4().hex[:8]}.pcap"
    path.write_bytes(global_header(1, 65535, False) + packets)
    sender = HopProcess("send", ["send", "--server", f"{HOST}:{port}", "--uuid", str(uuidlib.uuid4()),
                                 "--hmac-key", KEY, "--no-tls", str(path)], work, metrics=False).start()
    if wait:
        assert sender.wait(120) == 0, sender.log_tail()
    return sender


def queue_backlog(rig: Rig, redis_url: str, buffer_mb: float = 2.0) -> Trace:
    """10x the in-flight bound of .cap.gz files in the analyzer queue; the broker is frozen a while."""
    rig.topics("bk-queue", "bk-queue-records")
    queue_uuid = str(uuidlib.uuid4())
    base = redis_url.rsplit("/", 1)[0]
    client = redis.Redis.from_url(f"{base}/2")
    hop = rig.hop("queue", "queue", "--redis", f"{base}/2", "--queue-uuid", queue_uuid, "--topic", "bk-queue",
                  "--consumer", "backlog",
                  env={"D4BRIDGE_QUEUE_MAX_INFLIGHT_BYTES": str(int(buffer_mb * MB)),
                       "D4BRIDGE_QUEUE_RECORDS_TOPIC": "bk-queue-records"}).start()
    trace = Trace("queue", buffer_mb, FACTOR * buffer_mb)
    key = f"analyzer:1:{queue_uuid}"
    try:
        wait_metrics(hop)
        warm = telescope_packets(buffer_mb, seed=3)
        client.lpush(key, str(_gz(rig.work, warm)))
        warm_count = sum(b.count for b in batches(warm))
        _wait_counter(hop, "d4bridge_queue_packets_total", warm_count, 60)
        trace.warm_mb = rss_mb(hop.pid)
        sampler = Sampler(hop.pid)
        sampler.start()
        backlog = telescope_packets(FACTOR * buffer_mb, seed=4)
        cut = batches(backlog, int(buffer_mb * MB))  # at record boundaries: one capture file per buffer
        rig.freeze()
        for b in cut:
            client.lpush(key, str(_gz(rig.work, b.packets)))
        time.sleep(6)
        rig.thaw()
        expected = warm_count + sum(b.count for b in cut)
        trace.delivered = _wait_counter(hop, "d4bridge_queue_packets_total", expected, 120)
        trace.expected = expected
        time.sleep(SETTLE_S)  # internal stages (analyze's detector, egress's sessions) drain after the count
        trace.samples = sampler.finish()
        trace.peak_mb = max(trace.samples + [trace.warm_mb])
        trace.end_mb = rss_mb(hop.pid)
    finally:
        hop.stop(20)
    return trace


def _gz(work: Path, packets: bytes) -> Path:
    path = work / f"{uuidlib.uuid4()}-2024-01-01-000000.cap.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(global_header(1, 65535, False) + packets)
    return path


def consumer_backlog(rig: Rig, hop_name: str, buffer_mb: float = 4.0) -> Trace:
    """sanitize or analyze starting on a topic that already holds 10x its buffer (a stopped hop's backlog)."""
    topic = f"bk-{hop_name}-in"
    rig.topics(topic, f"bk-{hop_name}-out", "d4.dlq", partitions=1)
    warm = telescope_packets(buffer_mb, seed=5)
    backlog = telescope_packets(FACTOR * buffer_mb, seed=6)
    if hop_name == "sanitize":
        args = ["sanitize", "--in", topic, "--out", f"bk-{hop_name}-out", "--pnat", "10.0.0.0/8:192.168.0.0/16",
                "--group", f"bk-{uuidlib.uuid4().hex[:6]}"]
        counter = "d4bridge_sanitize_input_packets_total"
        env = {}
    else:
        args = ["analyze", "--topic", topic, "--out", f"bk-{hop_name}-out", "--telescope", "10.1.0.0/16",
                "--group", f"bk-{uuidlib.uuid4().hex[:6]}"]
        counter = "d4bridge_analyze_packets_total"
        # The detector's state grows with distinct victims up to its cap (a bound of its own, tested
        # by the analyze hop's tests); a small cap keeps it out of the way, so that what is measured
        # here is whether the backlog itself is buffered.
        env = {"D4BRIDGE_ANALYZE_MAX_VICTIMS": "4096"}
    warm_count = produce_backlog(rig.kcfg, topic, warm, sanitized=False)
    hop = rig.hop(hop_name, *args, env=env).start()
    trace = Trace(hop_name, buffer_mb, FACTOR * buffer_mb)
    try:
        wait_metrics(hop, 90)
        _wait_counter(hop, counter, warm_count, 90)
        trace.warm_mb = rss_mb(hop.pid)
        sampler = Sampler(hop.pid)
        sampler.start()
        expected = warm_count + produce_backlog(rig.kcfg, topic, backlog, sanitized=False)
        trace.delivered = _wait_counter(hop, counter, expected, 180)
        trace.expected = expected
        time.sleep(SETTLE_S)  # internal stages (analyze's detector, egress's sessions) drain after the count
        trace.samples = sampler.finish()
        trace.peak_mb = max(trace.samples + [trace.warm_mb])
        trace.end_mb = rss_mb(hop.pid)
    finally:
        hop.stop(20)
    return trace


def egress_backlog(rig: Rig, buffer_mb: float = 2.0) -> Trace:
    """10x the queued-bytes bound waits on the sanitized topic while the upstream server is down."""
    topic, hub_topic = "bk-egress-in", "bk-egress-hub"
    rig.topics(topic, hub_topic, "bk-egress-hub-records", "d4.dlq")
    warm = telescope_packets(buffer_mb, seed=8)
    backlog = telescope_packets(FACTOR * buffer_mb, seed=9)
    expected = produce_backlog(rig.kcfg, topic, warm, sanitized=True)
    port = free_port()
    upstream = rig.hop("hub-ingress", "ingress", "--listen", f"{HOST}:{port}", "--no-tls", "--hmac-key", KEY,
                       "--topic", hub_topic, env={"D4BRIDGE_INGRESS_RECORDS_TOPIC": "bk-egress-hub-records"}).start()
    hop = rig.hop("egress", "egress", "--topic", topic, "--server", f"{HOST}:{port}", "--uuid", str(uuidlib.uuid4()),
                  "--hmac-key", KEY, "--no-tls", "--group", f"bk-{uuidlib.uuid4().hex[:6]}",
                  env={"D4BRIDGE_EGRESS_MAX_QUEUED_BYTES": str(int(buffer_mb * MB)),
                       "D4BRIDGE_EGRESS_BACKOFF_MAX": "1"}).start()
    trace = Trace("egress", buffer_mb, FACTOR * buffer_mb)
    try:
        wait_metrics(hop, 90)
        wait_metrics(upstream, 90)
        _wait_counter(upstream, "d4bridge_ingress_packets_total", expected, 90)
        trace.warm_mb = rss_mb(hop.pid)
        sampler = Sampler(hop.pid)
        sampler.start()
        upstream.kill()  # the public server goes away; the backlog builds on the topic and in egress
        expected += produce_backlog(rig.kcfg, topic, backlog, sanitized=True)
        time.sleep(6)
        upstream.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            # copies are possible (at least once): count distinct packets at the upstream
            at_hub = digests_of(r.value["packets"] for r in read_topic(rig.broker.bootstrap, hub_topic, idle=1))
            trace.delivered = len(set(at_hub.tolist()))
            if trace.delivered >= expected:
                break
            time.sleep(2)
        trace.expected = expected
        time.sleep(SETTLE_S)  # internal stages (analyze's detector, egress's sessions) drain after the count
        trace.samples = sampler.finish()
        trace.peak_mb = max(trace.samples + [trace.warm_mb])
        trace.end_mb = rss_mb(hop.pid)
    finally:
        hop.stop(20)
        upstream.stop(20)
    return trace
