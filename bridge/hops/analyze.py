"""``d4-bridge analyze``: backscatter detection on the hub's pcap topic -> ``d4.backscatter`` + JSON lines.

Two stages in one process, each a consumer group, so any number of analyzer
processes share the work and a victim's state lives in exactly one of them:

1. route (group ``<group>.route`` on ``--topic`` and the records topic): classify
   each PcapBatch, keep the backscatter packets and re-publish them as PcapBatch
   records on ``<out>.packets``, one record per victim bucket, keyed so that a
   victim always lands on the same partition (a repartition topic, as Kafka
   Streams does). At least every ``tick_seconds`` it also sends every partition
   an AnalyzeTick: its wall clock, the input partitions it reads, each sensor
   heard since (newest capture time, capture activity) and the site
   announcements (D4 type-2 meta headers on the records topic) read since.
   Offsets are committed once the records are acknowledged (at least once).
2. detect (group ``<group>`` on ``<out>.packets``): one aggregator per assigned
   partition. Its state is snapshotted every ``snapshot_seconds`` (and on
   revoke/shutdown) into the compacted ``<out>.state`` topic together with the
   next input offset and the event topic's end offsets.

Why a repartition topic rather than state alone: d4.pcap is keyed by sensor, so
one victim's packets arrive on many partitions; only re-keying by victim makes
the multi-site merge correct with several analyzers. Why ticks: expiry waits for
the slowest active sensor and estimates need each sensor's capture time, so every
partition must hear of every sensor, packets or not; and a sensor's silence
(wall clock) must be part of the input, or a replay would judge it differently.
A sensor is silent when the route stage reading its input partition has heard
nothing of it for ``source_idle_seconds``; when all are, the input has ended and
every open attack gets its final event. Why snapshots rather than a per-update
changelog: a vector changes on every packet, a snapshot per few seconds costs
one record.

Restart and rebalance: the new owner of a partition restores the snapshot,
seeks to its offset and replays. The aggregator is a pure function of its input
sequence, so the replay recomputes the same events; those already on the event
topic after the snapshot's end offsets (found by their partition header) are
recognised by (attack_id, status, seq) and not emitted again. Packets that the
route stage re-publishes after a crash are exact copies from the same sensor
with the same timestamp and are dropped by the aggregator's duplicate filter.
The attack is neither lost nor reported twice.

Outputs of every published event: the JSON line on stdout, the gauge behind the
dashboard's current-attacks table, and (``--misp-dir`` / ``--misp-url``) the
attack as a MISP event, for final events (and updates with ``misp_updates``).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import logging
import signal
import sys
import time
import zlib
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge import kafka, metrics, records
from bridge.backscatter.aggregate import PROFILES, Aggregator, DetectorConfig, Stats, activity_spans, merge_spans, warm_up
from bridge.backscatter.classes import CLASS_NAMES
from bridge.backscatter.classify import class_counts, classify, select_records
from bridge.backscatter.telescope import Telescopes
from bridge.config import Config
from bridge.d4.site_meta import parse_site_announcement
from bridge.hop import start_hop
from bridge.misp import MispOutput

log = logging.getLogger(__name__)

HOP = "analyze"
PARTITION_HEADER = "d4bridge-analyze-partition"
CHUNK_BYTES = 900_000  # state records stay below the broker's 1 MB limit
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def victim_bucket(victims: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket (= repartition partition) of each victim address: a stable multiplicative hash."""
    return ((victims.astype(np.uint64) * _GOLDEN) >> np.uint64(40)) % np.uint64(buckets)


def bucket_keys(partitions: int) -> list[bytes]:
    """A record key per partition that librdkafka's default partitioner (CRC32 % n) sends there."""
    keys: list[bytes] = []
    for p in range(partitions):
        salt = 0
        while zlib.crc32(f"victims-{p}-{salt}".encode()) % partitions != p:
            salt += 1
        keys.append(f"victims-{p}-{salt}".encode())
    return keys


