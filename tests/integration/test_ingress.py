"""Ingress against the real broker: interop with reference-client streams over TLS, every
rejection rule, fuzzing, Redis-backed keys."""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid as uuidlib

import pytest

from bridge.d4.client import D4Sender, SenderOptions
from bridge.d4.frame import FrameSigner, encode_frame
from bridge.d4.tls import client_context, write_self_signed_pem

from d4util import (IngressThread, capture, closed_by_server, connect, frames, ingress_config, packets_of,
                    read_topic, rejections)

pytestmark = pytest.mark.integration

KEY = b"private key to change"
VECTOR_META = bytes.fromhex(
    "0102cd980d75dcf147dabb60aabe94fea6b2d37a1f6100000000ef60cf272d37f03b4511d3f0b1ac72f77ead"
    "535cadf52c5b38de0458eaa448b0120000007b2274797065223a20226a61332d6a6c227d"
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
