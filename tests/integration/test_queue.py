"""``d4-bridge queue`` against a real redis-server and the real broker, the queue filled as d4-core fills it."""

from __future__ import annotations

import gzip
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Callable

import pytest
import redis
from confluent_kafka import Consumer
from prometheus_client import REGISTRY

from bridge import kafka, records, traffic
from bridge.broker import free_port, wait_for_port
from bridge.cli import main as cli_main
from bridge.config import Config, KafkaConfig
from bridge.hop import Shutdown
import bridge.hops.queue as queue_hop
from bridge.hops.queue import HOST, serve
from bridge.pcap import global_header, record_offsets
from bridge.queue_items import QueueType

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = 1_764_000_000  # capture start, seconds


# --- d4-core side -------------------------------------------------------------------------


def telescope_packets(n_seconds: float, rate: float, seed: int) -> bytes:
    """Canonical records of synthetic telescope traffic."""
    return traffic.generate(traffic.Scenario(seed=seed), T0 * 10**9, n_seconds, rate).packets


def d4core_file(data_dir: Path, sensor: str, start_s: int, packets: bytes) -> Path:
    """A rotated capture where d4-core's worker 1 puts it: <data>/<uuid>/1/YYYY/MM/DD/<uuid>-...cap.gz."""
    t = time.gmtime(start_s)
    day = data_dir / sensor / "1" / time.strftime("%Y/%m/%d", t)
    day.mkdir(parents=True, exist_ok=True)
    path = day / f"{sensor}-{time.strftime('%Y-%m-%d-%H%M%S', t)}.cap.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(global_header(1, 65535, False) + packets)
    return path


def push_like_d4core(lists: redis.Redis, meta: redis.Redis, queue_uuid: str, item: str | bytes,
                     qkey: str = "1", max_size: int = 10000) -> None:
    """file_compressor.py / add_data_to_queue: LPUSH, HSET last_updated, LTRIM 0 max_size."""
    lists.lpush(f"analyzer:{qkey}:{queue_uuid}", item)
    meta.hset(f"analyzer:{queue_uuid}", "last_updated", time.time())
    lists.ltrim(f"analyzer:{qkey}:{queue_uuid}", 0, max_size)


# --- bridge side --------------------------------------------------------------------------


