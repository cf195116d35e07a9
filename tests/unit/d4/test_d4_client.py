"""D4Sender against a loopback sink that decodes frames (plain and TLS, reconnects, resend)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid as uuidlib

import pytest

from bridge.d4.client import D4Sender, SenderOptions, SenderStopped, parse_host_port
from bridge.d4.frame import FrameDecoder, FrameSigner
from bridge.d4.tls import client_context, server_context, write_self_signed_pem

KEY = b"sensor key"
UUID = uuidlib.uuid4().bytes


class Sink:
    """Loopback D4 sink: records the decoded frames of each connection; can cut connections."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.tls = tls
        self.sessions: list[list] = []
        self.cut_after: int | None = None  # close a connection after this many payload bytes
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        frames: list = []
        with self.lock:
            self.sessions.append(frames)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):  # a client that refused our certificate
                conn.close()
                return
        dec = FrameDecoder()
        got = 0
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                dec.feed(data)
                for f in dec.frames():
                    frames.append(f)
                    got += len(f.payload)
                if self.cut_after is not None and got >= self.cut_after:
                    self.cut_after = None
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return  # RST, dropping whatever is unread

    def payloads(self, session: int) -> bytes:
        return b"".join(f.payload for f in self.sessions[session])

    def close(self) -> None:
        self.lsock.close()


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_parse_host_port():
    assert parse_host_port("127.0.0.1:4443") == ("127.0.0.1", 4443)
    assert parse_host_port("[::1]:4443") == ("::1", 4443)
    with pytest.raises(ValueError):
        parse_host_port("nohost")


def test_frames_are_signed_and_split_at_frame_size():
    sink = Sink()
    s = D4Sender("127.0.0.1", sink.port, UUID, KEY, 1, options=SenderOptions(frame_size=1000))
    data = bytes(range(256)) * 20  # 5120 bytes -> 6 frames
    s.send(data)
    assert s.close(5.0)
    assert wait_for(lambda: sink.sessions and len(sink.sessions[0]) == 6)
    frames = sink.sessions[0]
    assert [len(f.payload) for f in frames] == [1000] * 5 + [120]
    signer = FrameSigner(KEY)
    assert all(signer.verify(f) and f.header.type == 1 and f.header.uuid == UUID for f in frames)
    assert sink.payloads(0) == data
    sink.close()


def test_meta_header_then_type_254_every_session():
    sink = Sink()
    meta = b'{"type": "ja3-jl"}'
    s = D4Sender("127.0.0.1", sink.port, UUID, KEY, 2, options=SenderOptions(meta_header=meta))
    s.send(b'{"a": 1}\n')
    assert s.close(5.0)
    assert wait_for(lambda: sink.sessions and len(sink.sessions[0]) == 2)
    types = [f.header.type for f in sink.sessions[0]]
    assert types == [2, 254]
    assert sink.sessions[0][0].payload == meta


def test_type_2_without_meta_header_is_refused():
    with pytest.raises(ValueError):
        D4Sender("127.0.0.1", 1, UUID, KEY, 254)


def test_reconnect_resends_unreceived_data_with_session_prefix():
    """The sink resets the connection mid-stream; every message arrives, each session starts
    with the prefix, and the resumed stream begins at a message boundary."""
    sink = Sink()
    sink.cut_after = 200_000
    prefix = b"PFX"
    s = D4Sender("127.0.0.1", sink.port, UUID, KEY, 1,
                 options=SenderOptions(frame_size=4096, backoff_initial=0.01, resend_grace=5.0),
                 on_session_start=lambda: prefix)
    msgs = [bytes([i % 251]) * 1000 for i in range(1000)]  # 1 MB in 1000 messages
    for m in msgs:
        s.send(m)
    assert s.close(10.0)
    assert s.sessions >= 2
    assert wait_for(lambda: len(sink.sessions) >= 2 and sink.payloads(-1).endswith(msgs[-1]))
    first = sink.payloads(0)
    last = sink.payloads(len(sink.sessions) - 1)
    assert first.startswith(prefix) and last.startswith(prefix)
    # the last session resumes at a message boundary and carries everything to the end
    resumed = last[len(prefix):]
    assert len(resumed) % 1000 == 0
    k = len(msgs) - len(resumed) // 1000
    assert resumed == b"".join(msgs[k:])
    # nothing is missing between what the first session delivered and where the resend starts
    assert len(first) - len(prefix) >= k * 1000
    assert first[len(prefix):len(prefix) + k * 1000] == b"".join(msgs[:k])
    assert s.resent_bytes > 0


def test_tls_verified_with_ca(tmp_path):
    pem = write_self_signed_pem(tmp_path / "server.pem")
    sink = Sink(tls=server_context(pem))
    s = D4Sender("127.0.0.1", sink.port, UUID, KEY, 1, tls=client_context(ca=pem))
    s.send(b"x" * 100_000)
    assert s.close(5.0)
    assert wait_for(lambda: sink.sessions and len(sink.payloads(0)) == 100_000)


def test_tls_verification_failure_retries_until_stopped(tmp_path):
    pem = write_self_signed_pem(tmp_path / "server.pem")
    other = write_self_signed_pem(tmp_path / "other.pem")
    sink = Sink(tls=server_context(pem))
    stop = threading.Event()
    s = D4Sender("127.0.0.1", sink.port, UUID, KEY, 1, tls=client_context(ca=other),
                 options=SenderOptions(backoff_initial=0.01, backoff_max=0.05), stop=stop)
    threading.Timer(0.5, stop.set).start()
    with pytest.raises(SenderStopped):
        s.send(b"data")
    assert s.connect_failures >= 2


def test_insecure_tls_accepts_self_signed(tmp_path):
    pem = write_self_signed_pem(tmp_path / "server.pem")
    sink = Sink(tls=server_context(pem))
    s = D4Sender("127.0.0.1", sink.port, UUID, KEY, 1, tls=client_context(insecure=True))
    s.send(b"hello")
    assert s.close(5.0)
    assert wait_for(lambda: sink.sessions and sink.payloads(0) == b"hello")


def test_resend_buffer_stays_bounded():
    sink = Sink()
    opts = SenderOptions(resend_buffer_bytes=50_000, resend_grace=60.0)
    s = D4Sender("127.0.0.1", sink.port, UUID, KEY, 1, options=opts)
    for _ in range(200):
        s.send(b"y" * 10_000)
        assert s.retained_bytes <= 60_000
    assert s.close(5.0)
