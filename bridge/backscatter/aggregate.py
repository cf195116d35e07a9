"""Attack-vector aggregation of classified backscatter (pure core).

Corsaro/Moore rules (backscatter.md §H): one vector per (victim, attacked
protocol); packets, bytes, first/last seen, distinct telescope addresses, ports,
ICMP mismatches, the largest packet count in a 60 s window sliding by 10 s,
per-site and per-sensor counts; idle timeout 300 s; an attack when packets >= 25,
duration >= 60 s and peak >= 30 packets/minute. Multi-site merge (§I): event
time with per-sensor watermarks (a packet more than the allowed lateness behind
its own sensor's newest time is dropped and counted; vectors expire against
the slowest sensor that is still active, so one site catching up on a backlog
neither loses packets nor splits an attack), byte-identical IP packets seen by
two sensors within ``dedup_window_s`` are counted once (as are exact replays of
one sensor's packet after a restart, same time stamp), and the estimate uses
the union of the contributing sites' telescopes.

Layout, chosen for speed and bounded memory:
- every tracked vector is a row of numpy columns, updated by one numba loop per
  batch; a dict maps (victim, protocol) to rows; a full table evicts the vectors
  seen least recently (undeclared ones first) and counts them;
- vectors with two or more packets also get a Python detail record (exact
  telescope addresses up to a cap, ports, sites, sensors); the first packet's
  details wait in columns until then, so one-packet noise costs no Python work.

Everything is a function of the input sequence (no clocks), which makes a
restored snapshot replay to exactly the same events.
"""

from __future__ import annotations

import io
import ipaddress
import json
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any

import numpy as np
from numba import njit

from bridge.backscatter.classify import CLASS_NAMES, FIRST_BACKSCATTER, PROTOCOL_NAMES, Classified, class_counts, classify
from bridge.backscatter.telescope import Telescopes
from bridge.pcap import pack_record

_NS = 1_000_000_000
_BS_CLASSES = len(CLASS_NAMES) - FIRST_BACKSCATTER
_SNAPSHOT_VERSION = 2  # 2: the col_live column
_NEVER = int(np.iinfo(np.int64).min)
_INITIAL_ROWS = 4096  # the table doubles up to max_victims as victims appear


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds and bounds; defaults are Corsaro's / Moore 2006 (backscatter.md §H)."""

    min_packets: int = 25
    min_duration_s: float = 60.0
    min_ppm: int = 30
    idle_timeout_s: float = 300.0
    bucket_s: float = 10.0
    window_buckets: int = 6  # 60 s window sliding by 10 s
    allowed_lateness_s: float = 60.0
    update_interval_s: float = 60.0
    source_idle_s: float = 900.0  # a sensor this far behind the newest one no longer holds expiry back
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


@dataclass
class _Detail:
    addresses: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    sites: dict[str, int] = field(default_factory=dict)
    sensors: dict[str, int] = field(default_factory=dict)


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
    events: dict[str, int] = field(default_factory=lambda: {"declared": 0, "update": 0, "final": 0})


@njit(cache=True, nogil=True)
def _dedup(digest, ts, sensor, table_h, table_t, table_s, horizon, window_ns):  # pragma: no cover - jitted
    """Mark copies: the same packet from another sensor within window_ns, or a replay (same sensor, same time).

    A SYN-ACK retransmission (same bytes, same sensor, later time) is not a copy.
    Entries older than ``horizon`` may be reused (the slowest active sensor is
    past them, so no copy can still come); a full probe run overwrites its oldest.
    """
    n = digest.shape[0]
    mask = table_h.shape[0] - 1
    dup = np.zeros(n, np.bool_)
    overflow = 0
    for i in range(n):
        h = digest[i]
        if h == 0:
            h = np.uint64(1)  # 0 marks an empty slot
        t = ts[i]
        s = sensor[i]
        slot = np.int64(h & np.uint64(mask))
        free = -1
        oldest = slot
        for _ in range(16):
            th = table_h[slot]
            if th == 0:
                if free < 0:
                    free = slot
                break
            if th == h:
                dt = abs(table_t[slot] - t)
                if (table_s[slot] != s and dt <= window_ns) or (table_s[slot] == s and dt == 0):
                    dup[i] = True
                    break
            if free < 0 and table_t[slot] < horizon:
                free = slot
            if table_t[slot] < table_t[oldest]:
                oldest = slot
            slot = (slot + 1) & mask
        if not dup[i]:
            if free < 0:
                free = oldest
                overflow += 1
            table_h[free] = h
            table_t[free] = t
            table_s[free] = s
    return dup, overflow


