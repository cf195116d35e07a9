"""``d4-bridge ingress``: a D4 server (asyncio, TLS) that turns sensor streams into topic records.

Per connection: frames are decoded incrementally, the first header is admitted (uuid v4,
blacklists, registration, accepted type, HMAC key from the keys file, d4-core's Redis or the
default key), every frame's HMAC is verified, type-1 payloads go through one pcap assembler and
become PcapBatch records on the pcap topic; other types become line-aligned (type 2:
JSON-object-aligned) D4Record records. A rule violation closes the connection, counts
``d4bridge_ingress_rejections_total{reason}``, logs one line, and nothing of the bad frame is
produced. Reading stops on every socket while the broker has more than ``max_inflight_bytes``
unacknowledged (TCP pushes back on the sensors); memory per connection is bounded by one frame
plus one batch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
import uuid as uuidlib
from typing import Any, Callable

from bridge import metrics, records
from bridge.assembler import PcapAssembler, PcapChunkBatch, PcapStreamError, warm_up
from bridge.config import Config
from bridge.d4.client import parse_host_port
from bridge.d4.cutters import CutError, JsonObjectCutter, LineCutter
from bridge.d4.frame import Frame, FrameDecoder, FrameError, FrameSigner, Header
from bridge.d4.keys import Admission, KeysFileError, load_keys_file, next_header_refusal
from bridge.d4.tls import server_context
from bridge.hop import Shutdown, start_hop
from bridge.kafka import BlockingProducer, make_producer

log = logging.getLogger(__name__)

TICK = 0.025  # seconds between age flushes / producer polls
KEEPALIVE = (15, 5, 3)  # idle, interval, count: a dead peer is noticed after ~30 s
TLS_HANDSHAKE_TIMEOUT = 15.0


def peer_address(host: str) -> str:
    """The peer address as d4-core records it: no %zone, IPv4-mapped IPv6 as plain IPv4."""
    host = host.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class Rejection(Exception):
    """A rule violation: the connection is closed and counted under ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class KeySource:
    """Admission decisions: static rules, plus d4-core's Redis keys and sets when configured."""

    def __init__(self, admission: Admission, redis_client: Any | None = None) -> None:
        self.admission = admission
        self.redis = redis_client

    async def key_for(self, uuid_hex: str, ip: str) -> bytes:
        """The sensor's HMAC key, or raise Rejection (blacklists, registration, unknown sensor)."""
        adm = self.admission
        if self.redis is None:
            key, refusal = adm.static_key(uuid_hex)
            if refusal:
                raise Rejection(refusal)
            assert key is not None
            return key
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.sismember("blacklist_ip", ip)
                pipe.sismember("blacklist_ip_by_uuid", uuid_hex)
                pipe.sismember("blacklist_uuid", uuid_hex)
                pipe.sismember("registered_uuid", uuid_hex)
                pipe.hget(f"metadata_uuid:{uuid_hex}", "hmac_key")
                pipe.get("server:hmac_default_key")
                bl_ip, bl_ip_by_uuid, bl_uuid, registered, redis_key, redis_default = await pipe.execute()
            if bl_ip_by_uuid:
                await self.redis.sadd("blacklist_ip", ip)  # d4-core: this uuid bans its address
        except Exception as exc:  # any Redis failure: fail closed, the sensor retries
            raise Rejection("key_lookup_failed", str(exc)) from exc
        if bl_ip or bl_ip_by_uuid:
            raise Rejection("blacklisted_ip")
        if bl_uuid:
            raise Rejection("blacklisted_uuid")
        file_key = adm.keys.get(uuid_hex)
        if adm.registration and not registered and file_key is None:
            raise Rejection("not_registered")
        key = file_key or redis_key or adm.default_key or redis_default
        if not key:
            raise Rejection("unknown_uuid")
        return bytes(key)


class Inflight:
    """Broker acknowledgement tracking: produce latency, and the pause/resume backpressure signal."""

    def __init__(self, producer: BlockingProducer, high: int) -> None:
        self.producer = producer
        self.high = high
        self.low = high // 2
        self.bytes = 0
        self._latency = metrics.INGRESS_PRODUCE_SECONDS

    def produce(self, topic: str, value: bytes, key: str) -> None:
        size = len(value)
        sent = time.monotonic()

        def delivered(err: Any, _msg: Any) -> None:
            # failures are counted and logged by the producer (d4bridge_kafka_delivery_failures_total)
            self.bytes -= size
            if err is None:
                self._latency.observe(time.monotonic() - sent)

        self.bytes += size
        self.producer.produce(topic, value, key=key, on_delivery=delivered)

    @property
    def over(self) -> bool:
        return self.bytes > self.high

    @property
    def drained(self) -> bool:
        return self.bytes <= self.low


