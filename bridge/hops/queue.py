"""``d4-bridge queue``: a d4-core analyzer queue -> topic records, without losing a file.

d4-core LPUSHes items onto ``analyzer:<type>:<queue uuid>`` (Redis_ANALYZER, 6380 db 2);
its analyzers RPOP the oldest. This hop instead moves the oldest item atomically into
its own processing list ``d4bridge:processing:<type>:<queue uuid>:<consumer>``
(BLMOVE RIGHT LEFT, blocking; BRPOPLPUSH on Redis < 6.2, which d4-core installs), turns
it into records and removes it (LREM) only once the broker has acknowledged every
record made from it. A crash therefore leaves the item in the processing list, and the
next start does it again first; duplicates of that one file are identifiable by
(file_path, batch_index). Several processes share a queue, each with its own processing
list, claimed by a lease key that a refresh thread keeps alive; the processing list of
a consumer whose lease is gone (crashed for good) is taken over by a live one. An item that
was in hand at CRASH_LIMIT consumer deaths is set aside as ``crash_loop`` (a poison file
must not crash-loop the queue).

Type 1 items are paths of ``.cap.gz`` (or ``.cap``) captures: streamed through gunzip
and the pcap assembler in bounded chunks into PcapBatch records keyed by sensor uuid.
Other types carry lines: packed into D4Record records. An item that cannot be read
produces a DeadLetter (path and reason), counts ``d4bridge_queue_failures_total{reason}``,
logs a line and moves to ``d4bridge:failed:<type>:<queue uuid>``; the packets read
before the damage are produced. A broker or Redis failure never fails an item: it
stays in the processing list and is retried with backoff.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from bridge import metrics, records
from bridge.assembler import MAX_BATCH_BYTES, PcapAssembler, PcapChunkBatch, PcapStreamError
from bridge.config import Config
from bridge.hop import Shutdown, setup_logging, start_hop
from bridge.kafka import BlockingProducer, make_producer, send_dead_letter
from bridge.queue_items import (
    ItemError,
    QueueType,
    file_chunks,
    join_lines,
    line_payloads,
    pcap_failure,
    sensor_uuid_from_path,
    session_id_for_path,
    site_sensor_uuid,
)

log = logging.getLogger(__name__)

HOP = "queue"
BLOCK_SECONDS = 1  # BLMOVE timeout: how soon an idle consumer notices a shutdown request
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
DLQ_PAYLOAD_BYTES = 65536  # enough of a refused line item to recognise it
HOST = socket.gethostname()
CRASH_LIMIT = 3  # an item in hand at this many deaths of its consumer is set aside (a poison file must not crash-loop)
_CONSUMER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

T = TypeVar("T")

# Lease scripts: compare-and-set on the lease value so that only its owner extends or drops it.
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_TAKEOVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# Take over a dead consumer's processing list: only if its lease is still absent (or still the
# stale value we saw), so a consumer restarting under that name at the same moment never races us.
# RPOPLPUSH (not LMOVE) keeps the script valid on Redis 5, which d4-core installs.
_RECLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return -1 end
local n = 0
while redis.call('RPOPLPUSH', KEYS[2], KEYS[3]) do n = n + 1 end
if v then redis.call('DEL', KEYS[1]) end
return n
"""


class Stopped(Exception):
    """Shutdown was requested while waiting for Redis to come back."""


class DeliveryFailed(Exception):
    """The broker refused or timed out a record of the item in hand."""


