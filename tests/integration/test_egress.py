"""egress against the real broker and a loopback D4 receiver that behaves like d4-core's server.

The receiver checks every frame with the reference HMAC rule of shared/reference/d4-protocol.md
(HMAC-SHA256 over the header with its MAC field zeroed, then the payload), closes the connection
on a frame above 1,000,000 bytes, and refuses a second session for the same uuid and type by
closing it at once, as d4-core does. Packets carry (sensor, sequence number) so order, loss and
duplicates can be counted exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from bridge import kafka, records
from bridge.assembler import PcapChunkBatch
from bridge.broker import free_port
from bridge.d4.frame import HEADER, FrameDecoder, FrameError
from bridge.d4.tls import server_context, write_self_signed_pem
from bridge.pcap import RECORD_HEADER, PcapHeader, pack_record, parse_global_header

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = b"upstream site key"
SITE_UUID = uuidlib.uuid4()
D4_CORE_LIMIT = 1_000_000
MARK = struct.Struct("<HI")  # sensor index, sequence number at the start of every test packet


# --- the loopback D4 receiver -------------------------------------------------------------------


def reference_verify(raw: bytes, key: bytes) -> bool:
    """The reference check from d4-protocol.md §1.6, on the raw frame bytes."""
    mac = raw[26:58]
    zeroed = raw[:26] + b"\0" * 32 + raw[58:]
    return hmac.compare_digest(mac, hmac.new(key, zeroed, hashlib.sha256).digest())


@dataclass
class SessionLog:
    uuid: bytes
    frames: int = 0
    frame_sizes: list[int] = field(default_factory=list)
    header: PcapHeader | None = None
    packets: list[tuple[int, int, int]] = field(default_factory=list)  # (sensor, seq, ts_ns)
    unaligned_frames: int = 0  # frames that did not end at a record boundary


class Receiver:
    """A loopback D4 server with d4-core's rules; can be stopped, restarted and cut."""

    def __init__(self, keys: dict[bytes, bytes], tls: ssl.SSLContext | None = None) -> None:
        self.keys = keys
        self.tls = tls
        self.port = free_port()
        self.lock = threading.Lock()
        self.sessions: list[SessionLog] = []
        self.errors: list[str] = []  # protocol violations: must stay empty
        self.refusals: list[float] = []  # monotonic times of duplicate-session refusals
        self.connections = 0
        self.held: dict[tuple[bytes, int], float] = {}  # (uuid, type) -> active until (monotonic)
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def stop(self, hold: float = 0.0) -> None:
        """Close the listener and reset every connection (unread data is lost, as in a crash).

        ``hold`` keeps the cut sessions registered that long, like d4-core before it notices.
        """
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone leaves the port listening
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        self.cut(hold)

    def cut(self, hold: float = 0.0) -> None:
        with self.lock:
            conns = list(self._conns)
            for ident in list(self.held):
                self.held[ident] = time.monotonic() + hold
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw_conn: socket.socket) -> None:
        conn = raw_conn
        with self.lock:
            self.connections += 1
            self._conns.add(raw_conn)
        ident: tuple[bytes, int] | None = None
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw_conn, server_side=True)
            self._frames(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self.lock:
                self._conns.discard(raw_conn)
            raw_conn.close()

    def _frames(self, conn: socket.socket) -> None:
        dec = FrameDecoder(max_size=D4_CORE_LIMIT)
        log: SessionLog | None = None
        stream = bytearray()
        ident: tuple[bytes, int] | None = None
        while True:
            data = conn.recv(262144)
            if not data:
                break
            dec.feed(data)
            try:
                frames = dec.frames()
            except FrameError as exc:
                with self.lock:
                    self.errors.append(f"frame: {exc}")
                return
            for frame in frames:
                h = frame.header
                if ident is None:
                    ident = (h.uuid, h.type)
                    with self.lock:
                        if self.held.get(ident, 0) > time.monotonic():
                            self.refusals.append(time.monotonic())  # d4-core: duplicate session, abort
                            return
                        self.held[ident] = float("inf")
                        log = SessionLog(h.uuid)
                        self.sessions.append(log)
                assert log is not None
                raw = HEADER.pack(h.version, h.type, h.uuid, h.timestamp, h.hmac, h.size) + frame.payload
                key = self.keys.get(h.uuid)
                problem = None
                if key is None or not reference_verify(raw, key):
                    problem = "hmac mismatch"
                elif (h.uuid, h.type) != ident:
                    problem = "uuid or type changed"
                elif h.type != 1 or h.version != 1:
                    problem = f"type {h.type} version {h.version}"
                if problem:
                    with self.lock:
                        self.errors.append(problem)
                    return
                log.frames += 1
                log.frame_sizes.append(h.size)
                stream += frame.payload
                if log.header is None:
                    if len(stream) < 24:
                        continue
                    log.header = parse_global_header(bytes(stream[:24]))
                    del stream[:24]
                used = self._records(log, stream)
                del stream[:used]
                if stream:
                    log.unaligned_frames += 1
        with self.lock:
            if ident is not None and self.held.get(ident) == float("inf"):
                del self.held[ident]

    @staticmethod
    def _records(log: SessionLog, stream: bytearray) -> int:
        pos = 0
        unit = 1 if log.header is not None and log.header.nsec else 1000
        while pos + 16 <= len(stream):
            sec, frac, caplen, _ = RECORD_HEADER.unpack_from(stream, pos)
            if pos + 16 + caplen > len(stream):
                break
            sensor, seq = MARK.unpack_from(stream, pos + 16)
            log.packets.append((sensor, seq, sec * 1_000_000_000 + frac * unit))
            pos += 16 + caplen
        return pos

    def arrivals(self, uuid: bytes | None = None) -> dict[int, list[int]]:
        """sensor -> sequence numbers in arrival order (sessions in the order they started)."""
        out: dict[int, list[int]] = {}
        with self.lock:
            for s in self.sessions:
                if uuid is None or s.uuid == uuid:
                    for sensor, seq, _ in s.packets:
                        out.setdefault(sensor, []).append(seq)
        return out

    def packet_count(self) -> int:
        with self.lock:
            return sum(len(s.packets) for s in self.sessions)


# --- input records ------------------------------------------------------------------------------

SANITIZATION = {"policy_name": "test", "policy_version": "1", "key_fingerprint": "", "sanitized_ns": 0,
                "packets_in": 0, "packets_dropped": 0, "packets_cut": 0}


def packet(sensor: int, seq: int, size: int = 120) -> bytes:
    return MARK.pack(sensor, seq) + bytes((seq + i) % 256 for i in range(size - MARK.size))


def batch_record(sensor: int, sensor_uuid: str, seqs: range, sanitized: bool = True, size: int = 120,
                 ts_ns: int | None = None, nsec: bool = False, linktype: int = 1) -> bytes:
    base = time.time_ns() if ts_ns is None else ts_ns
    pkts = b"".join(pack_record(base + i * 1000, packet(sensor, s, size), nsec=nsec) for i, s in enumerate(seqs))
    b = PcapChunkBatch(PcapHeader(linktype, 65535, nsec), pkts, len(seqs), base, base + (len(seqs) - 1) * 1000)
    rec = records.pcap_batch(b, sensor_uuid=sensor_uuid, site="site-a", source="d4", session_id="s", seq=seqs.start)
    if sanitized:
        rec["sanitization"] = dict(SANITIZATION, sanitized_ns=time.time_ns(), packets_in=len(seqs))
    return records.encode("PcapBatch", rec)


def produce(kafka_config, topic: str, values: list[tuple[str, bytes]]) -> None:
    producer = kafka.make_producer(kafka_config, "test")
    for key, value in values:
        producer.produce(topic, value, key=key)
    assert producer.flush(30) == 0


# --- the egress process -------------------------------------------------------------------------


class EgressProcess:
    """``d4-bridge egress`` as a subprocess (signals, exit status and logs as in production)."""

    def __init__(self, tmp: Path, kafka_config, topic: str, group: str, server_port: int, *extra: str,
                 env: dict[str, str] | None = None, site: bool = True) -> None:
        self.metrics_port = free_port()
        self.log_path = tmp / f"egress-{group}.log"
        args = [sys.executable, "-m", "bridge.cli", "egress", "--bootstrap", kafka_config.bootstrap,
                "--server", f"127.0.0.1:{server_port}", "--topic", topic, "--group", group,
                "--metrics-port", str(self.metrics_port), *extra]
        if site:
            args += ["--uuid", str(SITE_UUID), "--hmac-key", KEY.decode()]
        full_env = {**os.environ, "D4BRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000",
                    "D4BRIDGE_KAFKA_HEARTBEAT_INTERVAL_MS": "500", "D4BRIDGE_KAFKA_STATISTICS_INTERVAL_MS": "1000",
                    **(env or {})}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)

    def metric(self, name: str) -> float:
        """Sum of a metric's samples; 0 while the endpoint is not up yet (process starting)."""
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return 0.0
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def committed_total(kafka_config, group: str, topic: str, partitions: int) -> int:
    c = Consumer(kafka.consumer_conf(kafka_config, "test", group))
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return sum(max(tp.offset, 0) for tp in got)
    finally:
        c.close()


