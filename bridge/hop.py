"""What every hop shares: logging, the metrics endpoint, shutdown on signals, the consumer loop.

A consumer hop is a loop: read a batch of records, handle it, commit. SIGTERM or
SIGINT asks the loop to finish the batch in hand, flush, commit and close; a
second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaError, Message

from bridge import metrics
from bridge.allocator import tune_malloc
from bridge.config import Config

log = logging.getLogger(__name__)



class Shutdown:
    """A stop flag set by SIGTERM/SIGINT; a second signal exits immediately."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> "Shutdown":
        """Route SIGTERM and SIGINT to this flag (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._event.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        log.info("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


def setup_logging(level: str) -> None:
    """One log format for every hop (stderr, so stdout stays for data such as JSON lines)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def start_hop(cfg: Config, hop: str, warm_up: Callable[[], None] | None = None) -> Shutdown:
    """Common start of a long-running hop: allocator tuning, logging, /metrics, signal handling.

    ``warm_up`` loads the hop's compiled kernels before /metrics answers, so a hop whose
    /metrics is up is ready: otherwise the first records pay a second or more of numba loading.
    """
    tune_malloc()
    setup_logging(cfg.log_level)
    if warm_up is not None:
        started = time.monotonic()
        warm_up()
        log.debug("%s: kernels loaded in %.2f s", hop, time.monotonic() - started)
    metrics.start_http(cfg.metrics_port)
    metrics.HOP_INFO.labels(hop).set(1)
    log.info("%s starting (site %s)", hop, cfg.site)
    return Shutdown().install()


BatchHandler = Callable[[list[Message]], None]


def run_batches(consumer: Consumer, handle_batch: BatchHandler, shutdown: Shutdown, hop: str,
                max_records: int = 500, timeout: float = 0.2,
                on_idle: Callable[[], None] | None = None) -> None:
    """Consume until shutdown, passing each non-empty batch of good messages to ``handle_batch``.

    Partition EOF and transient consumer errors are logged and skipped; a fatal
    consumer error raises. The handler commits (or sends offsets to a
    transaction) itself, because only it knows when its output is safe.
    """
    try:
        while not shutdown.is_set():
            messages = consumer.consume(max_records, timeout)
            good: list[Message] = []
            for msg in messages:
                err = msg.error()
                if err is None:
                    good.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    continue
                elif err.fatal():
                    raise RuntimeError(f"{hop}: fatal consumer error: {err}")
                else:
                    log.warning("%s: consumer error: %s", hop, err)
            if good:
                handle_batch(good)
            elif on_idle is not None:
                on_idle()
    finally:
        metrics.HOP_INFO.labels(hop).set(0)
