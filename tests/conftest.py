"""Session fixtures: a real Tansu broker and a real redis-server on free loopback ports."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Callable, Iterator

import pytest

from bridge.broker import EmbeddedBroker, free_port, wait_for_port
from bridge.config import KafkaConfig


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap address of an embedded Tansu broker (memory storage) for the whole session."""
    log_dir = tempfile.mkdtemp(prefix="d4bridge-tansu-")
    with EmbeddedBroker(log_file=os.path.join(log_dir, "tansu.log")) as b:
        yield b.bootstrap
    shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_config(broker: str) -> KafkaConfig:
    """Client settings for the test broker, with short group timeouts so joins take ~1 s, not ~20 s."""
    return KafkaConfig(bootstrap=broker, session_timeout_ms=6000, heartbeat_interval_ms=500,
                       statistics_interval_ms=0, linger_ms=5)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server on a free loopback port (no persistence)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="d4bridge-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 10.0, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


_counter = itertools.count()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Return unique names (topics, groups, queue ids) so tests sharing the broker never collide."""
    run = uuid.uuid4().hex[:8]
    return lambda prefix="t": f"{prefix}-{run}-{next(_counter)}"
