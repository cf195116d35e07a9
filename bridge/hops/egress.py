"""``d4-bridge egress``: sanitized PcapBatch records -> public D4 server, at least once, through outages.

Layout: the main thread runs the Kafka consumer; each upstream session (one per upstream
identity and link type) runs a ``D4Sender`` — the one D4 client implementation — in its own
thread, fed through a bounded in-memory queue.

* Only sanitized records leave: the hop refuses to start on a topic whose latest records lack the
  sanitizer's stamp, and any record without it goes to ``d4.dlq`` (reason ``unsanitized``, never
  with its payload).
* Each session is one pcap stream: a global header, then whole records, in type-1 frames of at
  most ``frame_size`` payload bytes, each holding whole records (``bridge.egress_framing``).
  d4-core accepts one type-1 session per uuid, so an identity carries one link type: records of
  a second link type under the same identity go to the DLQ (``linktype_conflict``) instead of
  stalling everything behind a session that would be refused forever.
* At least once: a record's offset is committed only when every frame holding its packets was
  written to the socket, acknowledged by the server's TCP stack and held ``resend_grace`` seconds
  longer (``D4Sender.messages_released``). On a broken connection the sender reconnects with
  exponential backoff and jitter and opens a new session (new global header) that starts with
  every message not yet released — exactly the records after the last commit, in order, i.e.
  what a seek to the committed offsets would re-read, without re-reading it. After a crash or a
  rebalance the consumer resumes from the committed offsets. d4-core's refusal of a second
  session for the same uuid and type (it closes the connection at once) counts as ``refused``
  and keeps the backoff growing.
* Site announcement: an identity with a telescope (``--telescope`` for the site identity, a
  ``telescope`` in the identity map) announces the site name and its monitored address count in
  a D4 type-2 meta header (``bridge.d4.site_meta``) on a short session of its own, whenever its
  pcap session (re)connects, so a hub that restarted learns it again.
* Backpressure: when the queued bytes exceed ``max_queued_bytes`` (server slow or down) every
  assigned partition is paused; the consumer keeps polling, so the group membership and
  ``max.poll.interval.ms`` stay satisfied; reading resumes below half the bound, at full speed.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge import kafka, metrics, records
from bridge.config import Config, KafkaConfig
from bridge.d4.client import TYPE_META, D4Sender, SenderOptions, SenderStopped, parse_host_port
from bridge.d4.frame import MAX_PAYLOAD
from bridge.d4.site_meta import site_announcement
from bridge.d4.tls import client_context
from bridge.egress_framing import convert_precision, frame_payloads, session_header, warm_up
from bridge.egress_identity import (Identity, IdentityError, IdentityMap, load_identity_map, make_identity,
                                    monitored_addresses)
from bridge.hop import Shutdown, start_hop
from bridge.egress_offsets import OffsetTracker, Token
from bridge.pcap import PcapFormatError

log = logging.getLogger(__name__)

HOP = "egress"
D4_TYPE_PCAP = 1
IDLE_TICK = 0.05  # seconds a session thread waits for work before checking acknowledgements
IDLE_FLUSH = 1.0  # seconds idle after data before an empty frame pushes d4-core's buffered tail through
COMMIT_INTERVAL = 0.5  # seconds between offset commits
CONSUME_BATCH = 200
# record bytes taken per consume(): the records of a call are held until all are handled, next
# to their decoded copies in the queue, so a call's size adds to the peak memory
CONSUME_BYTES = 8 * 1024 * 1024
PREFETCH_KBYTES = 16 * 1024
PAUSE_AFTER = 1.0  # seconds over the queue bound before the partitions are paused (an outage, not a hiccup)
PEEK_RECORDS = 5  # latest records per partition checked at start


class UnsanitizedTopic(Exception):
    """The input topic holds records without the sanitizer's stamp."""


@dataclass
class Plan:
    """Everything resolved from the configuration before the hop starts."""

    host: str
    port: int
    identities: IdentityMap
    tls: Any  # ssl.SSLContext | None
    options: SenderOptions
    announcements: dict[str, bytes] = dataclasses.field(default_factory=dict)  # uuid -> meta header