def check_order_and_duplicates(receiver: Receiver, expected: dict[int, int]) -> int:
    """Every packet reached the receiver, in order per sensor; duplicates only as a re-sent session prefix.

    Returns the number of duplicate packets.
    """
    with receiver.lock:
        sessions = [[(sensor, seq) for sensor, seq, _ in s.packets] for s in receiver.sessions]
    return check_sessions(sessions, expected)


def check_sessions(sessions: list[list[tuple[int, int]]], expected: dict[int, int]) -> int:
    """``sessions``: (sensor, seq) per upstream session, sessions in the order they started."""
    duplicates = 0
    seen: dict[int, set[int]] = {}
    for packets in sessions:
        in_prefix = True
        last: dict[int, int] = {}
        for sensor, seq in packets:
            assert seq > last.get(sensor, -1), f"sensor {sensor}: {seq} after {last.get(sensor)} within a session"
            last[sensor] = seq
            known = seen.setdefault(sensor, set())
            if seq in known:
                # only the start of a new session may repeat what an earlier session carried
                assert in_prefix, f"sensor {sensor} packet {seq} duplicated in the middle of a session"
                duplicates += 1
            else:
                in_prefix = False
                # a new packet is the next one of its sensor: nothing skipped
                assert seq == len(known), f"sensor {sensor}: packet {seq} arrived, {len(known)} expected"
                known.add(seq)
    for sensor, count in expected.items():
        assert len(seen.get(sensor, ())) == count, f"sensor {sensor}: {len(seen.get(sensor, ()))} of {count}"
    return duplicates


