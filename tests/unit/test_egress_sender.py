"""The D4Sender behaviour egress relies on: release counting and backoff on refused sessions."""

from __future__ import annotations

import socket
import threading
import time
import uuid as uuidlib

from bridge.d4.client import D4Sender, SenderOptions
from bridge.d4.frame import FrameDecoder

KEY = b"k"
UUID = uuidlib.uuid4().bytes


def serve(handler) -> int:
    """A loopback listener running ``handler(conn)`` for every connection; returns its port."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1]


def test_messages_are_released_in_order_after_ack_and_grace():
    frames: list = []

    def sink(conn: socket.socket) -> None:
        dec = FrameDecoder()
        with conn:
            while data := conn.recv(65536):
                dec.feed(data)
                frames.extend(dec.frames())

    s = D4Sender("127.0.0.1", serve(sink), UUID, KEY, 1, options=SenderOptions(resend_grace=0.3))
    for i in range(5):
        s.send(bytes([i]) * 100)
    assert s.messages_sent == 5
    assert s.wait_acked(5.0)
    assert s.messages_released == 0  # acknowledged, but still inside the grace period
    time.sleep(0.35)
    s.wait_acked(0)
    assert s.messages_released == 5
    s.close(1.0)
    assert b"".join(f.payload for f in frames) == b"".join(bytes([i]) * 100 for i in range(5))


def test_refused_sessions_back_off_exponentially():
    attempts: list[float] = []

    def refuse(conn: socket.socket) -> None:
        attempts.append(time.monotonic())
        conn.recv(100)  # the first header, then close at once (d4-core's duplicate-session refusal)
        conn.close()

    opts = SenderOptions(backoff_initial=0.05, backoff_max=10.0, healthy_after=5.0)
    s = D4Sender("127.0.0.1", serve(refuse), UUID, KEY, 1, options=opts, on_session_start=lambda: b"x" * 24)
    deadline = time.monotonic() + 4.0
    while len(attempts) < 6 and time.monotonic() < deadline:
        s.send(b"data")  # records keep coming, as in egress: each send finds the session closed
        time.sleep(0.01)
    s.stop.set()
    s.close(0)
    assert len(attempts) >= 5, attempts
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # nominal waits 0.05, 0.1, 0.2, 0.4 ... with equal jitter (half to full): strictly growing ranges
    assert gaps[3] > 0.1 and gaps[3] > gaps[0], gaps
    assert s.losses["refused"] >= 4


def test_empty_frame_follows_data_on_the_open_session_only():
    frames: list = []

    def sink(conn: socket.socket) -> None:
        dec = FrameDecoder()
        with conn:
            while data := conn.recv(65536):
                dec.feed(data)
                frames.extend(dec.frames())

    s = D4Sender("127.0.0.1", serve(sink), UUID, KEY, 1)
    s.send_empty_frame()  # not connected: nothing to push through, no connection made
    assert s.sessions == 0
    s.send(b"records")
    s.send_empty_frame()
    assert s.close(5.0)
    deadline = time.monotonic() + 5
    while len(frames) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [f.payload for f in frames] == [b"records", b""]
    assert all(f.header.type == 1 and f.header.uuid == UUID for f in frames)
    assert s.messages_sent == 1  # the empty frame is not a message: nothing to resend or release
