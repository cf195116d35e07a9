"""Ingress against the real broker: interop with reference-client streams over TLS, every
rejection rule, fuzzing, Redis-backed keys."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading
import time
import uuid as uuidlib

import pytest
import redis

from bridge import kafka, metrics
from bridge.broker import EmbeddedBroker, free_port, wait_for_port
from bridge.config import KafkaConfig
from bridge.d4.client import D4Sender, SenderOptions
from bridge.d4.frame import FrameSigner, encode_frame
from bridge.d4.tls import client_context, write_self_signed_pem
from bridge.pcap import pack_record

from d4util import (CLI, ENV, IngressThread, capture, closed_by_server, connect, frames, ingress_config,
                    packets_of, read_topic, rejections)

pytestmark = pytest.mark.integration

KEY = b"private key to change"
VECTOR_META = bytes.fromhex(
    "0102cd980d75dcf147dabb60aabe94fea6b2d37a1f6100000000ef60cf272d37f03b4511d3f0b1ac72f77ead"
    "535cadf52c5b38de0458eaa448b0120000007b2274797065223a20226a61332d6a6c227d"
)
VECTOR_A = bytes.fromhex(
    "0101cd980d75dcf147dabb60aabe94fea6b2d37a1f6100000000e6d1f434d8daa2e05ca14dca5407ffd4c45d0522273afc8cb7"
    "28a24b1b61f06a04000000626c6168"
)
VECTOR_B = bytes.fromhex(
    "0101388b27e292b541ea8469a609097aea591cd6ee6000000000f671258167de74418124248e5bed9607f2d5"
    "ad54d617c1dfbe419d5ed04d31f906000000626c6168680a"
)


def test_interop_tls_concurrent_sensors(kafka_config, unique, tmp_path):
    """C-client-style, go-client-style and D4Sender streams at once over TLS; packets out of the
    pcap topic are byte-identical and in order, per sensor."""
    pem = write_self_signed_pem(tmp_path / "server.pem")
    cfg = ingress_config(kafka_config, unique, cert=str(pem), hmac_key=KEY)
    sensors = {}
    with IngressThread(cfg) as ing:
        def c_client(seed):
            u = uuidlib.uuid4()
            stream, recs = capture(3000, seed)
            rng = random.Random(seed)
            data = frames(stream, u.bytes, KEY, iter(lambda: rng.randint(1, 65535), None))
            data += encode_frame(1, u.bytes, KEY, b"")  # the C client's empty frame at EOF
            sensors[u.hex] = recs
            sock = connect(ing.port, tls=True)
            pos = 0
            while pos < len(data):  # arbitrary write boundaries on top of arbitrary frame cuts
                n = rng.randint(1, 100_000)
                sock.sendall(data[pos:pos + n])
                pos += n
            sock.close()

        def go_client(seed):
            u = uuidlib.uuid4()
            stream, recs = capture(3000, seed)
            sensors[u.hex] = recs
            sock = connect(ing.port, tls=True)
            sock.sendall(frames(stream, u.bytes, KEY, iter(lambda: 32768, None)))
            sock.close()

        def bridge_client(seed):
            u = uuidlib.uuid4()
            stream, recs = capture(3000, seed)
            sensors[u.hex] = recs
            sender = D4Sender("127.0.0.1", ing.port, u.bytes, KEY, 1, tls=client_context(insecure=True),
                              options=SenderOptions(frame_size=4096),
                              on_session_start=lambda: stream[:24])
            for i in range(0, len(recs), 50_000):
                sender.send(recs[i:i + 50_000])  # cut anywhere: fine within one session
            assert sender.close(20)

        threads = [threading.Thread(target=f, args=(seed,))
                   for seed, f in enumerate([c_client, c_client, go_client, go_client, bridge_client])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # the reference vector (type-2 meta header) is accepted too
        sock = connect(ing.port, tls=True)
        sock.sendall(VECTOR_META)
        time.sleep(0.3)
        sock.close()
        total = sum(len(r) for r in sensors.values())
        out = read_topic(kafka_config, cfg.ingress.topic, "PcapBatch",
                         until=lambda rs: sum(len(r["packets"]) for r in rs) >= total)
    assert len(sensors) == 5
    for u, recs in sensors.items():
        mine = [r for r in out if r["sensor_uuid"] == u]
        assert [r["seq"] for r in mine] == list(range(len(mine)))
        assert len({r["session_id"] for r in mine}) == 1
        assert all(r["site"] == "test-site" and r["source"] == "d4" for r in mine)
        got = packets_of(out, u)
        assert got == recs, f"sensor {u}: {len(got)} bytes, want {len(recs)}"
    meta = read_topic(kafka_config, cfg.ingress.records_topic, "D4Record", until=lambda rs: len(rs) >= 1)
    assert [(r["sensor_uuid"], r["d4_type"], r["data"]) for r in meta] == [
        ("cd980d75dcf147dabb60aabe94fea6b2", 2, b'{"type": "ja3-jl"}')]


# --- rejection rules -------------------------------------------------------------------------

BL_UUID = uuidlib.uuid4()
MARKER = b"\xde\xad\xbe\xefMARKER-FROM-A-BAD-FRAME"


class Rules:
    """A plain-TCP (loopback) ingress with a default key and a uuid blacklist, shared by the
    rule tests; ``check`` proves a rejection: closed, counted once, nothing from the bad frame."""

    def __init__(self, kcfg, names, **extra):
        cfg = ingress_config(kcfg, names, no_tls=True, hmac_key=KEY, blacklist_uuid=[str(BL_UUID)],
                             idle_timeout=1.5, **extra)
        self.cfg = cfg
        self.kcfg = kcfg
        self.ing = IngressThread(cfg).__enter__()

    def check(self, sock, reason, before, bad_uuid_hex, good_prefix=b""):
        assert closed_by_server(sock), f"{reason}: connection not closed"
        deadline = time.monotonic() + 5
        while rejections(reason) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rejections(reason) == before + 1, f"{reason}: metric not counted once"
        # a sentinel sensor's data arrives after anything the rejected session produced
        sentinel = uuidlib.uuid4()
        stream, recs = capture(5, 99)
        s = connect(self.ing.port, tls=False)
        s.sendall(frames(stream, sentinel.bytes, KEY, iter(lambda: 4096, None)))
        s.close()
        out = read_topic(self.kcfg, self.cfg.ingress.topic, "PcapBatch",
                         until=lambda rs: any(r["sensor_uuid"] == sentinel.hex for r in rs))
        assert packets_of(out, sentinel.hex) == recs
        mine = packets_of(out, bad_uuid_hex)
        assert MARKER not in mine
        assert mine == good_prefix
        other = read_topic(self.kcfg, self.cfg.ingress.records_topic, "D4Record", idle=0.5)
        assert not any(MARKER in r["data"] for r in other)

    def stop(self):
        self.ing.stop()


class _Names:
    def __call__(self, prefix="t"):
        return f"{prefix}-{uuidlib.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def rules(kafka_config):
    r = Rules(kafka_config, _Names())
    yield r
    r.stop()


def pcap_with_marker():
    """A valid pcap stream (global header + records) and records carrying MARKER."""
    stream, recs = capture(20, 7)
    return stream, recs, pack_record(1_700_000_001_000_000_000, MARKER)


def test_bad_hmac_closes_and_keeps_only_earlier_frames(rules):
    u = uuidlib.uuid4()
    stream, recs, bad = pcap_with_marker()
    good = frames(stream, u.bytes, KEY, iter(lambda: 10_000_000, None))
    forged = encode_frame(1, u.bytes, b"wrong key", bad)
    before = rejections("bad_hmac")
    sock = connect(rules.ing.port, tls=False)
    sock.sendall(good + forged)
    rules.check(sock, "bad_hmac", before, u.hex, good_prefix=recs)


@pytest.mark.parametrize("case", ["size_too_large", "bad_uuid", "blacklisted_uuid", "type_not_accepted",
                                  "meta_header_missing", "pcap_bad_magic", "bad_meta_header"])
def test_first_frame_rules(rules, case):
    u = BL_UUID if case == "blacklisted_uuid" else uuidlib.uuid4()
    if case == "bad_uuid":
        u = uuidlib.uuid1()
    typ = {"type_not_accepted": 3, "meta_header_missing": 254, "bad_meta_header": 2}.get(case, 1)
    payload = {"bad_meta_header": b'["not an object", "' + MARKER.hex().encode() + b'"]',
               "pcap_bad_magic": MARKER * 4}.get(case, MARKER)
    data = bytearray(encode_frame(typ, u.bytes, KEY, payload))
    if case == "size_too_large":
        data[58:62] = (1_000_001).to_bytes(4, "little")
    before = rejections(case)
    sock = connect(rules.ing.port, tls=False)
    sock.sendall(bytes(data))
    rules.check(sock, case, before, u.hex)


@pytest.mark.parametrize("case", ["type_changed", "uuid_changed"])
def test_later_frame_rules(rules, case):
    u = uuidlib.uuid4()
    stream, recs, _ = pcap_with_marker()
    good = frames(stream, u.bytes, KEY, iter(lambda: 10_000_000, None))
    if case == "type_changed":
        bad = encode_frame(4, u.bytes, KEY, MARKER + b"\n")
    else:
        bad = encode_frame(1, uuidlib.uuid4().bytes, KEY, MARKER)
    before = rejections(case)
    sock = connect(rules.ing.port, tls=False)
    sock.sendall(good + bad)
    rules.check(sock, case, before, u.hex, good_prefix=recs)


def test_duplicate_session_refused_first_kept(rules):
    u = uuidlib.uuid4()
    stream, recs, _ = pcap_with_marker()
    first = connect(rules.ing.port, tls=False)
    first.sendall(frames(stream, u.bytes, KEY, iter(lambda: 10_000_000, None)))
    time.sleep(0.3)
    before = rejections("duplicate_session")
    second = connect(rules.ing.port, tls=False)
    second.sendall(encode_frame(1, u.bytes, KEY, MARKER))
    assert closed_by_server(second)
    assert rejections("duplicate_session") == before + 1
    first.sendall(encode_frame(1, u.bytes, KEY, b""))  # the first session is still served
    first.close()
    out = read_topic(rules.kcfg, rules.cfg.ingress.topic, "PcapBatch",
                     until=lambda rs: packets_of(rs, u.hex) == recs)
    assert packets_of(out, u.hex) == recs


def test_idle_timeout_closes_without_touching_partial_frame(rules):
    u = uuidlib.uuid4()
    stream, recs, _ = pcap_with_marker()
    data = frames(stream, u.bytes, KEY, iter(lambda: 10_000_000, None)) + encode_frame(1, u.bytes, KEY, MARKER)
    before = rejections("idle_timeout")
    sock = connect(rules.ing.port, tls=False)
    sock.sendall(data[:-5])  # the marker frame never completes
    rules.check(sock, "idle_timeout", before, u.hex, good_prefix=recs)


@pytest.mark.parametrize("case", ["unknown_uuid", "not_registered", "blacklisted_ip", "too_many_sessions"])
def test_server_wide_rules(kafka_config, tmp_path, case):
    keys = tmp_path / "keys"
    listed = uuidlib.uuid4()
    keys.write_text(f"# sensors\n{listed} = {KEY.decode()}\n")
    extra = {
        "unknown_uuid": dict(keys=str(keys)),
        "not_registered": dict(keys=str(keys), registration=True, hmac_key=KEY),
        "blacklisted_ip": dict(blacklist_ip=["127.0.0.0/8"], hmac_key=KEY),
        "too_many_sessions": dict(max_sessions=1, hmac_key=KEY),
    }[case]
    cfg = ingress_config(kafka_config, _Names(), no_tls=True, **extra)
    with IngressThread(cfg) as ing:
        held = None
        if case == "too_many_sessions":
            held = connect(ing.port, tls=False)
            time.sleep(0.2)
        u = uuidlib.uuid4()
        before = rejections(case)
        sock = connect(ing.port, tls=False)
        try:
            sock.sendall(encode_frame(1, u.bytes, KEY, MARKER))
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert closed_by_server(sock)
        deadline = time.monotonic() + 5
        while rejections(case) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rejections(case) == before + 1
        if case in ("unknown_uuid", "not_registered"):  # the listed sensor is still accepted
            stream, recs = capture(10, 3)
            s = connect(ing.port, tls=False)
            s.sendall(frames(stream, listed.bytes, KEY, iter(lambda: 4096, None)))
            s.close()
            out = read_topic(kafka_config, cfg.ingress.topic, "PcapBatch",
                             until=lambda rs: packets_of(rs, listed.hex) == recs)
            assert packets_of(out, listed.hex) == recs
        if held is not None:
            held.close()
    assert not any(MARKER in r["packets"] for r in read_topic(kafka_config, cfg.ingress.topic, "PcapBatch",
                                                                idle=0.5))


# --- fuzzing ---------------------------------------------------------------------------------

def _mutations(rng: random.Random, n: int):
    """Random and mutated D4 frames (a few valid ones with garbage payloads among them)."""
    signer = FrameSigner(KEY)
    for _ in range(n):
        u = uuidlib.uuid4().bytes if rng.random() < 0.8 else rng.randbytes(16)
        frame = bytearray(signer.encode(rng.choice([1, 1, 2, 3, 4, 8, 254, 0, 255]), u,
                                        rng.randbytes(rng.randint(0, 3000))))
        kind = rng.randrange(6)
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            frame = frame[: rng.randrange(len(frame))]
        elif kind == 2:
            frame[58:62] = rng.randbytes(4)
        elif kind == 3:
            frame = bytearray(rng.randbytes(rng.randint(1, 500)))
        elif kind == 4:
            frame[1] = rng.randrange(256)
        yield bytes(frame)


def test_fuzz_keeps_serving_good_sensors(kafka_config):
    cfg = ingress_config(kafka_config, _Names(), no_tls=True, hmac_key=KEY, idle_timeout=2.0)
    good = {}
    with IngressThread(cfg) as ing:
        def good_sensor(seed):
            u = uuidlib.uuid4()
            stream, recs = capture(4000, seed)
            good[u.hex] = recs
            sender = D4Sender("127.0.0.1", ing.port, u.bytes, KEY, 1, options=SenderOptions(frame_size=8192),
                              on_session_start=lambda: stream[:24])
            for i in range(0, len(recs), 20_000):
                sender.send(recs[i:i + 20_000])
                time.sleep(0.01)  # keep streaming for the whole fuzzing run
            assert sender.close(20)
            assert sender.sessions == 1

        sent = 0

        def fuzzer():
            nonlocal sent
            rng = random.Random(1234)
            # thousands of frames whatever the timing: a refused connection cuts its own run
            # short, so connections go on (boundedly) until the volume is reached
            for _ in range(3000):
                if sent >= 2000:
                    break
                try:
                    sock = socket.create_connection(("127.0.0.1", ing.port), timeout=5)
                    for frame in _mutations(rng, rng.randint(1, 12)):
                        sock.sendall(frame)
                        sent += 1
                    sock.close()
                except OSError:
                    pass  # the server closed on us mid-write: expected

        threads = [threading.Thread(target=good_sensor, args=(s,)) for s in (11, 12)]
        threads.append(threading.Thread(target=fuzzer))
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        total = sum(len(r) for r in good.values())
        out = read_topic(kafka_config, cfg.ingress.topic, "PcapBatch",
                         until=lambda rs: sum(len(packets_of(rs, u)) for u in good) >= total)
    assert sent >= 2000
    for u, recs in good.items():
        assert packets_of(out, u) == recs


# --- d4-core Redis keys and sets ---------------------------------------------------------------

def test_redis_keys_and_blacklists(kafka_config, redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/5"
    r = redis.Redis.from_url(url)
    r.flushdb()
    own, other, by_default, banned, ip_banner = (uuidlib.uuid4() for _ in range(5))
    r.hset(f"metadata_uuid:{own.hex}", "hmac_key", b"own key")
    r.hset(f"metadata_uuid:{other.hex}", "hmac_key", b"other key")
    r.set("server:hmac_default_key", b"redis default")
    r.sadd("blacklist_uuid", banned.hex)
    r.sadd("blacklist_ip_by_uuid", ip_banner.hex)
    cfg = ingress_config(kafka_config, _Names(), no_tls=True, redis=url)
    with IngressThread(cfg) as ing:
        stream, recs = capture(10, 5)
        for u, key in ((own, b"own key"), (by_default, b"redis default")):
            s = connect(ing.port, tls=False)
            s.sendall(frames(stream, u.bytes, key, iter(lambda: 1000, None)))
            s.close()
        wrong = connect(ing.port, tls=False)  # the default key is not valid for a sensor with its own
        before = rejections("bad_hmac")
        wrong.sendall(frames(stream, other.bytes, b"redis default", iter(lambda: 1000, None)))
        assert closed_by_server(wrong)
        for u, reason in ((banned, "blacklisted_uuid"), (ip_banner, "blacklisted_ip")):
            n = rejections(reason)
            s = connect(ing.port, tls=False)
            s.sendall(encode_frame(1, u.bytes, KEY, MARKER))
            assert closed_by_server(s)
            assert rejections(reason) == n + 1
        assert r.sismember("blacklist_ip", "127.0.0.1")  # as d4-core: the uuid banned its address
        out = read_topic(kafka_config, cfg.ingress.topic, "PcapBatch",
                         until=lambda rs: all(packets_of(rs, u.hex) == recs for u in (own, by_default)))
    assert rejections("bad_hmac") == before + 1
    assert packets_of(out, own.hex) == recs and packets_of(out, by_default.hex) == recs
    r.flushdb()


# --- non-pcap types ----------------------------------------------------------------------------

def test_lines_and_meta_records(kafka_config):
    cfg = ingress_config(kafka_config, _Names(), no_tls=True, hmac_key=KEY)
    lines = b"".join(b"2024-01-01||10.0.0.%d||192.0.2.1||IN||example.org||A||1.2.3.4||60||1\n" % i
                     for i in range(3000))
    dns, meta_sensor = uuidlib.uuid4(), uuidlib.uuid4()
    with IngressThread(cfg) as ing:
        s = connect(ing.port, tls=False)  # type 8 (passive DNS) cut at arbitrary frame boundaries
        s.sendall(frames(lines, dns.bytes, KEY, iter([7, 100, 4096, 1, 65535] * 100), d4_type=8))
        s.close()
        s = connect(ing.port, tls=False)  # type 2 meta header split over frames, then 254 lines
        meta = b'{"type": "ja3-jl", "tags": ["tlp:white"]}'
        s.sendall(frames(meta, meta_sensor.bytes, KEY, iter([10, 1000]), d4_type=2)
                  + frames(b'{"ja3": 1}\n{"ja3": 2}\n', meta_sensor.bytes, KEY, iter([5, 1000]), d4_type=254))
        s.close()
        out = read_topic(kafka_config, cfg.ingress.records_topic, "D4Record",
                         until=lambda rs: b"".join(r["data"] for r in rs if r["sensor_uuid"] == dns.hex) == lines
                         and any(r["d4_type"] == 254 for r in rs))
    dns_recs = [r for r in out if r["sensor_uuid"] == dns.hex]
    assert b"".join(r["data"] for r in dns_recs) == lines
    assert all(r["data"].endswith(b"\n") and r["d4_type"] == 8 for r in dns_recs)  # whole lines only
    assert [r["seq"] for r in dns_recs] == list(range(len(dns_recs)))
    m = [(r["d4_type"], r["meta_type"], r["data"]) for r in out if r["sensor_uuid"] == meta_sensor.hex]
    assert m == [(2, None, meta), (254, "ja3-jl", b'{"ja3": 1}\n{"ja3": 2}\n')]


def test_sensor_reconnecting_after_a_cut_is_not_locked_out_long(rules):
    """The old session of a sensor whose network died stays open (no FIN ever arrives); its
    reconnection is refused as a duplicate until the idle timeout closes the dead session,
    then D4Sender's backoff gets it in and nothing is lost."""
    u = uuidlib.uuid4()
    stream, recs = capture(500, 31)
    dead = connect(rules.ing.port, tls=False)
    dead.sendall(encode_frame(1, u.bytes, KEY, stream[:24]) + encode_frame(1, u.bytes, KEY, recs[:10])[:-3])
    time.sleep(0.2)
    before = rejections("duplicate_session")
    started = time.monotonic()
    sender = D4Sender("127.0.0.1", rules.ing.port, u.bytes, KEY, 1,
                      options=SenderOptions(backoff_initial=0.2, backoff_max=0.5),
                      on_session_start=lambda: stream[:24])
    sender.send(recs)
    assert sender.close(20)
    waited = time.monotonic() - started
    dead.close()
    assert rejections("duplicate_session") > before
    assert waited < 1.5 + 3.0  # idle timeout plus a few backoff rounds
    out = read_topic(rules.kcfg, rules.cfg.ingress.topic, "PcapBatch",
                     until=lambda rs: packets_of(rs, u.hex).endswith(recs))
    assert packets_of(out, u.hex) == recs  # the dead session's cut record was never produced


