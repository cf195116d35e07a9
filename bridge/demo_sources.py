"""The demo's capture sources: one synthetic telescope cut into three sensors' views.

One private site watches the telescope 10.1.0.0/16 (the prefix of the D4 blog post this
product replaces). Three sources capture disjoint parts of it:

* ``sensor-1`` (10.1.0.0/17, plus the site's IPv6 noise) and ``sensor-2`` (10.1.128.0/18)
  stream live through ``d4-bridge send`` (D4 over TLS), paced at capture time;
* ``d4-core`` (10.1.192.0/18) stands for the private d4-core server: its captures arrive as
  rotated ``.cap.gz`` files whose paths are LPUSHed on the Redis analyzer queue, exactly as
  d4-core's file compressor does. Its queue already holds the last ``backlog_s`` seconds
  of rotated files when the demo starts (what the old 300 s pipeline leaves behind).

The attacks run through the backlog and the live part, so that the hub can see them for the
60 s that Moore's thresholds ask for before calling something an attack.
"""

from __future__ import annotations

import gzip
import ipaddress
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bridge import traffic
from bridge.pcap import LINKTYPE_ETHERNET, PcapHeader, global_header

SITE_TELESCOPE = "10.1.0.0/16"
SITE_TELESCOPE6 = "fd00:d4::/64"
PRIVATE = ("10.0.0.0/8", "fd00::/8")
# The site's sanitization: tcprewrite --pnat pairs covering every private prefix it captures.
PNAT = "10.1.0.0/16:192.168.0.0/16,[fd00:d4::/64]:[2001:db8:d4::/64]"
PUBLIC_TELESCOPE = "192.168.0.0/16"
SOURCE_PREFIXES = {"sensor-1": "10.1.0.0/17", "sensor-2": "10.1.128.0/18", "d4-core": "10.1.192.0/18"}
LIVE_SENSORS = ("sensor-1", "sensor-2")
QUEUE_SOURCE = "d4-core"
IPV6_SOURCE = "sensor-1"
ATTACK_HEAD_START_S = 75.0  # attacks began this long before live traffic (an attack needs 60 s)
HEADER = PcapHeader(LINKTYPE_ETHERNET, 65535, False)
_NS = 1_000_000_000


def demo_attacks(start_s: float, duration_s: float) -> tuple[traffic.Attack, ...]:
    """The five attack shapes of backscatter.md §H, strong enough that a /18 sees > 0.5 packets/s."""
    return tuple(
        traffic.Attack(a.kind, a.victim, a.port, a.pps * 10, start_s, duration_s, a.responder)
        for a in traffic.reference_attacks()
    )


@dataclass(frozen=True)
class Source:
    """What one source captured: canonical records in time order, their offsets and times."""

    name: str
    packets: bytes
    offsets: np.ndarray
    ts_ns: np.ndarray

    @property
    def count(self) -> int:
        return int(self.offsets.shape[0])

    def slice(self, first: int, end: int) -> bytes:
        """Records ``first`` .. ``end - 1`` as bytes."""
        if first >= end:
            return b""
        stop = int(self.offsets[end]) if end < self.count else len(self.packets)
        return self.packets[int(self.offsets[first]):stop]

    def index_at(self, t_ns: int) -> int:
        """Number of records captured before ``t_ns``."""
        return int(np.searchsorted(self.ts_ns, t_ns, side="left"))

    def then(self, later: "Source") -> "Source":
        """This capture followed by ``later`` (which starts after it ends)."""
        return Source(self.name, self.packets + later.packets,
                      np.concatenate([self.offsets, later.offsets + len(self.packets)]),
                      np.concatenate([self.ts_ns, later.ts_ns]))


def _assign(gen: traffic.GeneratedTraffic) -> np.ndarray:
    """Source index (into SOURCE_PREFIXES) of each packet: by telescope address; IPv6 to IPV6_SOURCE."""
    names = list(SOURCE_PREFIXES)
    out = np.full(gen.count, names.index(IPV6_SOURCE), dtype=np.int64)
    addr = gen.telescope_addr.astype(np.int64)
    for i, prefix in enumerate(SOURCE_PREFIXES.values()):
        net = ipaddress.IPv4Network(prefix)
        inside = (addr >= int(net.network_address)) & (addr <= int(net.broadcast_address))
        out[inside] = i
    return out


def _gather(gen: traffic.GeneratedTraffic, keep: np.ndarray, name: str) -> Source:
    """The records at indexes ``keep`` packed together as one source."""
    ends = np.append(gen.offsets[1:], len(gen.packets))
    lengths = (ends - gen.offsets)[keep]
    new_off = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    src = np.frombuffer(gen.packets, dtype=np.uint8)
    idx = np.repeat(gen.offsets[keep] - new_off, lengths) + np.arange(int(lengths.sum()))
    return Source(name, src[idx].tobytes(), new_off, gen.ts_ns[keep])