def resolve(cfg: Config) -> Plan:
    """Check the egress configuration; raise ValueError / IdentityError naming what is wrong."""
    e = cfg.egress
    if not e.server:
        raise ValueError("no server: give --server HOST:PORT")
    host, port = parse_host_port(e.server)
    if not 0 < e.frame_size <= MAX_PAYLOAD:
        raise ValueError(f"--frame-size must be 1..{MAX_PAYLOAD} (d4-core closes the connection above that)")
    site: Identity | None = None
    if e.uuid or e.hmac_key is not None:
        if not e.uuid or e.hmac_key is None:
            raise ValueError("give both --uuid and --hmac-key (or --hmac-key-file) for the site identity")
        site = make_identity(e.uuid, e.hmac_key, "site identity",
                             monitored_addresses(e.telescope, "--telescope") if e.telescope else 0)
    if e.identity_map:
        identities = load_identity_map(e.identity_map)
        if identities.default is None:
            identities.default = site  # sensors not in the map leave under the site identity, if any
    elif site is not None:
        identities = IdentityMap(default=site)
    else:
        raise ValueError("no upstream identity: give --uuid and --hmac-key, or --identity-map FILE")
    tls = None if e.no_tls else client_context(ca=e.ca or None, insecure=e.insecure)
    options = SenderOptions(frame_size=e.frame_size, backoff_max=e.backoff_max, resend_buffer_bytes=e.resend_buffer,
                            resend_grace=e.resend_grace)
    monitored: dict[str, int] = {}  # entries sharing an upstream uuid watch disjoint parts: counts add
    for ident in identities.identities:
        if ident.monitored:
            monitored[ident.uuid_hex] = monitored.get(ident.uuid_hex, 0) + ident.monitored
    return Plan(host, port, identities, tls, options,
                {u: site_announcement(cfg.site, n) for u, n in monitored.items()})


def check_topic_sanitized(kcfg: KafkaConfig, topic: str, per_partition: int = PEEK_RECORDS,
                          timeout: float = 15.0) -> int:
    """Read the latest records of every partition; raise UnsanitizedTopic if any lacks the stamp.

    Returns the number of records checked (0 for an empty or missing topic: every record is
    checked again as it is read, so an empty topic is safe to start on).
    """
    conf = kafka.consumer_conf(kcfg, f"{HOP}-check", f"d4-bridge-egress-check-{uuidlib.uuid4().hex[:12]}")
    conf.update({"enable.partition.eof": True, "statistics.interval.ms": 0})
    conf.pop("stats_cb", None)
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            log.warning("egress: topic %s does not exist yet; every record will be checked as it arrives", topic)
            return 0
        starts: list[TopicPartition] = []
        ends: dict[int, int] = {}  # partition -> last offset at start: a live topic keeps growing
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                starts.append(TopicPartition(topic, p, max(low, high - per_partition)))
                ends[p] = high - 1
        if not starts:
            return 0
        consumer.assign(starts)
        open_parts = set(ends)
        checked = sanitized = 0
        deadline = time.monotonic() + timeout
        while open_parts and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(msg.partition())
                continue
            if msg.offset() >= ends[msg.partition()]:
                open_parts.discard(msg.partition())
            checked += 1
            try:
                rec = records.decode(msg.value(), expect="PcapBatch")
            except records.RecordError:
                continue  # not a pcap record at all: judged below, and sent to the DLQ when read
            if rec["sanitization"] is None:
                raise UnsanitizedTopic(f"topic {topic} holds records without the sanitizer's stamp "
                                       f"(partition {msg.partition()}, offset {msg.offset()})")
            sanitized += 1
        if checked and not sanitized:
            raise UnsanitizedTopic(f"topic {topic}: none of its latest {checked} records is a sanitized PcapBatch")
        return checked
    finally:
        consumer.close()


@dataclass
class Work:
    """One record's frames for a session."""

    payloads: list[memoryview]
    token: Token
    packets: int
    nbytes: int
    last_ts_ns: int