class Session(asyncio.Protocol):
    """One sensor connection."""

    def __init__(self, server: "IngressServer") -> None:
        self.server = server
        self.session_id = str(uuidlib.uuid4())
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.decoder = FrameDecoder(header_check=self._check_header)
        self.uuid_hex: str | None = None
        self.d4_type = 0
        self.signer: FrameSigner | None = None
        self.admitting = False
        self.closed = False
        self.registered: tuple[str, int] | None = None
        self.last_data = self.opened_at = time.monotonic()
        self.seq = 0
        self.assembler: PcapAssembler | None = None
        self.lines: LineCutter | None = None
        self.meta = JsonObjectCutter()
        self.meta_type: str | None = None
        self.last_ts = 0

    # --- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer_address(str(peer[0])) if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE[0])
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE[1])
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE[2])
        self.server.opened(self)  # address and session-count rules, before any TLS work
        if self.server.tls is not None and not self.closed:
            # TLS is started here rather than by the listener so that a failed handshake
            # (garbage, plain D4 on the TLS port, a scanner) is counted and logged like any
            # other rejection; the listener would drop it silently.
            self.admitting = True
            transport.pause_reading()  # until the TLS layer takes over the socket
            asyncio.get_running_loop().create_task(self._start_tls(transport))

    async def _start_tls(self, raw: asyncio.BaseTransport) -> None:
        try:
            wrapped = await asyncio.get_running_loop().start_tls(
                raw, self, self.server.tls, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as exc:
            # the peer left before finishing the handshake (port probes, health checks): no rule broken
            log.debug("ingress: %s closed during the TLS handshake: %s", self.peer, exc)
            self.finish()
            raw.abort()
            self.server.closed(self)
            return
        except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.reject("tls_handshake", f"{type(exc).__name__}: {exc}")
            self.server.closed(self)  # the TLS layer never reports this connection as lost
            return
        if self.closed or wrapped is None:
            return
        self.transport = wrapped  # type: ignore[assignment]
        self.admitting = False
        if self.server.paused:
            wrapped.pause_reading()
        self.safe_drain()  # bytes that came with the end of the handshake are already buffered

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_data = time.monotonic()
        self.decoder.feed(data)
        if not self.admitting:
            self.safe_drain()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()
        self.server.closed(self)

    # --- frame processing

    def _check_header(self, h: Header) -> None:
        """Run by the decoder on every header, before its payload is buffered."""
        uuid_hex = h.uuid.hex()
        if self.uuid_hex is None:
            refusal = self.server.admission.first_header_refusal(uuid_hex, h.type)
            if refusal:
                raise FrameError(refusal, f"type {h.type}")
            return
        refusal = next_header_refusal(self.uuid_hex, self.d4_type, uuid_hex, h.type,
                                      self.server.admission.accepted_types)
        if refusal:
            raise FrameError(refusal, f"uuid {uuid_hex} type {self.d4_type} -> {h.type}")
        self.d4_type = h.type

    def safe_drain(self) -> None:
        """``drain``, where an unexpected error costs this session only (logged, counted)."""
        try:
            self.drain()
        except Exception:
            log.exception("ingress: session %s (sensor %s): internal error", self.session_id, self.uuid_hex)
            self.reject("internal_error")

    def drain(self) -> None:
        """Process every complete frame in the decoder."""
        if self.signer is None:
            try:
                header = self.decoder.peek_header()
            except FrameError as exc:
                self.reject(exc.reason, exc.detail)
                return
            if header is not None:
                self._begin_admission(header)
            return
        signer = self.signer
        pcap_parts: list[bytes] = []
        count = size = 0
        failure: FrameError | Rejection | None = None
        try:
            while (frame := self.decoder.next_frame()) is not None:
                if not signer.verify(frame):
                    raise Rejection("bad_hmac", f"sensor {self.uuid_hex} frame of {frame.header.size} bytes")
                count += 1
                size += len(frame.payload)
                self.last_ts = frame.header.timestamp
                if frame.header.type == 1:
                    pcap_parts.append(frame.payload)
                else:
                    self._other(frame)
        except (FrameError, Rejection) as exc:
            failure = exc
        self.server.count_frames(self.d4_type, count, size)
        try:
            self._feed_pcap(pcap_parts)  # the frames before a bad one were valid
        except Rejection as exc:
            failure = exc
        if failure is not None:
            self.reject(failure.reason, failure.detail)

    def _begin_admission(self, header: Header) -> None:
        self.uuid_hex = header.uuid.hex()
        self.d4_type = header.type
        self.admitting = True
        assert self.transport is not None
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._admit())

    async def _admit(self) -> None:
        assert self.uuid_hex is not None
        try:
            key = await self.server.keys.key_for(self.uuid_hex, self.peer)
            if self.closed:
                return
            self.server.register(self)  # duplicate (uuid, type) check, after the await
        except Rejection as exc:
            self.admitting = False
            self.reject(exc.reason, exc.detail)
            return
        except Exception:  # a bug must cost this session only
            log.exception("ingress: session %s (sensor %s): admission failed", self.session_id, self.uuid_hex)
            self.reject("internal_error")
            return
        self.signer = FrameSigner(key)
        if self.d4_type == 1:
            self.assembler = PcapAssembler(self.server.cfg.batch_bytes, self.server.cfg.batch_age)
        self.admitting = False
        log.info("ingress: session %s from %s: sensor %s type %d", self.session_id, self.peer,
                 self.uuid_hex, self.d4_type)
        if not self.server.paused:
            assert self.transport is not None
            self.transport.resume_reading()
        self.safe_drain()

    def _feed_pcap(self, parts: list[bytes]) -> None:
        if not parts or self.assembler is None:
            return
        try:
            batches = self.assembler.feed(parts[0] if len(parts) == 1 else b"".join(parts))
        except PcapStreamError as exc:
            self._produce_pcap(exc.batches)
            metrics.INGRESS_ASSEMBLER_ERRORS.labels(exc.reason).inc()
            raise Rejection(f"pcap_{exc.reason}", exc.detail) from None
        self._produce_pcap(batches)

    def _other(self, frame: Frame) -> None:
        now = time.monotonic()
        if frame.header.type == 2:
            try:
                objects = self.meta.feed(frame.payload)
            except CutError as exc:
                raise Rejection(exc.reason, exc.detail) from None
            for obj, raw in objects:
                self.meta_type = obj["type"]
                self._produce_record(2, raw)
            return
        if self.lines is None:
            self.lines = LineCutter(self.server.cfg.batch_bytes)
        for data in self.lines.feed(frame.payload, now):
            self._produce_record(frame.header.type, data)

    # --- output

    def _produce_pcap(self, batches: list[PcapChunkBatch]) -> None:
        now_s = time.time()
        for batch in batches:
            metrics.INGRESS_CAPTURE_AGE.observe(max(0.0, now_s - batch.last_ts_ns / 1e9))
            rec = records.pcap_batch(batch, sensor_uuid=self.uuid_hex or "", site=self.server.site, source="d4",
                                     session_id=self.session_id, seq=self.seq)
            self.seq += 1
            self.server.produce(self.server.cfg.topic, records.encode("PcapBatch", rec), self.uuid_hex or "",
                                packets=batch.count)

    def _produce_record(self, d4_type: int, data: bytes) -> None:
        rec = {
            "sensor_uuid": self.uuid_hex or "",
            "site": self.server.site,
            "source": "d4",
            "session_id": self.session_id,
            "seq": self.seq,
            "d4_type": d4_type,
            "meta_type": self.meta_type if d4_type == 254 else None,
            "d4_timestamp": self.last_ts,
            "created_ns": records.now_ns(),
            "data": data,
        }
        self.seq += 1
        self.server.produce(self.server.cfg.records_topic, records.encode("D4Record", rec), self.uuid_hex or "")

    def tick(self, now: float) -> None:
        """Close batches and line records by age."""
        if self.assembler is not None:
            self._produce_pcap(self.assembler.flush_due(now))
        if self.lines is not None:
            for data in self.lines.due(now, self.server.cfg.batch_age):
                self._produce_record(self.d4_type, data)

    def finish(self) -> None:
        """End of session: produce what the valid frames carried (once)."""
        if self.closed:
            return
        self.closed = True
        if self.assembler is not None:
            try:
                self._produce_pcap(self.assembler.close())
            except PcapStreamError as exc:
                # a stream cut inside a record (network cut): the sender resends from a record
                # boundary in its next session, so only the whole records are kept
                self._produce_pcap(exc.batches)
                metrics.INGRESS_ASSEMBLER_ERRORS.labels(exc.reason).inc()
                log.info("ingress: session %s (sensor %s) ended inside a pcap record: %s",
                         self.session_id, self.uuid_hex, exc.detail)
        if self.lines is not None:
            for data in self.lines.close():
                self._produce_record(self.d4_type, data)
        if self.decoder.buffered:
            log.info("ingress: session %s (sensor %s, %s) closed with %d bytes of an incomplete frame",
                     self.session_id, self.uuid_hex, self.peer, self.decoder.buffered)

    def reject(self, reason: str, detail: str = "") -> None:
        """Close the connection for a rule violation (counted and logged once)."""
        if self.closed:
            return
        metrics.INGRESS_REJECTIONS.labels(reason).inc()
        log.warning("ingress: rejected uuid=%s peer=%s reason=%s%s", self.uuid_hex or "-", self.peer, reason,
                    f" ({detail})" if detail else "")
        self.finish()
        if self.transport is not None:
            self.transport.abort()


