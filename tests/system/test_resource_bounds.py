"""Resource bounds: memory stays flat while a backlog of 10x a hop's buffer builds and drains;
descriptors and threads stay flat across 1,000 sensor reconnects to ingress."""

from __future__ import annotations

import socket
import ssl
import sys
import time
import uuid as uuidlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backlog import FACTOR, Rig, Trace, consumer_backlog, egress_backlog, ingress_backlog, queue_backlog  # noqa: E402

from bridge.broker import free_port, wait_for_port  # noqa: E402
from bridge.d4.frame import FrameSigner  # noqa: E402
from bridge.d4.tls import write_self_signed_pem  # noqa: E402
from bridge.pcap import global_header, pack_record  # noqa: E402
from system.harness import fd_count, metric, rss_mb, thread_count, wait_metrics  # noqa: E402

pytestmark = pytest.mark.system

RSS_LIMIT_MB = 300  # the bound for every hop
# Growth allowed above the warm RSS while 10x the buffer passes: two buffers (one being filled,
# one being handed on) plus what the Kafka client may hold while the hop runs at full speed
# (librdkafka's fetch queue, and for hops that produce the producer queue, bounded at 64 MB by
# kafka.queue_max_kbytes) and allocator slack. A hop that held the backlog would grow by the
# backlog itself (FACTOR buffers) on top of that and fail.
SLACK_MB = 80


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Rig:
    r = Rig(tmp_path_factory.mktemp("backlog"))
    yield r
    r.close()


def check_flat(trace: Trace) -> None:
    print(f"\n{trace.hop}: buffer {trace.buffer_mb} MB, backlog {trace.backlog_mb} MB, warm {trace.warm_mb:.0f} MB, "
          f"peak {trace.peak_mb:.0f} MB, end {trace.end_mb:.0f} MB, delivered {trace.delivered:.0f}/{trace.expected:.0f}")
    assert trace.delivered >= trace.expected, "the backlog was not delivered in full"
    assert len(trace.samples) >= 20, "the run was too short to watch"
    assert trace.peak_mb < RSS_LIMIT_MB
    allowed = 2 * trace.buffer_mb + SLACK_MB
    assert trace.growth_mb < allowed, f"RSS grew {trace.growth_mb:.0f} MB (allowed {allowed:.0f})"
    assert trace.growth_mb < trace.backlog_mb + SLACK_MB / 2 or trace.backlog_mb > 2 * allowed


def test_ingress_memory_flat_under_backlog(rig: Rig) -> None:
    check_flat(ingress_backlog(rig))


def test_queue_memory_flat_under_backlog(rig: Rig, redis_url: str) -> None:
    check_flat(queue_backlog(rig, redis_url))


def test_sanitize_memory_flat_under_backlog(rig: Rig) -> None:
    check_flat(consumer_backlog(rig, "sanitize"))


def test_egress_memory_flat_under_backlog(rig: Rig) -> None:
    check_flat(egress_backlog(rig))


def test_analyze_memory_flat_under_backlog(rig: Rig) -> None:
    check_flat(consumer_backlog(rig, "analyze"))


def test_fds_and_threads_flat_across_1000_reconnects(rig: Rig, tmp_path: Path) -> None:
    """One sensor reconnects 1,000 times over TLS, each session carrying a few packets."""
    pem = write_self_signed_pem(tmp_path / "server.pem")
    port = free_port()
    key = b"reconnect key"
    rig.topics("rc-pcap", "rc-records")
    hop = rig.hop("ingress-reconnects", "ingress", "--listen", f"127.0.0.1:{port}", "--cert", str(pem),
                  "--hmac-key", key.decode(), "--topic", "rc-pcap",
                  env={"D4BRIDGE_INGRESS_RECORDS_TOPIC": "rc-records"}).start()
    try:
        wait_for_port("127.0.0.1", port, 60, hop.proc)
        wait_metrics(hop)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sensor = uuidlib.uuid4().bytes
        signer = FrameSigner(key)
        stream = global_header(1, 65535, False) + b"".join(
            pack_record(1_700_000_000 * 10**9 + i, bytes(60)) for i in range(5))
        frame = signer.encode(1, sensor, stream)

        def session() -> None:
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
                s.sendall(frame)

        samples = []
        for i in range(1000):
            session()
            # the server sees the close asynchronously; wait for it, so every session is a reconnect
            deadline = time.monotonic() + 5
            while metric(hop.metrics(), "d4bridge_ingress_sessions_active") and time.monotonic() < deadline:
                time.sleep(0.002)
            if i in (99, 999):
                time.sleep(1.0)
                samples.append((fd_count(hop.pid), thread_count(hop.pid), rss_mb(hop.pid)))
        m = hop.metrics()
        assert metric(m, "d4bridge_ingress_sessions_total") == 1000
        assert metric(m, "d4bridge_ingress_rejections_total") == 0
        (fd100, th100, rss100), (fd1000, th1000, rss1000) = samples
        print(f"\nafter 100 reconnects: {fd100} fds, {th100} threads, {rss100:.0f} MB; "
              f"after 1000: {fd1000} fds, {th1000} threads, {rss1000:.0f} MB")
        assert fd1000 <= fd100 + 2
        assert th1000 <= th100 + 1
        assert rss1000 < rss100 + 20
    finally:
        hop.stop(20)
