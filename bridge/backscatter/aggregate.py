"""Attack-vector aggregation of classified backscatter (pure core).

Corsaro/Moore rules (backscatter.md §H): one vector per (victim, attacked
protocol); packets, bytes, first/last seen, distinct telescope addresses, ports,
ICMP mismatches, the largest packet count in a 60 s window sliding by 10 s,
per-site and per-sensor counts; idle timeout 300 s; an attack when packets >= 25,
duration >= 60 s and peak >= 30 packets/minute.

Multi-site merge (§I), in event time:
- the watermark is the slowest *active* sensor's newest time minus the allowed
  lateness (default 360 s: d4-core's 300 s file rotation delivers a site's packets
  minutes late, and they must join the same attack); vectors idle for the idle
  timeout behind it are final. A packet older than the watermark still joins its
  open vector; only one whose vector is gone is too late: counted (stats, and the
  ``late_packets`` of the next event), never merged into a second attack;
- a sensor is active until it has been silent for ``source_idle_s`` of processing
  time (the clock and the silence come with the input, in ``tick``); when every
  sensor is silent the input has ended: every open vector is final, as at the end
  of an offline run (``finish``);
- byte-identical IP packets seen by two sensors within ``dedup_window_s`` are
  counted once (as are exact replays of one sensor's packet after a restart);
- extrapolation: each sensor watches either announced addresses (a count it
  told the hub, its own and disjoint from every other sensor's) or the prefixes
  configured for its site (unions counted once). The estimated rate is
  packets x 2^32 / address-seconds, where address-seconds integrate, over the
  attack, the addresses of the contributing sensors that were capturing at each
  moment (so a sensor that joined late, or paused, is not counted for the time it
  was not looking). With every sensor capturing throughout this is Moore's
  observed rate x 2^32 / n.

Events follow the data: ``declared`` when a vector passes the thresholds,
``update`` when its packets grew by ``update_growth`` or a sensor joined, at most
every ``update_interval_s`` (processing time when ticks give a clock, else event
time), ``final`` when it ends. The newest event per attack id is the truth.

Layout, chosen for speed and bounded memory:
- every tracked vector is a row of numpy columns, updated by one compiled loop per
  batch; a dict maps (victim, protocol) to rows; a full table evicts the vectors
  seen least recently (undeclared ones first) and counts them;
- vectors with two or more packets also get a Python detail record (exact
  telescope addresses up to a cap, ports, sites, sensors); the first packet's
  details wait in columns until then, so one-packet noise costs no Python work.

Everything is a function of the input sequence (no clocks of its own), which
makes a restored snapshot replay to exactly the same events.
"""

from __future__ import annotations

import bisect
import io
import ipaddress
import json
from dataclasses import asdict, dataclass, field, replace
from itertools import repeat
from typing import Any, Iterable, Mapping

import numpy as np

from bridge.backscatter.classes import CLASS_NAMES, FIRST_BACKSCATTER, PROTOCOL_NAMES
from bridge.backscatter.classify import Classified, class_counts, classify
from bridge.backscatter.telescope import Telescopes
from bridge.compiled import kernels
from bridge.pcap import pack_record

_loops = kernels("backscatter")

_NS = 1_000_000_000
_BS_CLASSES = len(CLASS_NAMES) - FIRST_BACKSCATTER
_SNAPSHOT_VERSION = 3  # 3: sources (announcements, activity, silence), watermark, update bookkeeping
_NEVER = int(np.iinfo(np.int64).min)
_INITIAL_ROWS = 4096  # the table doubles up to max_victims as victims appear


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds and bounds; detection defaults are Corsaro's / Moore 2006 (backscatter.md §H)."""

    min_packets: int = 25
    min_duration_s: float = 60.0
    min_ppm: int = 30
    idle_timeout_s: float = 300.0
    bucket_s: float = 10.0
    window_buckets: int = 6  # 60 s window sliding by 10 s
    allowed_lateness_s: float = 360.0  # d4-core's 300 s rotation plus a minute of delivery
    update_interval_s: float = 10.0  # at most one update per attack this often
    update_growth: float = 0.1  # an update needs 10% more packets (or a new sensor)
    source_idle_s: float = 30.0  # processing time: a sensor this silent stops holding event time back
    max_source_lag_s: float = 900.0  # event time: a sensor this far behind the newest one does not hold it back
    coverage_gap_s: float = 20.0  # no packet for longer: the sensor was not capturing
    dedup_window_s: float = 5.0  # two sites' copies of a packet: clock offsets up to +-2.5 s
    dedup_slots: int = 1 << 18  # 5 MB; about a minute of backscatter at 4,000 packets/s per partition
    max_victims: int = 262_144
    max_addresses_per_victim: int = 1 << 18
    max_ports: int = 16


