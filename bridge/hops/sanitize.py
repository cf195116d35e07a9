"""``d4-bridge sanitize``: consumer group d4.pcap -> d4.pcap.sanitized, exactly once.

Each worker runs the consume -> sanitize -> produce loop inside Kafka transactions: the
sanitized records, any dead letters and the input offsets are committed atomically
(`send_offsets_to_transaction`), and the consumer reads read_committed. The transactional id
is stable per worker (group, site, host, worker index), so a restarted worker fences its
zombie predecessor and the broker aborts whatever that one left open.

Error classes (librdkafka's transaction model): abortable -> abort, rewind the consumer to the
committed offsets, redo the batch; retriable commit -> retry; fatal -> recreate the producer
and rewind. Workers share no state: the same policy and key give the same output anywhere.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge import kafka, metrics, records
from bridge.config import Config
from bridge.hop import Shutdown, start_hop
from bridge.sanitize.engine import PcapRecordError, Sanitizer
from bridge.sanitize.layout import REASONS, R_SELF_CHECK
from bridge.sanitize.policy import Policy, PolicyError, policy_from_config

SELF_CHECK = REASONS[R_SELF_CHECK]
log = logging.getLogger(__name__)

HOP = "sanitize"


@dataclass
class Tally:
    """What one transaction did; applied to the metrics only once it is committed."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    dlq: Counter = field(default_factory=Counter)

    def publish(self) -> None:
        metrics.SANITIZE_INPUT_PACKETS.inc(self.packets_in)
        metrics.SANITIZE_INPUT_BYTES.inc(self.bytes_in)
        metrics.SANITIZE_PACKETS.inc(self.packets_out)
        metrics.SANITIZE_BYTES.inc(self.bytes_out)
        for reason, n in self.dropped.items():
            metrics.SANITIZE_DROPPED.labels(reason).inc(n)
        # also a dropped reason; a counter of its own so a dashboard and an alert can watch it
        metrics.SANITIZE_LEAKS.inc(self.dropped.get(SELF_CHECK, 0))
        for reason, n in self.cut.items():
            metrics.SANITIZE_CUT.labels(reason).inc(n)
        for reason, n in self.dlq.items():
            metrics.DLQ_RECORDS.labels(HOP, reason).inc(n)


# a newer producer with our transactional.id exists: we are the zombie and must stop
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class Fenced(RuntimeError):
    """This worker was fenced by a newer one with the same transactional.id."""


def transactional_id(group: str, site: str, index: int) -> str:
    """Stable per worker slot: a restart of the same slot on the same host fences its zombie."""
    return f"{group}-{site}-{socket.gethostname()}-{index}"


