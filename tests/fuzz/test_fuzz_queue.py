"""Fuzzing a running ``d4-bridge queue`` process with bad analyzer-queue items.

Missing files, directories, empty files, random bytes, damaged gzip, gzip of garbage, damaged
pcap and enormous path lines go on the d4-core queue between good captures; on a line queue,
huge and binary lines. Checked: the process never dies; every bad item is counted once under a
reason and parked on the failed list; every good capture's packets reach the topic in full;
the queue and the processing list end empty; memory stays bounded.
"""

from __future__ import annotations

import gzip
import random
import time
import uuid as uuidlib
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import kafka
from bridge.pcap import global_header, pack_record

from system.harness import HopProcess, by_label, read_topic, rss_mb, wait_metrics

pytestmark = pytest.mark.integration

FAILURES = "d4bridge_queue_failures_total"


class QueueHop:
    def __init__(self, hop: HopProcess, client: redis.Redis, queue_uuid: str, topic: str, bootstrap: str,
                 qtype: str) -> None:
        self.hop, self.client, self.queue_uuid, self.topic, self.bootstrap = hop, client, queue_uuid, topic, bootstrap
        self.key = f"analyzer:{qtype}:{queue_uuid}"
        self.good: dict[str, int] = {}  # good capture path -> packets
        self.bad_items = 0

    def failures(self) -> dict[str, float]:
        return by_label(self.hop.metrics(), FAILURES, "reason")

    def idle(self, timeout: float = 60.0) -> None:
        """Wait until the queue and every processing list are empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = self.client.llen(self.key) + sum(self.client.llen(k) for k in
                                                       self.client.scan_iter("d4bridge:processing:*"))
            if not pending:
                return
            time.sleep(0.1)
        raise AssertionError(f"queue not drained: {self.client.llen(self.key)} waiting")


def start_queue(kafka_config, redis_url: str, work: Path, qtype: str) -> QueueHop:
    run = uuidlib.uuid4().hex[:8]
    topic, rtopic = f"fuzzq-{run}", f"fuzzq-records-{run}"
    kafka.create_topics(kafka_config, 1, topics=[topic, rtopic])
    base = redis_url.rsplit("/", 1)[0]
    queue_uuid = str(uuidlib.uuid4())
    hop = HopProcess(f"queue-{qtype}", ["queue", "--bootstrap", kafka_config.bootstrap, "--redis", f"{base}/2",
                                        "--queue-uuid", queue_uuid, "--type", qtype, "--topic", topic,
                                        "--consumer", f"fuzz-{run}"], work,
                     env={"D4BRIDGE_QUEUE_RECORDS_TOPIC": rtopic}).start()
    wait_metrics(hop)
    return QueueHop(hop, redis.Redis.from_url(f"{base}/2"), queue_uuid, topic if qtype == "1" else rtopic,
                    kafka_config.bootstrap, qtype)


@pytest.fixture(scope="module")
def pcap_queue(kafka_config, redis_url, tmp_path_factory) -> QueueHop:
    q = start_queue(kafka_config, redis_url, tmp_path_factory.mktemp("fuzzq"), "1")
    yield q
    assert q.hop.alive(), q.hop.log_tail()
    q.hop.stop()


def capture(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    return global_header(1, 65535, False) + b"".join(
        pack_record(1_700_000_000 * 10**9 + i * 1000, rng.randbytes(rng.randint(40, 300))) for i in range(n))


@st.composite
def bad_item(draw, work: Path) -> tuple[str, set[str]]:
    """(queue item, reasons it may fail with)."""
    kind = draw(st.sampled_from(["missing", "directory", "empty", "random", "gzip_cut", "gzip_corrupt",
                                 "gzip_garbage", "pcap_cut", "pcap_caplen", "huge_path"]))
    path = work / f"{uuidlib.uuid4()}-2024-01-01-000000.cap.gz"
    good = capture(draw(st.integers(0, 10**6)), draw(st.integers(1, 50)))
    if kind == "missing":
        return str(path), {"missing"}
    if kind == "directory":
        path.mkdir()
        return str(path), {"unreadable"}
    if kind == "empty":
        path.write_bytes(b"")
        return str(path), {"empty"}
    if kind == "random":
        data = draw(st.binary(min_size=1, max_size=4000))
        path.write_bytes(data)
        return str(path), {"not_pcap", "truncated_pcap", "corrupt_pcap", "corrupt_gzip", "truncated_gzip"}
    gz = gzip.compress(good)
    if kind == "gzip_cut":
        path.write_bytes(gz[:draw(st.integers(10, len(gz) - 1))])
        return str(path), {"truncated_gzip", "corrupt_gzip", "truncated_pcap"}
    if kind == "gzip_corrupt":
        data = bytearray(gz)
        pos = draw(st.integers(10, len(data) - 1))
        data[pos] ^= 0xFF
        path.write_bytes(bytes(data))
        return str(path), {"corrupt_gzip", "truncated_gzip", "not_pcap", "truncated_pcap", "corrupt_pcap"}
    if kind == "gzip_garbage":
        path.write_bytes(gzip.compress(draw(st.binary(min_size=1, max_size=3000)).replace(b"\xd4\xc3\xb2\xa1", b"")))
        return str(path), {"not_pcap", "truncated_pcap"}
    if kind == "pcap_cut":
        path.write_bytes(gzip.compress(good[:draw(st.integers(1, len(good) - 1))]))
        return str(path), {"truncated_pcap"}
    if kind == "pcap_caplen":
        data = bytearray(good)
        data[24 + 8:24 + 12] = (70000).to_bytes(4, "little")
        path.write_bytes(gzip.compress(bytes(data)))
        return str(path), {"corrupt_pcap"}
    # a path line of several MB (garbage pushed by a broken producer)
    return "/" + "x" * draw(st.integers(5000, 3_000_000)), {"missing", "unreadable"}


def test_bad_items_counted_good_delivered(pcap_queue: QueueHop, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("items")
    q = pcap_queue
    expected = {}
    before = q.failures()

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(item=bad_item(work), good_seed=st.integers(0, 10**6))
    def push(item: tuple[str, set[str]], good_seed: int) -> None:
        path, reasons = item
        q.client.lpush(q.key, path)
        q.bad_items += 1
        expected.setdefault(frozenset(reasons), 0)
        expected[frozenset(reasons)] += 1
        good = work / f"{uuidlib.uuid4()}-2024-01-01-000000.cap.gz"
        data = capture(good_seed, 20)
        good.write_bytes(gzip.compress(data))
        q.client.lpush(q.key, str(good))
        q.good[str(good)] = 20

    push()
    q.idle(120)
    grown = {r: v - before.get(r, 0) for r, v in q.failures().items() if v > before.get(r, 0)}
    assert sum(grown.values()) == q.bad_items, f"{q.bad_items} bad items, counted {grown}"
    failed = q.client.llen(f"d4bridge:failed:1:{q.queue_uuid}")
    assert failed == q.bad_items
    allowed = set().union(*expected)
    assert set(grown) <= allowed, grown
    # every good capture arrives in full, once (a batch re-done after a retry has the same index)
    per_file: dict[str, dict[int, int]] = {}
    for r in read_topic(q.bootstrap, q.topic, idle=3):
        per_file.setdefault(r.value["file_path"], {})[r.value["batch_index"]] = r.value["packet_count"]
    short = {p: sum(per_file.get(p, {}).values()) for p, n in q.good.items() if sum(per_file.get(p, {}).values()) != n}
    assert not short, f"{len(short)} good captures not delivered in full: {list(short.items())[:3]}"
    assert rss_mb(q.hop.pid) < 300


def test_line_queue_with_huge_and_binary_lines(kafka_config, redis_url, tmp_path) -> None:
    q = start_queue(kafka_config, redis_url, tmp_path, "8")
    try:
        rng = random.Random(3)
        good = [f"{i}||10.0.0.{i % 250}||8.8.8.8||IN||example.com.||A||1.2.3.4||60||1".encode() for i in range(300)]
        huge = [b"h" * 2_000_000, b"\xff" * 1_500_000]
        items = good[:150] + huge + [rng.randbytes(200)] + good[150:]
        for item in items:
            q.client.lpush(q.key, item)
        q.idle(60)
        failures = q.failures()
        assert failures.get("item_too_large", 0) == len(huge), failures
        recs = read_topic(q.bootstrap, q.topic, expect="D4Record", idle=3)
        data = b"".join(r.value["data"] for r in recs)
        for line in good:
            assert line in data
        assert q.hop.alive() and rss_mb(q.hop.pid) < 300
    finally:
        q.hop.stop()
