"""The one Kafka client factory: producers, consumers, transactional producers, topics.

Every hop gets its clients here so that reliability settings (idempotence,
acks=all, read_committed, manual commits), statistics export and error
accounting are written once.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bridge import metrics, records
from bridge.config import KafkaConfig

log = logging.getLogger(__name__)

TOPIC_PCAP = "d4.pcap"
TOPIC_SANITIZED = "d4.pcap.sanitized"
TOPIC_RECORDS = "d4.records"
TOPIC_DLQ = "d4.dlq"
TOPIC_BACKSCATTER = "d4.backscatter"
STANDARD_TOPICS = (TOPIC_PCAP, TOPIC_SANITIZED, TOPIC_RECORDS, TOPIC_DLQ, TOPIC_BACKSCATTER)

# The broker's default record limit; our batches stay far below it, and a refusal says the size.
MAX_RECORD_BYTES = 1_000_000
FETCH_WAIT_MS = 100  # longest a consumer's fetch waits for new records (see consumer_conf)
PREFETCH_KBYTES = 16384  # records a consumer fetches ahead, at most (librdkafka: 64 MB)

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class RecordTooLarge(ValueError):
    """A record above the broker's size limit (the message names the size)."""


def _base(kcfg: KafkaConfig, hop: str) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": kcfg.bootstrap,
        "client.id": f"d4-bridge-{hop}",
        "error_cb": _error_callback(hop),
    }
    if kcfg.statistics_interval_ms:
        conf["statistics.interval.ms"] = kcfg.statistics_interval_ms
        conf["stats_cb"] = metrics.stats_callback(hop)
    conf.update(kcfg.extra)
    return conf


def _error_callback(hop: str) -> Callable[[KafkaError], None]:
    def on_error(err: KafkaError) -> None:
        # librdkafka reports transient broker disconnects here and retries by itself;
        # fatal errors are surfaced again by the next client call.
        level = logging.ERROR if err.fatal() else logging.WARNING
        log.log(level, "%s: kafka client error: %s", hop, err)

    return on_error


def _producer_conf(kcfg: KafkaConfig, hop: str) -> dict[str, Any]:
    conf = _base(kcfg, hop)
    conf.update({
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": kcfg.linger_ms,
        "compression.type": kcfg.compression,
        "queue.buffering.max.kbytes": kcfg.queue_max_kbytes,
        "message.max.bytes": MAX_RECORD_BYTES + 48_576,
        "batch.size": MAX_RECORD_BYTES,
    })
    conf.update(kcfg.extra)
    return conf


