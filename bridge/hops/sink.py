"""``d4-bridge sink``: the hub's packets as d4-core pcap files, plus d4-core's analyzer queue.

Existing D4 analyzers (analyzer-d4-pibs, analyzer-d4-stdout, ...) read gzipped
pcap files whose absolute paths d4-core's worker 1 LPUSHes onto
``analyzer:1:<queue>`` (shared/reference/d4-protocol.md §3.9, §3.12). This hop
writes the same thing from a PcapBatch topic:

- one file per sensor at a time, ``<dir>/<sensor>/1/YYYY/MM/DD/<sensor>-YYYY-MM-DD-HHMMSS.cap.gz``,
  named after the capture time (UTC) of its first packet, rotated every
  ``rotate_seconds`` of capture time (tcpdump -G 300 in d4-core) and also
  closed when it has been open that long by the wall clock, so a quiet sensor's
  file still reaches the analyzers;
- written as ``<name>.part`` and renamed when finished, so an analyzer never
  sees half a file; then ``LPUSH analyzer:1:<queue> <path>``,
  ``HSET analyzer:<queue> last_updated <now>`` and ``LTRIM analyzer:1:<queue> 0 <max_size>``
  (``HGET analyzer:<queue> max_size``, default 10000), exactly as d4-core does;
- offsets are committed only up to the first record of the oldest unfinished
  file of each partition: after a crash the unfinished files are written again
  (at least once; a file finished and pushed just before a crash may be
  repeated by the next one), and the crashed run's ``.part`` files are removed
  once they are twice the rotation period old. A crash between a file's rename
  and its LPUSH leaves that finished file on disk unannounced; its records were
  not committed, so the next run writes and announces them again.
"""

from __future__ import annotations

import gzip
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import redis
from confluent_kafka import Consumer, Message, TopicPartition

from bridge import kafka, metrics, records
from bridge.config import Config
from bridge.hop import start_hop
from bridge.pcap import global_header

log = logging.getLogger(__name__)

HOP = "sink"
D4_DEFAULT_MAX_SIZE = 10000  # file_compressor.py's default when the queue has no max_size
_NS = 1_000_000_000


@dataclass
class _OpenFile:
    """The file a sensor is currently writing."""

    final: Path
    part: Path
    handle: gzip.GzipFile
    start_ns: int  # capture time that names the file
    opened: float  # wall clock, for the age limit
    format: tuple[int, int, bool]  # linktype, snaplen, nsec: a pcap file holds one
    first_offsets: dict[int, int] = field(default_factory=dict)  # partition -> first offset written here
    packets: int = 0


class FileRotator:
    """Per-sensor rotating .cap.gz files in d4-core's layout (no Kafka, no Redis).

    ``on_finished(path)`` is called with each finished file, oldest first.
    """

    def __init__(self, root: Path, rotate_seconds: float, on_finished: Callable[[Path], None]) -> None:
        self.root = root
        self.rotate_ns = int(rotate_seconds * _NS)
        self.rotate_seconds = rotate_seconds
        self.on_finished = on_finished
        self.files: dict[str, _OpenFile] = {}

    def write(self, rec: dict, partition: int, offset: int, now: float) -> None:
        """Append a PcapBatch's packets to its sensor's file, rotating first when due."""
        if not rec["packet_count"]:
            return
        sensor = rec["sensor_uuid"]
        fmt = (rec["linktype"], rec["snaplen"], rec["ts_precision"] == "nsec")
        current = self.files.get(sensor)
        if current is not None and (current.format != fmt or rec["first_ts_ns"] >= current.start_ns + self.rotate_ns):
            self.finish(sensor)
            current = None
        if current is None:
            current = self._open(sensor, rec["first_ts_ns"], fmt, now)
        current.first_offsets.setdefault(partition, offset)
        current.handle.write(rec["packets"])
        current.packets += rec["packet_count"]
        metrics.SINK_PACKETS.inc(rec["packet_count"])
        metrics.SINK_BYTES.inc(len(rec["packets"]))

    def _open(self, sensor: str, start_ns: int, fmt: tuple[int, int, bool], now: float) -> _OpenFile:
        when = datetime.fromtimestamp(start_ns // _NS, tz=timezone.utc)
        directory = self.root / sensor / "1" / when.strftime("%Y/%m/%d")
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{sensor}-{when.strftime('%Y-%m-%d-%H%M%S')}"
        final = directory / f"{stem}.cap.gz"
        index = 1
        while final.exists():  # same second twice (e.g. after a restart): d4-core's .cap.<i>.gz naming
            final = directory / f"{stem}.cap.{index}.gz"
            index += 1
        part = final.with_name(final.name + ".part")
        handle = gzip.open(part, "wb", compresslevel=6)
        handle.write(global_header(fmt[0], fmt[1], fmt[2]))
        opened = _OpenFile(final, part, handle, start_ns, now, fmt)
        self.files[sensor] = opened
        return opened

    def finish(self, sensor: str) -> None:
        """Close, rename and announce a sensor's file."""
        f = self.files.pop(sensor)
        f.handle.close()
        os.replace(f.part, f.final)
        metrics.SINK_FILES.inc()
        log.info("sink: finished %s (%d packets)", f.final, f.packets)
        self.on_finished(f.final)

    def finish_old(self, now: float) -> None:
        """Finish files open longer than the rotation period by the wall clock."""
        for sensor in sorted(s for s, f in self.files.items() if now - f.opened >= self.rotate_seconds):
            self.finish(sensor)

    def finish_partitions(self, partitions: set[int]) -> None:
        for sensor in sorted(s for s, f in self.files.items() if set(f.first_offsets) & partitions):
            self.finish(sensor)

    def discard_partitions(self, partitions: set[int]) -> None:
        """Drop unfinished files (their records are read again by the partitions' new owner)."""
        for sensor in sorted(s for s, f in self.files.items() if set(f.first_offsets) & partitions):
            f = self.files.pop(sensor)
            f.handle.close()
            f.part.unlink(missing_ok=True)

    def pinned(self) -> dict[int, int]:
        """Per partition, the first offset still inside an unfinished file (commits stop there)."""
        out: dict[int, int] = {}
        for f in self.files.values():
            for p, off in f.first_offsets.items():
                out[p] = min(out.get(p, off), off)
        return out


class AnalyzerQueue:
    """d4-core's push of a finished file onto ``analyzer:1:<queue>`` (Analyzer_Queue / file_compressor)."""

    def __init__(self, client: redis.Redis, queue_uuid: str) -> None:
        self.client = client
        self.queue_uuid = queue_uuid
        self.key = f"analyzer:1:{queue_uuid}"

    def push(self, path: Path) -> None:
        max_size = self.client.hget(f"analyzer:{self.queue_uuid}", "max_size")
        limit = int(max_size) if max_size else D4_DEFAULT_MAX_SIZE
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.key, str(path))
        pipe.hset(f"analyzer:{self.queue_uuid}", "last_updated", time.time())
        pipe.ltrim(self.key, 0, limit)
        pipe.execute()
        metrics.SINK_QUEUE_PUSHES.inc()