class Session:
    """One upstream D4 session (identity, link type) driven by a D4Sender in its own thread.

    Finished records' tokens are put on ``done`` once their messages left the sender's resend
    buffer (acknowledged and past the grace period): never re-sent, so committable.
    """

    def __init__(self, identity: Identity, linktype: int, nsec: bool, plan: Plan, done: "queue.SimpleQueue[Token]",
                 stop: threading.Event, drain_timeout: float, sent: threading.Event) -> None:
        self.identity = identity
        self.linktype = linktype
        self.nsec = nsec
        self.name = f"{identity.uuid_hex[:8]}/linktype {linktype}"
        header = session_header(linktype, nsec)
        self._announce_due = threading.Event()
        announcement = plan.announcements.get(identity.uuid_hex)

        def session_start() -> bytes:
            self._announce_due.set()  # a new pcap session: the hub may have restarted, tell it again
            return header

        self.sender = D4Sender(plan.host, plan.port, identity.uuid_bytes, identity.key.reveal(), D4_TYPE_PCAP,
                               tls=plan.tls, options=plan.options, on_session_start=session_start, stop=stop)
        self._meta = None if announcement is None else D4Sender(
            plan.host, plan.port, identity.uuid_bytes, identity.key.reveal(), TYPE_META, tls=plan.tls,
            options=dataclasses.replace(plan.options, meta_header=announcement), stop=stop)
        self.done = done
        self.stop = stop
        self.sent = sent  # set after each record written: wakes a paused consumer loop
        self.drain_timeout = drain_timeout
        self.error: BaseException | None = None
        self._inbox: deque[Work] = deque()
        self._cond = threading.Condition()
        self._queued = 0
        self._draining = False
        self._awaiting: deque[tuple[int, Token]] = deque()  # (messages_sent after the record, token)
        self._flush_at: float | None = None  # when to send the empty frame of an idle period
        self._exported = {"frames": 0, "bytes": 0, "resent": 0, "connect": 0}
        self._exported_losses: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name=f"egress-{self.name}", daemon=True)
        self.thread.start()
        if self._meta is not None:
            threading.Thread(target=self._announce, name=f"announce-{self.name}", daemon=True).start()

    def _announce(self) -> None:
        """Send the site announcement on its own type-2 session each time the pcap session starts."""
        meta = self._meta
        assert meta is not None and meta.opts.meta_header is not None
        announcement = meta.opts.meta_header
        try:
            while not self.stop.is_set():
                if self._announce_due.wait(IDLE_TICK):
                    self._announce_due.clear()
                    meta.send(announcement + b"\n")  # the same JSON as one 254 line: d4-core files it
                    meta.close(self.drain_timeout)
                    log.info("egress: announced %s to %s:%d", announcement.decode(), meta.host, meta.port)
        except SenderStopped:
            pass
        finally:
            meta.close(0)

    @property
    def queued_bytes(self) -> int:
        """Bytes handed to this session and not yet written to its socket."""
        return self._queued

    def put(self, work: Work) -> None:
        with self._cond:
            self._inbox.append(work)
            self._queued += work.nbytes
            self._cond.notify()

    def drain(self) -> None:
        """Finish the queued work, wait for acknowledgements, then end the thread."""
        with self._cond:
            self._draining = True
            self._cond.notify()

    def _next(self) -> Work | None:
        with self._cond:
            if not self._inbox and not self._draining:
                self._cond.wait(IDLE_TICK)
            return self._inbox.popleft() if self._inbox else None

    def _run(self) -> None:
        try:
            while True:
                work = self._next()
                if work is not None:
                    self._send(work)
                    self._flush_at = time.monotonic() + IDLE_FLUSH
                elif self._draining:
                    break
                else:
                    # idle: keeps acknowledgements, grace releases and dead-peer detection going
                    self.sender.wait_acked(0)
                    if self._flush_at is not None and time.monotonic() >= self._flush_at:
                        self._flush_at = None
                        self.sender.send_empty_frame()
                self._release()
            self.sender.send_empty_frame()
            if self.sender.wait_acked(self.drain_timeout) and not self.stop.wait(self.sender.opts.resend_grace):
                self.sender.wait_acked(0)  # releases what is now past the grace period
            self._release()
        except SenderStopped:
            pass
        except Exception as exc:  # a bug: the main loop stops the hop with it
            log.exception("egress: session %s failed", self.name)
            self.error = exc
        finally:
            self.sender.close(0)

    def _send(self, work: Work) -> None:
        age = time.time() - work.last_ts_ns / 1e9
        started = time.monotonic()
        for payload in work.payloads:
            self.sender.send(payload)
        metrics.EGRESS_SEND_SECONDS.observe(time.monotonic() - started)
        metrics.EGRESS_RECORD_AGE.observe(max(0.0, age))
        metrics.EGRESS_PACKETS.inc(work.packets)
        self._awaiting.append((self.sender.messages_sent, work.token))
        with self._cond:
            self._queued -= work.nbytes
        self.sent.set()

    def _release(self) -> None:
        released = self.sender.messages_released
        while self._awaiting and self._awaiting[0][0] <= released:
            self.done.put(self._awaiting.popleft()[1])

    def export_metrics(self) -> None:
        """Add the sender's counter growth to the Prometheus metrics.

        Called from the main loop: the session thread may sit in a reconnect loop for minutes, and
        an outage is exactly when the reconnect counters must move.
        """
        s, last = self.sender, self._exported
        metrics.EGRESS_FRAMES.inc(s.frames_sent - last["frames"])
        metrics.EGRESS_BYTES.inc(s.bytes_sent - last["bytes"])
        metrics.EGRESS_RESENT_BYTES.inc(s.resent_bytes - last["resent"])
        metrics.EGRESS_RECONNECTS.labels("connect_failed").inc(s.connect_failures - last["connect"])
        last.update(frames=s.frames_sent, bytes=s.bytes_sent, resent=s.resent_bytes, connect=s.connect_failures)
        for reason, n in list(s.losses.items()):
            metrics.EGRESS_RECONNECTS.labels(reason).inc(n - self._exported_losses.get(reason, 0))
            self._exported_losses[reason] = n