class IngressServer:
    """The listening D4 server, its sessions, the periodic flush and the backpressure switch."""

    def __init__(self, cfg: Config, producer: BlockingProducer, keys: KeySource,
                 tls: ssl.SSLContext | None) -> None:
        self.cfg = cfg.ingress
        self.site = cfg.site
        self.admission = keys.admission
        self.keys = keys
        self.tls = tls
        self.inflight = Inflight(producer, self.cfg.max_inflight_bytes)
        self.sessions: set[Session] = set()
        self.active: dict[tuple[str, int], Session] = {}
        self.paused = False
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._frames: dict[int, Any] = {}  # label children, created on first use

    async def start(self) -> int:
        host, port = parse_host_port(self.cfg.listen, allow_zero=True)
        loop = asyncio.get_running_loop()
        # "*" listens on every address of both families (d4-core listens on "::" dual-stack)
        self._server = await loop.create_server(lambda: Session(self), None if host == "*" else host, port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ingress: listening on %s:%d (%s)", host, self.port, "TLS" if self.tls else "plain TCP")
        return self.port

    async def run_until(self, stop: Callable[[], bool]) -> None:
        """Serve until ``stop()`` is true, then close sessions and flush the producer."""
        last_idle_check = time.monotonic()
        while not stop():
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for s in list(self.sessions):
                s.tick(now)
            self.inflight.producer.poll(0)
            self._backpressure()
            metrics.INGRESS_INFLIGHT.set(self.inflight.bytes)
            if now - last_idle_check >= 1.0:
                last_idle_check = now
                self._idle_check(now)
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.finish()
            if s.transport is not None:
                s.transport.close()
        await asyncio.sleep(0)
        self.inflight.producer.flush(30)

    def _backpressure(self) -> None:
        if not self.paused and self.inflight.over:
            self.paused = True
            metrics.INGRESS_PAUSED.set(1)
            for s in self.sessions:
                if s.transport is not None and not s.admitting:
                    s.transport.pause_reading()
            log.debug("ingress: broker behind (%d bytes in flight): reading paused", self.inflight.bytes)
        elif self.paused and self.inflight.drained:
            self.paused = False
            metrics.INGRESS_PAUSED.set(0)
            now = time.monotonic()
            for s in self.sessions:
                s.last_data = now  # paused time is not idle time
                if s.transport is not None and not s.admitting and not s.closed:
                    s.transport.resume_reading()

    def _idle_check(self, now: float) -> None:
        if self.paused:
            return
        header_timeout = self.cfg.header_timeout
        for s in list(self.sessions):
            if now - s.last_data > self.cfg.idle_timeout:
                s.reject("idle_timeout", f"no data for {self.cfg.idle_timeout:.0f} s")
            elif s.uuid_hex is None and now - s.opened_at > header_timeout:
                # d4-core's rule: a connection holds a session slot only once it has said who it is
                s.reject("no_header", f"no D4 header within {header_timeout:.0f} s")

    # --- session bookkeeping

    def opened(self, s: Session) -> None:
        self.sessions.add(s)
        metrics.INGRESS_SESSIONS_ACTIVE.inc()
        if len(self.sessions) > self.cfg.max_sessions:
            s.reject("too_many_sessions", f"limit {self.cfg.max_sessions}")
        elif self.admission.ip_refused(s.peer):
            s.reject("blacklisted_ip")
        elif self.paused and s.transport is not None:
            s.transport.pause_reading()

    def closed(self, s: Session) -> None:
        if s in self.sessions:
            self.sessions.discard(s)
            metrics.INGRESS_SESSIONS_ACTIVE.dec()
        if s.registered is not None and self.active.get(s.registered) is s:
            del self.active[s.registered]

    def register(self, s: Session) -> None:
        """One session per (uuid, type), except the meta types 2/254 (as d4-core)."""
        assert s.uuid_hex is not None
        if s.d4_type in (2, 254):
            metrics.INGRESS_SESSIONS.inc()
            return
        ident = (s.uuid_hex, s.d4_type)
        if ident in self.active:
            raise Rejection("duplicate_session", f"session {self.active[ident].session_id} is open")
        self.active[ident] = s
        s.registered = ident
        metrics.INGRESS_SESSIONS.inc()

    def count_frames(self, d4_type: int, frames: int, size: int) -> None:
        if frames:
            counter = self._frames.get(d4_type)
            if counter is None:
                counter = self._frames[d4_type] = metrics.INGRESS_FRAMES.labels(str(d4_type))
            counter.inc(frames)
            metrics.INGRESS_BYTES.inc(size)

    def produce(self, topic: str, value: bytes, key: str, packets: int = 0) -> None:
        self.inflight.produce(topic, value, key)
        if packets:
            metrics.INGRESS_PACKETS.inc(packets)
        if not self.paused and self.inflight.over:
            self._backpressure()


def build_keys(cfg: Config) -> KeySource:
    """Admission rules and key source from the configuration (raises on bad files)."""
    ic = cfg.ingress
    keys = load_keys_file(ic.keys) if ic.keys else {}
    admission = Admission.build(keys, ic.hmac_key.reveal() if ic.hmac_key else None, ic.registration,
                                ic.blacklist_uuid, ic.blacklist_ip, ic.accepted_types)
    client = None
    if ic.redis:
        import redis.asyncio as aioredis  # only when d4-core's Redis is used

        # bounded waits: a stuck Redis refuses sensors (they retry) instead of hanging them
        client = aioredis.from_url(ic.redis, socket_timeout=5, socket_connect_timeout=5)
    return KeySource(admission, client)


def build_tls(cfg: Config) -> ssl.SSLContext | None:
    """Server TLS context, or None with --no-tls (refused unless listening on loopback)."""
    ic = cfg.ingress
    if ic.no_tls:
        host, _ = parse_host_port(ic.listen, allow_zero=True)
        if host == "*" or not ipaddress.ip_address(host).is_loopback:
            raise ValueError("--no-tls is only allowed on a loopback listen address")
        return None
    if not ic.cert:
        raise ValueError("--cert PEM (certificate and key) is required unless --no-tls")
    return server_context(ic.cert)


async def serve(cfg: Config, stop: Callable[[], bool], on_ready: Callable[[IngressServer], None] | None = None,
                producer: BlockingProducer | None = None) -> int:
    """Run the ingress server until ``stop()``; ``on_ready(server)`` once it listens."""
    keys = build_keys(cfg)
    tls = build_tls(cfg)
    warm_up()
    server = IngressServer(cfg, producer or make_producer(cfg.kafka, "ingress"), keys, tls)
    await server.start()
    if on_ready is not None:
        on_ready(server)
    try:
        await server.run_until(stop)
    finally:
        if keys.redis is not None:
            await keys.redis.aclose()
    return 0


def run(cfg: Config) -> int:
    """Entry point of ``d4-bridge ingress``."""
    shutdown: Shutdown = start_hop(cfg, "ingress")
    try:
        return asyncio.run(serve(cfg, shutdown.is_set))
    except (ValueError, KeysFileError, OSError, ssl.SSLError) as exc:
        log.error("ingress: %s", exc)
        return 2