class QueueKeys:
    """Redis keys of one analyzer queue and of d4-bridge's per-consumer lists beside it."""

    def __init__(self, qtype: QueueType, queue_uuid: str) -> None:
        self.queue = f"{qtype.key}:{queue_uuid}"
        self.source = f"analyzer:{self.queue}"
        self.failed = f"d4bridge:failed:{self.queue}"
        self.attempts = f"d4bridge:attempts:{self.queue}"  # hash: item -> consumer deaths while in hand
        self._processing = f"d4bridge:processing:{self.queue}:"
        self._lease = f"d4bridge:lease:{self.queue}:"

    def processing(self, consumer: str) -> str:
        return self._processing + consumer

    def lease(self, consumer: str) -> str:
        return self._lease + consumer

    def consumer_of(self, processing_key: str) -> str:
        return processing_key[len(self._processing):]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_holder(value: bytes, host: str = HOST, pid: int | None = None,
                 alive: Callable[[int], bool] = _pid_alive) -> bool:
    """Whether a lease value names a dead process on this host.

    Values are ``host pid token``. A holder with this process's own pid but another
    token is a previous incarnation (pid 1 of a restarted container).
    """
    pid = os.getpid() if pid is None else pid
    try:
        holder_host, holder_pid, _token = value.decode().split(" ")
        holder = int(holder_pid)
    except ValueError:
        return False
    return holder_host == host and (holder == pid or not alive(holder))


class Lease:
    """This consumer's claim on its processing list: a Redis key with a TTL, refreshed by a thread."""

    def __init__(self, client: redis.Redis, key: str, consumer: str, ttl: float) -> None:
        self.client = client
        self.key = key
        self.consumer = consumer
        self.ttl_ms = max(int(ttl * 1000), 1000)
        self.value = f"{HOST} {os.getpid()} {uuidlib.uuid4().hex}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh = client.register_script(_REFRESH)
        self._takeover = client.register_script(_TAKEOVER)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> tuple[bool, bytes | None]:
        """Try to take the lease; return (taken, current holder when not)."""
        if self.client.set(self.key, self.value, px=self.ttl_ms, nx=True):
            return True, None
        holder = self.client.get(self.key)
        if holder is None:  # expired between the two calls
            return self.client.set(self.key, self.value, px=self.ttl_ms, nx=True) is True, None
        if stale_holder(holder) and self._takeover(keys=[self.key], args=[holder, self.value, self.ttl_ms]):
            log.info("queue: took over consumer name %s from dead process (%s)", self.consumer, holder.decode())
            return True, None
        return False, holder

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keep, name="queue-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                kept = self._refresh(keys=[self.key], args=[self.value, self.ttl_ms])
            except redis.RedisError as exc:
                log.warning("queue: cannot refresh the lease of consumer %s: %s", self.consumer, exc)
                continue
            if not kept:
                log.error("queue: another process holds consumer name %s now; stopping", self.consumer)
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._release(keys=[self.key], args=[self.value])
        except redis.RedisError as exc:
            log.warning("queue: lease of %s not released (%s); it expires by itself", self.consumer, exc)


