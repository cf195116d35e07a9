"""Egress throughput and end-to-end latency.

1. Throughput: a backlog of sanitized records (backscatter-like 54..150-byte packets) on a topic,
   drained by ``d4-bridge egress`` over TLS into a local D4 receiver that checks every frame's
   HMAC: packets/s and MB/s of pcap records, from the first frame to the last packet.
2. Latency at a steady 10,000 packets/s, batches closed at 100 ms as the ingress hop does:
   capture time of each packet -> (a) arrival at the local receiver; (b) arrival at the hub
   topic through a hub ``d4-bridge ingress`` on a second embedded broker (the full public side).
   Target: p99 < 1 s.

Run alone: ``.venv/bin/python bench/bench_egress.py``. On this 2-core machine the broker(s),
egress, hub ingress and the load generator share both cores with whatever else runs.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid as uuidlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, peak_rss_mb, report  # noqa: E402

from confluent_kafka import Consumer  # noqa: E402

from bridge import kafka, records  # noqa: E402
from bridge.assembler import PcapChunkBatch  # noqa: E402
from bridge.broker import EmbeddedBroker, free_port, wait_for_port  # noqa: E402
from bridge.config import KafkaConfig  # noqa: E402
from bridge.d4.frame import FrameDecoder, FrameSigner  # noqa: E402
from bridge.d4.tls import server_context, write_self_signed_pem  # noqa: E402
from bridge.pcap import RECORD_HEADER, PcapHeader, record_offsets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = b"bench upstream key"
SITE = uuidlib.uuid4()
BACKLOG_PACKETS = 400_000
RATE = 10_000  # packets/s for the latency runs
LATENCY_SECONDS = 15.0
WARMUP_SECONDS = 3.0
BATCH_AGE = 0.1  # seconds, as the ingress hop closes batches
SANITIZATION = {"policy_name": "bench", "policy_version": "1", "key_fingerprint": "", "sanitized_ns": 0,
                "packets_in": 0, "packets_dropped": 0, "packets_cut": 0}


class PacketSource:
    """Backscatter-like packets (54..150 bytes) as canonical records with chosen capture times."""

    def __init__(self, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.sizes = rng.integers(54, 151, 4096).tolist()
        self.data = rng.integers(0, 256, 150, dtype=np.uint8).tobytes()
        self.i = 0

    def records(self, ts_ns: list[int]) -> bytes:
        out = []
        for ts in ts_ns:
            size = self.sizes[self.i % 4096]
            self.i += 1
            sec, rem = divmod(ts, 1_000_000_000)
            out.append(RECORD_HEADER.pack(sec, rem // 1000, size, size))
            out.append(self.data[:size])
        return b"".join(out)


def sanitized_record(packets: bytes, count: int, first: int, last: int, sensor: str, seq: int) -> bytes:
    b = PcapChunkBatch(PcapHeader(1, 262144, False), packets, count, first, last)
    rec = records.pcap_batch(b, sensor_uuid=sensor, site="bench", source="d4", session_id="s", seq=seq)
    rec["sanitization"] = dict(SANITIZATION, sanitized_ns=time.time_ns(), packets_in=count)
    return records.encode("PcapBatch", rec)


class Receiver:
    """Local D4 server over TLS: verifies every frame, counts packets, records capture->arrival latency."""

    def __init__(self, pem: Path, timing: bool) -> None:
        self.timing = timing  # parse every record for latencies; off: count bytes only (throughput)
        self.tls = server_context(pem)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.signer = FrameSigner(KEY)
        self.packets = 0
        self.bytes = 0  # pcap record bytes
        self.first_at = 0.0
        self.last_at = 0.0
        self.bad = 0
        self.latency_from_ns = 0  # record latencies of packets captured after this time
        self.latencies: list[np.ndarray] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.lsock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        conn = self.tls.wrap_socket(raw, server_side=True)
        dec = FrameDecoder()
        stream = bytearray()
        header_seen = False
        with conn:
            while data := conn.recv(1 << 18):
                now = time.time_ns()
                if not self.first_at:
                    self.first_at = time.monotonic()
                dec.feed(data)
                for frame in dec.frames():
                    if not self.signer.verify(frame):
                        self.bad += 1
                        return
                    stream += frame.payload
                if not header_seen and len(stream) >= 24:
                    del stream[:24]
                    header_seen = True
                if not header_seen or not stream:
                    continue
                self.bytes += len(stream)
                self.last_at = time.monotonic()
                if not self.timing:
                    stream.clear()
                    continue
                # egress frames hold whole records: the stream is record-aligned after each read
                offsets = record_offsets(bytes(stream))
                view = np.frombuffer(bytes(stream), np.uint8)
                sec = view[(offsets[:, None] + np.arange(4)).ravel()].view("<u4").astype(np.int64)
                usec = view[(offsets[:, None] + 4 + np.arange(4)).ravel()].view("<u4").astype(np.int64)
                ts = sec * 1_000_000_000 + usec * 1000
                if self.latency_from_ns:
                    keep = ts >= self.latency_from_ns
                    if keep.any():
                        self.latencies.append((now - ts[keep]) / 1e9)
                self.packets += len(offsets)
                stream.clear()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_egress(bootstrap: str, topic: str, port: int, log: Path, metrics_port: int) -> subprocess.Popen:
    env = {**os.environ, "D4BRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000", "D4BRIDGE_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "egress", "--bootstrap", bootstrap, "--server", f"127.0.0.1:{port}",
         "--uuid", str(SITE), "--hmac-key", KEY.decode(), "--topic", topic, "--group", f"bench-{topic}",
         "--insecure", "--metrics-port", str(metrics_port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def start_hub_ingress(bootstrap: str, port: int, topic: str, log: Path, pem: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "ingress", "--bootstrap", bootstrap, "--listen", f"127.0.0.1:{port}",
         "--cert", str(pem), "--hmac-key", KEY.decode(), "--topic", topic, "--log-level", "warning"],
        cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 60, proc)
    return proc


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def fill_backlog(kcfg: KafkaConfig, topic: str, n: int) -> int:
    """Produce n packets as 256 KiB sanitized records; return their pcap bytes."""
    src = PacketSource()
    producer = kafka.make_producer(kcfg, "bench")
    sensor = uuidlib.uuid4().hex
    per_record = 1900  # ~ 256 KiB of 54..150-byte packets
    total = 0
    t0 = time.time_ns() - 3_600_000_000_000
    for seq, start in enumerate(range(0, n, per_record)):
        count = min(per_record, n - start)
        ts = [t0 + (start + i) * 1000 for i in range(count)]
        pk = src.records(ts)
        total += len(pk)
        producer.produce(topic, sanitized_record(pk, count, ts[0], ts[-1], sensor, seq), key=sensor)
    assert producer.flush(120) == 0
    return total


class SteadyLoad:
    """RATE packets/s with capture time = generation time, in batches closed at BATCH_AGE."""

    def __init__(self, kcfg: KafkaConfig, topic: str) -> None:
        self.producer = kafka.make_producer(kcfg, "bench")
        self.topic = topic
        self.src = PacketSource(5)
        self.sensor = uuidlib.uuid4().hex
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        pending: list[int] = []
        opened = time.monotonic()
        seq = 0
        while not self.stop.is_set():
            now = time.monotonic()
            due = int((now - start) * RATE) - self.sent - len(pending)
            if due > 0:
                if not pending:
                    opened = now
                pending.extend([time.time_ns()] * due)
            if pending and now - opened >= BATCH_AGE:
                pk = self.src.records(pending)
                self.producer.produce(self.topic, sanitized_record(pk, len(pending), pending[0], pending[-1],
                                                                   self.sensor, seq), key=self.sensor)
                self.producer.poll(0)
                seq += 1
                self.sent += len(pending)
                pending = []
            time.sleep(0.001)
        self.producer.flush(30)


class HubConsumer:
    """Reads the hub topic and records capture -> arrival latency of every packet."""

    def __init__(self, kcfg: KafkaConfig, topic: str) -> None:
        conf = kafka.consumer_conf(kcfg, "bench", f"bench-hub-{uuidlib.uuid4().hex[:8]}")
        conf["fetch.wait.max.ms"] = 10
        self.consumer = Consumer(conf)
        self.consumer.subscribe([topic])
        self.latency_from_ns = 0
        self.latencies: list[np.ndarray] = []
        self.packets = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(100, 0.05):
                if msg.error():
                    continue
                now = time.time_ns()
                rec = records.decode(msg.value(), expect="PcapBatch")
                pk = rec["packets"]
                offsets = record_offsets(pk)
                view = np.frombuffer(pk, np.uint8)
                sec = view[(offsets[:, None] + np.arange(4)).ravel()].view("<u4").astype(np.int64)
                frac = view[(offsets[:, None] + 4 + np.arange(4)).ravel()].view("<u4").astype(np.int64)
                ts = sec * 1_000_000_000 + frac * (1 if rec["ts_precision"] == "nsec" else 1000)
                self.packets += len(offsets)
                if self.latency_from_ns:
                    keep = ts >= self.latency_from_ns
                    if keep.any():
                        self.latencies.append((now - ts[keep]) / 1e9)
        self.consumer.close()


def percentiles(chunks: list[np.ndarray]) -> tuple[float, float, int]:
    if not chunks:
        return float("nan"), float("nan"), 0
    lat = np.concatenate(chunks)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), len(lat)


def wait_assigned(metrics_port: int, timeout: float = 120.0) -> None:
    """Wait until the egress consumer has its partitions (its start-up is not part of the latency)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
            if any(line.startswith("d4bridge_kafka_rebalances_total{") and 'kind="assigned"' in line
                   and not line.endswith(" 0.0") for line in body.splitlines()):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("egress did not join its consumer group")


