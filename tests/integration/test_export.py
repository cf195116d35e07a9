"""`d4-bridge export`: a topic's PcapBatch records back to a pcap file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge import kafka, records
from bridge.assembler import PcapAssembler
from bridge.pcap import global_header, pack_record, read_pcap

pytestmark = pytest.mark.integration


def test_export_writes_every_packet_and_refuses_non_batches(kafka_config, unique, tmp_path) -> None:
    topic = unique("exp")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    packets = b"".join(pack_record(1_700_000_000_000_000_000 + i, bytes([i % 256]) * 64) for i in range(500))
    assembler = PcapAssembler(batch_bytes=8192, max_age=None)
    batches = assembler.feed(global_header(1, 65535, False) + packets) + assembler.close()
    producer = kafka.make_producer(kafka_config, "test")
    for seq, b in enumerate(batches):
        rec = records.pcap_batch(b, sensor_uuid="cd" * 16, site="s", source="d4", session_id="x", seq=seq)
        producer.produce(topic, records.encode("PcapBatch", rec))
    producer.produce(topic, b"not a record")
    assert producer.flush(30) == 0
    out = tmp_path / "out.pcap"
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "export", "--bootstrap", kafka_config.bootstrap,
                           "--topic", topic, "--pcap", str(out), "--from-beginning", "--idle-exit", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # the garbage record is reported, not skipped silently
    assert "exported 500 packets" in proc.stderr and "1 records that are not PcapBatch" in proc.stderr
    header, got = read_pcap(out)
    assert header.linktype == 1 and got == packets
