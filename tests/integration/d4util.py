"""Helpers for the D4 integration tests: an in-process ingress, topic readers, capture streams."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import threading
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bridge import kafka, metrics, records
from bridge.config import Config, KafkaConfig, Secret
from bridge.d4.frame import FrameSigner
from bridge.hops.ingress import IngressServer, serve
from bridge.pcap import global_header, pack_record

CLI = [sys.executable, "-m", "bridge.cli"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def ingress_config(kcfg: KafkaConfig, unique, **ingress: Any) -> Config:
    """A Config for an in-process ingress on a free loopback port with fresh topics."""
    cfg = Config()
    cfg.site = "test-site"
    cfg.kafka = kcfg
    cfg.ingress.listen = "127.0.0.1:0"
    cfg.ingress.topic = unique("pcap")
    cfg.ingress.records_topic = unique("records")
    for k, v in ingress.items():
        setattr(cfg.ingress, k, Secret(v) if k == "hmac_key" and v is not None else v)
    kafka.create_topics(kcfg, 1, topics=[cfg.ingress.topic, cfg.ingress.records_topic])
    return cfg


class IngressThread:
    """Run ``bridge.hops.ingress.serve`` in a thread with its own event loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.port = 0
        self.server: IngressServer | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        def ready(server: IngressServer) -> None:
            self.server = server
            self.port = server.port
            self._ready.set()

        try:
            asyncio.run(serve(self.cfg, self._stop.is_set, ready))
        except BaseException as exc:  # surfaced by __enter__/stop
            self.error = exc
            self._ready.set()

    def __enter__(self) -> "IngressThread":
        self._thread.start()
        assert self._ready.wait(30), "ingress did not start"
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.server = None  # let its Kafka producer go
        if self.error:
            raise self.error

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_topic(kcfg: KafkaConfig, topic: str, expect: str, idle: float = 2.0, timeout: float = 60.0,
               until=None) -> list[dict]:
    """Decode every record of a one-partition topic from the beginning, until ``idle`` s without new
    records (or until ``until(records)`` is true)."""
    conf = kafka.consumer_conf(kcfg, "test", "unused")
    conf.pop("group.id")
    conf["enable.partition.eof"] = False
    consumer = Consumer({**conf, "group.id": "reader-" + uuidlib.uuid4().hex})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[dict] = []
    last = time.monotonic()
    deadline = last + timeout
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(500, 0.2)
            good = [m for m in msgs if m.error() is None]
            if good:
                out.extend(records.decode(m.value(), expect=expect) for m in good)
                last = time.monotonic()
                if until is not None and until(out):
                    break
            elif time.monotonic() - last > idle and (until is None or until(out)):
                break
    finally:
        consumer.close()
    return out


def packets_of(recs: list[dict], sensor_uuid: str) -> bytes:
    """Packet records of one sensor, in (session arrival, seq) order."""
    mine = [r for r in recs if r["sensor_uuid"] == sensor_uuid]
    return b"".join(r["packets"] for r in mine)


def capture(n: int, seed: int, nsec: bool = False) -> tuple[bytes, bytes]:
    """A synthetic capture: (whole pcap stream, its packet records)."""
    rng = random.Random(seed)
    recs = b"".join(
        pack_record(1_700_000_000_000_000_000 + i * 1000, rng.randbytes(rng.randint(40, 1514)), nsec)
        for i in range(n)
    )
    return global_header(1, 65535, nsec) + recs, recs


def frames(stream: bytes, uuid: bytes, key: bytes, sizes, d4_type: int = 1) -> bytes:
    """Sign ``stream`` as D4 frames whose payload sizes come from the iterator ``sizes``."""
    signer = FrameSigner(key)
    out = []
    pos = 0
    for size in sizes:
        if pos >= len(stream):
            break
        out.append(signer.encode(d4_type, uuid, stream[pos:pos + size]))
        pos += size
    assert pos >= len(stream)
    return b"".join(out)


def connect(port: int, tls: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    return sock


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True when the server closes the connection within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, ssl.SSLEOFError):
        return True
    except (socket.timeout, TimeoutError):
        return False
    finally:
        sock.close()


def rejections(reason: str) -> float:
    return metrics.INGRESS_REJECTIONS.labels(reason)._value.get()


def v4() -> uuidlib.UUID:
    return uuidlib.uuid4()