PROFILES: dict[str, DetectorConfig] = {
    "default": DetectorConfig(),
    # Our recommendation (not from a paper, §H.7): a /24../20 telescope sees ~n/2^32 of an
    # attack's replies, so the packet and rate thresholds come down by roughly that factor.
    "small": DetectorConfig(min_packets=5, min_ppm=2, min_duration_s=60.0),
}


def activity_spans(ts_ns: np.ndarray, gap_ns: int) -> list[tuple[int, int]]:
    """Runs [start, end] of capture activity: packet times cut where none came for more than ``gap_ns``."""
    if not ts_ns.size:
        return []
    t = ts_ns if bool(np.all(ts_ns[1:] >= ts_ns[:-1])) else np.sort(ts_ns)
    cut = np.flatnonzero(np.diff(t) > gap_ns)
    starts = np.concatenate((t[:1], t[cut + 1]))
    ends = np.concatenate((t[cut], t[-1:]))
    return list(zip(starts.tolist(), ends.tolist()))


def merge_spans(spans: list[list[int]], new: Iterable[tuple[int, int]], gap_ns: int) -> None:
    """Add ``new`` runs to the sorted, disjoint ``spans`` in place (runs closer than ``gap_ns`` join)."""
    for a, b in new:
        i = bisect.bisect_left(spans, [a, b])
        spans.insert(i, [a, b])
        j = max(i - 1, 0)
        while j + 1 < len(spans):  # the new run can only touch its neighbours and what it covers
            if spans[j + 1][0] <= spans[j][1] + gap_ns:
                spans[j][1] = max(spans[j][1], spans.pop(j + 1)[1])
            elif j >= i:
                break
            else:
                j += 1


@dataclass
class _Detail:
    addresses: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    sites: dict[str, int] = field(default_factory=dict)
    sensors: dict[str, int] = field(default_factory=dict)


@dataclass
class Source:
    """What the aggregator knows of one sensor."""

    site: str = ""  # site named by its records
    announced_site: str = ""  # site it announced ("" = none)
    announced: int = 0  # monitored addresses it announced (0 = none: the site's prefixes apply)
    max_ts: int = _NEVER  # newest event time
    heard_ns: int = _NEVER  # processing time of the latest tick that named it
    group: str = ""  # input partition its records are read from ("" = not known: never silent)
    spans: list[list[int]] = field(default_factory=list)  # capture activity, event time

    @property
    def site_name(self) -> str:
        return self.announced_site or self.site


@dataclass
class Stats:
    """Counters since start (the hop turns deltas into metrics)."""

    classes: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES), np.int64))
    outside_telescope: int = 0
    late: int = 0
    duplicates: int = 0
    dedup_overflow: int = 0
    evicted: int = 0
    expired: int = 0
    inputs_ended: int = 0
    events: dict[str, int] = field(default_factory=lambda: {"declared": 0, "update": 0, "final": 0})




_COLUMNS = {  # name: (dtype, extra shape)
    "key": (np.uint64, ()), "packets": (np.int64, ()), "bytes": (np.int64, ()), "first": (np.int64, ()),
    "last": (np.int64, ()), "mism": (np.int64, ()), "head": (np.int64, ()), "max_ppm": (np.int64, ()),
    "tele0": (np.uint32, ()), "port0": (np.uint16, ()), "spoofed0": (np.uint16, ()), "site0": (np.int32, ()),
    "sensor0": (np.int32, ()), "declared": (np.bool_, ()), "seq": (np.int64, ()), "attack_first": (np.int64, ()),
    "classes": (np.int64, (_BS_CLASSES,)), "live": (np.bool_, ()), "nsensors": (np.int32, ()),
    "emitted_packets": (np.int64, ()), "emitted_sensors": (np.int32, ()), "emitted_at": (np.int64, ()),
}