def parse_site_telescopes(items: list[str]) -> dict[str, list[str]]:
    """``SITE=CIDR[;CIDR...]`` entries -> {site: [CIDR, ...]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        site, sep, prefixes = str(item).partition("=")
        if not sep or not site.strip() or not prefixes.strip():
            raise ValueError(f"site telescope {item!r}: expected SITE=CIDR[;CIDR...]")
        out[site.strip()] = [p for p in prefixes.replace(",", ";").split(";") if p.strip()]
    return out


def _partitions(consumer: Consumer, topic: str) -> int:
    meta = consumer.list_topics(topic, timeout=10)
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise RuntimeError(f"topic {topic} is not available: {getattr(info, 'error', 'missing')}")
    return len(info.partitions)


class _Delivery:
    """Collects delivery failures of a flush window (a failure means: do not commit)."""

    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed += 1


def detector_config(cfg: Config) -> DetectorConfig:
    """The aggregator settings of ``cfg``: the profile's thresholds with the hop's timing and bounds."""
    acfg = cfg.analyze
    return dataclasses.replace(PROFILES[acfg.profile], max_victims=int(acfg.max_victims),
                               source_idle_s=acfg.source_idle_seconds, allowed_lateness_s=acfg.allowed_lateness_seconds,
                               update_interval_s=acfg.update_seconds)


def tick_seconds(cfg: Config) -> float:
    """How often the route stage tells every partition what it read: a few times per source idle timeout."""
    return min(1.0, max(0.05, cfg.analyze.source_idle_seconds / 4))


class Router:
    """Stage 1: every PcapBatch -> its backscatter packets, one record per victim bucket; ticks."""

    def __init__(self, cfg: Config, producer: kafka.BlockingProducer, route_topic: str, partitions: int) -> None:
        self.cfg = cfg
        self.producer = producer
        self.route_topic = route_topic
        self.partitions = partitions
        self.keys = bucket_keys(partitions)
        self.gap_ns = int(detector_config(cfg).coverage_gap_s * 1e9)
        self.tick_every = tick_seconds(cfg)
        self.counters = [metrics.ANALYZE_PACKETS.labels(name) for name in CLASS_NAMES]
        self.reading: dict[str, int] = {}  # input partition key -> wall clock when it was assigned
        self.heard: dict[str, dict[str, Any]] = {}  # sensor -> progress since the last tick
        self.announced: list[dict[str, Any]] = []
        self.last_tick = 0.0
        self.delivery = _Delivery()
        self.consumer = kafka.make_consumer(cfg.kafka, HOP, f"{cfg.analyze.group}.route",
                                            [cfg.analyze.topic, cfg.analyze.records_topic],
                                            on_assign=self._on_assign, on_revoke=self._on_revoke,
                                            on_lost=self._on_revoke)

    def _on_assign(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        now = records.now_ns()
        for tp in parts:
            if tp.topic == self.cfg.analyze.topic:
                self.reading[f"{tp.topic}/{tp.partition}"] = now

    def _on_revoke(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            self.reading.pop(f"{tp.topic}/{tp.partition}", None)

    def handle(self, messages: list[Message]) -> None:
        """Route one poll's records, tick if due, then commit once the broker has everything."""
        batches = []
        for msg in messages:
            try:
                kind = records.schema_of(msg.value())
                rec = records.decode(msg.value())
            except records.RecordError as exc:
                kind, rec = "", exc
            if kind == "D4Record" and msg.topic() == self.cfg.analyze.records_topic:
                self._announcement(rec)
            elif kind == "PcapBatch" and msg.topic() == self.cfg.analyze.topic:
                batches.append((msg, rec))
            elif msg.topic() == self.cfg.analyze.topic:  # (the records topic's other types are not ours to judge)
                reason, detail = (rec.reason, rec.detail) if isinstance(rec, records.RecordError) else (
                    "wrong_schema", f"expected PcapBatch, got {kind}")
                kafka.send_dead_letter(self.producer, records.dead_letter(
                    HOP, reason, detail, source_topic=msg.topic(), source_partition=msg.partition(),
                    source_offset=msg.offset(), key=msg.key(), payload=msg.value()))
        if self.announced:
            self.tick()  # before the packets, so their sensors' announcements are known when they arrive
        for msg, rec in batches:
            self._route(msg, rec)
        self.tick_due()
        if self.producer.flush(60) or self.delivery.failed:
            failed, self.delivery = self.delivery.failed, _Delivery()
            raise RuntimeError(f"route: {failed} records to {self.route_topic} not delivered; "
                               "not committing (the input is read again after a restart)")
        try:
            # Asynchronous: a lost commit only means these records are routed again, and the
            # detect stage drops such replays (same sensor, same time stamp); a synchronous one
            # could hold the loop while the group coordinator is busy with a rebalance.
            self.consumer.commit(asynchronous=True)
        except KafkaException as exc:
            log.warning("analyze: route commit failed (%s); records will be routed again", exc)

    def _announcement(self, rec: dict[str, Any]) -> None:
        if rec["d4_type"] != 2:
            return
        parsed = parse_site_announcement(rec["data"])
        if parsed is not None:
            self.announced.append({"sensor_uuid": rec["sensor_uuid"], "site": parsed[0],
                                   "monitored_addresses": parsed[1]})

    def _route(self, msg: Message, rec: dict[str, Any]) -> None:
        cols = classify(rec["packets"], rec["linktype"], rec["ts_precision"] == "nsec")
        for counter, n in zip(self.counters, class_counts(cols).tolist()):
            if n:
                counter.inc(n)
        if cols.count:
            sensor = rec["sensor_uuid"]
            newest = int(cols.ts_ns.max())
            progress = self.heard.setdefault(sensor, {"sensor_uuid": sensor, "spans": [], "last_ts_ns": newest})
            progress.update(site=rec["site"], partition=f"{msg.topic()}/{msg.partition()}",
                            last_ts_ns=max(progress["last_ts_ns"], newest))
            merge_spans(progress["spans"], activity_spans(cols.ts_ns, self.gap_ns), self.gap_ns)
        rows = np.nonzero(cols.backscatter())[0]
        if not rows.size:
            return
        buckets = victim_bucket(cols.victim[rows], self.partitions)
        for b in np.unique(buckets).tolist():
            sel = rows[buckets == b]
            out = dict(rec, packets=select_records(rec["packets"], cols.offsets[sel], cols.lengths[sel]).tobytes(),
                       packet_count=int(sel.size), first_ts_ns=int(cols.ts_ns[sel].min()),
                       last_ts_ns=int(cols.ts_ns[sel].max()),
                       lineage={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()})
            self.producer.produce(self.route_topic, records.encode("PcapBatch", out), key=self.keys[b],
                                  on_delivery=self.delivery)

    def tick_due(self) -> None:
        """Tick when ``tick_seconds`` passed: the processing clock keeps going while the input is silent."""
        if time.monotonic() - self.last_tick >= self.tick_every:
            self.tick()

    def tick(self) -> None:
        """Send every partition what was read since the previous tick (and that this stage is alive)."""
        tick = {"created_ns": records.now_ns(),
                "partitions": [{"key": k, "since_ns": v} for k, v in sorted(self.reading.items())],
                "sensors": [dict(p, spans=[t for span in p["spans"] for t in span]) for p in self.heard.values()],
                "announcements": self.announced}
        value = records.encode("AnalyzeTick", tick)
        for key in self.keys:
            self.producer.produce(self.route_topic, value, key=key, on_delivery=self.delivery)
        self.heard, self.announced = {}, []
        self.last_tick = time.monotonic()