class RedisQueue:
    """Reliable queue operations on the analyzer list, this consumer's processing list and the failed list."""

    def __init__(self, client: redis.Redis, keys: QueueKeys, consumer: str, has_lmove: bool) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.processing = keys.processing(consumer)
        self.has_lmove = has_lmove
        self._reclaim = client.register_script(_RECLAIM)

    def leftovers(self) -> list[bytes]:
        """Items a previous run of this consumer left unfinished, oldest first."""
        return list(reversed(self.client.lrange(self.processing, 0, -1)))

    def take(self, more: int) -> list[bytes]:
        """Block up to BLOCK_SECONDS for the oldest item, then move up to ``more`` others without waiting."""
        if self.has_lmove:
            first = self.client.blmove(self.keys.source, self.processing, BLOCK_SECONDS, "RIGHT", "LEFT")
        else:
            first = self.client.brpoplpush(self.keys.source, self.processing, BLOCK_SECONDS)
        if first is None or more <= 0:
            return [] if first is None else [first]
        pipe = self.client.pipeline(transaction=True)
        for _ in range(more):
            if self.has_lmove:
                pipe.lmove(self.keys.source, self.processing, "RIGHT", "LEFT")
            else:
                pipe.rpoplpush(self.keys.source, self.processing)
        return [first] + [item for item in pipe.execute() if item is not None]

    def restarted(self, items: list[bytes]) -> list[int]:
        """Count one more consumer death for each item found unfinished; return the counts."""
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hincrby(self.keys.attempts, item, 1)
        return pipe.execute()

    def done(self, items: list[bytes]) -> None:
        """Drop finished items from the processing list (oldest sit at the tail: LREM -1 finds them first)."""
        pipe = self.client.pipeline(transaction=True)
        for item in items:
            pipe.lrem(self.processing, -1, item)
            pipe.hdel(self.keys.attempts, item)
        pipe.execute()

    def fail(self, items: list[bytes]) -> None:
        """Move items from the processing list to the failed list, atomically."""
        pipe = self.client.pipeline(transaction=True)
        for item in items:
            pipe.lpush(self.keys.failed, item)
            pipe.lrem(self.processing, -1, item)
            pipe.hdel(self.keys.attempts, item)
        pipe.execute()

    def update_gauges(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self.keys.source)
        pipe.llen(self.processing)
        pipe.llen(self.keys.failed)
        depth, processing, failed = pipe.execute()
        metrics.QUEUE_DEPTH.set(depth)
        metrics.QUEUE_PROCESSING.set(processing)
        metrics.QUEUE_FAILED.set(failed)

    def reclaim_orphans(self) -> int:
        """Move the items of dead consumers' processing lists into ours; return how many."""
        moved = 0
        for raw in self.client.scan_iter(match=self.keys.processing("*"), count=100):
            key = raw.decode()
            if key == self.processing:
                continue
            other = self.keys.consumer_of(key)
            holder = self.client.get(self.keys.lease(other))
            if holder is not None and not stale_holder(holder):
                continue
            n = self._reclaim(keys=[self.keys.lease(other), key, self.processing], args=[holder or b""])
            if n > 0:
                log.warning("queue: took over %d unfinished items of dead consumer %s", n, other)
                metrics.QUEUE_RECLAIMED.inc(n)
                moved += n
        return moved


class Acks:
    """Broker acknowledgements of the item in hand, and the bound on unacknowledged bytes."""

    def __init__(self, producer: BlockingProducer, max_inflight: int) -> None:
        self.producer = producer
        self.max_inflight = max_inflight
        self.inflight = 0
        self.failures = 0

    def produce(self, topic: str, value: bytes, key: str) -> None:
        """Queue a record; wait while too many bytes are unacknowledged; raise once a record failed."""
        while self.inflight > self.max_inflight and not self.failures:
            self.producer.poll(0.05)
        if self.failures:
            raise DeliveryFailed(f"{self.failures} records were not delivered")
        self.producer.produce(topic, value, key=key, on_delivery=self._tracked(len(value)))

    def dead_letter(self, record: dict[str, Any]) -> None:
        """Send a DeadLetter whose delivery counts like the item's other records."""
        send_dead_letter(self.producer, record, on_delivery=self._tracked(0))

    def _tracked(self, size: int) -> Callable[[Any, Any], None]:
        self.inflight += size

        def delivered(err: Any, _msg: Any) -> None:
            self.inflight -= size
            if err is not None:
                self.failures += 1

        return delivered

    def settle(self) -> bool:
        """Wait until every record produced so far is acknowledged or failed; True if none failed.

        No timeout of its own: librdkafka fails a record after ``message.timeout.ms``.
        """
        waited = time.monotonic()
        while len(self.producer):
            self.producer.raw.flush(1.0)
            if len(self.producer) and time.monotonic() - waited > 10:
                log.warning("queue: still waiting for the broker to acknowledge %d records", len(self.producer))
                waited = time.monotonic()
        ok = self.failures == 0
        self.failures = 0
        return ok