@njit(cache=True, nogil=True)
def _update(rows, ts, ip_len, mismatch, cls, tele, port, spoofed, site, sensor, bucket_ns, packets, nbytes,
            first, last, mism, ring, head, max_ppm, classes, tele0, port0, spoofed0, site0, sensor0):  # pragma: no cover
    nb = ring.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        t = ts[i]
        b = t // bucket_ns
        if packets[r] == 0:
            first[r] = t
            last[r] = t
            head[r] = b
            for k in range(nb):
                ring[r, k] = 0
            tele0[r] = tele[i]
            port0[r] = port[i]
            spoofed0[r] = spoofed[i]
            site0[r] = site
            sensor0[r] = sensor
        else:
            if t < first[r]:
                first[r] = t
            if t > last[r]:
                last[r] = t
        packets[r] += 1
        nbytes[r] += ip_len[i]
        if mismatch[i]:
            mism[r] += 1
        classes[r, cls[i] - 7] += 1
        if b > head[r]:
            steps = b - head[r]
            if steps >= nb:
                for k in range(nb):
                    ring[r, k] = 0
            else:
                for s in range(1, steps + 1):
                    ring[r, (head[r] + s) % nb] = 0
            head[r] = b
        if b > head[r] - nb:
            ring[r, b % nb] += 1
            total = 0
            for k in range(nb):
                total += ring[r, k]
            if total > max_ppm[r]:
                max_ppm[r] = total


_COLUMNS = {  # name: (dtype, extra shape)
    "key": (np.uint64, ()), "packets": (np.int64, ()), "bytes": (np.int64, ()), "first": (np.int64, ()),
    "last": (np.int64, ()), "mism": (np.int64, ()), "head": (np.int64, ()), "max_ppm": (np.int64, ()),
    "tele0": (np.uint32, ()), "port0": (np.uint16, ()), "spoofed0": (np.uint16, ()), "site0": (np.int32, ()),
    "sensor0": (np.int32, ()), "declared": (np.bool_, ()), "seq": (np.int64, ()), "emitted_last": (np.int64, ()),
    "attack_first": (np.int64, ()), "classes": (np.int64, (_BS_CLASSES,)), "live": (np.bool_, ()),
}


