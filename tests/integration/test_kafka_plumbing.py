"""Kafka plumbing against the real embedded broker: PcapBatch records through produce and consume."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from confluent_kafka import TopicPartition

from bridge import kafka, records
from bridge.assembler import PcapAssembler
from bridge.broker import EmbeddedBroker, free_port
from bridge.pcap import global_header, pack_record

pytestmark = pytest.mark.integration


def consume_all(consumer, want: int, timeout: float = 30.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.5):
            if msg.error() is None:
                got.append(msg)
    return got


def test_pcap_batches_round_trip(kafka_config, unique) -> None:
    topic = unique("pcap")
    kafka.create_topics(kafka_config, 2, topics=[topic])
    packets = [pack_record(1_700_000_000_000_000_000 + i, bytes([i % 256]) * (60 + i % 40)) for i in range(3000)]
    assembler = PcapAssembler(batch_bytes=16384, max_age=None)
    batches = assembler.feed(global_header(1, 65535, False) + b"".join(packets)) + assembler.close()
    producer = kafka.make_producer(kafka_config, "test")
    acked = []
    for seq, b in enumerate(batches):
        rec = records.pcap_batch(b, sensor_uuid="ab" * 16, site="s", source="d4", session_id="x", seq=seq)
        producer.produce(topic, records.encode("PcapBatch", rec), key="ab" * 16,
                         on_delivery=lambda err, msg: acked.append(err))
    assert producer.flush(30) == 0
    assert len(acked) == len(batches) and all(e is None for e in acked)

    consumer = kafka.make_consumer(kafka_config, "test", unique("group"), [topic])
    try:
        msgs = consume_all(consumer, len(batches))
        decoded = sorted((records.decode(m.value(), expect="PcapBatch") for m in msgs), key=lambda r: r["seq"])
        assert [r["seq"] for r in decoded] == list(range(len(batches)))
        assert b"".join(r["packets"] for r in decoded) == b"".join(packets)
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(2)], 10)
        assert sum(max(tp.offset, 0) for tp in committed) == len(batches)
    finally:
        consumer.close()


def test_oversized_record_is_refused_with_its_size(kafka_config, unique) -> None:
    producer = kafka.make_producer(kafka_config, "test")
    with pytest.raises(kafka.RecordTooLarge, match="1500000 bytes"):
        producer.produce(unique("big"), b"x" * 1_500_000)


def test_create_topics_is_idempotent(kafka_config, unique) -> None:
    names = [unique("a"), unique("b")]
    assert set(kafka.create_topics(kafka_config, 1, topics=names).values()) == {"created"}
    assert set(kafka.create_topics(kafka_config, 1, topics=names).values()) == {"exists"}


def test_broker_and_topics_commands() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "broker", "--listen", f"127.0.0.1:{port}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        while "listening" not in line and line:
            line = proc.stderr.readline()
        assert "IN MEMORY" in line
        out = subprocess.run([sys.executable, "-m", "bridge.cli", "topics", "--bootstrap", f"127.0.0.1:{port}",
                              "--partitions", "2"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "d4.pcap: created" in out.stdout and "d4.backscatter: created" in out.stdout
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_embedded_broker_context_manager() -> None:
    with EmbeddedBroker() as b:
        assert b.proc is not None and b.proc.poll() is None
    assert b.proc.poll() is not None
