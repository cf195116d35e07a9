"""D4 sensor connection: framing, TLS, reconnection with backoff, and a bounded resend buffer.

``D4Sender`` is the one client implementation, used by ``d4-bridge send`` and by the egress hop.
It is synchronous (blocking sockets, no threads): ``send(payload)`` returns once the frames are
handed to the kernel.

What "the server may not have received" means here: D4 servers never answer, so the only
receipt is the peer's TCP acknowledgement, read from the kernel (``TCP_INFO.tcpi_bytes_acked``).
To count acknowledged bytes exactly under TLS, TLS runs over memory BIOs and every ciphertext
byte written to the socket is counted. A message leaves the resend buffer once it is acknowledged
and ``resend_grace`` seconds old: a server process that dies loses what sat unread in its socket
or in its own buffers, so the last moments of acknowledged data are re-sent too (at-least-once;
``resend_grace=0`` resends only unacknowledged data). The buffer is bounded; when it is full of
unacknowledged data ``send`` waits for acknowledgements (TCP backpressure), it never drops.

Every session starts with the type-2 meta header when one is configured (then data frames use
type 254, as d4-goclient does), then the ``on_session_start`` prefix (the pcap global header for
type 1), then the retained messages, in order. Messages are the resume points: the caller sends
payloads that end at boundaries the server can resume from (whole pcap records, whole lines).
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

from bridge.d4.frame import MAX_PAYLOAD, PROTOCOL_VERSION, FrameSigner

log = logging.getLogger(__name__)

TYPE_META = 2
TYPE_EXTENDED = 254
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked is a u64 at offset 120 (Linux >= 4.1).
_TCPI_BYTES_ACKED = 120
_TCP_INFO_LEN = 128


class SenderStopped(Exception):
    """The sender was asked to stop while it was connecting or waiting."""


def parse_host_port(value: str, allow_zero: bool = False) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6addr]:port`` into (host, port); port 0 only if ``allow_zero``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if allow_zero else 1) <= int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass
class SenderOptions:
    """Tuning of a ``D4Sender``; the defaults suit a sensor on a LAN or the Internet."""

    frame_size: int = 65535  # largest payload per frame (a conf dir's snaplen)
    version: int = PROTOCOL_VERSION
    meta_header: bytes | None = None  # type 2/254: raw metaheader.json bytes
    connect_timeout: float = 10.0
    io_timeout: float = 30.0  # a write or acknowledgement blocked longer means a dead peer
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    resend_buffer_bytes: int = 16 * 1024 * 1024
    resend_grace: float = 2.0
    # A session closed sooner than this was refused (d4-core: duplicate uuid+type session, bad
    # HMAC, blacklist): the backoff keeps growing instead of restarting at backoff_initial.
    healthy_after: float = 5.0
    keepalive_idle: int = 15
    keepalive_interval: int = 5
    keepalive_count: int = 3


@dataclass
class _Message:
    payload: bytes
    end_wire: int  # connection byte offset (ciphertext under TLS) just after its last frame
    acked_at: float = 0.0


class _Connection:
    """One TCP (+ TLS over memory BIOs) connection that counts the bytes it puts on the wire."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext | None, server_hostname: str | None) -> None:
        self.sock = sock
        self.wire = 0
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        self._tls: ssl.SSLObject | None = None
        if tls is not None:
            self._in = ssl.MemoryBIO()
            self._out = ssl.MemoryBIO()
            self._tls = tls.wrap_bio(self._in, self._out, server_side=False, server_hostname=server_hostname)
            self._handshake()

    @classmethod
    def open(cls, host: str, port: int, tls: ssl.SSLContext | None, server_hostname: str | None,
             opts: SenderOptions) -> "_Connection":
        sock = socket.create_connection((host, port), timeout=opts.connect_timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, opts.keepalive_idle)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, opts.keepalive_interval)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, opts.keepalive_count)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                # unacknowledged data older than this kills the connection instead of hanging
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(opts.io_timeout * 1000))
            sock.settimeout(opts.io_timeout)
            return cls(sock, tls, server_hostname)
        except BaseException:
            sock.close()
            raise

    def _flush_tls(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)
            self.wire += len(data)

    def _handshake(self) -> None:
        assert self._tls is not None
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection during the TLS handshake") from None
                self._in.write(data)
        self._flush_tls()

    def write(self, data: bytes) -> None:
        """Write all of ``data``; raises OSError/SSLError when the connection is broken."""
        if self._tls is None:
            self.sock.sendall(data)
            self.wire += len(data)
        else:
            self._tls.write(data)
            self._flush_tls()

    def check_alive(self) -> None:
        """Raise ConnectionError if the server closed the connection (D4 servers never talk)."""
        for _fd, events in self._poll.poll(0):
            if events & (select.POLLERR | select.POLLHUP) and not events & select.POLLIN:
                raise ConnectionError("connection error reported by the kernel")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            if self._tls is not None:
                # TLS 1.3 session tickets arrive after the handshake; anything else is ignored.
                self._in.write(data)
                try:
                    self._tls.read(65536)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    raise ConnectionError("server closed the TLS session") from None

    def acked(self) -> int:
        """Bytes of this connection acknowledged by the peer's TCP stack."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except (OSError, AttributeError):
            return self.wire  # no TCP_INFO: trust the kernel's write and rely on resend_grace
        if len(info) < _TCPI_BYTES_ACKED + 8:
            return self.wire
        # the counter includes the SYN's sequence number
        return max(0, min(self.wire, struct.unpack_from("<Q", info, _TCPI_BYTES_ACKED)[0] - 1))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class D4Sender:
    """A D4 sensor session that survives broken connections without losing data.

    ``uuid`` is the 16 raw uuid bytes, ``key`` the raw HMAC key, ``tls`` a client SSL context or
    None for plain TCP. ``on_session_start`` returns bytes sent at the start of every session
    (before the retained messages), e.g. the pcap global header. ``stop`` aborts backoff waits.
    """

    def __init__(
        self,
        host: str,
        port: int,
        uuid: bytes,
        key: bytes,
        d4_type: int,
        tls: ssl.SSLContext | None = None,
        options: SenderOptions | None = None,
        on_session_start: Callable[[], bytes | None] | None = None,
        server_hostname: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.opts = options or SenderOptions()
        if not 0 < self.opts.frame_size <= MAX_PAYLOAD:
            raise ValueError(f"frame_size must be 1..{MAX_PAYLOAD}")
        if len(uuid) != 16:
            raise ValueError("uuid must be 16 raw bytes")
        if d4_type in (TYPE_META, TYPE_EXTENDED) and not self.opts.meta_header:
            raise ValueError("types 2 and 254 need a meta header (metaheader.json)")
        self.host, self.port = host, port
        self.uuid = uuid
        self.tls = tls
        self.server_hostname = server_hostname if server_hostname is not None else (host if tls else None)
        # d4-goclient sends the meta header as type 2 and everything after it as 254
        self.data_type = TYPE_EXTENDED if self.opts.meta_header else d4_type
        self.on_session_start = on_session_start
        self.stop = stop or threading.Event()
        self._signer = FrameSigner(key)
        self._conn: _Connection | None = None
        self._failures = 0
        self._connected_at = 0.0
        self._rng = random.Random()
        self._acked: deque[_Message] = deque()  # acknowledged, kept for resend_grace
        self._unacked: deque[_Message] = deque()
        self._retained_bytes = 0
        # counters, read by the hops for their metrics
        self.sessions = 0
        self.frames_sent = 0
        self.bytes_sent = 0  # payload bytes, first transmissions
        self.resent_bytes = 0
        self.connect_failures = 0
        self.losses: Counter[str] = Counter()  # broken sessions by exception class, or "refused"
        # messages are numbered by send() order; they leave the resend buffer in that order, so
        # "messages_released > n" means message n will never be re-sent (the egress hop commits
        # its Kafka offsets on this)
        self.messages_sent = 0
        self.messages_released = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def retained_bytes(self) -> int:
        """Payload bytes held for a possible resend."""
        return self._retained_bytes

    @property
    def unacked_bytes(self) -> int:
        """Payload bytes of messages not yet acknowledged by the server's TCP stack."""
        return sum(len(m.payload) for m in self._unacked)

    def send(self, payload: bytes) -> None:
        """Frame ``payload`` (one resume point) and write it, reconnecting as often as needed."""
        if not payload:
            return
        while True:
            conn = self._ensure_connected()
            try:
                self._make_room(conn, len(payload))
                conn.check_alive()
                end = self._write_message(conn, payload)
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                self._lost(conn, exc)
                continue
            self._unacked.append(_Message(payload, end))
            self._retained_bytes += len(payload)
            self.bytes_sent += len(payload)
            self.messages_sent += 1
            return

    def wait_acked(self, timeout: float) -> bool:
        """Wait until the server's TCP stack has acknowledged everything; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            conn = self._ensure_connected() if self._unacked or self._conn else None
            if conn is None:
                return not self._unacked
            try:
                conn.check_alive()
                self._update_acks(conn)
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                self._lost(conn, exc)
                continue
            if not self._unacked:
                return True
            if time.monotonic() >= deadline or self.stop.wait(0.002):
                return False

    def send_empty_frame(self) -> None:
        """Write one empty data frame on the open session (nothing when disconnected; not retained).

        d4-core parses a received chunk shorter than a header only when more data arrives, and
        drops it after 30 s without data: a sender going idle right after a frame whose last
        TCP/TLS chunk was that short would lose the frame. An empty frame after the last data
        pushes the tail through (d4-core stores empty frames as empty messages; ex_d4 sends one too).
        """
        conn = self._conn
        if conn is None:
            return
        try:
            conn.check_alive()
            conn.write(self._signer.encode(self.data_type, self.uuid, b"", int(time.time()), self.opts.version))
            self.frames_sent += 1
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._lost(conn, exc)

    def close(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` for acknowledgements, then close; True if all was acknowledged."""
        done = True
        if self._conn is not None:
            try:
                done = self.wait_acked(timeout)
            except SenderStopped:
                done = not self._unacked
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return done

    # --- internals

    def _ensure_connected(self) -> _Connection:
        while self._conn is None:
            if self.stop.is_set():
                raise SenderStopped("sender stopped")
            if self._failures:
                delay = min(self.opts.backoff_max, self.opts.backoff_initial * 2 ** (self._failures - 1))
                if self.stop.wait(self._rng.uniform(delay / 2, delay)):  # equal jitter
                    raise SenderStopped("sender stopped")
            conn: _Connection | None = None
            try:
                conn = _Connection.open(self.host, self.port, self.tls, self.server_hostname, self.opts)
                resent = self._start_session(conn)
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                if conn is not None:
                    conn.close()
                self._failures += 1
                self.connect_failures += 1
                log.warning("d4 connect to %s:%d failed (attempt %d): %s", self.host, self.port, self._failures, exc)
                continue
            self._conn = conn
            self._connected_at = time.monotonic()  # _lost decides whether this session was healthy
            log.info("d4 session %d to %s:%d up, resent %d bytes", self.sessions, self.host, self.port, resent)
        return self._conn

    def _start_session(self, conn: _Connection) -> int:
        """Open a session: meta header, session prefix, then every retained message."""
        self.sessions += 1
        if self.opts.meta_header:
            conn.write(self._frames(TYPE_META, self.opts.meta_header))
        prefix = self.on_session_start() if self.on_session_start else None
        if prefix:
            conn.write(self._frames(self.data_type, prefix))
        retained = list(self._acked) + list(self._unacked)
        self._acked.clear()
        self._unacked = deque(retained)
        resent = 0
        for msg in retained:
            msg.end_wire = self._write_message(conn, msg.payload)
            msg.acked_at = 0.0
            resent += len(msg.payload)
        self.resent_bytes += resent
        return resent

    def _frames(self, d4_type: int, payload: bytes) -> bytes:
        size = self.opts.frame_size
        ts = int(time.time())
        encode = self._signer.encode
        view = memoryview(payload)
        parts = [encode(d4_type, self.uuid, view[i:i + size], ts, self.opts.version)
                 for i in range(0, len(payload), size)]
        self.frames_sent += len(parts)
        return b"".join(parts)

    def _write_message(self, conn: _Connection, payload: bytes) -> int:
        conn.write(self._frames(self.data_type, payload))
        return conn.wire

    def _update_acks(self, conn: _Connection) -> None:
        """Move acknowledged messages to the grace list and drop those past grace."""
        now = time.monotonic()
        if self._unacked:
            acked = conn.acked()
            while self._unacked and self._unacked[0].end_wire <= acked:
                msg = self._unacked.popleft()
                msg.acked_at = now
                self._acked.append(msg)
        grace = self.opts.resend_grace
        while self._acked and (now - self._acked[0].acked_at >= grace
                               or self._retained_bytes > self.opts.resend_buffer_bytes):
            self._retained_bytes -= len(self._acked.popleft().payload)
            self.messages_released += 1

    def _make_room(self, conn: _Connection, incoming: int) -> None:
        """Keep the resend buffer bounded: wait for acknowledgements when it is full."""
        self._update_acks(conn)
        limit = self.opts.resend_buffer_bytes
        deadline = time.monotonic() + self.opts.io_timeout
        while self._retained_bytes + incoming > limit and self._unacked:
            if self._acked:  # full only because of grace copies: drop the oldest
                self._retained_bytes -= len(self._acked.popleft().payload)
                self.messages_released += 1
                continue
            if time.monotonic() > deadline:
                raise ConnectionError(f"server acknowledged nothing for {self.opts.io_timeout:.0f} s")
            if self.stop.wait(0.002):
                raise SenderStopped("sender stopped")
            conn.check_alive()
            self._update_acks(conn)

    def _lost(self, conn: _Connection, exc: BaseException) -> None:
        try:
            self._update_acks(conn)  # the counter survives a reset: keep what was acknowledged
        except OSError:
            pass
        conn.close()
        self._conn = None
        if time.monotonic() - self._connected_at < self.opts.healthy_after:
            self._failures += 1  # refused right away: back off further, no reconnect storm
            reason = "refused"
        else:
            self._failures = 1
            reason = type(exc).__name__
        self.losses[reason] += 1
        log.warning("d4 session to %s:%d lost (%s); %d bytes retained for resend",
                    self.host, self.port, exc, self._retained_bytes)