# --- tests --------------------------------------------------------------------------------------


def test_forwards_sanitized_records_over_tls_in_order(kafka_config, unique, tmp_path):
    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 2, topics=[topic])
    sensors = {0: uuidlib.uuid4().hex, 1: uuidlib.uuid4().hex}
    values = []
    for start in range(0, 3000, 100):
        for idx, su in sensors.items():
            values.append((su, batch_record(idx, su, range(start, start + 100), size=60 + start % 900)))
    produce(kafka_config, topic, values)
    pem = write_self_signed_pem(tmp_path / "server.pem")
    receiver = Receiver({SITE_UUID.bytes: KEY}, tls=server_context(pem))
    egress = EgressProcess(tmp_path, kafka_config, topic, group, receiver.port, "--insecure",
                           "--frame-size", "20000")
    try:
        assert wait_for(lambda: receiver.packet_count() >= 6000, 60), egress.output()
        assert wait_for(lambda: committed_total(kafka_config, group, topic, 2) == len(values), 20)
        assert egress.metric("d4bridge_egress_packets_total") == 6000
        assert egress.metric("d4bridge_egress_connected") == 1
    finally:
        status = egress.stop()
    assert status == 0, egress.output()
    assert receiver.errors == []
    assert len(receiver.sessions) == 1  # one site identity, one link type: one session
    s = receiver.sessions[0]
    assert s.uuid == SITE_UUID.bytes
    assert s.header is not None and s.header.linktype == 1 and not s.header.nsec
    assert max(s.frame_sizes) <= 20000 and s.unaligned_frames == 0  # whole records in every frame
    assert s.frame_sizes[-1] == 0  # idle: an empty frame pushed the last one through d4-core's buffer
    assert check_order_and_duplicates(receiver, {0: 3000, 1: 3000}) == 0


def test_refused_records_go_to_dlq_without_payload(kafka_config, unique, tmp_path):
    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    su = uuidlib.uuid4().hex
    kafka.create_topics(kafka_config, 1, topics=[kafka.TOPIC_DLQ])
    produce(kafka_config, topic, [(su, batch_record(0, su, range(0, 50)))])
    receiver = Receiver({SITE_UUID.bytes: KEY})
    egress = EgressProcess(tmp_path, kafka_config, topic, group, receiver.port, "--no-tls")
    try:
        assert wait_for(lambda: receiver.packet_count() == 50, 40), egress.output()
        # after the start-up check (which would refuse a topic ending with such records)
        produce(kafka_config, topic, [(su, batch_record(7, su, range(0, 50), sanitized=False)),  # private
                                      (su, b"not a record"),
                                      # the site uuid already carries Ethernet: d4-core would refuse it
                                      (su, batch_record(8, su, range(0, 50), linktype=113)),
                                      (su, batch_record(0, su, range(50, 100)))])
        assert wait_for(lambda: committed_total(kafka_config, group, topic, 1) == 5, 40), egress.output()
        letters = dead_letters(kafka_config, topic, 3)
    finally:
        assert egress.stop() == 0, egress.output()
    assert check_order_and_duplicates(receiver, {0: 100}) == 0
    assert 7 not in receiver.arrivals() and 8 not in receiver.arrivals()
    assert sorted((d["source_offset"], d["reason"]) for d in letters) == [
        (1, "unsanitized"), (2, "bad_framing"), (3, "linktype_conflict")]
    assert all(d["payload"] is None and d["hop"] == "egress" for d in letters)


def unique_group() -> str:
    return f"g-{uuidlib.uuid4().hex[:12]}"