def latency_run(kcfg: KafkaConfig, topic: str, sink, seconds: float) -> tuple[int, float]:
    """Steady load for WARMUP + seconds; latencies recorded for packets captured after the warm-up."""
    load = SteadyLoad(kcfg, topic)
    time.sleep(WARMUP_SECONDS)
    sink.latency_from_ns = time.time_ns()
    time.sleep(seconds)
    load.stop.set()
    load.thread.join(30)
    time.sleep(2.0)  # the last batches arrive
    return load.sent, seconds


def main() -> None:
    figures: list[Figure] = []
    work = Path(tempfile.mkdtemp(prefix="bench-egress-"))
    pem = write_self_signed_pem(work / "server.pem")
    with EmbeddedBroker(log_file=work / "site-broker.log") as site, EmbeddedBroker(log_file=work / "hub-broker.log") as hub:
        kcfg = KafkaConfig(bootstrap=site.bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500,
                           statistics_interval_ms=0, linger_ms=5)
        hub_kcfg = KafkaConfig(bootstrap=hub.bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500,
                               statistics_interval_ms=0, linger_ms=5)
        # 1. throughput: drain a backlog into the local receiver
        topic = f"bench-backlog-{uuidlib.uuid4().hex[:6]}"
        kafka.create_topics(kcfg, 1, topics=[topic])
        nbytes = fill_backlog(kcfg, topic, BACKLOG_PACKETS)
        receiver = Receiver(pem, timing=False)
        egress = start_egress(site.bootstrap, topic, receiver.port, work / "egress-backlog.log", free_port())
        deadline = time.monotonic() + 300
        cpu_at_first = None
        while receiver.bytes < nbytes and time.monotonic() < deadline and egress.poll() is None:
            if cpu_at_first is None and receiver.first_at:
                cpu_at_first = cpu_seconds(egress.pid)
            time.sleep(0.02)
        cpu = cpu_seconds(egress.pid) - (cpu_at_first or 0.0)
        rss = peak_rss_mb(egress.pid)
        stop(egress)
        elapsed = receiver.last_at - receiver.first_at
        assert receiver.bytes == nbytes and receiver.bad == 0, (receiver.bytes, nbytes, receiver.bad)
        figures.append(Figure("egress drain, packets/s (TLS, HMAC-checked receiver)", BACKLOG_PACKETS / elapsed,
                              "pkt/s", note=f"{BACKLOG_PACKETS} packets of 54..150 B"))
        figures.append(Figure("egress drain, MB/s of pcap records", nbytes / elapsed / 1e6, "MB/s"))
        figures.append(Figure("egress CPU per million packets while draining", cpu / BACKLOG_PACKETS * 1e6, "CPU s",
                              note="process user+system time: capacity on one free core"))
        figures.append(Figure("egress peak RSS while draining", rss, "MB", 300, False,
                              note="bounds: 32 MiB queue + 16 MiB resend buffer + 8 MiB per consume + librdkafka "
                                   "prefetch"))

        # 2a. latency to the local receiver at a steady 10k packets/s
        topic = f"bench-steady-{uuidlib.uuid4().hex[:6]}"
        kafka.create_topics(kcfg, 1, topics=[topic])
        receiver = Receiver(pem, timing=True)
        port = free_port()
        egress = start_egress(site.bootstrap, topic, receiver.port, work / "egress-steady.log", port)
        wait_assigned(port)
        sent, _ = latency_run(kcfg, topic, receiver, LATENCY_SECONDS)
        stop(egress)
        p50, p99, n = percentiles(receiver.latencies)
        note = f"{n} packets measured, {sent} sent"
        figures.append(Figure("capture -> receiver latency p50 @10k pkt/s", p50, "s", 1.0, False, note))
        figures.append(Figure("capture -> receiver latency p99 @10k pkt/s", p99, "s", 1.0, False,
                              "includes the 100 ms batch age"))

        # 2b. latency to the hub topic: egress -> hub ingress -> hub broker
        topic = f"bench-hubrun-{uuidlib.uuid4().hex[:6]}"
        hub_topic = f"hub-pcap-{uuidlib.uuid4().hex[:6]}"
        kafka.create_topics(kcfg, 1, topics=[topic])
        kafka.create_topics(hub_kcfg, 1, topics=[hub_topic])
        hub_port = free_port()
        ingress = start_hub_ingress(hub.bootstrap, hub_port, hub_topic, work / "hub-ingress.log", pem)
        consumer = HubConsumer(hub_kcfg, hub_topic)
        port = free_port()
        egress = start_egress(site.bootstrap, topic, hub_port, work / "egress-hub.log", port)
        wait_assigned(port)
        sent, _ = latency_run(kcfg, topic, consumer, LATENCY_SECONDS)
        stop(egress)
        stop(ingress)
        consumer.stop.set()
        consumer.thread.join(10)
        p50, p99, n = percentiles(consumer.latencies)
        note = f"{n} packets measured, {sent} sent, {consumer.packets} at the hub"
        figures.append(Figure("capture -> hub topic latency p50 @10k pkt/s", p50, "s", 1.0, False, note))
        figures.append(Figure("capture -> hub topic latency p99 @10k pkt/s", p99, "s", 1.0, False,
                              "two 100 ms batchings (site, hub ingress)"))
    report("egress", figures)


if __name__ == "__main__":
    main()
