"""``d4-bridge broker`` and ``d4-bridge topics``: run the embedded broker, create the standard topics."""

from __future__ import annotations

import logging
import subprocess
import sys

from bridge import kafka
from bridge.broker import MEMORY_WARNING, BrokerError, broker_command, wait_for_port
from bridge.config import Config
from bridge.hop import Shutdown, setup_logging

log = logging.getLogger(__name__)


def run_broker(cfg: Config) -> int:
    """Run Tansu in the foreground until SIGTERM/SIGINT, which is forwarded to it."""
    setup_logging(cfg.log_level)
    host, _, port = cfg.broker.listen.rpartition(":")
    host = host.strip("[]")
    try:
        proc = subprocess.Popen(broker_command(host, int(port)))
        wait_for_port(host, int(port), 20.0, proc)
    except BrokerError as exc:
        print(f"d4-bridge broker: {exc}", file=sys.stderr)
        return 1
    print(f"d4-bridge broker: listening on {cfg.broker.listen}; {MEMORY_WARNING}", file=sys.stderr, flush=True)
    shutdown = Shutdown().install()
    while proc.poll() is None and not shutdown.wait(0.5):
        pass
    if proc.poll() is not None:
        print(f"d4-bridge broker: broker exited with status {proc.returncode}", file=sys.stderr)
        return proc.returncode or 1
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return 0


def run_topics(cfg: Config) -> int:
    """Create the standard topics; existing ones are left as they are."""
    setup_logging(cfg.log_level)
    result = kafka.create_topics(cfg.kafka, cfg.topics.partitions, cfg.topics.replication)
    for topic in kafka.STANDARD_TOPICS:
        print(f"{topic}: {result[topic]}")
    return 0