@dataclass
class Stats:
    files: int = 0
    lines: int = 0
    packets: int = 0
    failed: int = 0
    retries: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class QueueHop:
    """The consume -> produce -> acknowledge loop of one consumer."""

    def __init__(self, cfg: Config, qtype: QueueType, queue: RedisQueue, producer: BlockingProducer,
                 shutdown: Shutdown, lease: Lease | None = None) -> None:
        qcfg = cfg.queue
        self.cfg = cfg
        self.qtype = qtype
        self.queue = queue
        self.producer = producer
        self.shutdown = shutdown
        self.lease = lease
        self.acks = Acks(producer, qcfg.max_inflight_bytes)
        self.batch_bytes = min(qcfg.batch_bytes, MAX_BATCH_BYTES)
        self.line_bytes = min(qcfg.line_batch_bytes, MAX_BATCH_BYTES)
        self.default_sensor = qcfg.sensor_uuid or site_sensor_uuid(cfg.site)
        self.session_id = f"queue:{queue.keys.queue}:{queue.consumer}:{time.time_ns()}"
        self.seq = 0
        self.stats = Stats()

    # --- Redis calls survive Redis restarts

    def _redis(self, fn: Callable[..., T], *args: Any) -> T:
        delay = BACKOFF_FIRST
        while True:
            try:
                return fn(*args)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                metrics.QUEUE_RETRIES.labels("redis_unavailable").inc()
                log.warning("queue: Redis unavailable (%s); retrying in %.1f s", exc, delay)
                if self.shutdown.wait(delay):
                    raise Stopped() from exc
                delay = min(delay * 2, BACKOFF_MAX)

    # --- the loop

    def serve(self) -> None:
        """Process leftovers, then the queue, until shutdown (the item in hand is finished first)."""
        last_reclaim = time.monotonic()
        delay = BACKOFF_FIRST
        step = 1 if self.qtype.files else self.cfg.queue.line_batch_items
        try:
            self._redis(self.queue.reclaim_orphans)
            pending = self._resume()
            while not self.shutdown.is_set() and not (self.lease and self.lease.lost.is_set()):
                if not pending:
                    self._redis(self.queue.update_gauges)
                    if time.monotonic() - last_reclaim > self.cfg.queue.lease_seconds:
                        last_reclaim = time.monotonic()
                        if self._redis(self.queue.reclaim_orphans):
                            pending = self._resume()
                            continue
                    pending = self._redis(self.queue.take, step - 1)
                    continue
                batch = pending[:step]
                finished = self.handle_file(batch[0]) if self.qtype.files else self.handle_lines(batch)
                if finished:
                    pending = pending[len(batch):]
                    delay = BACKOFF_FIRST
                    continue
                self.stats.retries += 1
                metrics.QUEUE_RETRIES.labels("delivery_failed").inc()
                log.warning("queue: broker did not acknowledge every record; item stays in %s, retry in %.1f s",
                            self.queue.processing, delay)
                if self.shutdown.wait(delay):
                    break
                delay = min(delay * 2, BACKOFF_MAX)
            self._redis(self.queue.update_gauges)
        except Stopped:
            log.warning("queue: stopped while Redis was unavailable; unfinished items stay in %s",
                        self.queue.processing)
        finally:
            self.acks.settle()

    def _resume(self) -> list[bytes]:
        """The unfinished items of this processing list, oldest first, less those that keep killing consumers."""
        items = self._redis(self.queue.leftovers)
        if not items:
            return items
        log.info("queue: %d unfinished items in %s are done first", len(items), self.queue.processing)
        deaths = self._redis(self.queue.restarted, items)
        poison = [item for item, n in zip(items, deaths) if n >= CRASH_LIMIT]
        if not poison:
            return items
        for item in poison:
            self.acks.dead_letter(records.dead_letter(
                HOP, "crash_loop", f"consumers died {CRASH_LIMIT} times while this item was in hand",
                file_path=item.decode("utf-8", "backslashreplace") if self.qtype.files else None,
                payload=None if self.qtype.files else item[:DLQ_PAYLOAD_BYTES]))
        if not self.acks.settle():
            return items  # the dead letters were not stored: keep the items where they are for now
        self._failed(poison, "crash_loop")
        return [item for item in items if item not in poison]

    # --- files

    def handle_file(self, item: bytes) -> bool:
        """Produce one capture file; True when the item is finished (done or failed), False to retry it."""
        path = item.decode("utf-8", "backslashreplace")
        sensor = sensor_uuid_from_path(path) or self.default_sensor
        session = session_id_for_path(path)
        started = time.monotonic()
        counts = [0, 0, 0]  # batches, packets, bytes

        def emit(batches: list[PcapChunkBatch]) -> None:
            for b in batches:
                rec = records.pcap_batch(b, sensor_uuid=sensor, site=self.cfg.site, source="queue",
                                         session_id=session, seq=counts[0], file_path=path, batch_index=counts[0])
                self.acks.produce(self.cfg.queue.topic, records.encode("PcapBatch", rec), sensor)
                counts[0] += 1
                counts[1] += b.count
                counts[2] += len(b.packets)

        try:
            error = self._read_file(item, emit)
            if error is not None:
                self.acks.dead_letter(records.dead_letter(
                    HOP, error.reason, f"{error.detail}; {counts[1]} packets before the damage were produced",
                    file_path=path))
        except DeliveryFailed:
            self.acks.settle()
            return False
        if not self.acks.settle():
            return False
        metrics.QUEUE_PACKETS.inc(counts[1])
        metrics.QUEUE_BYTES.inc(counts[2])
        self.stats.packets += counts[1]
        if error is None:
            self._redis(self.queue.done, [item])
            metrics.QUEUE_FILES.inc()
            self.stats.files += 1
            log.info("queue: %s: %d packets in %d batches (%.1f MB) in %.2f s", path, counts[1], counts[0],
                     counts[2] / 1e6, time.monotonic() - started)
        else:
            self._failed([item], error.reason)
        return True

    def _read_file(self, item: bytes, emit: Callable[[list[PcapChunkBatch]], None]) -> ItemError | None:
        """Stream the file through the assembler into ``emit``; return what went wrong, if anything.

        The whole packets before any damage are emitted too. DeliveryFailed passes through.
        """
        assembler = PcapAssembler(batch_bytes=self.batch_bytes, max_age=None)
        try:
            try:
                f = open(item, "rb")  # the raw bytes: paths need not be UTF-8
            except FileNotFoundError:
                raise ItemError("missing", "no such file") from None
            except OSError as exc:
                raise ItemError("unreadable", exc.strerror or str(exc)) from None
            with f:
                metrics.QUEUE_FILE_AGE.observe(max(0.0, time.time() - os.fstat(f.fileno()).st_mtime))
                try:
                    for chunk in file_chunks(f):
                        emit(assembler.feed(chunk))
                    emit(assembler.close())
                except OSError as exc:
                    raise ItemError("unreadable", f"read error: {exc.strerror or exc}") from None
        except PcapStreamError as exc:
            emit(exc.batches)
            return pcap_failure(exc)
        except ItemError as exc:
            emit(assembler.flush())  # keep the whole packets read before the damage
            return exc
        return None

    # --- lines

    def handle_lines(self, items: list[bytes]) -> bool:
        """Produce line items as D4Records; True when finished, False to retry them."""
        groups, too_large = line_payloads(items, self.line_bytes)
        try:
            for group in groups:
                rec = {
                    "sensor_uuid": self.default_sensor, "site": self.cfg.site, "source": "queue",
                    "session_id": self.session_id, "seq": self.seq, "d4_type": self.qtype.d4_type,
                    "meta_type": self.qtype.meta_type, "d4_timestamp": 0, "created_ns": records.now_ns(),
                    "data": join_lines([items[i] for i in group]),
                }
                self.acks.produce(self.cfg.queue.records_topic, records.encode("D4Record", rec), self.default_sensor)
                self.seq += 1
        except DeliveryFailed:
            self.acks.settle()
            return False
        for i in too_large:
            self.acks.dead_letter(records.dead_letter(
                HOP, "item_too_large", f"line item of {len(items[i])} bytes above the "
                f"{self.line_bytes}-byte record limit (payload: its first {DLQ_PAYLOAD_BYTES} bytes)",
                payload=items[i][:DLQ_PAYLOAD_BYTES]))
        if not self.acks.settle():
            return False
        good = [items[i] for group in groups for i in group]
        if good:
            self._redis(self.queue.done, good)
            metrics.QUEUE_LINES.inc(len(good))
            self.stats.lines += len(good)
        if too_large:
            self._failed([items[i] for i in too_large], "item_too_large")
        return True

    def _failed(self, items: list[bytes], reason: str) -> None:
        self._redis(self.queue.fail, items)
        metrics.QUEUE_FAILURES.labels(reason).inc(len(items))
        self.stats.failed += len(items)
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + len(items)
        log.warning("queue: %d item(s) moved to %s (%s)", len(items), self.queue.keys.failed, reason)