# --- backpressure ------------------------------------------------------------------------------

def test_backpressure_when_the_broker_stalls(tmp_path):
    """A frozen broker: the ingress stops reading (bounded memory, TCP pushes back on the sensor),
    then resumes when the broker does, and every packet arrives in order."""
    with EmbeddedBroker(log_file=tmp_path / "tansu.log") as broker:
        kcfg = KafkaConfig(bootstrap=broker.bootstrap, statistics_interval_ms=0, linger_ms=5)
        cfg = ingress_config(kcfg, _Names(), no_tls=True, hmac_key=KEY, max_inflight_bytes=1_000_000,
                             batch_bytes=65536, idle_timeout=60.0)
        stream, recs = capture(20000, 41)  # ~16 MB
        u = uuidlib.uuid4()
        with IngressThread(cfg) as ing:
            sender = D4Sender("127.0.0.1", ing.port, u.bytes, KEY, 1, on_session_start=lambda: stream[:24],
                              options=SenderOptions(resend_buffer_bytes=64 << 20, io_timeout=60))
            sender.send(recs[:100_000])
            assert sender.wait_acked(10)
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                feeder = threading.Thread(target=lambda: [sender.send(recs[i:i + 65536])
                                                          for i in range(100_000, len(recs), 65536)])
                feeder.start()
                time.sleep(4)
                assert metrics.INGRESS_PAUSED._value.get() == 1
                assert feeder.is_alive(), "the sensor was not pushed back"
                held = sum(s.decoder.buffered + (s.assembler.buffered_bytes if s.assembler else 0)
                           for s in list(ing.server.sessions))
                assert held < 3_000_000  # one read and one batch per connection, not the stream
                assert sender.unacked_bytes > 0  # the rest waits in the sensor's buffers, unacknowledged
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            feeder.join(120)
            assert sender.close(60)
            out = read_topic(kcfg, cfg.ingress.topic, "PcapBatch",
                             until=lambda rs: len(packets_of(rs, u.hex)) >= len(recs))
            assert metrics.INGRESS_PAUSED._value.get() == 0
    assert packets_of(out, u.hex) == recs


