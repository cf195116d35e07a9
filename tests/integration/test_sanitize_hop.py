"""The sanitize hop against the real (Tansu) broker: exactly once, dead letters, SIGKILL recovery.

Tansu 0.6.0 does not hide aborted transactional records from read_committed consumers
(verified here in `test_tansu_shows_aborted_records`). The SIGKILL test therefore proves
exactly-once on what the broker reports as committed input (the group's offsets) and counts the
copies that come from the killed worker's aborted transaction separately, by lineage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "sanitize"))
from sanitize_corpus import PNAT, PRIVATE, cases  # noqa: E402

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from bridge import kafka, records  # noqa: E402
from bridge.assembler import PcapChunkBatch  # noqa: E402
from bridge.config import Config  # noqa: E402
from bridge.hop import Shutdown  # noqa: E402
from bridge.hops.sanitize import Worker  # noqa: E402
from bridge.pcap import PcapHeader, iter_packets, pack_record  # noqa: E402
from bridge.sanitize import Sanitizer, policy_from_flags  # noqa: E402
from bridge.sanitize.leakcheck import addresses  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ETH_CASES = [c for c in cases() if c.linktype == 1]


def batch_record(seq: int, session: str, n: int = 12) -> dict:
    """A PcapBatch of n corpus packets (rotating through the Ethernet corpus)."""
    picked = [ETH_CASES[(seq * n + i) % len(ETH_CASES)] for i in range(n)]
    packets = b"".join(pack_record(10**18 + (seq * n + i) * 1000, c.data) for i, c in enumerate(picked))
    chunk = PcapChunkBatch(PcapHeader(1, 65535, False), packets, n, 10**18, 10**18 + n * 1000)
    return records.pcap_batch(chunk, sensor_uuid=uuid.UUID(int=seq % 7).hex, site="private", source="d4",
                              session_id=session, seq=seq)


def read_all(kcfg, topic: str, expect: int, timeout: float = 60.0, isolation: str = "read_committed") -> list:
    """Every record of topic (all partitions, from the start) until `expect` arrived and the
    topic is quiet, or timeout."""
    conf = kafka.consumer_conf(kcfg, "test", f"reader-{uuid.uuid4().hex}")
    conf["isolation.level"] = isolation
    c = Consumer(conf)
    meta = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    out, deadline, quiet = [], time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None or m.error():
            quiet += 0.2
            if len(out) >= expect and quiet > 1.5:
                break
            continue
        quiet = 0.0
        out.append(m)
    c.close()
    return out


def private_in(data: bytes) -> list:
    import ipaddress

    nets = [ipaddress.ip_network(p) for p in PRIVATE]
    found = []
    for _w, raw in addresses(1, data):
        ip = ipaddress.ip_address(raw)
        if any(ip.version == n.version and ip in n for n in nets):
            found.append(str(ip))
    return found


def hop_config(kcfg, tin: str, tout: str, group: str) -> Config:
    cfg = Config(kafka=kcfg, site="site-a")
    cfg.sanitize.in_topic, cfg.sanitize.out_topic, cfg.sanitize.group, cfg.sanitize.pnat = tin, tout, group, PNAT
    return cfg


def test_tansu_shows_aborted_records(kafka_config, unique):
    """Documents the broker quirk the SIGKILL test has to account for."""
    topic = unique("quirk")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    p = kafka.make_transactional_producer(kafka_config, "test", unique("tid"))
    p.raw.begin_transaction()
    p.produce(topic, b"aborted")
    p.raw.flush(10)
    p.raw.abort_transaction(10)
    p.raw.begin_transaction()
    p.produce(topic, b"committed")
    p.raw.commit_transaction(10)
    values = [m.value() for m in read_all(kafka_config, topic, 2, timeout=15)]
    # Apache Kafka returns [b"committed"] here; if this starts failing, Tansu fixed the quirk
    # and the SIGKILL test below will see zero duplicates
    assert values == [b"aborted", b"committed"]


def test_exactly_once_output_and_dead_letters(kafka_config, unique):
    tin, tout, group = unique("pcap"), unique("san"), unique("g")
    kafka.create_topics(kafka_config, 3, topics=[tin, tout, kafka.TOPIC_DLQ])
    producer = kafka.make_producer(kafka_config, "test")
    session = unique("session")
    inputs = {}
    for seq in range(30):
        rec = batch_record(seq, session)
        inputs[seq] = rec
        producer.produce(tin, records.encode("PcapBatch", rec), key=rec["sensor_uuid"])
    producer.produce(tin, b"definitely not avro", key=b"junk")
    broken = batch_record(99, session)
    broken["packets"] = broken["packets"][:-7]  # last record runs past the end
    producer.produce(tin, records.encode("PcapBatch", broken), key=b"broken")
    assert producer.flush(10) == 0

    cfg = hop_config(kafka_config, tin, tout, group)
    worker = Worker(cfg, policy_from_flags(pnat=PNAT), 0)
    shutdown = Shutdown()
    thread = threading.Thread(target=worker.run, args=(shutdown,))
    thread.start()
    try:
        out = read_all(kafka_config, tout, 30, timeout=90)
    finally:
        shutdown.set()
        thread.join(30)
    decoded = [records.decode(m.value(), expect="PcapBatch") for m in out]
    assert sorted(r["seq"] for r in decoded) == list(range(30))
    assert len({(r["lineage"]["partition"], r["lineage"]["offset"]) for r in decoded}) == 30
    policy = policy_from_flags(pnat=PNAT)
    reference = Sanitizer(policy)
    for r, m in zip(decoded, out):
        src = inputs[r["seq"]]
        expect = reference.sanitize_batch(1, src["packets"])
        assert r["packets"] == expect.packets and r["packet_count"] == expect.kept + expect.cut
        assert r["sanitization"]["policy_version"] == policy.version and r["sanitization"]["packets_in"] == 12
        assert r["lineage"]["topic"] == tin and m.key() == src["sensor_uuid"].encode()
        assert (r["sensor_uuid"], r["session_id"], r["first_ts_ns"]) == (src["sensor_uuid"], session, src["first_ts_ns"])
        for _ts, _cap, _orig, data in iter_packets(r["packets"]):
            assert private_in(bytes(data)) == []
    letters = [records.decode(m.value(), expect="DeadLetter") for m in read_all(kafka_config, kafka.TOPIC_DLQ, 2, 30)]
    mine = [d for d in letters if d["source_topic"] == tin]
    assert sorted(d["reason"] for d in mine) == ["bad_pcap", "not_pcap_batch"]
    # the input offsets were committed with the output: all of them, one past the last input
    ends: dict[int, int] = {}
    for part, off in [(r["lineage"]["partition"], r["lineage"]["offset"]) for r in decoded] + \
            [(d["source_partition"], d["source_offset"]) for d in mine]:
        ends[part] = max(ends.get(part, 0), off + 1)
    c = Consumer(kafka.consumer_conf(kafka_config, "test", group))
    committed = c.committed([TopicPartition(tin, p) for p in range(3)], timeout=10)
    c.close()
    assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == ends
    assert sum(ends.values()) == 32


def _config_file(tmp_path: Path, kcfg, tin: str, tout: str, group: str, sanitize_extra: str) -> Path:
    """A config file for `d4-bridge sanitize` on the test broker; ``sanitize_extra`` adds [sanitize] lines."""
    path = tmp_path / "sanitize.toml"
    path.write_text(
        f'site = "site-a"\nlog_level = "INFO"\n'
        f'[kafka]\nbootstrap = "{kcfg.bootstrap}"\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 500\n'
        f'statistics_interval_ms = 0\nlinger_ms = 5\n'
        f'[sanitize]\nin_topic = "{tin}"\nout_topic = "{tout}"\ngroup = "{group}"\npnat = "{PNAT}"\n'
        + sanitize_extra)
    return path


def _start_worker(config_file: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", "sanitize", "--config", str(config_file)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def test_sigkill_mid_stream_exactly_once(kafka_config, unique, tmp_path):
    tin, tout, group = unique("pcap"), unique("san"), unique("g")
    kafka.create_topics(kafka_config, 2, topics=[tin, tout])
    config_file = _config_file(tmp_path, kafka_config, tin, tout, group,
                               "transaction_records = 20\ntransaction_seconds = 0.05\n")
    log = tmp_path / "worker.log"
    total = 400
    session = unique("s")

    def produce_slowly() -> None:
        p = kafka.make_producer(kafka_config, "test")
        for seq in range(total):
            rec = batch_record(seq, session)
            p.produce(tin, records.encode("PcapBatch", rec), key=rec["sensor_uuid"])
            if seq % 10 == 9:
                p.flush(10)
                time.sleep(0.25)  # ~10 s of input: the kill lands mid-stream
        p.flush(10)

    first = _start_worker(config_file, log)
    feeder = threading.Thread(target=produce_slowly)
    feeder.start()
    try:
        # kill once the worker is well into the stream (by its committed input offsets)
        c = Consumer(kafka.consumer_conf(kafka_config, "test", group))
        parts = [TopicPartition(tin, p) for p in range(2)]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10)) < 100:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_ns = time.time_ns()
        committed_at_kill = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
        c.close()
        assert 100 <= sum(max(o, 0) for o in committed_at_kill.values()) < total - 100  # really mid-stream
        second = _start_worker(config_file, log)
        feeder.join(120)
        out = read_all(kafka_config, tout, total, timeout=120)
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert second.returncode == 0, log.read_text()[-3000:]
    assert "less safe" not in log.read_text()  # the default policy keeps neither MACs nor payloads

    by_lineage: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for m in out:
        r = records.decode(m.value(), expect="PcapBatch")
        by_lineage[(r["lineage"]["partition"], r["lineage"]["offset"])].append(r)
    seqs = Counter(r["seq"] for copies in by_lineage.values() for r in copies[:1])
    # none missing, no input sanitized into two different lineages
    assert sorted(seqs) == list(range(total)) and set(seqs.values()) == {1}
    reference = Sanitizer(policy_from_flags(pnat=PNAT))
    duplicates = {lin: copies for lin, copies in by_lineage.items() if len(copies) > 1}
    for (partition, offset), copies in by_lineage.items():
        expect = reference.sanitize_batch(1, batch_record(copies[0]["seq"], session)["packets"]).packets
        assert all(c["packets"] == expect for c in copies)
        if len(copies) > 1:
            # a second copy is only allowed for input the killed worker had NOT committed: it is
            # that worker's aborted transaction, which Tansu still shows to read_committed readers
            assert len(copies) == 2 and offset >= committed_at_kill.get(partition, 0), (partition, offset)
            assert sorted(c["sanitization"]["sanitized_ns"] < killed_ns for c in copies) == [False, True]
    committed_dupes = [lin for lin in duplicates if lin[1] < committed_at_kill.get(lin[0], 0)]
    assert committed_dupes == []
    print(f"\nSIGKILL test: {total} input batches, {len(by_lineage)} lineages, "
          f"{sum(len(c) for c in by_lineage.values())} output records, {len(duplicates)} duplicates "
          f"all from the killed worker's aborted transaction (committed at kill: {committed_at_kill})")


def test_two_worker_processes_share_the_group_and_stop_cleanly(kafka_config, unique, tmp_path):
    tin, tout, group = unique("pcap"), unique("san"), unique("g")
    kafka.create_topics(kafka_config, 4, topics=[tin, tout])
    # the less safe compat choice: each worker says so once, and the output is that policy's
    config_file = _config_file(tmp_path, kafka_config, tin, tout, group, 'workers = 2\ncompat = "tcprewrite"\n')
    log = tmp_path / "workers.log"
    proc = _start_worker(config_file, log)
    session, total = unique("s"), 120
    try:
        p = kafka.make_producer(kafka_config, "test")
        for seq in range(total):
            rec = batch_record(seq, session)
            p.produce(tin, records.encode("PcapBatch", rec), key=rec["sensor_uuid"])
        assert p.flush(10) == 0
        out = read_all(kafka_config, tout, total, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "worker 0" in text and "worker 1" in text  # two processes really ran
    warnings = [line for line in text.splitlines() if "less safe" in line]
    assert len(warnings) == 2 and all(" WARNING " in w and "MAC addresses and payloads" in w for w in warnings)
    reference = Sanitizer(policy_from_flags(pnat=PNAT, compat="tcprewrite"))
    lineages: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for m in out:
        r = records.decode(m.value(), expect="PcapBatch")
        lineages[(r["lineage"]["partition"], r["lineage"]["offset"])].append(r)
    assert sorted(copies[0]["seq"] for copies in lineages.values()) == list(range(total))
    for copies in lineages.values():
        # more than one copy only from a transaction aborted by a rebalance (Tansu shows those)
        expect = reference.sanitize_batch(1, batch_record(copies[0]["seq"], session)["packets"]).packets
        assert all(c["packets"] == expect for c in copies)