class BlockingProducer:
    """An idempotent producer whose ``produce`` waits instead of raising when its queue is full.

    Delivery failures are counted (``d4bridge_kafka_delivery_failures_total``),
    logged with topic and size, and handed to the caller's callback, which decides
    what the failure means for its input (never a silent drop).
    """

    def __init__(self, conf: dict[str, Any], hop: str) -> None:
        self.hop = hop
        self._producer = Producer(conf)
        self._delivered = metrics.DELIVERED.labels(hop)
        self._blocked = metrics.PRODUCE_BLOCKED.labels(hop)

    @property
    def raw(self) -> Producer:
        """The underlying confluent-kafka producer (transactions, metadata)."""
        return self._producer

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        on_delivery: DeliveryCallback | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue a record; block (serving callbacks) while the local queue is full."""
        if len(value) > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"record of {len(value)} bytes for {topic} exceeds the {MAX_RECORD_BYTES}-byte limit")
        callback = self._wrap(topic, len(value), on_delivery)
        waited_since = None
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=callback, headers=headers)
                break
            except BufferError:
                if waited_since is None:
                    waited_since = time.monotonic()
                    log.debug("%s: producer queue full, waiting (backpressure)", self.hop)
                self._producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise RecordTooLarge(f"record of {len(value)} bytes for {topic} refused: {err.str()}") from exc
                raise
        if waited_since is not None:
            self._blocked.inc(time.monotonic() - waited_since)
        self._producer.poll(0)

    def _wrap(self, topic: str, size: int, on_delivery: DeliveryCallback | None) -> DeliveryCallback:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                metrics.DELIVERY_FAILURES.labels(self.hop, err.name()).inc()
                log.error("%s: delivery of a %d-byte record to %s failed: %s", self.hop, size, topic, err)
            else:
                self._delivered.inc()
            if on_delivery is not None:
                on_delivery(err, msg)

        return delivered

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks."""
        return self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; return how many are still pending."""
        remaining = self._producer.flush(timeout)
        if remaining:
            log.error("%s: %d records still undelivered after %.0f s flush", self.hop, remaining, timeout)
        return remaining

    def __len__(self) -> int:
        return len(self._producer)


def make_producer(kcfg: KafkaConfig, hop: str) -> BlockingProducer:
    """Idempotent producer, acks=all, compression and linger from the config."""
    return BlockingProducer(_producer_conf(kcfg, hop), hop)


def make_transactional_producer(kcfg: KafkaConfig, hop: str, transactional_id: str) -> BlockingProducer:
    """Producer for consume-transform-produce; ``init_transactions`` already called.

    A stable ``transactional_id`` per worker fences the zombie of a crashed or
    partitioned predecessor (its open transaction is aborted by the broker).
    """
    conf = _producer_conf(kcfg, hop)
    conf["transactional.id"] = transactional_id
    conf["transaction.timeout.ms"] = 60000
    producer = BlockingProducer(conf, hop)
    producer.raw.init_transactions(30)
    return producer


def consumer_conf(kcfg: KafkaConfig, hop: str, group_id: str) -> dict[str, Any]:
    """Consumer settings: read_committed, manual commits, earliest on a new group."""
    conf = _base(kcfg, hop)
    conf.update({
        "group.id": group_id,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": kcfg.session_timeout_ms,
        "heartbeat.interval.ms": kcfg.heartbeat_interval_ms,
        "max.poll.interval.ms": max(60000, kcfg.session_timeout_ms + 1000),
        "fetch.max.bytes": 8 * MAX_RECORD_BYTES,
        "max.partition.fetch.bytes": 2 * MAX_RECORD_BYTES,
        # Every hop is on the capture-to-hub latency path. A broker that answers a fetch only
        # when its wait limit expires (the embedded one does) would add librdkafka's 500 ms
        # default per hop; against Apache Kafka this only bounds how often an idle consumer asks.
        "fetch.wait.max.ms": FETCH_WAIT_MS,
        # librdkafka prefetches up to 64 MB per consumer by default; a hop is never that far
        # behind its own fetches, and analyze runs three consumers (found by the resource test)
        "queued.max.messages.kbytes": PREFETCH_KBYTES,
    })
    conf.update(kcfg.extra)
    return conf


RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]


def make_consumer(
    kcfg: KafkaConfig,
    hop: str,
    group_id: str,
    topics: Iterable[str],
    on_assign: RebalanceCallback | None = None,
    on_revoke: RebalanceCallback | None = None,
    on_lost: RebalanceCallback | None = None,
) -> Consumer:
    """A subscribed consumer with counted, optional rebalance callbacks."""
    consumer = Consumer(consumer_conf(kcfg, hop, group_id))

    def counted(kind: str, inner: RebalanceCallback | None) -> RebalanceCallback:
        def callback(c: Consumer, partitions: list[TopicPartition]) -> None:
            metrics.REBALANCES.labels(hop, kind).inc()
            log.info("%s: %s %s", hop, kind, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))
            if inner is not None:
                inner(c, partitions)

        return callback

    consumer.subscribe(
        list(topics),
        on_assign=counted("assigned", on_assign),
        on_revoke=counted("revoked", on_revoke),
        on_lost=counted("lost", on_lost or on_revoke),
    )
    return consumer


def create_topics(kcfg: KafkaConfig, partitions: int, replication: int = 1,
                  topics: Iterable[str] = STANDARD_TOPICS, timeout: float = 30.0,
                  config: dict[str, str] | None = None) -> dict[str, str]:
    """Create topics idempotently; return topic -> 'created' | 'exists'.

    ``config`` holds topic settings for the new topics (e.g. ``cleanup.policy=compact``);
    an existing topic is left as it is.
    """
    admin = AdminClient({k: v for k, v in _base(kcfg, "topics").items() if k not in ("stats_cb", "statistics.interval.ms")})
    wanted = list(topics)
    futures = admin.create_topics([NewTopic(t, partitions, replication, config=dict(config or {})) for t in wanted],
                                 operation_timeout=timeout)
    result: dict[str, str] = {}
    for topic, future in futures.items():
        try:
            future.result(timeout)
            result[topic] = "created"
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[topic] = "exists"
            else:
                raise
    return result


def send_dead_letter(producer: BlockingProducer, record: dict[str, Any],
                     on_delivery: DeliveryCallback | None = None) -> None:
    """Produce a DeadLetter record to d4.dlq and count it by hop and reason."""
    metrics.DLQ_RECORDS.labels(record["hop"], record["reason"]).inc()
    log.warning("%s: dead letter (%s): %s", record["hop"], record["reason"], record["detail"])
    producer.produce(TOPIC_DLQ, records.encode("DeadLetter", record), on_delivery=on_delivery)