@pytest.mark.parametrize("vector", [VECTOR_A, VECTOR_B])
def test_reference_vectors_accepted(rules, vector):
    """Vectors A and B (d4-rustclient, key 'private key to change') pass every rule and the HMAC
    check: the frame is counted and the connection stays open. Their 'blah' payloads are not a
    pcap stream, which only the assembler notes when the session ends."""
    frames_before = metrics.INGRESS_FRAMES.labels("1")._value.get()
    sock = connect(rules.ing.port, tls=False)
    sock.sendall(vector)
    deadline = time.monotonic() + 5
    while metrics.INGRESS_FRAMES.labels("1")._value.get() < frames_before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metrics.INGRESS_FRAMES.labels("1")._value.get() == frames_before + 1
    assert not closed_by_server(sock, timeout=0.5)  # still open: nothing was refused


def test_plain_d4_on_the_tls_port_is_a_counted_rejection(kafka_config, tmp_path):
    pem = write_self_signed_pem(tmp_path / "server.pem")
    cfg = ingress_config(kafka_config, _Names(), cert=str(pem), hmac_key=KEY)
    with IngressThread(cfg) as ing:
        before = rejections("tls_handshake")
        active = metrics.INGRESS_SESSIONS_ACTIVE._value.get()
        u = uuidlib.uuid4()
        sock = socket.create_connection(("127.0.0.1", ing.port), timeout=5)
        sock.sendall(encode_frame(1, u.bytes, KEY, MARKER))
        assert closed_by_server(sock)
        deadline = time.monotonic() + 5
        while rejections("tls_handshake") < before + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rejections("tls_handshake") == before + 1
        while ing.server.sessions and time.monotonic() < deadline:  # (the server thread may lag)
            time.sleep(0.02)
        assert not ing.server.sessions  # nothing left behind by the failed handshake
        assert metrics.INGRESS_SESSIONS_ACTIVE._value.get() == active
    assert read_topic(kafka_config, cfg.ingress.topic, "PcapBatch", idle=0.5) == []