# --- start-up -----------------------------------------------------------------------------


def redis_client(url: str) -> redis.Redis:
    """A client for blocking commands: reads wait longer than BLMOVE's timeout, dead peers are noticed."""
    return redis.Redis.from_url(url, socket_timeout=BLOCK_SECONDS + 10, socket_connect_timeout=5,
                                socket_keepalive=True, health_check_interval=30)


def has_lmove(version: str) -> bool:
    """LMOVE/BLMOVE exist from Redis 6.2; d4-core's installer builds Redis 5 (BRPOPLPUSH only)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    return (parts[0], parts[1]) >= (6, 2)


def claim_consumer(client: redis.Redis, keys: QueueKeys, explicit: str, ttl: float,
                   shutdown: Shutdown) -> Lease | None:
    """Take a consumer name and its lease.

    Without ``--consumer`` the host name is used, suffixed -2, -3, ... when a live
    process on this host holds it. A given name held by a live process on this host
    is refused; one held elsewhere is waited for (its lease expires if that
    process died).
    """
    names = [explicit] if explicit else [HOST] + [f"{HOST}-{i}" for i in range(2, 65)]
    for name in names:
        lease = Lease(client, keys.lease(name), name, ttl)
        taken, holder = lease.acquire()
        if taken:
            return lease
        if not explicit:
            continue
        if holder is not None and holder.decode(errors="replace").split(" ")[0] == HOST:
            log.error("queue: consumer name %s is in use by a running process on this host (%s)",
                      name, holder.decode(errors="replace"))
            return None
        log.warning("queue: consumer name %s is held by %s; waiting for its lease to expire",
                    name, holder.decode(errors="replace") if holder else "?")
        while not shutdown.wait(1.0):
            taken, holder = lease.acquire()
            if taken:
                return lease
        return None
    log.error("queue: every consumer name %s..%s-64 is in use on this host; give --consumer", HOST, HOST)
    return None


def serve(cfg: Config, qtype: QueueType, shutdown: Shutdown) -> int:
    """Run the hop until ``shutdown``; return the exit status."""
    qcfg = cfg.queue
    consumer = qcfg.consumer
    if consumer and not _CONSUMER_NAME.match(consumer):
        log.error("queue: consumer name %r: use letters, digits, '.', '_' and '-' only", consumer)
        return 2
    client = redis_client(qcfg.redis)
    keys = QueueKeys(qtype, qcfg.queue_uuid)
    try:
        version = str(client.info("server").get("redis_version", "0"))
        lease = claim_consumer(client, keys, consumer, qcfg.lease_seconds, shutdown)
    except redis.RedisError as exc:
        log.error("queue: cannot use Redis at %s: %s", qcfg.redis, exc)
        return 1
    if lease is None:
        return 0 if shutdown.is_set() else 2
    lease.start()
    queue = RedisQueue(client, keys, lease.consumer, has_lmove(version))
    producer = make_producer(cfg.kafka, HOP)
    hop = QueueHop(cfg, qtype, queue, producer, shutdown, lease)
    log.info("queue: consumer %s reads %s (Redis %s) into %s", lease.consumer, keys.source, version,
             qcfg.topic if qtype.files else qcfg.records_topic)
    try:
        hop.serve()
    finally:
        producer.flush(30)
        lease.release()
        metrics.HOP_INFO.labels(HOP).set(0)
        s = hop.stats
        log.info("queue: stopped: %d files (%d packets), %d lines, %d failed %s, %d retries", s.files, s.packets,
                 s.lines, s.failed, s.reasons or "", s.retries)
    return 1 if lease.lost.is_set() else 0


# --- --create-queue ----------------------------------------------------------------------


def metadata_url(analyzer_url: str) -> str:
    """db 0 of the analyzer Redis: where d4-core keeps queue metadata (6380 db 0 beside lists in db 2)."""
    parts = urlsplit(analyzer_url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = "0"
        return f"unix://{parts.path}?{urlencode(query)}"  # urlunsplit would drop the empty host
    return urlunsplit(parts._replace(path="/0"))


def create_queue(cfg: Config, qtype: QueueType) -> int:
    """Register the queue in d4-core's metadata as the UI's create_queue does; print its uuid.

    Idempotent: a queue already registered with the same type is left as it is.
    The list itself appears with d4-core's first LPUSH.
    """
    qcfg = cfg.queue
    if qcfg.queue_uuid:
        try:
            uuidlib.UUID(qcfg.queue_uuid)
        except ValueError:
            print(f"d4-bridge queue: --queue-uuid {qcfg.queue_uuid!r} is not a UUID", file=sys.stderr)
            return 2
    queue_uuid = qcfg.queue_uuid or str(uuidlib.uuid4())
    format_type = "254" if qtype.meta_type else qtype.key
    client = redis.Redis.from_url(qcfg.metadata_redis or metadata_url(qcfg.redis), socket_connect_timeout=5)
    meta_key = f"analyzer:{queue_uuid}"
    try:
        existing = client.hgetall(meta_key)
        if existing:
            same = (existing.get(b"type") == format_type.encode()
                    and existing.get(b"metatype") == (qtype.meta_type.encode() if qtype.meta_type else None))
            if not same:
                print(f"d4-bridge queue: queue {queue_uuid} exists with type {existing.get(b'type')!r} "
                      f"{existing.get(b'metatype') or b''!r}", file=sys.stderr)
                return 1
            log.info("queue: %s is already registered", queue_uuid)
            print(queue_uuid)
            return 0
        accepted_key, wanted = (("server:accepted_extended_type", qtype.meta_type) if qtype.meta_type
                                else ("server:accepted_type", format_type))
        if client.exists(accepted_key) and not client.sismember(accepted_key, wanted):
            log.warning("queue: %s is not in %s: d4-core will not feed this queue until it is", wanted, accepted_key)
        pipe = client.pipeline(transaction=True)
        pipe.hset(meta_key, "type", format_type)
        if qcfg.description:
            pipe.hset(meta_key, "description", qcfg.description)
        pipe.sadd("all:analyzer:format_type", format_type)
        pipe.sadd(f"all:analyzer:by:format_type:{format_type}", queue_uuid)
        if qtype.meta_type:
            pipe.sadd(f"analyzer:254:{qtype.meta_type}", queue_uuid)
            pipe.hset(meta_key, "metatype", qtype.meta_type)
            pipe.sadd(f"all:analyzer:by:extended_type:{qtype.meta_type}", queue_uuid)
            pipe.sadd("all:analyzer:extended_type", qtype.meta_type)
        else:
            pipe.sadd(f"analyzer:{format_type}", queue_uuid)
        pipe.sadd("all_analyzer_queues", queue_uuid)
        pipe.execute()
    except redis.RedisError as exc:
        print(f"d4-bridge queue: cannot register the queue: {exc}", file=sys.stderr)
        return 1
    log.info("queue: registered %s queue %s", qtype.meta_type or f"type-{format_type}", queue_uuid)
    print(queue_uuid)
    return 0


def run(cfg: Config) -> int:
    """Entry point of ``d4-bridge queue``."""
    try:
        qtype = QueueType.parse(cfg.queue.type)
    except ValueError as exc:
        print(f"d4-bridge queue: {exc}", file=sys.stderr)
        return 2
    if cfg.queue.create_queue:
        setup_logging(cfg.log_level)
        return create_queue(cfg, qtype)
    if not cfg.queue.queue_uuid:
        print("d4-bridge queue: --queue-uuid is required (or --create-queue to make one)", file=sys.stderr)
        return 2
    shutdown = start_hop(cfg, HOP)
    return serve(cfg, qtype, shutdown)