def dead_letters(kafka_config, source_topic: str, want: int) -> list[dict]:
    """The dead letters of ``source_topic`` (a unique name per test), read from the start of the DLQ.

    The shared DLQ is read whole rather than from a remembered end offset: the embedded broker's
    reported end offsets are not reliable, and the DLQ may have any number of partitions.
    """
    c = Consumer(kafka.consumer_conf(kafka_config, "test", unique_group()))
    c.subscribe([kafka.TOPIC_DLQ])
    out: list[dict] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(out) < want:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                d = records.decode(msg.value(), expect="DeadLetter")
                if d["source_topic"] == source_topic:
                    out.append(d)
    finally:
        c.close()
    return out


def test_refuses_to_start_on_an_unsanitized_topic(kafka_config, unique, tmp_path):
    topic = unique("raw")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    su = uuidlib.uuid4().hex
    produce(kafka_config, topic, [(su, batch_record(0, su, range(0, 10), sanitized=False))])
    receiver = Receiver({SITE_UUID.bytes: KEY})
    egress = EgressProcess(tmp_path, kafka_config, topic, unique("egress"), receiver.port, "--no-tls")
    assert egress.proc.wait(60) == 2
    egress.stop()
    assert "without the sanitizer's stamp" in egress.output()
    assert receiver.connections == 0


def test_bad_frame_size_is_refused(kafka_config, unique, tmp_path):
    egress = EgressProcess(tmp_path, kafka_config, unique("t"), unique("g"), 1, "--no-tls", "--frame-size", "1000001")
    assert egress.proc.wait(60) == 2
    egress.stop()
    assert "frame-size must be 1..1000000" in egress.output()


def test_stop_while_the_server_is_down_commits_nothing(kafka_config, unique, tmp_path):
    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    su = uuidlib.uuid4().hex
    produce(kafka_config, topic, [(su, batch_record(0, su, range(s, s + 100))) for s in range(0, 500, 100)])
    dead_port = free_port()  # nothing listens there
    egress = EgressProcess(tmp_path, kafka_config, topic, group, dead_port, "--no-tls")
    assert wait_for(lambda: egress.metric('d4bridge_egress_reconnects_total') >= 2, 60), egress.output()
    started = time.monotonic()
    assert egress.stop() == 0, egress.output()
    assert time.monotonic() - started < 30  # bounded by the drain timeout, not by the outage
    assert committed_total(kafka_config, group, topic, 1) == 0  # nothing delivered, nothing committed
    assert "not confirmed upstream" in egress.output()


def test_identity_map_gives_each_sensor_its_upstream_session(kafka_config, unique, tmp_path):
    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 2, topics=[topic])
    internal = [uuidlib.uuid4().hex for _ in range(3)]
    up = [uuidlib.uuid4() for _ in range(2)]
    (tmp_path / "k1").write_text("key one\n")
    (tmp_path / "ids.toml").write_text(
        f'[default]\nuuid = "{up[0]}"\nkey = "key zero"\n'
        f'[sensors."{internal[1]}"]\nuuid = "{up[1]}"\nkey_file = "k1"\n')
    values = [(su, batch_record(i, su, range(s, s + 50))) for s in range(0, 500, 50) for i, su in enumerate(internal)]
    produce(kafka_config, topic, values)
    receiver = Receiver({up[0].bytes: b"key zero", up[1].bytes: b"key one"})
    egress = EgressProcess(tmp_path, kafka_config, topic, group, receiver.port, "--no-tls",
                           "--identity-map", str(tmp_path / "ids.toml"), site=False)
    try:
        assert wait_for(lambda: receiver.packet_count() >= 1500, 60), egress.output()
    finally:
        assert egress.stop() == 0, egress.output()
    assert receiver.errors == []
    assert set(receiver.arrivals(up[1].bytes)) == {1}
    assert set(receiver.arrivals(up[0].bytes)) == {0, 2}
    assert check_order_and_duplicates(receiver, {0: 500, 1: 500, 2: 500}) == 0


def test_duplicate_session_refusal_is_met_with_growing_backoff(kafka_config, unique, tmp_path):
    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    su = uuidlib.uuid4().hex
    produce(kafka_config, topic, [(su, batch_record(0, su, range(s, s + 100))) for s in range(0, 1000, 100)])
    receiver = Receiver({SITE_UUID.bytes: KEY})
    egress = EgressProcess(tmp_path, kafka_config, topic, group, receiver.port, "--no-tls")
    try:
        assert wait_for(lambda: receiver.packet_count() >= 1000, 60), egress.output()
        # the connection dies but the server keeps the old session for 8 s (d4-core has not noticed)
        receiver.cut(hold=8.0)
        time.sleep(0.5)
        produce(kafka_config, topic, [(su, batch_record(0, su, range(s, s + 100))) for s in range(1000, 1500, 100)])
        assert wait_for(lambda: len(receiver.arrivals().get(0, ())) >= 1500, 60), egress.output()
        refusals = list(receiver.refusals)
        assert egress.metric("d4bridge_egress_reconnects_total") >= len(refusals)
    finally:
        assert egress.stop() == 0, egress.output()
    assert receiver.errors == []
    assert len(refusals) >= 3, refusals
    gaps = [b - a for a, b in zip(refusals, refusals[1:])]
    # equal-jitter exponential backoff: each wait is at least half the nominal one, which doubles
    assert gaps[-1] > gaps[0] and len(refusals) < 10, gaps
    duplicates = check_order_and_duplicates(receiver, {0: 1500})
    print(f"\nduplicate-session refusals: {len(refusals)} (gaps {[round(g, 2) for g in gaps]} s), "
          f"duplicates after reconnect: {duplicates}")


