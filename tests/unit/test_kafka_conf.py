"""Consumer settings every hop gets from the one consumer factory."""

from __future__ import annotations

from bridge.config import KafkaConfig
from bridge.kafka import consumer_conf


def test_consumers_read_committed_with_manual_commits_and_a_short_fetch_wait():
    conf = consumer_conf(KafkaConfig(bootstrap="127.0.0.1:9092"), "sanitize", "g")
    assert (conf["isolation.level"], conf["enable.auto.commit"], conf["group.id"]) == ("read_committed", False, "g")
    # every hop is on the latency path: a broker answering at the wait limit must not add 500 ms
    assert conf["fetch.wait.max.ms"] == 100


def test_kafka_extra_overrides_the_defaults():
    conf = consumer_conf(KafkaConfig(bootstrap="127.0.0.1:9092", extra={"fetch.wait.max.ms": 500}), "analyze", "g")
    assert conf["fetch.wait.max.ms"] == 500