def db_url(redis_url: str, db: int) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def lists(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(db_url(redis_url, 2))


@pytest.fixture
def meta(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(db_url(redis_url, 0))


def queue_config(kafka_config: KafkaConfig, redis_url: str, unique: Callable[[str], str], qtype: str = "1",
                 **queue: object) -> Config:
    cfg = Config()
    cfg.site = "test"
    cfg.kafka = kafka_config
    cfg.queue.redis = db_url(redis_url, 2)
    cfg.queue.queue_uuid = str(uuidlib.uuid4())
    cfg.queue.type = qtype
    cfg.queue.topic = unique("pcap")
    cfg.queue.records_topic = unique("records")
    cfg.queue.consumer = unique("c")
    for key, value in queue.items():
        setattr(cfg.queue, key, value)
    kafka.create_topics(kafka_config, 3, topics=[cfg.queue.topic, cfg.queue.records_topic, kafka.TOPIC_DLQ])
    return cfg


class HopThread:
    """The hop in a thread of the test process, stopped like SIGTERM stops it."""

    def __init__(self, cfg: Config) -> None:
        self.shutdown = Shutdown()
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)

    def _run(self, cfg: Config) -> None:
        self.rc = serve(cfg, QueueType.parse(cfg.queue.type), self.shutdown)

    def __enter__(self) -> "HopThread":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert self.rc == 0


def read_topic(kafka_config: KafkaConfig, topic: str, done: Callable[[list[tuple[int, int, dict]]], bool],
               expect: str, timeout: float = 90.0, keep: Callable[[dict], bool] = lambda r: True
               ) -> list[tuple[int, int, dict]]:
    """(partition, offset, record) of a topic from the beginning until ``done`` holds."""
    conf = kafka.consumer_conf(kafka_config, "test", f"test-{uuidlib.uuid4().hex}")
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    got: list[tuple[int, int, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(got):
            assert time.monotonic() < deadline, f"timed out with {len(got)} records from {topic}"
            for msg in consumer.consume(200, 0.5):
                if msg.error() is None:
                    rec = records.decode(msg.value(), expect=expect)
                    if keep(rec):
                        got.append((msg.partition(), msg.offset(), rec))
    finally:
        consumer.close()
    return sorted(got, key=lambda x: (x[0], x[1]))


def packets_total(got: list[tuple[int, int, dict]]) -> int:
    return sum(r["packet_count"] for _, _, r in got)


def wait_drained(lists: redis.Redis, cfg: Config, timeout: float = 120.0) -> None:
    qkey = QueueType.parse(cfg.queue.type).key
    source = f"analyzer:{qkey}:{cfg.queue.queue_uuid}"
    deadline = time.monotonic() + timeout
    while lists.llen(source) or any(lists.llen(k) for k in lists.keys(f"d4bridge:processing:{qkey}:{cfg.queue.queue_uuid}:*")):
        assert time.monotonic() < deadline, "queue not drained"
        time.sleep(0.1)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def unique_packets(got: list[tuple[int, int, dict]]) -> int:
    """Packets once (file_path, batch_index) duplicates are dropped."""
    return sum(r["packet_count"] for r in {(r["file_path"], r["batch_index"]): r for _, _, r in got}.values())


def by_file(got: list[tuple[int, int, dict]]) -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {}
    for _, _, rec in got:
        files.setdefault(rec["file_path"], []).append(rec)
    return files


# --- tests --------------------------------------------------------------------------------


def test_every_packet_of_every_file_in_file_order(kafka_config, redis_url, unique, lists, meta, tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique, batch_bytes=16384)
    sensors = [uuidlib.uuid4().hex for _ in range(3)]
    expected: dict[str, bytes] = {}
    order: dict[str, list[str]] = {s: [] for s in sensors}
    pushed: list[str] = []
    for rotation in range(3):  # d4-core pushes each sensor's file at every 300-s rotation
        for i, sensor in enumerate(sensors):
            packets = telescope_packets(20, 400, seed=rotation * 10 + i)
            path = str(d4core_file(tmp_path, sensor, T0 + 300 * rotation, packets))
            expected[path] = packets
            order[sensor].append(path)
            pushed.append(path)
    files_before = metric("d4bridge_queue_files_total")
    packets_before = metric("d4bridge_queue_packets_total")
    bytes_before = metric("d4bridge_queue_bytes_total")
    ages_before = metric("d4bridge_queue_file_age_seconds_count")
    for path in pushed[:4]:
        push_like_d4core(lists, meta, cfg.queue.queue_uuid, path)
    with HopThread(cfg):
        time.sleep(1.5)  # the rest arrives while the consumer blocks in BLMOVE
        for path in pushed[4:]:
            push_like_d4core(lists, meta, cfg.queue.queue_uuid, path)
        want = sum(len(record_offsets(p)) for p in expected.values())
        got = read_topic(kafka_config, cfg.queue.topic, lambda g: packets_total(g) >= want, "PcapBatch")
        wait_drained(lists, cfg)
    assert packets_total(got) == want
    files = by_file(got)
    assert set(files) == set(expected)
    for path, recs in files.items():
        assert [r["batch_index"] for r in recs] == list(range(len(recs)))  # in order, none twice
        assert b"".join(r["packets"] for r in recs) == expected[path]
        sensor = Path(path).parts[-6]
        assert {(r["sensor_uuid"], r["source"], r["site"], r["session_id"]) for r in recs} == \
            {(sensor, "queue", "test", recs[0]["session_id"])}
        assert [r["seq"] for r in recs] == [r["batch_index"] for r in recs]
    # Files of one sensor share a partition (keyed by sensor) and arrive in d4-core's order.
    for sensor, paths in order.items():
        placed = [(p, o) for p, o, r in got if r["sensor_uuid"] == sensor and r["batch_index"] == 0]
        assert len({p for p, _ in placed}) == 1
        firsts = {r["file_path"]: o for _, o, r in got if r["sensor_uuid"] == sensor and r["batch_index"] == 0}
        assert sorted(paths, key=firsts.__getitem__) == paths
    assert metric("d4bridge_queue_files_total") - files_before == len(expected)
    assert metric("d4bridge_queue_packets_total") - packets_before == want
    assert metric("d4bridge_queue_bytes_total") - bytes_before == sum(map(len, expected.values()))
    assert metric("d4bridge_queue_file_age_seconds_count") - ages_before == len(expected)
    assert metric("d4bridge_queue_depth") == 0 and metric("d4bridge_queue_processing") == 0
    assert lists.llen(f"d4bridge:failed:1:{cfg.queue.queue_uuid}") == 0


def test_redis_5_commands(kafka_config, redis_url, unique, lists, meta, tmp_path, monkeypatch) -> None:
    """d4-core's installer builds Redis 5 (no LMOVE/BLMOVE): the BRPOPLPUSH/RPOPLPUSH path, same semantics."""
    monkeypatch.setattr(queue_hop, "has_lmove", lambda version: False)
    expected = {}
    for i in range(3):
        packets = telescope_packets(3, 300, seed=30 + i)
        expected[str(d4core_file(tmp_path, uuidlib.uuid4().hex, T0 + 300 * i, packets))] = packets
    for qtype in ("1", "3"):
        cfg = queue_config(kafka_config, redis_url, unique, qtype=qtype, line_batch_items=10)
        items = list(expected) if qtype == "1" else [b"line %d" % i for i in range(50)]
        with HopThread(cfg):
            deadline = time.monotonic() + 30
            while not any(c.get("cmd") == "brpoplpush" for c in lists.client_list()):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for item in items:
                push_like_d4core(lists, meta, cfg.queue.queue_uuid, item, qkey=qtype)
            if qtype == "1":
                got = read_topic(kafka_config, cfg.queue.topic,
                                 lambda g: unique_packets(g) >= sum(len(record_offsets(p)) for p in expected.values()),
                                 "PcapBatch")
            else:
                got = read_topic(kafka_config, cfg.queue.records_topic,
                                 lambda g: sum(r["data"].count(b"\n") for _, _, r in g) >= len(items), "D4Record")
            wait_drained(lists, cfg)
        if qtype == "1":
            assert check_complete(got, expected) == {}
        else:
            data = b"".join(r["data"] for r in sorted((r for _, _, r in got), key=lambda r: r["seq"]))
            assert data == b"".join(item + b"\n" for item in items)


def _damaged_files(tmp_path: Path) -> tuple[dict[str, Path], dict[str, bytes]]:
    """One file per failure reason, and the packets each must still yield (those before the damage)."""
    good = telescope_packets(5, 400, seed=99)
    offsets = record_offsets(good)
    gh = global_header(1, 65535, False)
    d = tmp_path / "bad"
    d.mkdir()
    paths: dict[str, Path] = {}
    kept: dict[str, bytes] = {}

    paths["missing"] = d / "gone.cap.gz"
    kept["missing"] = b""
    paths["unreadable"] = d / "a-directory.cap.gz"
    paths["unreadable"].mkdir()
    kept["unreadable"] = b""
    paths["empty"] = d / "empty.cap.gz"
    paths["empty"].write_bytes(b"")
    kept["empty"] = b""

    blob = gzip.compress(gh + good, compresslevel=1)
    paths["truncated_gzip"] = d / "cut.cap.gz"
    paths["truncated_gzip"].write_bytes(blob[: len(blob) // 2])
    kept["truncated_gzip"] = b"?"  # a whole-record prefix of unknown length, checked below

    corrupt = bytearray(blob)
    corrupt[-8] ^= 0xFF  # CRC of the member: detected after all the data was produced
    paths["corrupt_gzip"] = d / "crc.cap.gz"
    paths["corrupt_gzip"].write_bytes(bytes(corrupt))
    kept["corrupt_gzip"] = good

    paths["not_pcap"] = d / "syslog.cap.gz"
    paths["not_pcap"].write_bytes(gzip.compress(b"Nov 26 07:00:00 host sshd[1]: not a capture\n" * 100))
    kept["not_pcap"] = b""

    paths["truncated_pcap"] = d / "tcpdump-killed.cap.gz"
    paths["truncated_pcap"].write_bytes(gzip.compress(gh + good[:-7]))
    kept["truncated_pcap"] = good[: int(offsets[-1])]

    bad = bytearray(good)
    k = len(offsets) // 2
    struct.pack_into("<I", bad, int(offsets[k]) + 8, 10_000_000)  # caplen far above the snaplen
    paths["corrupt_pcap"] = d / "garbled.cap"  # plain .cap: no gzip at all
    paths["corrupt_pcap"].write_bytes(gh + bytes(bad))
    kept["corrupt_pcap"] = good[: int(offsets[k])]
    return paths, kept


def test_bad_files_dead_letter_failed_list_and_queue_moves_on(kafka_config, redis_url, unique, lists, meta,
                                                              tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique, batch_bytes=8192)
    paths, kept = _damaged_files(tmp_path)
    after = telescope_packets(5, 400, seed=7)
    good_path = d4core_file(tmp_path, uuidlib.uuid4().hex, T0, after)
    before = {reason: metric("d4bridge_queue_failures_total", reason=reason) for reason in paths}
    for path in [*paths.values(), good_path]:
        push_like_d4core(lists, meta, cfg.queue.queue_uuid, str(path))
    bad_paths = {str(p): reason for reason, p in paths.items()}
    with HopThread(cfg):
        dlq = read_topic(kafka_config, kafka.TOPIC_DLQ, lambda g: len(g) >= len(paths), "DeadLetter",
                         keep=lambda r: r["file_path"] in bad_paths)
        got = read_topic(kafka_config, cfg.queue.topic,
                         lambda g: any(r["file_path"] == str(good_path) and r["packet_count"] and
                                       sum(x["packet_count"] for _, _, x in g if x["file_path"] == str(good_path))
                                       == len(record_offsets(after)) for _, _, r in g), "PcapBatch")
        wait_drained(lists, cfg)
    assert {r["file_path"]: r["reason"] for _, _, r in dlq} == bad_paths
    assert all(r["hop"] == "queue" and r["detail"] for _, _, r in dlq)
    failed = {x.decode() for x in lists.lrange(f"d4bridge:failed:1:{cfg.queue.queue_uuid}", 0, -1)}
    assert failed == set(bad_paths)
    for reason in paths:
        assert metric("d4bridge_queue_failures_total", reason=reason) - before[reason] == 1
    files = by_file(got)
    assert b"".join(r["packets"] for r in files[str(good_path)]) == after
    for reason, path in paths.items():
        produced = b"".join(r["packets"] for r in files.get(str(path), []))
        if reason == "truncated_gzip":
            good = telescope_packets(5, 400, seed=99)
            assert 0 < len(produced) < len(good) and good.startswith(produced)
            assert len(record_offsets(produced)) > 0  # whole records only
        else:
            assert produced == kept[reason], reason


def test_line_queues_type8_and_extended_type(kafka_config, redis_url, unique, lists, meta) -> None:
    for qtype in ("8", "ja3-jl"):
        cfg = queue_config(kafka_config, redis_url, unique, qtype=qtype, line_batch_bytes=4096,
                           line_batch_items=100)
        if qtype == "8":
            lines = [f"{1764000000 + i}||10.1.0.{i % 250}||192.0.2.53||IN||host{i}.example||A||198.51.100.{i % 200}"
                     f"||300||{i}".encode() for i in range(3000)]
        else:
            lines = [b'{"Timestamp": %d, "JA3": "%032x"}' % (i, i) for i in range(1500)]
        too_big = b"x" * 5000
        items = lines[:1000] + [too_big] + lines[1000:]
        for item in items:
            push_like_d4core(lists, meta, cfg.queue.queue_uuid, item, qkey=qtype)
        with HopThread(cfg):
            got = read_topic(kafka_config, cfg.queue.records_topic,
                             lambda g: sum(r["data"].count(b"\n") for _, _, r in g) >= len(lines), "D4Record")
            wait_drained(lists, cfg)
        recs = sorted((r for _, _, r in got), key=lambda r: r["seq"])
        assert b"".join(r["data"] for r in recs) == b"".join(line + b"\n" for line in lines)
        assert all(len(r["data"]) <= 4096 for r in recs)
        assert len(recs) < len(lines) / 20  # many lines per record
        expect_type = (8, None) if qtype == "8" else (254, "ja3-jl")
        assert {(r["d4_type"], r["meta_type"], r["source"]) for r in recs} == {(*expect_type, "queue")}
        assert lists.lrange(f"d4bridge:failed:{qtype}:{cfg.queue.queue_uuid}", 0, -1) == [too_big]


def test_create_queue_registers_like_the_d4core_ui(redis_url, meta, lists, capsys) -> None:
    analyzer = db_url(redis_url, 2)
    assert cli_main(["queue", "--create-queue", "--redis", analyzer, "--description", "to kafka"]) == 0
    q = capsys.readouterr().out.strip()
    assert uuidlib.UUID(q).version == 4
    assert meta.hgetall(f"analyzer:{q}") == {b"type": b"1", b"description": b"to kafka"}
    for key in ("analyzer:1", "all:analyzer:by:format_type:1", "all_analyzer_queues"):
        assert meta.sismember(key, q), key
    assert meta.sismember("all:analyzer:format_type", "1")
    # Idempotent for the same queue and type; a different type is refused.
    assert cli_main(["queue", "--create-queue", "--redis", analyzer, "--queue-uuid", q]) == 0
    assert capsys.readouterr().out.strip() == q
    assert cli_main(["queue", "--create-queue", "--redis", analyzer, "--queue-uuid", q, "--type", "8"]) == 1
    # d4-core's file_compressor now feeds it: for each queue in SMEMBERS analyzer:1 it LPUSHes the path.
    for member in meta.smembers("analyzer:1"):
        push_like_d4core(lists, meta, member.decode(), "/data/x.cap.gz")
    assert lists.lrange(f"analyzer:1:{q}", 0, -1) == [b"/data/x.cap.gz"]

    ext = str(uuidlib.uuid4())
    assert cli_main(["queue", "--create-queue", "--redis", analyzer, "--queue-uuid", ext, "--type", "ja3-jl"]) == 0
    assert meta.hgetall(f"analyzer:{ext}") == {b"type": b"254", b"metatype": b"ja3-jl"}
    for key in ("analyzer:254:ja3-jl", "all:analyzer:by:extended_type:ja3-jl", "all:analyzer:by:format_type:254",
                "all_analyzer_queues"):
        assert meta.sismember(key, ext), key
    assert meta.sismember("all:analyzer:extended_type", "ja3-jl")


def test_dead_consumers_items_are_taken_over(kafka_config, redis_url, unique, lists, meta, tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique, lease_seconds=2.0)
    q = cfg.queue.queue_uuid
    packets = [telescope_packets(3, 300, seed=s) for s in (1, 2)]
    orphan, alive = (str(d4core_file(tmp_path, uuidlib.uuid4().hex, T0, p)) for p in packets)
    # A consumer on another host died holding `orphan` (its lease is gone); another one is alive.
    lists.lpush(f"d4bridge:processing:1:{q}:ghost", orphan)
    lists.lpush(f"d4bridge:processing:1:{q}:busy", alive)
    lists.set(f"d4bridge:lease:1:{q}:busy", "otherhost 1 token", px=60000)
    with HopThread(cfg):
        got = read_topic(kafka_config, cfg.queue.topic,
                         lambda g: packets_total(g) >= len(record_offsets(packets[0])), "PcapBatch")
        deadline = time.monotonic() + 30
        while lists.llen(f"d4bridge:processing:1:{q}:{cfg.queue.consumer}") or lists.exists(
                f"d4bridge:processing:1:{q}:ghost"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert {r["file_path"] for _, _, r in got} == {orphan}
    assert lists.lrange(f"d4bridge:processing:1:{q}:busy", 0, -1) == [alive.encode()]


def test_item_that_keeps_killing_consumers_is_set_aside(kafka_config, redis_url, unique, lists, meta,
                                                        tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique)
    q = cfg.queue.queue_uuid
    packets = telescope_packets(3, 300, seed=8)
    poison, fine = (str(d4core_file(tmp_path, uuidlib.uuid4().hex, T0, packets)) for _ in range(2))
    processing = f"d4bridge:processing:1:{q}:{cfg.queue.consumer}"
    lists.lpush(processing, poison, fine)  # both in hand when the consumer died
    lists.hset(f"d4bridge:attempts:1:{q}", poison, 2)  # ... and poison had killed it twice before
    with HopThread(cfg):
        dlq = read_topic(kafka_config, kafka.TOPIC_DLQ, lambda g: len(g) >= 1, "DeadLetter",
                         keep=lambda r: r["file_path"] == poison)
        got = read_topic(kafka_config, cfg.queue.topic, lambda g: packets_total(g) >= len(record_offsets(packets)),
                         "PcapBatch")
        wait_drained(lists, cfg)
    assert [r["reason"] for _, _, r in dlq] == ["crash_loop"]
    assert {r["file_path"] for _, _, r in got} == {fine}
    assert lists.lrange(f"d4bridge:failed:1:{q}", 0, -1) == [poison.encode()]
    assert not lists.exists(f"d4bridge:attempts:1:{q}")  # counts dropped once items are finished


def test_broker_down_keeps_the_item_for_later(kafka_config, redis_url, unique, lists, meta, tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique)
    packets = telescope_packets(3, 300, seed=9)
    path = str(d4core_file(tmp_path, uuidlib.uuid4().hex, T0, packets))
    push_like_d4core(lists, meta, cfg.queue.queue_uuid, path)
    down = Config()
    down.site, down.queue = cfg.site, cfg.queue
    down.kafka = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", statistics_interval_ms=0,
                             extra={"message.timeout.ms": 1500})  # nothing listens there
    retries = metric("d4bridge_queue_retries_total", reason="delivery_failed")
    processing = f"d4bridge:processing:1:{cfg.queue.queue_uuid}:{cfg.queue.consumer}"
    with HopThread(down):
        deadline = time.monotonic() + 30
        while metric("d4bridge_queue_retries_total", reason="delivery_failed") - retries < 2:
            assert time.monotonic() < deadline, "no delivery failure seen"
            time.sleep(0.1)
        assert lists.lrange(processing, 0, -1) == [path.encode()]  # neither failed nor dropped
    assert lists.lrange(processing, 0, -1) == [path.encode()]
    assert lists.llen(f"d4bridge:failed:1:{cfg.queue.queue_uuid}") == 0
    with HopThread(cfg):  # the broker is back (same consumer): the item is done first
        got = read_topic(kafka_config, cfg.queue.topic, lambda g: packets_total(g) >= len(record_offsets(packets)),
                         "PcapBatch")
        wait_drained(lists, cfg)
    assert check_complete(got, {path: packets}) == {}


def test_redis_restart_is_survived(kafka_config, unique, tmp_path) -> None:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(tmp_path)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 10, server)
        url = f"redis://127.0.0.1:{port}/0"
        cfg = queue_config(kafka_config, url, unique)
        lists = redis.Redis.from_url(db_url(url, 2))
        meta = redis.Redis.from_url(db_url(url, 0))
        expected = {}
        outages = metric("d4bridge_queue_retries_total", reason="redis_unavailable")
        with HopThread(cfg):
            for i in range(2):
                packets = telescope_packets(3, 300, seed=20 + i)
                path = str(d4core_file(tmp_path, uuidlib.uuid4().hex, T0 + 300 * i, packets))
                expected[path] = packets
                if i == 1:  # d4-core's Redis restarts between two rotations
                    server.terminate()
                    server.wait(10)
                    time.sleep(2)
                    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
                    wait_for_port("127.0.0.1", port, 10, server)
                push_like_d4core(lists, meta, cfg.queue.queue_uuid, path)
                wait_drained(lists, cfg, timeout=60)
        got = read_topic(kafka_config, cfg.queue.topic,
                         lambda g: packets_total(g) >= sum(len(record_offsets(p)) for p in expected.values()),
                         "PcapBatch")
        assert check_complete(got, expected) == {}
        assert metric("d4bridge_queue_retries_total", reason="redis_unavailable") > outages
    finally:
        server.terminate()
        server.wait(10)


# --- as a process: SIGKILL, SIGTERM, two consumers ----------------------------------------


def start_process(cfg: Config, consumer: str | None, **env: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bridge.cli", "queue", "--bootstrap", cfg.kafka.bootstrap, "--redis",
            cfg.queue.redis, "--queue-uuid", cfg.queue.queue_uuid, "--topic", cfg.queue.topic, "--site", "test",
            "--metrics-port", "0"]
    if consumer:
        argv += ["--consumer", consumer]
    full_env = dict(os.environ, D4BRIDGE_QUEUE_BATCH_BYTES="65536", **env)
    return subprocess.Popen(argv, cwd=REPO, env=full_env, stderr=subprocess.PIPE, text=True)


def wait_for_batch(kafka_config: KafkaConfig, topic: str, path: str, index: int) -> None:
    read_topic(kafka_config, topic, lambda g: len(g) > 0, "PcapBatch",
               keep=lambda r: r["file_path"] == path and r["batch_index"] >= index)


def check_complete(got: list[tuple[int, int, dict]], expected: dict[str, bytes]) -> dict[str, int]:
    """Every packet of every file present once after dropping (file_path, batch_index) duplicates;
    return the number of duplicate batches per file."""
    dups: dict[str, int] = {}
    for path, recs in by_file(got).items():
        seen: dict[int, bytes] = {}
        for r in recs:
            if r["batch_index"] in seen:
                assert seen[r["batch_index"]] == r["packets"]  # a re-done batch is the same batch
                dups[path] = dups.get(path, 0) + 1
            seen[r["batch_index"]] = r["packets"]
        assert sorted(seen) == list(range(len(seen)))
        assert b"".join(seen[i] for i in range(len(seen))) == expected[path], path
    assert set(by_file(got)) == set(expected)
    return dups


def test_sigkill_mid_file_then_restart_loses_nothing(kafka_config, redis_url, unique, lists, meta,
                                                      tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique)
    sensor = uuidlib.uuid4().hex
    expected: dict[str, bytes] = {}
    for i, (seconds, rate) in enumerate([(5, 500), (200, 2500), (5, 500)]):  # small, large (500k packets), small
        packets = telescope_packets(seconds, rate, seed=40 + i)
        expected[str(d4core_file(tmp_path, sensor, T0 + 300 * i, packets))] = packets
    small1, large, small2 = expected
    for path in expected:
        push_like_d4core(lists, meta, cfg.queue.queue_uuid, path)
    # Few unacknowledged bytes allowed: the large file takes long enough to be killed in its middle.
    proc = start_process(cfg, "k1", D4BRIDGE_QUEUE_MAX_INFLIGHT_BYTES="65536")
    try:
        wait_for_batch(kafka_config, cfg.queue.topic, large, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.stderr.close()
    processing = f"d4bridge:processing:1:{cfg.queue.queue_uuid}:k1"
    assert lists.lrange(processing, 0, -1) == [large.encode()]  # killed in the middle of the large file
    proc = start_process(cfg, "k1")  # same name: the dead process's lease is taken over at once
    try:
        wait_drained(lists, cfg)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.stderr.close()
    want = sum(len(record_offsets(p)) for p in expected.values())
    got = read_topic(kafka_config, cfg.queue.topic, lambda g: unique_packets(g) >= want, "PcapBatch")
    dups = check_complete(got, expected)
    assert set(dups) == {large} and dups[large] >= 20
    assert not lists.exists(f"d4bridge:attempts:1:{cfg.queue.queue_uuid}")


def test_sigterm_finishes_the_file_in_hand(kafka_config, redis_url, unique, lists, meta, tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique)
    packets = telescope_packets(60, 2500, seed=5)
    path = str(d4core_file(tmp_path, uuidlib.uuid4().hex, T0, packets))
    push_like_d4core(lists, meta, cfg.queue.queue_uuid, path)
    proc = start_process(cfg, "t1", D4BRIDGE_QUEUE_MAX_INFLIGHT_BYTES="65536")
    try:
        wait_for_batch(kafka_config, cfg.queue.topic, path, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log = proc.stderr.read()
    finally:
        proc.kill()
        proc.stderr.close()
    assert "stopped: 1 files" in log
    assert lists.llen(f"d4bridge:processing:1:{cfg.queue.queue_uuid}:t1") == 0
    assert not lists.exists(f"d4bridge:lease:1:{cfg.queue.queue_uuid}:t1")  # released at exit
    got = read_topic(kafka_config, cfg.queue.topic, lambda g: packets_total(g) >= len(record_offsets(packets)),
                     "PcapBatch")
    assert check_complete(got, {path: packets}) == {}


def test_two_consumers_share_one_queue(kafka_config, redis_url, unique, lists, meta, tmp_path) -> None:
    cfg = queue_config(kafka_config, redis_url, unique)
    q = cfg.queue.queue_uuid
    expected: dict[str, bytes] = {}
    for i in range(12):
        packets = telescope_packets(30, 1500, seed=60 + i)
        expected[str(d4core_file(tmp_path, uuidlib.uuid4().hex, T0 + 300 * i, packets))] = packets
    procs = [start_process(cfg, None) for _ in range(2)]  # default names: the host name, then -2
    try:
        deadline = time.monotonic() + 60
        while sum(c.get("cmd") == "blmove" for c in lists.client_list()) < 2:  # both wait in BLMOVE
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
        assert {k.decode() for k in lists.keys(f"d4bridge:lease:1:{q}:*")} == \
            {f"d4bridge:lease:1:{q}:{HOST}", f"d4bridge:lease:1:{q}:{HOST}-2"}
        for path in expected:
            push_like_d4core(lists, meta, q, path)
        wait_drained(lists, cfg)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        logs = []
        for p in procs:
            assert p.wait(30) == 0
            logs.append(p.stderr.read())
    finally:
        for p in procs:
            p.kill()
            p.stderr.close()
    done = [int(re.search(r"stopped: (\d+) files", log).group(1)) for log in logs]
    assert sum(done) == 12 and min(done) > 0, done
    want = sum(len(record_offsets(p)) for p in expected.values())
    got = read_topic(kafka_config, cfg.queue.topic, lambda g: packets_total(g) >= want, "PcapBatch")
    assert check_complete(got, expected) == {}  # no crash: every batch exactly once


def test_a_name_held_by_a_live_process_here_is_refused(kafka_config, redis_url, unique, lists) -> None:
    cfg = queue_config(kafka_config, redis_url, unique)
    # This test process stands for a running consumer named "busy" on this host.
    lists.set(f"d4bridge:lease:1:{cfg.queue.queue_uuid}:busy", f"{HOST} {os.getpid()} token", px=60000)
    proc = start_process(cfg, "busy")
    try:
        assert proc.wait(60) == 2
        assert "in use by a running process on this host" in proc.stderr.read()
    finally:
        proc.kill()
        proc.stderr.close()
