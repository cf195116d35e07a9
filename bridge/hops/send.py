"""``d4-bridge send``: a D4 sensor client (pcap file, stdin, or a d4-goclient conf dir).

Type 1 input is parsed as a pcap stream by the spine's assembler, so every message handed to
the sender is a run of whole packet records: after a reconnect the new session starts with the
pcap global header and resumes at a record boundary. Other types are cut at line ends.
Exit status: 0 when the server acknowledged everything, 1 when it did not (or the input was
not valid pcap), 2 on a configuration error.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from bridge import metrics
from bridge.assembler import PcapAssembler, PcapStreamError, warm_up
from bridge.config import Config
from bridge.d4.client import D4Sender, SenderOptions, SenderStopped, parse_host_port
from bridge.d4.confdir import ConfDirError, load_confdir
from bridge.d4.tls import client_context
from bridge.hop import Shutdown, start_hop
from bridge.pcap import global_header

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
FLUSH_INTERVAL = 0.1  # seconds: close a partial batch / line run this often on a slow input
DEFAULT_FRAME_SIZE = 65535


@dataclass
class SendPlan:
    """Everything resolved from flags and the conf dir."""

    host: str
    port: int
    uuid: bytes
    key: bytes
    d4_type: int
    options: SenderOptions
    tls: object  # ssl.SSLContext | None


def resolve(cfg: Config) -> SendPlan:
    """Merge flags over the conf dir; raise ValueError with a message naming what is missing."""
    s = cfg.send
    conf = load_confdir(s.confdir) if s.confdir else None
    server = s.server or (conf.destination if conf and conf.destination not in ("stdout", "file") else "")
    if not server:
        raise ValueError("no server: give --server HOST:PORT (or a conf dir whose destination is host:port)")
    host, port = parse_host_port(server)
    if s.uuid:
        sensor = uuidlib.UUID(s.uuid)
    elif conf:
        sensor = conf.uuid
    else:
        raise ValueError("no sensor uuid: give --uuid or -c CONFDIR")
    if s.hmac_key is not None:
        key = s.hmac_key.reveal()
    elif conf:
        key = conf.key
    else:
        raise ValueError("no HMAC key: give --hmac-key / --hmac-key-file or -c CONFDIR")
    d4_type = s.type or (conf.d4_type if conf else 1)
    frame_size = s.frame_size or (conf.snaplen if conf else DEFAULT_FRAME_SIZE)
    meta = conf.meta_header if conf and d4_type in (2, 254) else None
    if d4_type in (2, 254) and meta is None:
        raise ValueError("types 2 and 254 need a conf dir with metaheader.json")
    if s.no_tls:
        tls = None
    else:
        ca = s.ca or (str(conf.root_ca) if conf and conf.root_ca and not s.insecure else None)
        tls = client_context(ca=ca or None, insecure=s.insecure)
    options = SenderOptions(
        frame_size=frame_size,
        version=conf.version if conf else 1,
        meta_header=meta,
        resend_buffer_bytes=s.resend_buffer,
        resend_grace=s.resend_grace,
    )
    return SendPlan(host, port, sensor.bytes, key, d4_type, options, tls)


def read_chunks(stream: BinaryIO, stop: Shutdown, interval: float = FLUSH_INTERVAL) -> Iterator[bytes]:
    """Yield input chunks; yield b'' when nothing arrived for ``interval`` (time to flush)."""
    fd = stream.fileno()
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], interval)
        if not ready:
            yield b""
            continue
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            return
        yield chunk


def send_pcap(sender: D4Sender, chunks: Iterator[bytes], assembler: PcapAssembler) -> None:
    """Feed a pcap byte stream through the assembler; send each batch of whole records."""
    for chunk in chunks:
        # the age limit holds for a slow steady trickle too, not only when the input pauses
        batches = (assembler.feed(chunk) if chunk else []) + assembler.flush_due()
        for batch in batches:
            sender.send(batch.packets)
    for batch in assembler.close():
        sender.send(batch.packets)


def send_lines(sender: D4Sender, chunks: Iterator[bytes], frame_size: int) -> None:
    """Send text input cut at line ends (a line longer than a frame is cut, as d4-core's workers do)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if not cut and (len(pending) >= frame_size or not chunk):
            cut = len(pending)
        if cut:
            sender.send(bytes(pending[:cut]))
            del pending[:cut]
    if pending:
        sender.send(bytes(pending))


def _export_counters(sender: D4Sender) -> Callable[[], None]:
    """Return a function that adds the sender's counter growth to the Prometheus metrics."""
    last = {"frames": 0, "bytes": 0, "resent": 0}
    last_losses: dict[str, int] = {}

    def update() -> None:
        metrics.SEND_FRAMES.inc(sender.frames_sent - last["frames"])
        metrics.SEND_BYTES.inc(sender.bytes_sent - last["bytes"])
        metrics.SEND_RESENT_BYTES.inc(sender.resent_bytes - last["resent"])
        last.update(frames=sender.frames_sent, bytes=sender.bytes_sent, resent=sender.resent_bytes)
        for reason, n in sender.losses.items():
            metrics.SEND_RECONNECTS.labels(reason).inc(n - last_losses.get(reason, 0))
            last_losses[reason] = n

    return update


def run(cfg: Config) -> int:
    """Send the input to the D4 server; see the module docstring for exit codes."""
    shutdown = start_hop(cfg, "send", warm_up)
    try:
        plan = resolve(cfg)
    except (ValueError, ConfDirError, OSError) as exc:
        log.error("send: %s", exc)
        return 2
    assembler: PcapAssembler | None = None
    if plan.d4_type == 1:
        # one message per frame's worth of whole records: a resend repeats at most one frame
        assembler = PcapAssembler(batch_bytes=plan.options.frame_size, max_age=FLUSH_INTERVAL)

    def session_prefix() -> bytes | None:
        if assembler is None or assembler.header is None:
            return None
        h = assembler.header  # the assembler hands out canonical little-endian records
        return global_header(h.linktype, h.snaplen, h.nsec)

    sender = D4Sender(plan.host, plan.port, plan.uuid, plan.key, plan.d4_type, tls=plan.tls,  # type: ignore[arg-type]
                      options=plan.options, on_session_start=session_prefix, stop=shutdown)  # type: ignore[arg-type]
    export = _export_counters(sender)
    source = cfg.send.file or "-"
    started = time.monotonic()
    status = 0
    try:
        with (open(source, "rb") if source != "-" else os.fdopen(os.dup(sys.stdin.fileno()), "rb")) as stream:
            chunks = read_chunks(stream, shutdown)
            if assembler is not None:
                send_pcap(sender, chunks, assembler)
            else:
                send_lines(sender, chunks, plan.options.frame_size)
    except PcapStreamError as exc:
        for batch in exc.batches:  # the good packets before the damage still go out
            sender.send(batch.packets)
        log.error("send: input is not a valid pcap stream (%s): %s", exc.reason, exc.detail)
        status = 1
    except SenderStopped:
        log.warning("send: stopped before the input was fully sent")
        status = 1
    except OSError as exc:
        log.error("send: cannot read %s: %s", source, exc)
        status = 1
    # like the C client at EOF: an empty frame, so d4-core also parses a last short TCP chunk
    sender.send_empty_frame()
    acked = sender.close(cfg.send.ack_timeout)
    export()
    elapsed = time.monotonic() - started
    log.info("send: %d payload bytes in %d frames over %d session(s) in %.1f s, %d bytes resent%s",
             sender.bytes_sent, sender.frames_sent, sender.sessions, elapsed, sender.resent_bytes,
             "" if acked else "; NOT all acknowledged by the server")
    if not acked:
        status = 1
    return status