class Egress:
    """The consumer side: read, check, route to sessions, pause, commit."""

    def __init__(self, cfg: Config, plan: Plan, shutdown: Shutdown) -> None:
        self.cfg = cfg
        self.ecfg = cfg.egress
        self.plan = plan
        self.shutdown = shutdown
        self.tracker = OffsetTracker()
        self.done: queue.SimpleQueue[Token] = queue.SimpleQueue()
        self.sessions: dict[tuple[str, int], Session] = {}
        self.stop_senders = threading.Event()
        self.sent = threading.Event()
        self.paused = False
        self._full_since: float | None = None
        self._paused_parts: set[tuple[str, int]] = set()
        # running mean record size: sizes each consume() to the room left; starts at the size of a
        # full ingress batch, so the first consume cannot take many times what it has room for
        self._avg_record = 256 * 1024.0
        self._last_commit = 0.0
        # (input partition, source topic, source partition) -> last source offset forwarded
        self._lineage: dict[tuple[int, str, int], int] = {}
        self.dlq = kafka.make_producer(cfg.kafka, HOP)
        # The prefetch bound keeps librdkafka's own buffer in proportion to ours while paused.
        kcfg = dataclasses.replace(cfg.kafka, extra={"queued.max.messages.kbytes": PREFETCH_KBYTES,
                                                     **cfg.kafka.extra})
        self.consumer = kafka.make_consumer(kcfg, HOP, self.ecfg.group, [self.ecfg.topic],
                                            on_assign=self._on_assign, on_revoke=self._on_revoke,
                                            on_lost=self._on_lost)

    # --- rebalance callbacks (run inside consumer.consume)

    def _on_assign(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self.tracker.assign((tp.topic, tp.partition) for tp in parts)

    def _on_revoke(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self._collect()
        self._commit([(tp.topic, tp.partition) for tp in parts], sync=True)
        self._forget(parts)

    def _on_lost(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self._forget(parts)  # someone else owns them now: committing would be refused

    def _forget(self, parts: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in parts]
        self.tracker.revoke(keys)
        gone = {tp.partition for tp in parts}
        self._lineage = {k: v for k, v in self._lineage.items() if k[0] not in gone}
        self._paused_parts.difference_update(keys)
        # records of these partitions already queued still go out: duplicates, never loss

    # --- main loop

    def run(self) -> int:
        """Consume until shutdown; return the exit status."""
        status = 0
        try:
            while not self.shutdown.is_set():
                for s in self.sessions.values():
                    if s.error is not None:
                        raise RuntimeError(f"session {s.name} failed: {s.error}") from s.error
                self._collect()
                if time.monotonic() - self._last_commit >= COMMIT_INTERVAL:
                    self._commit(None, sync=False)
                room = self._flow_control()
                if room or self.paused:
                    # paused: keep polling (group membership, max.poll.interval.ms) without waiting;
                    # a record fetched before the pause took effect still comes out and is handled
                    for msg in self.consumer.consume(max(room, 1), 0.1 if room else 0):
                        err = msg.error()
                        if err is None:
                            self._handle(msg)
                        elif err.fatal():
                            raise RuntimeError(f"fatal consumer error: {err}")
                        elif err.code() != KafkaError._PARTITION_EOF:
                            log.warning("egress: consumer error: %s", err)
                self.dlq.poll(0)
                self._gauges()
                if not room:
                    # wake as soon as a session wrote something, so the backlog is refilled at once
                    self.sent.wait(0.1)
                    self.sent.clear()
        except Exception:
            log.exception("egress: stopping on error")
            status = 1
        finally:
            self._close()
        return status

    def _handle(self, msg: Message) -> None:
        token = self.tracker.read((msg.topic(), msg.partition()), msg.offset())
        try:
            rec = records.decode(msg.value(), expect="PcapBatch")
        except records.RecordError as exc:
            self._dead(msg, token, exc.reason, exc.detail)
            return
        if rec["sanitization"] is None:
            self._dead(msg, token, "unsanitized", "PcapBatch without the sanitizer's stamp: not forwarded")
            return
        if self._repeated(msg, rec["lineage"]):
            metrics.EGRESS_DUPLICATES.inc(rec["packet_count"])
            self.tracker.finish(token)
            return
        identity = self.plan.identities.lookup(rec["sensor_uuid"])
        if identity is None:
            self._dead(msg, token, "no_identity", "sensor has no upstream identity in the identity map")
            return
        nsec = rec["ts_precision"] == "nsec"
        session = self._session(identity, rec["linktype"], nsec)
        if session is None:
            self._dead(msg, token, "linktype_conflict",
                       f"upstream uuid {identity.uuid_hex} already carries another link type; d4-core accepts one "
                       f"type-1 session per uuid: give this sensor its own upstream uuid in the identity map")
            return
        packets = convert_precision(rec["packets"], nsec, session.nsec)
        self._avg_record += (len(packets) - self._avg_record) / 16
        try:
            payloads = frame_payloads(packets, self.ecfg.frame_size)
        except PcapFormatError as exc:
            self._dead(msg, token, "bad_pcap", exc.detail)
            return
        if not payloads:
            self.tracker.finish(token)
            return
        session.put(Work(payloads, token, rec["packet_count"], len(packets), rec["last_ts_ns"]))

    def _repeated(self, msg: Message, lineage: dict | None) -> bool:
        """True for a second copy of a sanitized source batch within one assignment.

        The sanitizer writes the records of one source partition in source-offset order, so a
        lineage offset at or below the last one forwarded from the same input partition is a
        copy: on Apache Kafka only a fenced zombie's; on brokers that show aborted transactions
        to read_committed readers (the embedded Tansu does) the re-done batches of a crashed
        sanitizer. Copies are byte-identical, so dropping them loses nothing. The memory is
        per assignment: after a rebalance records are re-read from the committed offsets and
        must go out again.
        """
        if lineage is None:
            return False
        key = (msg.partition(), lineage["topic"], lineage["partition"])
        last = self._lineage.get(key)
        if last is not None and lineage["offset"] <= last:
            return True
        self._lineage[key] = lineage["offset"]
        return False

    def _session(self, identity: Identity, linktype: int, nsec: bool) -> Session | None:
        """The session for (identity, link type); None when the identity already has another link type.

        d4-core (and the ingress hop) refuse a second type-1 session for the same uuid, so a second
        link type under one identity would be refused forever and stall every partition behind it.
        """
        key = (identity.uuid_hex, linktype)
        session = self.sessions.get(key)
        if session is None:
            if any(uuid_hex == identity.uuid_hex for uuid_hex, _ in self.sessions):
                return None
            # the first record fixes the session's timestamp unit; later ones are converted
            session = Session(identity, linktype, nsec, self.plan, self.done, self.stop_senders,
                              self.ecfg.drain_timeout, self.sent)
            self.sessions[key] = session
            log.info("egress: upstream session %s to %s:%d", session.name, self.plan.host, self.plan.port)
        return session

    def _dead(self, msg: Message, token: Token, reason: str, detail: str) -> None:
        """Dead-letter a record (never its payload: it may be private); finished once delivered."""
        metrics.EGRESS_REFUSED.labels(reason).inc()

        def delivered(err: KafkaError | None, _m: Message) -> None:
            if err is not None:  # counted and logged by the factory; the source record stays in its topic
                log.error("egress: dead letter for %s[%d]@%d not delivered: %s", msg.topic(), msg.partition(),
                          msg.offset(), err)
            self.tracker.finish(token)

        kafka.send_dead_letter(self.dlq, records.dead_letter(
            HOP, reason, detail, source_topic=msg.topic(), source_partition=msg.partition(),
            source_offset=msg.offset(), key=msg.key()), on_delivery=delivered)

    def _collect(self) -> None:
        while True:
            try:
                self.tracker.finish(self.done.get_nowait())
            except queue.Empty:
                return

    def _commit(self, partitions: list[tuple[str, int]] | None, sync: bool) -> None:
        self._last_commit = time.monotonic()
        positions = self.tracker.commit_positions(partitions)
        if not positions:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:
            self.tracker.uncommit(positions)
            log.warning("egress: offset commit failed (retried later): %s", exc)

    def _flow_control(self) -> int:
        """Decide how many records to read now (0: none) by the bytes waiting for the upstream.

        Over ``max_queued_bytes`` reading stops; a stall longer than ``PAUSE_AFTER`` (server slow
        or down) pauses the partitions so the loop can keep polling without receiving records.
        Reading resumes below half the bound. Reads are sized to the room left, so the bound is
        overshot by a record or two at most.
        """
        queued = sum(s.queued_bytes for s in self.sessions.values())
        limit = self.ecfg.max_queued_bytes
        now = time.monotonic()
        if queued > limit or (self.paused and queued > limit // 2):
            if self._full_since is None:
                self._full_since = now
            if not self.paused and now - self._full_since >= PAUSE_AFTER:
                self.paused = True
                log.info("egress: upstream stalled (%d bytes waiting): pausing consumption", queued)
            if self.paused:
                # partitions assigned while paused are paused too
                new = [tp for tp in self.consumer.assignment() if (tp.topic, tp.partition) not in self._paused_parts]
                if new:
                    self.consumer.pause(new)
                    self._paused_parts.update((tp.topic, tp.partition) for tp in new)
            return 0
        if self.paused:
            self.paused = False
            parts = [TopicPartition(t, p) for t, p in self._paused_parts]
            if parts:
                self.consumer.resume(parts)
            self._paused_parts.clear()
            log.info("egress: upstream caught up after %.1f s: resuming consumption", now - (self._full_since or now))
        self._full_since = None
        room = min(limit - queued, CONSUME_BYTES)
        return int(max(1, min(CONSUME_BATCH, room // max(self._avg_record, 1.0))))

    def _gauges(self) -> None:
        for s in self.sessions.values():
            s.export_metrics()
        metrics.EGRESS_SESSIONS.set(len(self.sessions))
        metrics.EGRESS_CONNECTED.set(sum(1 for s in self.sessions.values() if s.sender.connected))
        metrics.EGRESS_QUEUED_BYTES.set(sum(s.queued_bytes for s in self.sessions.values()))
        metrics.EGRESS_PAUSED.set(1 if self.paused else 0)

    def _close(self) -> None:
        """Finish what is queued (bounded by drain_timeout), commit what is released, close."""
        for s in self.sessions.values():
            s.drain()
        deadline = time.monotonic() + self.ecfg.drain_timeout + self.ecfg.resend_grace + 1.0
        for s in self.sessions.values():
            s.thread.join(max(0.0, deadline - time.monotonic()))
        self.stop_senders.set()  # sessions still waiting for a server that is down give up now
        for s in self.sessions.values():
            s.thread.join(5.0)
        self.dlq.flush(10.0)
        self._collect()
        self._commit(None, sync=True)
        left = self.tracker.pending()
        if left:
            log.warning("egress: %d records not confirmed upstream; they are sent again after the restart", left)
        self._gauges()
        metrics.EGRESS_CONNECTED.set(0)
        self.consumer.close()


def run(cfg: Config) -> int:
    """Run the egress hop; exit status 0 on a clean stop, 1 on a failure, 2 on a bad configuration."""
    shutdown = start_hop(cfg, HOP, warm_up)
    try:
        plan = resolve(cfg)
    except (ValueError, IdentityError, OSError) as exc:
        log.error("egress: %s", exc)
        return 2
    try:
        checked = check_topic_sanitized(cfg.kafka, cfg.egress.topic)
    except UnsanitizedTopic as exc:
        log.error("egress: refusing to start: %s; egress forwards only sanitized records", exc)
        return 2
    except KafkaException as exc:
        log.error("egress: cannot read topic %s: %s", cfg.egress.topic, exc)
        return 1
    log.info("egress: %s -> %s:%d (%d latest records checked: sanitized), %d upstream identit%s",
             cfg.egress.topic, plan.host, plan.port, checked, len(plan.identities.identities),
             "y" if len(plan.identities.identities) == 1 else "ies")
    status = Egress(cfg, plan, shutdown).run()
    log.info("egress: stopped (status %d)", status)
    return status