class Detector:
    """Stage 2: per-partition aggregators with snapshot/restore and replay-safe emission."""

    def __init__(self, cfg: Config, producer: kafka.BlockingProducer, route_topic: str, state_topic: str,
                 telescopes: Telescopes, misp: MispOutput | None = None) -> None:
        acfg = cfg.analyze
        self.cfg = cfg
        self.producer = producer
        self.route_topic = route_topic
        self.state_topic = state_topic
        self.out_topic = acfg.out_topic
        self.telescopes = telescopes
        self.misp = misp
        self.detector_config = detector_config(cfg)
        self.attack_series: dict[int, dict[str, tuple[str, str, str]]] = {}  # partition -> attack id -> gauge labels
        self.aggregators: dict[int, Aggregator] = {}
        self.next_offset: dict[int, int] = {}
        self.suppress: dict[int, set[tuple[str, str, int]]] = {}
        self.snapshot_ids: dict[int, int] = {}
        self.out_next: dict[int, dict[int, int]] = {}  # per partition: event-topic offsets past its last event
        self.dirty: set[int] = set()
        self.last_snapshot = time.monotonic()
        self.reader = Consumer({k: v for k, v in kafka.consumer_conf(cfg.kafka, HOP, f"{acfg.group}.reader").items()
                                if k not in ("stats_cb", "statistics.interval.ms")} | {"enable.partition.eof": True})
        self.out_partitions = _partitions(self.reader, self.out_topic)
        self.consumer = kafka.make_consumer(cfg.kafka, HOP, acfg.group, [route_topic], on_assign=self._on_assign,
                                            on_revoke=self._on_revoke, on_lost=self._on_lost)

    # ------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        manifests, chunks = self._read_state()
        for tp in partitions:
            self._restore(tp.partition, manifests.get(tp.partition), chunks)
            tp.offset = self.next_offset[tp.partition]
        consumer.assign(partitions)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.partition in self.aggregators:
                self._snapshot(tp.partition)
                self._drop(tp.partition)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member owns these now; our progress since the last snapshot is replayed there.
        for tp in partitions:
            self._drop(tp.partition)

    def _drop(self, p: int) -> None:
        for table in (self.aggregators, self.next_offset, self.suppress, self.out_next):
            table.pop(p, None)
        self.dirty.discard(p)
        for labels in self.attack_series.pop(p, {}).values():  # the new owner shows them now
            metrics.ANALYZE_ATTACK_PPS.remove(*labels)

    # ------------------------------------------------------------------ state topic

    def _read_topic(self, tps: list[TopicPartition]) -> list[Message]:
        """Every record from the given start offsets up to the end of each partition.

        The end is the fetch's end-of-partition signal: Tansu answers ListOffsets
        (get_watermark_offsets) with a stale high watermark, fetches are exact.
        """
        pending = {(tp.topic, tp.partition) for tp in tps}
        out: list[Message] = []
        if not pending:
            return out
        self.reader.assign(tps)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for msg in self.reader.consume(500, 0.5):
                where = (msg.topic(), msg.partition())
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(where)
                else:
                    raise KafkaException(err)
        self.reader.unassign()
        if pending:
            raise RuntimeError(f"analyze: could not read {sorted(pending)} to the end within 60 s")
        return out

    def _read_state(self) -> tuple[dict[int, dict], dict[bytes, bytes]]:
        manifests: dict[int, dict] = {}
        chunks: dict[bytes, bytes] = {}
        for msg in self._read_topic([TopicPartition(self.state_topic, 0, OFFSET_BEGINNING)]):
            key = msg.key() or b""
            if key.startswith(b"manifest-"):
                manifest = json.loads(msg.value())
                manifests[manifest["partition"]] = manifest
            else:
                chunks[key] = msg.value()
        return manifests, chunks

    def _restore(self, p: int, manifest: dict | None, chunks: dict[bytes, bytes]) -> None:
        agg: Aggregator | None = None
        out_offsets = {i: OFFSET_BEGINNING for i in range(self.out_partitions)}
        offset = OFFSET_BEGINNING
        if manifest is not None:
            parts = [chunks.get(self._chunk_key(p, manifest["slot"], i)) for i in range(manifest["chunks"])]
            blob = b"".join(c[8:] for c in parts if c is not None and int.from_bytes(c[:8], "little") == manifest["id"])
            try:
                if zlib.crc32(blob) != manifest["crc"]:
                    raise ValueError("incomplete (checksum mismatch)")
                agg = Aggregator.restore(blob, self.telescopes, self.detector_config)
            except (ValueError, KeyError) as exc:
                # A snapshot this version cannot read (older format, damage) must not crash-loop
                # the hop: rebuild the state by replaying the partition from its start instead.
                # Events already published are recognised below and not sent again.
                log.error("analyze: snapshot %d of partition %d unusable (%s); replaying the partition from the start",
                          manifest["id"], p, exc)
            else:
                offset = manifest["input_offset"]
                out_offsets.update({int(i): o for i, o in manifest["output_offsets"].items()})
            self.snapshot_ids[p] = manifest["id"]  # the next snapshot takes the other slot either way
        self.aggregators[p] = agg or Aggregator(self.telescopes, self.detector_config)
        self.next_offset[p] = offset
        self.out_next[p] = dict(out_offsets)
        published = set()
        for msg in self._read_topic([TopicPartition(self.out_topic, i, o) for i, o in out_offsets.items()]):
            if dict(msg.headers() or []).get(PARTITION_HEADER) == str(p).encode():
                e = records.decode(msg.value(), expect="BackscatterEvent")
                published.add((e["attack_id"], e["status"], e["seq"]))
        self.suppress[p] = published
        log.info("analyze: partition %d restored (%s, input offset %s, %d events already published since)",
                 p, "snapshot %d" % manifest["id"] if agg else "no usable snapshot", offset, len(published))

    @staticmethod
    def _chunk_key(p: int, slot: int, i: int) -> bytes:
        return f"state-{p}-{slot}-{i}".encode()

    def _snapshot(self, p: int) -> None:
        """Persist partition p: events first (flush), then state chunks, then the manifest naming them."""
        if self.producer.flush(60):
            raise RuntimeError("analyze: events not delivered; not snapshotting")
        out_offsets = dict(self.out_next[p])
        blob = self.aggregators[p].snapshot()
        snap_id = self.snapshot_ids.get(p, 0) + 1
        slot = snap_id % 2  # alternate slots: a crash mid-write never damages the last complete snapshot
        pieces = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
        delivery = _Delivery()
        for i, piece in enumerate(pieces):
            self.producer.produce(self.state_topic, snap_id.to_bytes(8, "little") + piece,
                                  key=self._chunk_key(p, slot, i), on_delivery=delivery)
        manifest = {"partition": p, "id": snap_id, "slot": slot, "chunks": len(pieces), "crc": zlib.crc32(blob),
                    "input_offset": self.next_offset[p], "output_offsets": out_offsets}
        if self.producer.flush(60) or delivery.failed:
            raise RuntimeError("analyze: snapshot chunks not delivered")
        self.producer.produce(self.state_topic, json.dumps(manifest).encode(), key=f"manifest-{p}".encode(),
                              on_delivery=delivery)
        if self.producer.flush(60) or delivery.failed:
            raise RuntimeError("analyze: snapshot manifest not delivered")
        self.snapshot_ids[p] = snap_id
        self.dirty.discard(p)
        metrics.ANALYZE_SNAPSHOTS.inc()
        if self.next_offset[p] >= 0:  # informational (restores use the manifest): lag tools read these
            try:
                self.consumer.commit(offsets=[TopicPartition(self.route_topic, p, self.next_offset[p])],
                                     asynchronous=True)
            except KafkaException as exc:
                log.debug("analyze: offset commit for lag reporting failed: %s", exc)

    def snapshot_due(self, force: bool = False) -> None:
        """Snapshot changed partitions every snapshot_seconds (or now)."""
        if force or time.monotonic() - self.last_snapshot >= self.cfg.analyze.snapshot_seconds:
            for p in sorted(self.dirty):
                if p in self.aggregators:
                    self._snapshot(p)
            self.last_snapshot = time.monotonic()

    # ------------------------------------------------------------------ processing

    def handle(self, messages: list[Message]) -> None:
        for msg in messages:
            p = msg.partition()
            agg = self.aggregators.get(p)
            if agg is None:  # revoked while the batch was in flight
                continue
            self.next_offset[p] = msg.offset() + 1
            self.dirty.add(p)
            try:
                kind = records.schema_of(msg.value())
                rec = records.decode(msg.value())
            except records.RecordError as exc:  # only the route stage writes here; never stall on one record
                log.error("analyze: %s[%d]@%d unreadable (%s), skipped", msg.topic(), p, msg.offset(), exc)
                continue
            before = _counts(agg.stats)
            if kind == "AnalyzeTick":
                events = agg.tick(rec["created_ns"], {g["key"]: g["since_ns"] for g in rec["partitions"]},
                                  [(s["sensor_uuid"], s["site"], s["partition"], s["last_ts_ns"],
                                    list(zip(s["spans"][::2], s["spans"][1::2]))) for s in rec["sensors"]],
                                  [(a["sensor_uuid"], a["site"], a["monitored_addresses"]) for a in rec["announcements"]])
            else:
                # the tick after these packets brings the sensor's whole activity; their own times
                # already show it was capturing (an estimate made before that tick stays right)
                events = agg.process(classify(rec["packets"], rec["linktype"], rec["ts_precision"] == "nsec"),
                                     rec["site"], rec["sensor_uuid"])
            after = _counts(agg.stats)
            for metric, delta in zip((metrics.ANALYZE_LATE, metrics.ANALYZE_DUPLICATES, metrics.ANALYZE_EVICTIONS,
                                      metrics.ANALYZE_OUTSIDE, metrics.ANALYZE_INPUT_ENDED),
                                     (a - b for a, b in zip(after, before))):
                if delta:
                    metric.inc(delta)
            self._emit(p, events)
        metrics.ANALYZE_ATTACKS_ACTIVE.set(sum(a.active_attacks for a in self.aggregators.values()))

    def _emit(self, p: int, events: list[dict[str, Any]]) -> None:
        for event in events:
            ident = (event["attack_id"], event["status"], event["seq"])
            if ident in self.suppress[p]:
                self.suppress[p].discard(ident)
                metrics.ANALYZE_REPLAYED.inc()
                continue
            event["emitted_ns"] = records.now_ns()
            self.producer.produce(self.out_topic, records.encode("BackscatterEvent", event),
                                  key=event["victim"].encode(), headers=[(PARTITION_HEADER, str(p).encode())],
                                  on_delivery=self._delivered(p, event))

    def _delivered(self, p: int, event: dict[str, Any]):
        """Delivery callback: remember where p's events end; print the event once the broker has it,
        so stdout shows exactly what was published."""
        line = json.dumps(event, sort_keys=True) + "\n"

        def callback(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                return  # counted and logged by the producer wrapper; the event is recomputed on restart
            if p in self.out_next:
                ends = self.out_next[p]
                ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
            metrics.ANALYZE_EVENTS.labels(event["status"]).inc()
            sys.stdout.write(line)
            sys.stdout.flush()
            self._show(p, event)
            if self.misp is not None and (event["status"] == "final" or self.cfg.analyze.misp_updates):
                self.misp.put(event)

        return callback

    def _show(self, p: int, event: dict[str, Any]) -> None:
        """Keep the current-attacks gauge at each attack's latest event; drop it at the final one."""
        mine = self.attack_series.setdefault(p, {})
        labels = mine.pop(event["attack_id"], None)
        if labels is not None:
            metrics.ANALYZE_ATTACK_PPS.remove(*labels)
        shown = sum(len(series) for series in self.attack_series.values())
        if event["status"] != "final" and shown < metrics.ATTACK_SERIES_MAX:
            labels = (event["victim"], event["protocol"], ",".join(sorted(event["sites"])))
            mine[event["attack_id"]] = labels
            metrics.ANALYZE_ATTACK_PPS.labels(*labels).set(event["estimated_pps"])

    def close(self) -> None:
        for p, agg in sorted(self.aggregators.items()):
            st = agg.stats
            log.info("analyze: partition %d: %d late, %d duplicates, %d outside telescope, %d evicted, events %s",
                     p, st.late, st.duplicates, st.outside_telescope, st.evicted, st.events)
        try:
            self.snapshot_due(force=True)
        finally:
            self.consumer.close()
            self.reader.close()


def _counts(stats: Stats) -> tuple[int, int, int, int, int]:
    return stats.late, stats.duplicates, stats.evicted, stats.outside_telescope, stats.inputs_ended


def _poll(consumer: Consumer, max_records: int) -> list[Message]:
    good = []
    for msg in consumer.consume(max_records, 0.1):
        err = msg.error()
        if err is None:
            good.append(msg)
        elif err.fatal():
            raise RuntimeError(f"analyze: fatal consumer error: {err}")
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("analyze: consumer error: %s", err)
    return good


def run(cfg: Config) -> int:
    """Run both stages until SIGTERM/SIGINT; return the exit status."""
    acfg = cfg.analyze
    try:
        telescopes = Telescopes(acfg.telescope, parse_site_telescopes(acfg.site_telescope))
    except ValueError as exc:
        print(f"d4-bridge analyze: {exc} (give --telescope CIDR[,CIDR])", file=sys.stderr)
        return 2
    if acfg.profile not in PROFILES:
        print(f"d4-bridge analyze: unknown profile {acfg.profile!r} (one of {', '.join(PROFILES)})", file=sys.stderr)
        return 2
    misp = None
    if acfg.misp_dir or acfg.misp_url:
        if acfg.misp_url and not acfg.misp_key_file:
            print("d4-bridge analyze: --misp-url needs --misp-key-file", file=sys.stderr)
            return 2
        try:
            misp = MispOutput(acfg.misp_dir, acfg.misp_url, acfg.misp_key_file)
        except (OSError, ValueError) as exc:
            print(f"d4-bridge analyze: MISP output: {exc}", file=sys.stderr)
            return 2
    shutdown = start_hop(cfg, HOP, warm_up)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints where a stuck hop is
    if not telescopes.default.size and not telescopes.per_site:
        log.info("analyze: no --telescope: only sensors that announce their monitored addresses are analyzed")
    route_topic, state_topic = f"{acfg.out_topic}.packets", f"{acfg.out_topic}.state"
    producer = kafka.make_producer(cfg.kafka, HOP)
    probe = Consumer({"bootstrap.servers": cfg.kafka.bootstrap, "group.id": f"{acfg.group}.probe"})
    try:
        # the repartition topic gets as many partitions as the input (one existing from before keeps its own)
        kafka.create_topics(cfg.kafka, _partitions(probe, acfg.topic), topics=[route_topic, acfg.out_topic])
        kafka.create_topics(cfg.kafka, 1, topics=[acfg.records_topic])  # site announcements; usually exists
        # compacted: only the latest snapshot per key is needed to restore
        kafka.create_topics(cfg.kafka, 1, topics=[state_topic], config={"cleanup.policy": "compact"})
        partitions = _partitions(probe, route_topic)
    except RuntimeError as exc:
        print(f"d4-bridge analyze: {exc} (create it with `d4-bridge topics`)", file=sys.stderr)
        return 1
    finally:
        probe.close()
    router = Router(cfg, producer, route_topic, partitions)
    detector = Detector(cfg, producer, route_topic, state_topic, telescopes, misp)
    try:
        while not shutdown.is_set():
            routed = _poll(router.consumer, 500)
            if routed:
                router.handle(routed)
            else:
                router.tick_due()
            detected = _poll(detector.consumer, 100)
            if detected:
                detector.handle(detected)
            detector.snapshot_due()
            producer.poll(0)  # delivery callbacks print the published events
    finally:
        try:
            detector.close()
        finally:
            router.consumer.close()
            producer.flush(30)
            if misp is not None:
                misp.close()
    return 0
