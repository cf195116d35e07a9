"""Pure helpers of the queue hop: Redis version gate, metadata db, lease ownership, key names."""

from __future__ import annotations

import os

from bridge.hops.queue import HOST, QueueKeys, has_lmove, metadata_url, stale_holder
from bridge.queue_items import QueueType


def test_lmove_needs_redis_6_2() -> None:
    assert has_lmove("7.0.15") and has_lmove("6.2.0")
    assert not has_lmove("6.0.9") and not has_lmove("5.0.7")


def test_metadata_is_db0_of_the_analyzer_server() -> None:
    assert metadata_url("redis://127.0.0.1:6380/2") == "redis://127.0.0.1:6380/0"
    assert metadata_url("redis://:pw@h:6380") == "redis://:pw@h:6380/0"
    assert metadata_url("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?db=0"


def test_stale_holder() -> None:
    me = os.getpid()
    assert stale_holder(f"{HOST} 999999999 t".encode(), alive=lambda pid: False)
    assert not stale_holder(f"{HOST} 1234 t".encode(), alive=lambda pid: True)
    # Another host's process cannot be checked from here: only its lease expiry frees the name.
    assert not stale_holder(b"elsewhere 1234 t", alive=lambda pid: False)
    # Our own pid with another token: a previous incarnation (container pid reuse).
    assert stale_holder(f"{HOST} {me} other".encode(), pid=me, alive=lambda pid: True)
    assert not stale_holder(b"garbage")


def test_keys() -> None:
    keys = QueueKeys(QueueType.parse("1"), "q-1")
    assert keys.source == "analyzer:1:q-1"
    assert keys.processing("c") == "d4bridge:processing:1:q-1:c"
    assert keys.failed == "d4bridge:failed:1:q-1"
    assert keys.consumer_of(keys.processing("host-2")) == "host-2"
    assert QueueKeys(QueueType.parse("ja3-jl"), "q").source == "analyzer:ja3-jl:q"