def sanitize_record(sanitizer: Sanitizer, msg: Message, tally: Tally) -> tuple[str, dict[str, Any]]:
    """Turn one input message into ("PcapBatch", sanitized record) or ("DeadLetter", record)."""
    where = {"source_topic": msg.topic(), "source_partition": msg.partition(), "source_offset": msg.offset(),
             "key": msg.key()}
    value = msg.value() or b""
    # dead letters keep the refused bytes (they stay on this private site's broker) when they fit
    payload = value
    try:
        rec = records.decode(value, expect="PcapBatch")
    except records.RecordError as exc:
        tally.dlq["not_pcap_batch"] += 1
        return "DeadLetter", records.dead_letter(HOP, "not_pcap_batch", str(exc), payload=payload, **where)
    policy = sanitizer.policy
    started = time.perf_counter()
    try:
        res = sanitizer.sanitize_batch(rec["linktype"], rec["packets"])
    except PcapRecordError as exc:
        tally.dlq["bad_pcap"] += 1
        return "DeadLetter", records.dead_letter(HOP, "bad_pcap", str(exc), payload=payload, **where)
    metrics.SANITIZE_BATCH_SECONDS.observe(time.perf_counter() - started)
    tally.packets_in += res.count
    tally.bytes_in += len(rec["packets"])
    tally.packets_out += res.kept + res.cut
    tally.bytes_out += len(res.packets)
    # a reason counts as dropped or cut depending on the policy (payload cuts are always cuts)
    for reason, n in res.reasons.items():
        if reason == "payload" or policy.on_unparseable == "cut":
            tally.cut[reason] += n
        else:
            tally.dropped[reason] += n
    rec.update(
        packets=res.packets,
        packet_count=res.kept + res.cut,
        sanitization={
            "policy_name": policy.name,
            "policy_version": policy.version,
            "key_fingerprint": policy.key_fingerprint,
            "sanitized_ns": records.now_ns(),
            "packets_in": res.count,
            "packets_dropped": res.dropped,
            "packets_cut": res.cut,
        },
        lineage={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()},
    )
    return "PcapBatch", rec


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    """Offsets to commit: one past the last message of each partition in the batch."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(m.topic(), m.partition())] = max(last.get((m.topic(), m.partition()), -1), m.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def _rewind(consumer: Consumer) -> None:
    """Seek every assigned partition back to its committed offset (after an abort)."""
    assigned = consumer.assignment()
    if not assigned:
        return
    for tp in consumer.committed(assigned, timeout=30):
        target = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, target))


class Worker:
    """One sanitizer process: a consumer, a transactional producer and the engine."""

    def __init__(self, cfg: Config, policy: Policy, index: int) -> None:
        self.cfg = cfg
        self.scfg = cfg.sanitize
        self.sanitizer = Sanitizer(policy)
        self.txn_id = transactional_id(self.scfg.group, cfg.site, index)
        self.producer = kafka.make_transactional_producer(cfg.kafka, HOP, self.txn_id)
        self.consumer = kafka.make_consumer(cfg.kafka, HOP, self.scfg.group, [self.scfg.in_topic])

    def process(self, messages: list[Message]) -> None:
        """Sanitize a batch and commit output + offsets in one transaction (retried on abort)."""
        while True:
            tally = Tally()
            try:
                self.producer.raw.begin_transaction()
                for msg in messages:
                    kind, rec = sanitize_record(self.sanitizer, msg, tally)
                    topic = self.scfg.out_topic if kind == "PcapBatch" else kafka.TOPIC_DLQ
                    if kind == "DeadLetter":
                        log.warning("%s: dead letter (%s) %s[%d]@%d: %s", HOP, rec["reason"], msg.topic(),
                                    msg.partition(), msg.offset(), rec["detail"])
                    self._produce(topic, records.encode(kind, rec), msg.key(), tally, msg)
                self.producer.raw.send_offsets_to_transaction(
                    _next_offsets(messages), self.consumer.consumer_group_metadata(), 30)
                self._commit()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError):
                    raise
                self._recover(err)
                # the batch is read again from the committed offsets by the main loop
                return
            metrics.SANITIZE_TRANSACTIONS.labels("committed").inc()
            tally.publish()
            return

    def _produce(self, topic: str, value: bytes, key: bytes | None, tally: Tally, msg: Message) -> None:
        try:
            self.producer.produce(topic, value, key=key)
        except kafka.RecordTooLarge as exc:
            tally.dlq["too_large"] += 1
            letter = records.dead_letter(HOP, "too_large", str(exc), source_topic=msg.topic(),
                                         source_partition=msg.partition(), source_offset=msg.offset(), key=key)
            self.producer.produce(kafka.TOPIC_DLQ, records.encode("DeadLetter", letter), key=key)

    def _commit(self, attempts: int = 5) -> None:
        for attempt in range(1, attempts + 1):
            try:
                self.producer.raw.commit_transaction(30)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not (isinstance(err, KafkaError) and err.retriable() and not err.txn_requires_abort()):
                    raise
                log.warning("%s: commit_transaction retriable error (attempt %d/%d): %s", HOP, attempt, attempts, err)
        # a fenced zombie may only ever see timeouts (Tansu does): stop rather than spin; the open
        # transaction is aborted by the broker (timeout) or by the next worker in this slot
        raise Fenced(f"{HOP}: commit of transactional.id {self.txn_id} did not complete after {attempts} attempts")

    def _recover(self, err: KafkaError) -> None:
        """Abort (or, when fatal, recreate the producer) and rewind to the committed offsets."""
        metrics.SANITIZE_TRANSACTIONS.labels("aborted").inc()
        if err.code() in _FENCED:
            # recreating the producer would fence the newer worker in turn: stop instead
            raise Fenced(f"{HOP}: fenced by a newer worker with transactional.id {self.txn_id}: {err}")
        if err.fatal():
            log.error("%s: fatal transactional error, recreating the producer: %s", HOP, err)
            self.producer = kafka.make_transactional_producer(self.cfg.kafka, HOP, self.txn_id)
        else:
            log.warning("%s: aborting transaction: %s", HOP, err)
            try:
                self.producer.raw.abort_transaction(30)
            except KafkaException as exc:
                log.error("%s: abort failed, recreating the producer: %s", HOP, exc)
                self.producer = kafka.make_transactional_producer(self.cfg.kafka, HOP, self.txn_id)
        _rewind(self.consumer)

    def run(self, shutdown: Shutdown) -> None:
        """Consume until shutdown; each consumed batch is one transaction."""
        limit, wait = self.scfg.transaction_records, self.scfg.transaction_seconds
        try:
            while not shutdown.is_set():
                good = []
                for msg in self.consumer.consume(limit, wait):
                    err = msg.error()
                    if err is None:
                        good.append(msg)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        if err.fatal():
                            raise RuntimeError(f"{HOP}: fatal consumer error: {err}")
                        log.warning("%s: consumer error: %s", HOP, err)
                if good:
                    self.process(good)
        finally:
            self.consumer.close()
            self.producer.flush(10)


def _worker_main(cfg: Config, index: int) -> int:
    """Run one worker until shutdown; exit status 3 when fenced (a newer worker took over)."""
    if index and cfg.metrics_port:
        # workers share the host: worker i serves /metrics on port + i
        cfg = replace(cfg, metrics_port=cfg.metrics_port + index)
    shutdown = start_hop(cfg, HOP)
    policy = policy_from_config(cfg.sanitize)
    worker = Worker(cfg, policy, index)
    log.info("%s worker %d: %s -> %s, group %s, transactional.id %s, policy %s version %s", HOP, index,
             cfg.sanitize.in_topic, cfg.sanitize.out_topic, cfg.sanitize.group, worker.txn_id, policy.name,
             policy.version)
    if policy.less_safe():
        # an explicit choice, but never a silent one: the log says what reaches the hub
        log.warning("%s worker %d: %s", HOP, index, policy.less_safe())
    try:
        worker.run(shutdown)
    except Fenced as exc:
        log.error("%s", exc)
        return 3
    return 0


def _child(cfg: Config, index: int) -> None:
    sys.exit(_worker_main(cfg, index))


def run(cfg: Config) -> int:
    """Start the sanitizer: one worker in this process, or a supervisor of N worker processes.

    Exit status: 0 after a clean stop, 2 on an invalid policy.
    """
    try:
        policy = policy_from_config(cfg.sanitize)
    except PolicyError as exc:
        print(f"d4-bridge sanitize: invalid policy: {exc}", file=sys.stderr)
        return 2
    del policy  # validated here so that a bad policy fails before any process starts
    workers = cfg.sanitize.workers
    if workers == 1:
        return _worker_main(cfg, 0)
    return _supervise(cfg, workers)


def _supervise(cfg: Config, workers: int) -> int:
    """Run N worker processes; restart one that dies (unless it was fenced); forward SIGTERM/SIGINT."""
    ctx = multiprocessing.get_context("spawn")
    shutdown = Shutdown().install()
    procs: dict[int, Any] = {}

    def start(i: int) -> None:
        p = ctx.Process(target=_child, args=(cfg, i), name=f"sanitize-{i}")
        p.start()
        procs[i] = p

    for i in range(workers):
        start(i)
    restarts = 0
    while not shutdown.is_set():
        shutdown.wait(0.5)
        for i, p in list(procs.items()):
            if not p.is_alive() and not shutdown.is_set():
                if p.exitcode == 3:
                    log.error("%s: worker %d was fenced by a newer worker in its slot; not restarting it", HOP, i)
                    del procs[i]
                    continue
                restarts += 1
                log.error("%s: worker %d exited with %s; restarting (%d restarts)", HOP, i, p.exitcode, restarts)
                time.sleep(min(5.0, 0.5 * restarts))
                start(i)
    for p in procs.values():
        if p.is_alive():
            p.terminate()  # SIGTERM: the worker finishes its transaction and closes
    for p in procs.values():
        p.join(30)
    return 0