class Aggregator:
    """Backscatter attack detector over a sequence of pcap batches and ticks."""

    def __init__(self, telescopes: Telescopes, config: DetectorConfig = DetectorConfig()) -> None:
        self.telescopes = telescopes
        self.config = config
        self.cols: dict[str, np.ndarray] = {}
        self.free: list[int] = []
        self._grow(min(config.max_victims, _INITIAL_ROWS))
        self.index: dict[int, int] = {}
        self.details: dict[int, _Detail] = {}
        self.sites: list[str] = []
        self.sensors: list[str] = []
        self.sources: list[Source] = []  # aligned with self.sensors
        self._sensor_idx: dict[str, int] = {}
        self.groups: dict[str, list[int]] = {}  # input partition -> [latest tick time, read since]
        self.dedup_h = np.zeros(config.dedup_slots, np.uint64)
        self.dedup_t = np.zeros(config.dedup_slots, np.int64)
        self.dedup_s = np.zeros(config.dedup_slots, np.int32)
        self.wm = _NEVER  # watermark: vectors idle for the idle timeout behind it are final; never decreases
        self.clock = _NEVER  # processing time, from ticks
        self.ended = False  # every sensor silent: the open vectors were made final (until one is heard again)
        self.late_pending = 0  # too-late packets not yet reported in an event
        self.swept_at = _NEVER
        self.stats = Stats()

    # ------------------------------------------------------------------ input

    @property
    def max_ts(self) -> int:
        """Newest event time seen from any sensor."""
        return max((s.max_ts for s in self.sources), default=_NEVER)

    @property
    def active_attacks(self) -> int:
        """Declared attacks not yet final."""
        return int(np.count_nonzero(self.cols["declared"]))

    def silent(self, src: Source) -> bool:
        """True when ``src`` has been silent for source_idle_s while its input partition was being read."""
        g = self.groups.get(src.group)
        return g is not None and g[0] - max(src.heard_ns, g[1]) > self.config.source_idle_s * _NS

    def process(self, cols: Classified, site: str, sensor: str, activity: bool = True) -> list[dict[str, Any]]:
        """Add one classified batch from ``sensor`` at ``site``; return the events it causes.

        ``activity``: the batch's packet times show when the sensor was capturing (all of its
        capture offline; in the hop, backscatter only, completed by ``tick``).
        """
        cfg = self.config
        self.stats.classes += class_counts(cols)
        source = self._sensor_index(sensor)
        src = self.sources[source]
        src.site = site
        if activity and cols.count:
            merge_spans(src.spans, activity_spans(cols.ts_ns, int(cfg.coverage_gap_s * _NS)),
                        int(cfg.coverage_gap_s * _NS))
        keep = cols.backscatter()
        if not src.announced:  # an announced count replaces prefixes: the hub cannot know them
            inside = self.telescopes.of(src.site_name).contains(cols.telescope)
            self.stats.outside_telescope += int(np.count_nonzero(keep & ~inside))
            keep &= inside
        self._drop_late(cols, keep)
        if cols.count:
            src.max_ts = max(src.max_ts, int(cols.ts_ns.max()))
        idx = np.nonzero(keep)[0]
        if idx.size:
            dup, overflow = _loops.dedup(cols.digest[idx], cols.ts_ns[idx], np.full(idx.size, source, np.int32),
                                   self.dedup_h, self.dedup_t, self.dedup_s, self._dedup_horizon,
                                   int(cfg.dedup_window_s * _NS))
            self.stats.duplicates += int(np.count_nonzero(dup))
            self.stats.dedup_overflow += int(overflow)
            idx = idx[~dup]
        events: list[dict[str, Any]] = []
        touched = np.zeros(0, np.int64)
        if idx.size:
            touched = self._aggregate(cols, idx, src.site_name, sensor, events)
        events += self._decide(touched)
        self._advance()
        events += self._sweep()
        return events

    def tick(self, now_ns: int, groups: Mapping[str, int] | None = None,
             progress: Iterable[tuple[str, str, str, int, Iterable[tuple[int, int]]]] = (),
             announcements: Iterable[tuple[str, str, int]] = ()) -> list[dict[str, Any]]:
        """Processing time ``now_ns`` and what the input did since the last tick.

        ``groups``: input partition -> processing time its reading began (their readers are
        alive); ``progress``: (sensor, site, input partition, newest event time, capture
        spans) of every sensor heard since; ``announcements``: (sensor, site, monitored
        addresses) a sensor said it watches.
        """
        gap = int(self.config.coverage_gap_s * _NS)
        self.clock = max(self.clock, int(now_ns))
        for key, since in (groups or {}).items():
            g = self.groups.setdefault(key, [_NEVER, _NEVER])
            g[0], g[1] = max(g[0], int(now_ns)), int(since)
        for sensor, site, monitored in announcements:
            src = self.sources[self._sensor_index(sensor)]
            src.announced_site, src.announced = site, int(monitored)
        for sensor, site, group, newest, spans in progress:
            src = self.sources[self._sensor_index(sensor)]
            src.site, src.group = site, group
            src.heard_ns = max(src.heard_ns, int(now_ns))
            src.max_ts = max(src.max_ts, int(newest))
            merge_spans(src.spans, spans, gap)
            self.ended = False
        sending = [s for s in self.sources if s.max_ts != _NEVER]  # an announcement alone holds nothing back
        if sending and not self.ended and all(self.silent(s) for s in sending):
            return self._end_of_input()
        self._advance()
        return self._sweep() + self._updates(self._live_rows())

    @property
    def _dedup_horizon(self) -> int:
        """Packets remembered for copies until the watermark is the window past them."""
        return max(self.wm - int(self.config.dedup_window_s * _NS), _NEVER)

    def finish(self) -> list[dict[str, Any]]:
        """End of input: expire every vector (final events for declared attacks)."""
        return self._expire(self._live_rows())

    # ------------------------------------------------------------------ internals

    def _end_of_input(self) -> list[dict[str, Any]]:
        """Every sensor went silent: the input ended, so every open vector is final now.

        The watermark moves to the newest time seen: a packet older than that arriving
        later (a site back from an outage) is too late for an attack already reported final.
        """
        self.ended = True
        self.stats.inputs_ended += 1
        self.wm = max(self.wm, self.max_ts)
        return self.finish()

    def _advance(self) -> None:
        """Move the watermark to the slowest active sensor's newest time minus the allowed lateness."""
        cfg = self.config
        newest = self.max_ts
        active = [s.max_ts for s in self.sources
                  if s.max_ts >= newest - cfg.max_source_lag_s * _NS and not self.silent(s)]
        if active:
            self.wm = max(self.wm, min(active) - int(cfg.allowed_lateness_s * _NS))

    def _drop_late(self, cols: Classified, keep: np.ndarray) -> None:
        """Unmark packets behind the watermark whose vector is gone (they would start a second attack)."""
        old = np.nonzero(keep & (cols.ts_ns < self.wm))[0]
        if not old.size:
            return
        keys = (cols.victim[old].astype(np.uint64) << np.uint64(8)) | cols.proto[old].astype(np.uint64)
        gone = old[np.fromiter((k not in self.index for k in keys.tolist()), np.bool_, old.size)]
        keep[gone] = False
        self.stats.late += int(gone.size)
        self.late_pending += int(gone.size)

    @property
    def capacity(self) -> int:
        """Rows allocated now (grows up to max_victims)."""
        return int(self.cols["key"].shape[0])

    def _grow(self, rows: int) -> None:
        """Reallocate the columns to ``rows`` rows (never above max_victims); new rows are free."""
        old = self.cols["key"].shape[0] if self.cols else 0
        rows = min(max(rows, old), self.config.max_victims)
        if rows == old:
            return
        shapes = {name: (dtype, extra) for name, (dtype, extra) in _COLUMNS.items()}
        shapes["ring"] = (np.int64, (self.config.window_buckets,))
        for name, (dtype, extra) in shapes.items():
            col = np.zeros((rows,) + extra, dtype)
            if old:
                col[:old] = self.cols[name]
            self.cols[name] = col
        self.free = list(range(rows - 1, old - 1, -1)) + self.free

    def _live_rows(self) -> np.ndarray:
        """Rows holding a vector, ascending."""
        return np.nonzero(self.cols["live"])[0]

    def _site_index(self, site: str) -> int:
        if site not in self.sites:
            self.sites.append(site)
        return self.sites.index(site)

    def _sensor_index(self, sensor: str) -> int:
        i = self._sensor_idx.get(sensor)
        if i is None:
            i = self._sensor_idx[sensor] = len(self.sensors)
            self.sensors.append(sensor)
            self.sources.append(Source())
        return i

    def _aggregate(self, cols: Classified, idx: np.ndarray, site: str, sensor: str, events: list) -> np.ndarray:
        c = self.cols
        keys = (cols.victim[idx].astype(np.uint64) << np.uint64(8)) | cols.proto[idx].astype(np.uint64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        inverse = inverse.reshape(-1)
        key_list = uniq.tolist()
        rows = np.array(list(map(self.index.get, key_list, repeat(-1, len(key_list)))), dtype=np.int64)
        new = np.nonzero(rows < 0)[0]
        if new.size > len(self.free):
            self._grow(max(2 * self.capacity, self.capacity + new.size - len(self.free)))
        if new.size > len(self.free):
            events += self._evict(new.size - len(self.free), protect=rows[rows >= 0])
        if new.size:
            taken = self.free[-new.size:][::-1]  # the rows pop() would hand out, in that order
            del self.free[-new.size:]
            rows[new] = taken
            c["key"][taken] = uniq[new]
            c["live"][taken] = True
            c["nsensors"][taken] = 1
            self.index.update(zip(uniq[new].tolist(), taken))
        before = c["packets"][rows].copy()
        _loops.update_vectors(rows[inverse], cols.ts_ns[idx], cols.ip_len[idx], cols.mismatch[idx], cols.cls[idx],
                cols.telescope[idx], cols.port[idx], cols.spoofed_port[idx],
                self._site_index(site), self._sensor_index(sensor),
                int(self.config.bucket_s * _NS), c["packets"], c["bytes"], c["first"], c["last"], c["mism"],
                c["ring"], c["head"], c["max_ppm"], c["classes"], c["tele0"], c["port0"], c["spoofed0"],
                c["site0"], c["sensor0"])
        self._add_details(cols, idx, rows, inverse, before, site, sensor)
        return rows

    def _add_details(self, cols: Classified, idx: np.ndarray, rows: np.ndarray, inverse: np.ndarray,
                     before: np.ndarray, site: str, sensor: str) -> None:
        """Exact sets for vectors with two or more packets (noise singletons never get here)."""
        c = self.cols
        wanted = np.nonzero(c["packets"][rows] >= 2)[0]
        if not wanted.size:
            return
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(rows.size + 1))
        for j in wanted.tolist():
            r = int(rows[j])
            sel = idx[order[bounds[j]:bounds[j + 1]]]
            detail = self.details.get(r)
            if detail is None:
                detail = self.details[r] = _Detail()
                if before[j] >= 1:  # the first packet arrived in an earlier batch: replay it from the columns
                    self._detail_add(detail, r, c["tele0"][r:r + 1], c["port0"][r:r + 1],
                                     self.sites[c["site0"][r]], self.sensors[c["sensor0"][r]])
            self._detail_add(detail, r, cols.telescope[sel], cols.port[sel], site, sensor)

    def _detail_add(self, detail: _Detail, row: int, tele: np.ndarray, ports: np.ndarray, site: str,
                    sensor: str) -> None:
        room = self.config.max_addresses_per_victim - len(detail.addresses)
        if room > 0:
            detail.addresses.update(tele[:room].tolist() if tele.size > room else tele.tolist())
        if int(self.cols["key"][row]) & 0xFF in (6, 17) and len(detail.ports) < 4096:
            detail.ports.update(np.unique(ports).tolist())
        detail.sites[site] = detail.sites.get(site, 0) + int(tele.size)
        detail.sensors[sensor] = detail.sensors.get(sensor, 0) + int(tele.size)
        self.cols["nsensors"][row] = len(detail.sensors)

    def _is_attack(self, rows: np.ndarray) -> np.ndarray:
        c, cfg = self.cols, self.config
        return ((c["packets"][rows] >= cfg.min_packets)
                & (c["last"][rows] - c["first"][rows] >= int(cfg.min_duration_s * _NS))
                & (c["max_ppm"][rows] >= cfg.min_ppm))

    @property
    def _now(self) -> int:
        """The time updates are paced by: processing time from ticks, else (offline) event time."""
        return self.clock if self.clock != _NEVER else self.max_ts

    def _decide(self, touched: np.ndarray) -> list[dict[str, Any]]:
        """Declare vectors that became attacks; update declared ones that changed materially."""
        if not touched.size:
            return []
        c = self.cols
        touched = touched[np.argsort(c["key"][touched], kind="stable")]  # a stable event order
        declared = c["declared"][touched]
        events = []
        for r in touched[~declared & self._is_attack(touched)].tolist():
            c["declared"][r] = True
            c["attack_first"][r] = c["first"][r]
            events.append(self._emit(r, "declared"))
        return events + self._updates(touched[declared])

    def _updates(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Updates of the declared ``rows`` that changed materially and were not updated too recently."""
        c, cfg = self.cols, self.config
        rows = rows[c["declared"][rows]]
        grown = ((c["packets"][rows] >= c["emitted_packets"][rows] * (1 + cfg.update_growth))
                 | (c["nsensors"][rows] != c["emitted_sensors"][rows]))
        due = grown & (self._now - c["emitted_at"][rows] >= int(cfg.update_interval_s * _NS))
        rows = rows[due]
        return [self._emit(r, "update") for r in rows[np.argsort(c["key"][rows], kind="stable")].tolist()]

    def _sweep(self) -> list[dict[str, Any]]:
        """Expire vectors idle for idle_timeout_s of event time (checked once per bucket of watermark progress)."""
        wm = self.wm
        if wm < self.swept_at + int(self.config.bucket_s * _NS):
            return []
        self.swept_at = wm
        rows = self._live_rows()
        idle = rows[self.cols["last"][rows] < wm - int(self.config.idle_timeout_s * _NS)]
        self.stats.expired += int(idle.size)
        events = self._expire(idle)
        self._forget_activity()
        return events

    def _forget_activity(self) -> None:
        """Drop capture spans no open vector reaches back to (they only serve the estimates)."""
        rows = self._live_rows()
        # a vector opened later starts at or after the watermark: spans before both are of no use
        horizon = min(int(self.cols["first"][rows].min()) if rows.size else self.wm, self.wm)
        horizon -= int(self.config.coverage_gap_s * _NS)
        for src in self.sources:
            while len(src.spans) > 1 and src.spans[0][1] < horizon:
                src.spans.pop(0)

    def _expire(self, rows: np.ndarray) -> list[dict[str, Any]]:
        c = self.cols
        rows = rows[np.argsort(c["key"][rows], kind="stable")]
        events = [self._emit(r, "final") for r in rows[c["declared"][rows]].tolist()]
        for r, key in zip(rows.tolist(), c["key"][rows].tolist()):
            del self.index[key]
            self.details.pop(r, None)
        for col in c.values():
            col[rows] = 0
        self.free += rows.tolist()
        return events

    def _evict(self, needed: int, protect: np.ndarray) -> list[dict[str, Any]]:
        """Free rows when the table is full: least recently seen first, declared attacks last."""
        c = self.cols
        rows = self._live_rows()
        rows = rows[~np.isin(rows, protect)]
        order = np.lexsort((c["key"][rows], c["last"][rows], c["declared"][rows]))
        count = min(rows.size, max(needed, self.config.max_victims // 16))
        victims = rows[order[:count]]
        if victims.size < needed:
            raise RuntimeError(f"state cap {self.config.max_victims} below one batch's new victims ({needed})")
        self.stats.evicted += int(victims.size)
        return self._expire(victims)

    # ------------------------------------------------------------------ estimates

    def _monitored(self, sources: list[Source]) -> int:
        """Addresses watched by ``sources`` together: announced counts add, configured prefixes unite."""
        announced = sum(s.announced for s in sources)
        prefix_sites = {s.site_name for s in sources if not s.announced}
        return announced + (self.telescopes.monitored(prefix_sites) if prefix_sites else 0)

    def _address_seconds(self, first: int, last: int, sources: list[Source]) -> float:
        """Addresses x seconds the ``sources`` watched between ``first`` and ``last``.

        A sensor counts as capturing over each run of its packets (runs join across gaps up to
        coverage_gap_s), so a steady sensor covers its whole time, one that started late or
        paused only the time it captured. Not padded: a pad would count a late starter as
        capturing before its first packet (a sensor that captures less than a packet per
        coverage_gap_s counts as not capturing).
        """
        runs = []
        points = {first, last}
        for src in sources:
            mine = [(max(a, first), min(b, last)) for a, b in src.spans if b > first and a < last]
            runs.append(mine)
            points.update(p for run in mine for p in run)
        edges = sorted(points)
        total = 0.0
        for lo, hi in zip(edges, edges[1:]):
            active = [src for src, mine in zip(sources, runs) if any(a <= lo and hi <= b for a, b in mine)]
            if active:
                total += (hi - lo) / _NS * self._monitored(active)
        return total

    # ------------------------------------------------------------------ events

    def _emit(self, r: int, status: str) -> dict[str, Any]:
        c, cfg = self.cols, self.config
        key = int(c["key"][r])
        victim = str(ipaddress.IPv4Address(key >> 8))
        proto = key & 0xFF
        detail = self.details.get(r)
        if detail is None:  # a declared vector always has details, unless thresholds allow one packet
            detail = _Detail({int(c["tele0"][r])}, {int(c["port0"][r])} if proto in (6, 17) else set(),
                             {self.sites[c["site0"][r]]: 1}, {self.sensors[c["sensor0"][r]]: 1})
        packets = int(c["packets"][r])
        first, last = int(c["first"][r]), int(c["last"][r])
        duration = (last - first) / _NS
        observed = packets / duration if duration > 0 else float(packets)
        sources = [self.sources[self._sensor_idx[s]] for s in sorted(detail.sensors)]
        monitored = self._monitored(sources)
        address_seconds = self._address_seconds(first, last, sources) if duration > 0 else 0.0
        estimated = packets * 2**32 / address_seconds if address_seconds > 0 else observed * 2**32 / max(monitored, 1)
        ports = sorted(detail.ports)
        event = {
            "attack_id": f"{victim}/{PROTOCOL_NAMES.get(proto, str(proto))}/{int(c['attack_first'][r])}",
            "status": status,
            "victim": victim,
            "protocol": PROTOCOL_NAMES.get(proto, "other"),
            "ports": ports[:cfg.max_ports],
            "first_seen_ns": first,
            "last_seen_ns": last,
            "packets": packets,
            "bytes": int(c["bytes"][r]),
            "telescope_addresses": len(detail.addresses),
            "max_packets_per_minute": int(c["max_ppm"][r]),
            "icmp_mismatches": int(c["mism"][r]),
            "observed_pps": observed,
            "monitored_addresses": monitored,
            "estimated_pps": estimated,
            "classes": {CLASS_NAMES[FIRST_BACKSCATTER + k]: int(v) for k, v in enumerate(c["classes"][r]) if v},
            "sites": dict(sorted(detail.sites.items())),
            "sensors": dict(sorted(detail.sensors.items())),
            "emitted_ns": 0,
            "seq": int(c["seq"][r]),
            "port_count": len(ports),
            "estimated_peak_pps": c["max_ppm"][r] / (cfg.bucket_s * cfg.window_buckets) * 2**32 / max(monitored, 1),
            "address_seconds": address_seconds,
            "late_packets": self.late_pending,
        }
        self.late_pending = 0
        c["seq"][r] += 1
        c["emitted_packets"][r] = packets
        c["emitted_sensors"][r] = c["nsensors"][r]
        c["emitted_at"][r] = self._now
        self.stats.events[status] += 1
        return event

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> bytes:
        """Serialize the whole state (live rows, details, dedup memory, sources, watermark)."""
        rows = self._live_rows()
        arrays = {f"col_{name}": col[rows] for name, col in self.cols.items()}
        live = (self.dedup_h != 0) & (self.dedup_t >= self._dedup_horizon)
        arrays["dedup_h"] = self.dedup_h[live]
        arrays["dedup_t"] = self.dedup_t[live]
        arrays["dedup_s"] = self.dedup_s[live]
        details = []
        for pos, r in enumerate(rows.tolist()):
            d = self.details.get(r)
            if d is not None:
                arrays[f"addr_{pos}"] = np.array(sorted(d.addresses), dtype=np.uint32)
                details.append([pos, sorted(d.ports), d.sites, d.sensors])
        meta = {"version": _SNAPSHOT_VERSION, "sources": [asdict(s) for s in self.sources],
                "groups": self.groups, "wm": self.wm, "clock": self.clock, "ended": self.ended,
                "late_pending": self.late_pending, "swept_at": int(self.swept_at),
                "sites": self.sites, "sensors": self.sensors, "details": details,
                "stats": {k: v for k, v in vars(self.stats).items() if k != "classes"},
                "classes": self.stats.classes.tolist()}
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return buf.getvalue()

    @classmethod
    def restore(cls, blob: bytes, telescopes: Telescopes, config: DetectorConfig = DetectorConfig()) -> "Aggregator":
        """Rebuild an aggregator from ``snapshot()`` bytes."""
        agg = cls(telescopes, config)
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            if meta.get("version") != _SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {meta.get('version')}")
            n = z["col_key"].shape[0]
            if n > config.max_victims:
                raise ValueError(f"snapshot holds {n} victims, above max_victims {config.max_victims}")
            agg.free = []
            agg._grow(max(n, _INITIAL_ROWS))
            for name, col in agg.cols.items():
                col[:n] = z[f"col_{name}"]
            agg.free = list(range(agg.capacity - 1, n - 1, -1))
            agg.index = {int(k): r for r, k in enumerate(agg.cols["key"][:n].tolist())}
            for pos, ports, sites, sensors in meta["details"]:
                agg.details[pos] = _Detail(set(z[f"addr_{pos}"].tolist()), set(ports), sites, sensors)
            order = np.argsort(z["dedup_t"], kind="stable")  # re-insert oldest first, as they came
            _loops.dedup(z["dedup_h"][order], z["dedup_t"][order], z["dedup_s"][order], agg.dedup_h, agg.dedup_t,
                   agg.dedup_s, _NEVER, -1)
        agg.sites, agg.sensors = meta["sites"], meta["sensors"]
        agg.sources = [Source(**s) for s in meta["sources"]]
        agg._sensor_idx = {s: i for i, s in enumerate(agg.sensors)}
        agg.groups = meta["groups"]
        agg.wm, agg.clock, agg.ended = meta["wm"], meta["clock"], meta["ended"]
        agg.late_pending, agg.swept_at = meta["late_pending"], meta["swept_at"]
        agg.stats = replace(Stats(), **meta["stats"], classes=np.array(meta["classes"], np.int64))
        return agg


def warm_up() -> None:
    """Load the classifier's and the aggregator's compiled loops now, not under the first batch.

    One SYN-ACK into a throwaway aggregator reaches every kernel with the argument types a
    hop passes (read-only bytes from a record), which is what numba specialises on.
    """
    ip = bytes.fromhex("4500002800004000400600c633640001c0000201")  # 198.51.100.1 -> 192.0.2.1, TCP
    tcp = bytes.fromhex("00500400000000010000000150121000" "00000000")  # 80 -> 1024, SYN+ACK
    packet = b"\0" * 12 + b"\x08\x00" + ip + tcp
    Aggregator(Telescopes(["192.0.2.0/24"])).process(classify(pack_record(10**18, packet)), "warm-up", "warm-up")