class Stream:
    """2 sensors x 20 batches/s x 50 packets of 200 bytes = 2000 packets/s of sanitized records."""

    PER_BATCH, BATCHES_PER_S = 50, 20

    def __init__(self, kafka_config, topic: str) -> None:
        self.producer = kafka.make_producer(kafka_config, "test")
        self.topic = topic
        self.sensors = {0: uuidlib.uuid4().hex, 1: uuidlib.uuid4().hex}
        self.sent = {0: 0, 1: 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = self.PER_BATCH
        while not self.stop.is_set():
            for idx, su in self.sensors.items():
                value = batch_record(idx, su, range(self.sent[idx], self.sent[idx] + n), size=200)
                self.producer.produce(self.topic, value, key=su)
                self.sent[idx] += n
            self.producer.poll(0)
            time.sleep(1 / self.BATCHES_PER_S)
        self.producer.flush(30)

    def finish(self) -> dict[int, int]:
        """Stop producing; return packets sent per sensor."""
        self.stop.set()
        self.thread.join(30)
        return dict(self.sent)


def test_outage_of_30_seconds_loses_nothing(kafka_config, unique, tmp_path):
    """The receiver is down 30 s in the middle of a stream: reading pauses, memory stays bounded,
    the backlog drains when it returns, every packet arrives, duplicates only as a session prefix."""
    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 2, topics=[topic])
    receiver = Receiver({SITE_UUID.bytes: KEY})
    max_queued = 256 * 1024
    egress = EgressProcess(tmp_path, kafka_config, topic, group, receiver.port, "--no-tls",
                           env={"D4BRIDGE_EGRESS_MAX_QUEUED_BYTES": str(max_queued),
                                "D4BRIDGE_EGRESS_RESEND_BUFFER": str(1024 * 1024),
                                "D4BRIDGE_EGRESS_BACKOFF_MAX": "4"})
    stream = Stream(kafka_config, topic)
    try:
        assert wait_for(lambda: receiver.packet_count() >= 10_000, 60), egress.output()
        receiver.stop()
        down_at = time.monotonic()
        paused = queued_max = 0.0
        while time.monotonic() - down_at < 30:
            time.sleep(1)
            paused = max(paused, egress.metric("d4bridge_egress_paused"))
            queued_max = max(queued_max, egress.metric("d4bridge_egress_queued_bytes"))
        backlog = sum(stream.sent.values()) - receiver.packet_count()
        receiver.start()
        back_at = time.monotonic()
        sent = stream.finish()
        total = sum(sent.values())
        assert wait_for(lambda: all(len(set(v)) >= sent[k] for k, v in receiver.arrivals().items())
                        and len(receiver.arrivals()) == 2, 90), egress.output()
        drained_in = time.monotonic() - back_at
        reconnects = egress.metric("d4bridge_egress_reconnects_total")
        resent = egress.metric("d4bridge_egress_resent_bytes_total")
    finally:
        stream.stop.set()
        status = egress.stop()
    assert status == 0, egress.output()
    assert receiver.errors == []
    assert paused == 1  # reading stopped while the server was down
    # bounded: reads are sized to the room left, so the bound is overshot by a record or two at most
    assert queued_max <= 1.5 * max_queued, queued_max
    duplicates = check_order_and_duplicates(receiver, sent)
    # duplicates come only from the resend window (1 MiB of ~216-byte records per session)
    assert duplicates <= 2 * (1024 * 1024 // 216 + Stream.PER_BATCH), duplicates
    print(f"\noutage 30 s: {total} packets sent, backlog at restart {backlog} packets, all arrived "
          f"{drained_in:.1f} s after the restart; {duplicates} duplicates "
          f"({duplicates / total:.2%}), {reconnects:.0f} failed/lost connections, {resent / 1e6:.2f} MB resent, "
          f"max queued {queued_max / 1e3:.0f} kB (limit {max_queued / 1e3:.0f} kB)")


# --- the whole chain ------------------------------------------------------------------------------

CHAIN_ENV = {**os.environ, "D4BRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000", "D4BRIDGE_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
             "D4BRIDGE_KAFKA_STATISTICS_INTERVAL_MS": "0", "D4BRIDGE_KAFKA_LINGER_MS": "5"}


def hop(tmp: Path, name: str, *args: str) -> subprocess.Popen:
    """Start ``d4-bridge <args>`` with its output in tmp/<name>.log."""
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", *args], cwd=ROOT, env=CHAIN_ENV,
                            stdout=open(tmp / f"{name}.log", "ab"), stderr=subprocess.STDOUT)