def _scenario(attacks_start_s: float, duration_s: float, seed: int, burst: bool) -> traffic.Scenario:
    bursts = (traffic.Burst("syn_flood", "198.51.100.99", 443, packets=8, start_s=0.0, duration_s=duration_s),)
    return traffic.Scenario(telescope=(SITE_TELESCOPE,), telescope6=SITE_TELESCOPE6, seed=seed,
                            attacks=demo_attacks(attacks_start_s, duration_s), bursts=bursts if burst else ())


def _split(gen: traffic.GeneratedTraffic) -> dict[str, Source]:
    owner = _assign(gen)
    return {name: _gather(gen, np.nonzero(owner == i)[0], name) for i, name in enumerate(SOURCE_PREFIXES)}


def build_backlog(end_ns: int, backlog_s: float, rate: float, seed: int = 4) -> Source:
    """What the d4-core server captured in the ``backlog_s`` seconds before ``end_ns``.

    The attacks start ``ATTACK_HEAD_START_S`` before ``end_ns``, so by the time live traffic
    flows the hub has watched them for longer than the 60 s an attack needs.
    """
    head = min(ATTACK_HEAD_START_S, backlog_s)
    gen = traffic.generate(_scenario(backlog_s - head, head, seed, burst=False),
                           end_ns - int(backlog_s * _NS), backlog_s, rate)
    return _split(gen)[QUEUE_SOURCE]


def build_live(start_ns: int, live_s: float, rate: float, seed: int = 5) -> tuple[dict[str, Source], list]:
    """Every source's capture from ``start_ns`` for ``live_s`` seconds, and the simulated attacks."""
    gen = traffic.generate(_scenario(0.0, live_s, seed, burst=True), start_ns, live_s, rate)
    return _split(gen), gen.truth


def pace(source: Source, header: PcapHeader, write: Callable[[bytes], None], stop: threading.Event,
         tick: float = 0.05) -> None:
    """Write the pcap global header, then each record once the wall clock passes its capture time."""
    write(global_header(header.linktype, header.snaplen, header.nsec))
    sent = 0
    while sent < source.count and not stop.is_set():
        ready = source.index_at(time.time_ns() + 1)
        if ready > sent:
            write(source.slice(sent, ready))
            sent = ready
        else:
            stop.wait(tick)


class D4CoreQueue:
    """Plays d4-core's file compressor: rotated ``.cap.gz`` files pushed on ``analyzer:1:<queue>``.

    Layout and Redis writes as d4-core: ``<data>/<uuid>/1/YYYY/MM/DD/<uuid>-YYYY-MM-DD-HHMMSS.cap.gz``,
    ``LPUSH analyzer:1:<queue uuid> <path>`` in the analyzer DB, ``HSET analyzer:<queue uuid>
    last_updated`` in the metadata DB.
    """

    def __init__(self, source: Source, header: PcapHeader, data_dir: Path, analyzer_redis, metadata_redis,
                 queue_uuid: str, sensor_uuid: str, rotate_s: float) -> None:
        self.source = source
        self.header = header
        self.dir = data_dir
        self.analyzer = analyzer_redis
        self.metadata = metadata_redis
        self.queue_uuid = queue_uuid
        self.sensor = uuidlib.UUID(sensor_uuid).hex
        self.rotate_ns = int(rotate_s * _NS)
        self.done = 0  # records already in pushed files
        self.files = 0

    def extend(self, later: Source) -> None:
        """More capture (the live part after the backlog)."""
        self.source = self.source.then(later)

    def rotate_until(self, t_ns: int) -> None:
        """Close and push every rotation period that ended before ``t_ns`` (one file each)."""
        while self.done < self.source.count:
            period_end = (int(self.source.ts_ns[self.done]) // self.rotate_ns + 1) * self.rotate_ns
            if period_end > t_ns:
                return
            self._push(self.source.index_at(period_end))

    def flush(self) -> None:
        """Push every remaining record as one last file (d4-core does this when a session ends)."""
        if self.done < self.source.count:
            self._push(self.source.count)

    def _push(self, end: int) -> None:
        stamp = time.gmtime(int(self.source.ts_ns[self.done]) // _NS)
        day = self.dir / self.sensor / "1" / time.strftime("%Y/%m/%d", stamp)
        day.mkdir(parents=True, exist_ok=True)
        path = day / f"{uuidlib.UUID(self.sensor)}-{time.strftime('%Y-%m-%d-%H%M%S', stamp)}.cap.gz"
        if path.exists():  # two files in one second (d4-core: <file>.cap.<i>.gz)
            path = path.with_name(path.name.replace(".cap.gz", f".cap.{self.files}.gz"))
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(global_header(self.header.linktype, self.header.snaplen, self.header.nsec))
            f.write(self.source.slice(self.done, end))
        self.analyzer.lpush(f"analyzer:1:{self.queue_uuid}", str(path))
        self.metadata.hset(f"analyzer:{self.queue_uuid}", "last_updated", time.time())
        self.done = end
        self.files += 1