def remove_orphans(root: Path, rotate_seconds: float, mine: set[Path]) -> None:
    """Delete .part files left by a crashed sink: not ours and older than twice the rotation period
    (a live sink finishes every file within rotate_seconds of the wall clock)."""
    cutoff = time.time() - 2 * rotate_seconds - 10
    for part in root.glob("*/1/*/*/*/*.part"):
        try:
            stale = part not in mine and part.stat().st_mtime < cutoff
        except FileNotFoundError:  # finished meanwhile by its writer
            continue
        if stale:
            log.warning("sink: removing an unfinished file of a crashed run: %s", part)
            part.unlink(missing_ok=True)


def run(cfg: Config) -> int:
    """Consume the topic into rotating files until SIGTERM/SIGINT; return the exit status."""
    scfg = cfg.sink
    if not scfg.dir:
        print("d4-bridge sink: --dir DIR is required", file=sys.stderr)
        return 2
    if bool(scfg.redis) != bool(scfg.queue_uuid):
        print("d4-bridge sink: --redis and --queue-uuid go together", file=sys.stderr)
        return 2
    shutdown = start_hop(cfg, HOP)
    root = Path(scfg.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    queue = AnalyzerQueue(redis.Redis.from_url(scfg.redis), scfg.queue_uuid) if scfg.redis else None
    rotator = FileRotator(root, scfg.rotate_seconds, queue.push if queue else lambda _path: None)
    next_offsets: dict[int, int] = {}

    def commit(consumer: Consumer) -> None:
        pinned = rotator.pinned()
        offsets = [TopicPartition(scfg.topic, p, min(pinned.get(p, nxt), nxt)) for p, nxt in next_offsets.items()]
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=False)

    def on_revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        rotator.finish_partitions({tp.partition for tp in partitions})
        commit(consumer)
        for tp in partitions:
            next_offsets.pop(tp.partition, None)

    def on_lost(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        rotator.discard_partitions({tp.partition for tp in partitions})
        for tp in partitions:
            next_offsets.pop(tp.partition, None)

    consumer = kafka.make_consumer(cfg.kafka, HOP, scfg.group, [scfg.topic], on_revoke=on_revoke, on_lost=on_lost)
    swept = 0.0
    try:
        while not shutdown.is_set():
            if time.monotonic() - swept >= scfg.rotate_seconds:
                remove_orphans(root, scfg.rotate_seconds, {f.part for f in rotator.files.values()})
                swept = time.monotonic()
            wrote = False
            for msg in consumer.consume(500, 0.2):
                if msg.error():
                    if msg.error().fatal():
                        raise RuntimeError(f"sink: fatal consumer error: {msg.error()}")
                    continue
                _handle(msg, rotator, time.time())
                next_offsets[msg.partition()] = msg.offset() + 1
                wrote = True
            before = len(rotator.files)
            rotator.finish_old(time.time())
            if wrote or len(rotator.files) != before:
                commit(consumer)
    finally:
        try:
            for sensor in sorted(rotator.files):
                rotator.finish(sensor)
            commit(consumer)
        finally:
            consumer.close()
    return 0


def _handle(msg: Message, rotator: FileRotator, now: float) -> None:
    try:
        rec = records.decode(msg.value(), expect="PcapBatch")
    except records.RecordError as exc:
        log.warning("sink: %s[%d]@%d is not a PcapBatch (%s), skipped", msg.topic(), msg.partition(),
                    msg.offset(), exc)
        return
    rotator.write(rec, msg.partition(), msg.offset(), now)