def terminate(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def read_records_by_sensor(kafka_config, topic: str, settle: float = 4.0, timeout: float = 120.0,
                           stamped: bool = True) -> dict[str, list[bytes]]:
    """sensor uuid -> its packet records (16-byte header + data) in topic order, once the topic is quiet."""
    conf = kafka.consumer_conf(kafka_config, "test", unique_group())
    c = Consumer(conf)
    c.subscribe([topic])
    out: dict[str, list[bytes]] = {}
    last = float("inf")  # the quiet period starts with the first record (joining the group takes a while)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() - last < settle and time.monotonic() < deadline:
            for msg in c.consume(100, 0.5):
                if msg.error() is None:
                    rec = records.decode(msg.value(), expect="PcapBatch")
                    assert (rec["sanitization"] is not None) == stamped
                    out.setdefault(rec["sensor_uuid"], []).extend(split_records(rec["packets"]))
                    last = time.monotonic()
    finally:
        c.close()
    return out


def split_records(packets: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(packets):
        caplen = RECORD_HEADER.unpack_from(packets, pos)[2]
        out.append(packets[pos:pos + 16 + caplen])
        pos += 16 + caplen
    return out


def test_full_chain_send_ingress_sanitize_egress_hub_export(kafka_config, unique, tmp_path):
    """send -> private ingress -> sanitize -> egress -> hub ingress (second broker) -> export:
    the exported packets are the sanitized ones, in order per sensor, each under its upstream uuid."""
    from bridge.broker import EmbeddedBroker, wait_for_port
    from bridge.pcap import read_pcap
    from bridge.traffic import Scenario, generate, write_pcap

    pcap_topic, san_topic = unique("pcap"), unique("san")
    kafka.create_topics(kafka_config, 2, topics=[pcap_topic, san_topic])
    sensors = {"a": uuidlib.uuid4(), "b": uuidlib.uuid4()}
    upstream = {"a": uuidlib.uuid4(), "b": uuidlib.uuid4()}
    files = {}
    for i, (name, telescope) in enumerate((("a", "10.1.0.0/16"), ("b", "10.2.0.0/16"))):
        traffic = generate(Scenario(telescope=(telescope,), seed=11 + i), time.time_ns(), 3.0, 1500.0)
        files[name] = tmp_path / f"{name}.pcap"
        write_pcap(files[name], traffic)
    (tmp_path / "hub.keys").write_text("".join(f"{upstream[n]} = hub key {n}\n" for n in upstream))
    (tmp_path / "ids.toml").write_text("".join(
        f'[sensors."{sensors[n]}"]\nuuid = "{upstream[n]}"\nkey = "hub key {n}"\n' for n in sensors))
    site_port, hub_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    with EmbeddedBroker(log_file=tmp_path / "hub-broker.log") as hub:
        hub_kafka = kafka_config.__class__(**{**kafka_config.__dict__, "bootstrap": hub.bootstrap})
        kafka.create_topics(hub_kafka, 1, topics=[kafka.TOPIC_PCAP])
        try:
            procs.append(hop(tmp_path, "site-ingress", "ingress", "--bootstrap", kafka_config.bootstrap,
                             "--listen", f"127.0.0.1:{site_port}", "--no-tls", "--hmac-key", "sensor key",
                             "--topic", pcap_topic))
            procs.append(hop(tmp_path, "sanitize", "sanitize", "--bootstrap", kafka_config.bootstrap,
                             "--in", pcap_topic, "--out", san_topic, "--group", unique("sanitize"),
                             "--pnat", "10.0.0.0/8:172.16.0.0/12"))
            procs.append(hop(tmp_path, "hub-ingress", "ingress", "--bootstrap", hub.bootstrap,
                             "--listen", f"127.0.0.1:{hub_port}", "--no-tls", "--keys", str(tmp_path / "hub.keys"),
                             "--registration"))
            procs.append(hop(tmp_path, "egress", "egress", "--bootstrap", kafka_config.bootstrap,
                             "--server", f"127.0.0.1:{hub_port}", "--no-tls", "--topic", san_topic,
                             "--group", unique("egress"), "--identity-map", str(tmp_path / "ids.toml")))
            wait_for_port("127.0.0.1", site_port, 60)
            wait_for_port("127.0.0.1", hub_port, 60)
            senders = [hop(tmp_path, f"send-{n}", "send", "--server", f"127.0.0.1:{site_port}", "--no-tls",
                           "--uuid", str(sensors[n]), "--hmac-key", "sensor key", str(files[n])) for n in sensors]
            for s in senders:
                assert s.wait(120) == 0, (tmp_path / "send-a.log").read_text()
            sanitized = read_records_by_sensor(kafka_config, san_topic)
            assert set(sanitized) == {sensors[n].hex for n in sensors}
            total = sum(len(v) for v in sanitized.values())
            assert total > 5000
            out = tmp_path / "hub.pcap"
            deadline = time.monotonic() + 120
            exported: list[bytes] = []
            while time.monotonic() < deadline:
                # export's idle clock starts before its group join: give it well over a join's time
                done = subprocess.run([sys.executable, "-m", "bridge.cli", "export", "--bootstrap", hub.bootstrap,
                                       "--topic", kafka.TOPIC_PCAP, "--pcap", str(out), "--from-beginning",
                                       "--idle-exit", "15"], cwd=ROOT, env=CHAIN_ENV, capture_output=True,
                                      timeout=120)
                assert done.returncode == 0, done.stderr.decode()
                exported = split_records(read_pcap(out)[1]) if out.stat().st_size else []
                if len(exported) >= total:
                    break
                time.sleep(2)
        finally:
            statuses = [terminate(p) for p in procs]
        logs = {p.name: p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log")}
        assert statuses == [0, 0, 0, 0], (statuses, logs)
    owner = {rec: name for name in sensors for rec in sanitized[sensors[name].hex]}
    assert len(owner) == total  # every sanitized record is distinct, so it identifies its sensor
    by_sensor: dict[str, list[bytes]] = {n: [] for n in sensors}
    for rec in exported:
        by_sensor[owner[rec]].append(rec)  # KeyError: a packet that was never in the sanitized topic
    for name in sensors:
        assert by_sensor[name] == sanitized[sensors[name].hex], f"sensor {name}: hub export differs"
    print(f"\nfull chain: {total} sanitized packets from 2 sensors, {len(exported)} exported at the hub, "
          f"equal and in order per sensor")


def hub_sessions(hub_kafka, topic: str, settle: float = 5.0, timeout: float = 120.0) -> list[list[tuple[int, int]]]:
    """(sensor, seq) of every packet on the hub topic, grouped by hub session in order of appearance."""
    c = Consumer(kafka.consumer_conf(hub_kafka, "test", unique_group()))
    c.subscribe([topic])
    sessions: dict[str, list[tuple[int, int]]] = {}
    last = float("inf")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() - last < settle and time.monotonic() < deadline:
            for msg in c.consume(100, 0.5):
                if msg.error() is None:
                    rec = records.decode(msg.value(), expect="PcapBatch")
                    out = sessions.setdefault(rec["session_id"], [])
                    out.extend(MARK.unpack_from(r, 16) for r in split_records(rec["packets"]))
                    last = time.monotonic()
    finally:
        c.close()
    return list(sessions.values())


def test_hub_ingress_stopped_30_seconds_loses_nothing(kafka_config, unique, tmp_path):
    """The real public side (d4-bridge ingress on a second broker) is stopped for 30 s mid-stream
    and restarted: every packet reaches the hub topic; duplicates only as a re-sent session prefix."""
    from bridge.broker import EmbeddedBroker, wait_for_port

    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 2, topics=[topic])
    hub_port = free_port()
    with EmbeddedBroker(log_file=tmp_path / "hub-broker.log") as hub:
        hub_kafka = kafka_config.__class__(**{**kafka_config.__dict__, "bootstrap": hub.bootstrap})
        kafka.create_topics(hub_kafka, 1, topics=[kafka.TOPIC_PCAP])
        ingress_args = ["ingress", "--bootstrap", hub.bootstrap, "--listen", f"127.0.0.1:{hub_port}", "--no-tls",
                        "--hmac-key", KEY.decode()]
        ingress = hop(tmp_path, "hub-ingress", *ingress_args)
        wait_for_port("127.0.0.1", hub_port, 60)
        egress = EgressProcess(tmp_path, kafka_config, topic, group, hub_port, "--no-tls",
                               env={"D4BRIDGE_EGRESS_BACKOFF_MAX": "4"})
        stream = Stream(kafka_config, topic)
        try:
            assert wait_for(lambda: egress.metric("d4bridge_egress_packets_total") >= 10_000, 60), egress.output()
            time.sleep(3)  # past the start-up backlog: a steady stream when the hub goes away
            assert terminate(ingress) == 0
            time.sleep(30)
            ingress = hop(tmp_path, "hub-ingress", *ingress_args)
            wait_for_port("127.0.0.1", hub_port, 60)
            time.sleep(3)
            sent = stream.finish()
            sessions = hub_sessions(hub_kafka, kafka.TOPIC_PCAP)
            reconnects = egress.metric("d4bridge_egress_reconnects_total")
        finally:
            stream.stop.set()
            status = egress.stop()
            terminate(ingress)
    assert status == 0, egress.output()
    duplicates = check_sessions(sessions, sent)
    total = sum(sent.values())
    # the re-sent window: what was unacknowledged or inside the 2 s grace when the hub went away
    assert duplicates <= 5 * 2000, duplicates
    print(f"\nhub outage 30 s: {total} packets sent, all on the hub topic in order per sensor; "
          f"{duplicates} duplicates ({duplicates / total:.2%}) over {len(sessions)} hub sessions, "
          f"{reconnects:.0f} failed/lost connections")


def test_second_copy_of_a_sanitized_batch_is_not_forwarded(kafka_config, unique, tmp_path):
    """A batch re-done by a restarted sanitizer (same lineage) goes upstream once."""
    topic, group = unique("san"), unique("egress")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    su = uuidlib.uuid4().hex

    def with_lineage(seqs: range, offset: int) -> bytes:
        rec = records.decode(batch_record(0, su, seqs), expect="PcapBatch")
        rec["lineage"] = {"topic": "d4.pcap", "partition": 2, "offset": offset}
        return records.encode("PcapBatch", rec)

    # offsets 10, 11 (then a crash: the aborted copy of 11 is visible), 11 again, 12
    values = [(su, with_lineage(range(0, 50), 10)), (su, with_lineage(range(50, 100), 11)),
              (su, with_lineage(range(50, 100), 11)), (su, with_lineage(range(100, 150), 12))]
    produce(kafka_config, topic, values)
    receiver = Receiver({SITE_UUID.bytes: KEY})
    egress = EgressProcess(tmp_path, kafka_config, topic, group, receiver.port, "--no-tls")
    try:
        assert wait_for(lambda: committed_total(kafka_config, group, topic, 1) == len(values), 60), egress.output()
        assert egress.metric("d4bridge_egress_duplicate_packets_total") == 50
    finally:
        assert egress.stop() == 0, egress.output()
    assert receiver.packet_count() == 150
    assert check_order_and_duplicates(receiver, {0: 150}) == 0


def test_each_identity_announces_its_site_and_monitored_addresses_to_the_hub(kafka_config, unique, tmp_path):
    """egress -> hub ingress: a type-2 meta header per identity with a telescope, kept per sensor uuid
    on the hub's records topic; the pcap sessions are unchanged."""
    from bridge.broker import wait_for_port
    from bridge.d4.site_meta import parse_site_announcement

    topic, group, pcap_topic, records_topic = unique("san"), unique("egress"), unique("pcap"), unique("records")
    kafka.create_topics(kafka_config, 2, topics=[topic, pcap_topic, records_topic])
    internal = [uuidlib.uuid4().hex for _ in range(2)]
    up = uuidlib.uuid4()
    (tmp_path / "ids.toml").write_text(
        f'[sensors."{internal[1]}"]\nuuid = "{up}"\nkey = "key one"\ntelescope = ["10.1.128.0/18"]\n')
    (tmp_path / "hub.keys").write_text(f"{SITE_UUID} = {KEY.decode()}\n{up} = key one\n")
    produce(kafka_config, topic, [(su, batch_record(i, su, range(0, 50))) for i, su in enumerate(internal)])
    hub_port = free_port()
    ingress = hop(tmp_path, "hub-ingress", "ingress", "--bootstrap", kafka_config.bootstrap, "--listen",
                  f"127.0.0.1:{hub_port}", "--no-tls", "--keys", str(tmp_path / "hub.keys"), "--registration",
                  "--topic", pcap_topic, "--records-topic", records_topic)
    egress = None
    try:
        wait_for_port("127.0.0.1", hub_port, 60)
        egress = EgressProcess(tmp_path, kafka_config, topic, group, hub_port, "--no-tls", "--identity-map",
                               str(tmp_path / "ids.toml"), "--telescope", "10.1.0.0/17,fd00::/64",
                               env={"D4BRIDGE_SITE": "north"})
        consumer = Consumer(kafka.consumer_conf(kafka_config, "test", unique("check")))
        consumer.assign([TopicPartition(records_topic, p, 0) for p in range(2)])
        seen: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                rec = records.decode(msg.value(), expect="D4Record")
                if rec["d4_type"] == 2:
                    seen[rec["sensor_uuid"]] = parse_site_announcement(rec["data"])
        consumer.close()
    finally:
        if egress is not None:
            assert egress.stop() == 0, egress.output()
        terminate(ingress)
    # --telescope is the site identity's (IPv6 prefixes are not counted), the map entry's is its own
    assert seen == {SITE_UUID.hex: ("north", 32768), up.hex: ("north", 16384)}, \
        (tmp_path / "hub-ingress.log").read_text()[-2000:]