class Aggregator:
    """Backscatter attack detector over a sequence of pcap batches."""

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
        self.dedup_h = np.zeros(config.dedup_slots, np.uint64)
        self.dedup_t = np.zeros(config.dedup_slots, np.int64)
        self.dedup_s = np.zeros(config.dedup_slots, np.int32)
        self.sensor_max: list[int] = []  # newest event time per sensor (aligned with self.sensors)
        self.swept_at = np.iinfo(np.int64).min
        self.stats = Stats()

    # ------------------------------------------------------------------ input

    @property
    def max_ts(self) -> int:
        """Newest event time seen from any sensor."""
        return max(self.sensor_max, default=_NEVER)

    @property
    def watermark_ns(self) -> int:
        """Event time all active sensors have passed, minus the allowed lateness (drives expiry)."""
        newest = self.max_ts
        active = [t for t in self.sensor_max if t >= newest - self.config.source_idle_s * _NS]
        return max(min(active, default=_NEVER) - int(self.config.allowed_lateness_s * _NS), _NEVER)

    @property
    def active_attacks(self) -> int:
        """Declared attacks not yet final."""
        return int(np.count_nonzero(self.cols["declared"]))

    def process(self, cols: Classified, site: str, sensor: str) -> list[dict[str, Any]]:
        """Add one classified batch from ``sensor`` at ``site``; return the events it causes."""
        self.stats.classes += class_counts(cols)
        keep = cols.backscatter()
        inside = self.telescopes.of(site).contains(cols.telescope)
        self.stats.outside_telescope += int(np.count_nonzero(keep & ~inside))
        keep &= inside
        source = self._sensor_index(sensor)
        lateness = int(self.config.allowed_lateness_s * _NS)
        # Judged against the packet's own sensor only: a site whose backlog is read after the
        # others' (a consumer catching up serves partitions unevenly) loses nothing.
        limit = max(self.sensor_max[source] - lateness, _NEVER)
        late = keep & (cols.ts_ns < limit)
        self.stats.late += int(np.count_nonzero(late))
        idx = np.nonzero(keep & ~late)[0]
        if cols.count:
            self.sensor_max[source] = max(self.sensor_max[source], int(cols.ts_ns.max()))
        if idx.size:
            dup, overflow = _dedup(cols.digest[idx], cols.ts_ns[idx], np.full(idx.size, source, np.int32),
                                   self.dedup_h, self.dedup_t, self.dedup_s, self._dedup_horizon,
                                   int(self.config.dedup_window_s * _NS))
            self.stats.duplicates += int(np.count_nonzero(dup))
            self.stats.dedup_overflow += int(overflow)
            idx = idx[~dup]
        events: list[dict[str, Any]] = []
        touched = np.zeros(0, np.int64)
        if idx.size:
            touched = self._aggregate(cols, idx, site, sensor, events)
        events += self._decide(touched)
        events += self._sweep()
        return events

    def advance(self, event_ns: int, sensor: str) -> list[dict[str, Any]]:
        """``sensor``'s capture has reached ``event_ns`` (told without packets): expire idle vectors."""
        source = self._sensor_index(sensor)
        self.sensor_max[source] = max(self.sensor_max[source], int(event_ns))
        return self._sweep()

    @property
    def _dedup_horizon(self) -> int:
        """Packets remembered for copies until every active sensor is the lateness plus the window past them."""
        return max(self.watermark_ns - int(self.config.dedup_window_s * _NS), _NEVER)

    def finish(self) -> list[dict[str, Any]]:
        """End of input: expire every vector (final events for declared attacks)."""
        return self._expire(self._live_rows())

    # ------------------------------------------------------------------ internals

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
        if sensor not in self.sensors:
            self.sensors.append(sensor)
            self.sensor_max.append(_NEVER)
        return self.sensors.index(sensor)

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
            self.index.update(zip(uniq[new].tolist(), taken))
        before = c["packets"][rows].copy()
        _update(rows[inverse], cols.ts_ns[idx], cols.ip_len[idx], cols.mismatch[idx], cols.cls[idx],
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

    def _is_attack(self, rows: np.ndarray) -> np.ndarray:
        c, cfg = self.cols, self.config
        return ((c["packets"][rows] >= cfg.min_packets)
                & (c["last"][rows] - c["first"][rows] >= int(cfg.min_duration_s * _NS))
                & (c["max_ppm"][rows] >= cfg.min_ppm))

    def _decide(self, touched: np.ndarray) -> list[dict[str, Any]]:
        """Declare vectors that became attacks; update declared ones every update_interval_s of event time."""
        if not touched.size:
            return []
        c = self.cols
        events = []
        touched = touched[np.argsort(c["key"][touched], kind="stable")]  # a stable event order
        declared = c["declared"][touched]
        for r in touched[~declared & self._is_attack(touched)].tolist():
            c["declared"][r] = True
            c["attack_first"][r] = c["first"][r]
            events.append(self._emit(r, "declared"))
        due = declared & (c["last"][touched] - c["emitted_last"][touched] >= int(self.config.update_interval_s * _NS))
        for r in touched[due].tolist():
            events.append(self._emit(r, "update"))
        return events

    def _sweep(self) -> list[dict[str, Any]]:
        """Expire vectors idle for idle_timeout_s of event time (checked once per bucket of watermark progress)."""
        wm = self.watermark_ns
        if wm < self.swept_at + int(self.config.bucket_s * _NS):
            return []
        self.swept_at = wm
        rows = self._live_rows()
        idle = rows[self.cols["last"][rows] < wm - int(self.config.idle_timeout_s * _NS)]
        self.stats.expired += int(idle.size)
        return self._expire(idle)

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
        duration = (int(c["last"][r]) - int(c["first"][r])) / _NS
        observed = packets / duration if duration > 0 else float(packets)
        monitored = self.telescopes.monitored(detail.sites)
        scale = 2**32 / monitored
        ports = sorted(detail.ports)
        event = {
            "attack_id": f"{victim}/{PROTOCOL_NAMES.get(proto, str(proto))}/{int(c['attack_first'][r])}",
            "status": status,
            "victim": victim,
            "protocol": PROTOCOL_NAMES.get(proto, "other"),
            "ports": ports[:cfg.max_ports],
            "first_seen_ns": int(c["first"][r]),
            "last_seen_ns": int(c["last"][r]),
            "packets": packets,
            "bytes": int(c["bytes"][r]),
            "telescope_addresses": len(detail.addresses),
            "max_packets_per_minute": int(c["max_ppm"][r]),
            "icmp_mismatches": int(c["mism"][r]),
            "observed_pps": observed,
            "monitored_addresses": monitored,
            "estimated_pps": observed * scale,
            "classes": {CLASS_NAMES[FIRST_BACKSCATTER + k]: int(v) for k, v in enumerate(c["classes"][r]) if v},
            "sites": dict(sorted(detail.sites.items())),
            "sensors": dict(sorted(detail.sensors.items())),
            "emitted_ns": 0,
            "seq": int(c["seq"][r]),
            "port_count": len(ports),
            "estimated_peak_pps": c["max_ppm"][r] / (cfg.bucket_s * cfg.window_buckets) * scale,
        }
        c["seq"][r] += 1
        c["emitted_last"][r] = c["last"][r]
        self.stats.events[status] += 1
        return event

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> bytes:
        """Serialize the whole state (live rows, details, dedup memory, watermark)."""
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
        meta = {"version": _SNAPSHOT_VERSION, "sensor_max": self.sensor_max, "swept_at": int(self.swept_at),
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
            _dedup(z["dedup_h"][order], z["dedup_t"][order], z["dedup_s"][order], agg.dedup_h, agg.dedup_t,
                   agg.dedup_s, _NEVER, -1)
        agg.sensor_max, agg.swept_at = meta["sensor_max"], meta["swept_at"]
        agg.sites, agg.sensors = meta["sites"], meta["sensors"]
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