def test_no_header_in_time_frees_the_slot(kafka_config):
    """A connection that trickles bytes but never completes a header is closed (d4-core's 30 s
    rule, here shortened), even though it is not idle."""
    cfg = ingress_config(kafka_config, _Names(), no_tls=True, hmac_key=KEY, header_timeout=1.0)
    with IngressThread(cfg) as ing:
        before = rejections("no_header")
        sock = connect(ing.port, tls=False)
        for _ in range(30):  # one byte every 0.1 s: never idle, never a whole header
            try:
                sock.sendall(b"\x01")
            except OSError:
                break
            time.sleep(0.1)
        assert closed_by_server(sock)
        assert rejections("no_header") == before + 1


def test_sigterm_flushes_open_batches(kafka_config, unique, tmp_path):
    """SIGTERM: the ingress closes its sessions, produces the batches still open (here held back
    by a 60 s batch age) and exits 0."""
    topic = unique("pcap")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    port = free_port()
    conf = tmp_path / "ingress.toml"
    conf.write_text("[ingress]\nbatch_age = 60.0\n")
    proc = subprocess.Popen(CLI + ["ingress", "--config", str(conf), "--bootstrap", kafka_config.bootstrap,
                                   "--listen", f"127.0.0.1:{port}", "--no-tls", "--hmac-key", KEY.decode(),
                                   "--topic", topic], env=ENV, stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", port, 30, proc)
        stream, recs = capture(50, 24)  # far below one batch: stays open for 60 s
        u = uuidlib.uuid4()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(frames(stream, u.bytes, KEY, iter(lambda: 4096, None)))
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read().decode()
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    out = read_topic(kafka_config, topic, "PcapBatch", until=lambda rs: packets_of(rs, u.hex) == recs, timeout=20)
    assert packets_of(out, u.hex) == recs
