"""Sanitizer engine: rewrite a batch of canonical pcap records according to a Policy.

Pipeline per batch (see walk.py for the compiled loops):
  1. `walk.scan` locates every address, MAC and checksum of every packet (one pass);
  2. the new values of all sites are computed at once, vectorized over the batch
     (tcprewrite-style CIDR maps with numpy masks, Crypto-PAn once per distinct address);
  3. `walk.apply` writes them, patches checksums incrementally and drops/cuts packets.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import numpy as np

from bridge.sanitize import walk
from bridge.sanitize.cryptopan import CryptoPAn
from bridge.sanitize.policy import Cidr, CidrPair, Policy

SUPPORTED_LINKTYPES = frozenset({0, 1, 12, 14, 101, 113})


class PcapRecordError(ValueError):
    """The packet records do not tile the buffer (a record runs past the end)."""


@dataclass
class SanitizeResult:
    """Outcome of one batch: the sanitized records and what happened to the packets."""

    packets: bytes
    count: int
    kept: int
    cut: int
    dropped: int
    reasons: dict[str, int] = field(default_factory=dict)


def _rows_in(rows: np.ndarray, cidr: Cidr) -> np.ndarray:
    """Boolean mask: which big-endian address rows lie inside cidr."""
    width = rows.shape[1]
    mask = np.frombuffer(cidr.mask.to_bytes(width, "big"), dtype=np.uint8)
    net = np.frombuffer(cidr.network.to_bytes(width, "big"), dtype=np.uint8)
    return ((rows & mask) == net).all(axis=1)


def _apply_pairs(rows: np.ndarray, pairs: tuple[CidrPair, ...], todo: np.ndarray) -> np.ndarray:
    """tcprewrite remap: for rows selected by todo, the first pair whose FROM contains the
    address replaces the prefix with TO's network under TO's mask. Returns the rows matched."""
    matched = np.zeros(len(rows), dtype=bool)
    width = rows.shape[1]
    for pair in pairs:
        if pair.src.family != (4 if width == 4 else 6):
            continue
        hit = todo & ~matched & _rows_in(rows, pair.src)
        if hit.any():
            tmask = np.frombuffer(pair.dst.mask.to_bytes(width, "big"), dtype=np.uint8)
            tnet = np.frombuffer(pair.dst.network.to_bytes(width, "big"), dtype=np.uint8)
            rows[hit] = (rows[hit] & ~tmask) | (tnet & tmask)
            matched |= hit
    return matched


def _be32(rows: np.ndarray) -> np.ndarray:
    """(n, 4) big-endian bytes -> uint32 values."""
    return np.ascontiguousarray(rows).view(">u4").ravel().astype(np.uint32)


# IPv6 prefixes that embed an IPv4 address: (prefix row, prefix length, byte offset of the
# IPv4, inverted). Teredo carries the server IPv4 plainly and the client IPv4 inverted.
_EMBEDDED = [
    (np.frombuffer(bytes(10) + b"\xff\xff" + bytes(4), dtype=np.uint8), 96, 12, False),   # ::ffff:a.b.c.d
    (np.frombuffer(b"\x00\x64\xff\x9b" + bytes(12), dtype=np.uint8), 96, 12, False),       # NAT64 64:ff9b::/96
    (np.frombuffer(b"\x20\x02" + bytes(14), dtype=np.uint8), 16, 2, False),                # 6to4 2002::/16
    (np.frombuffer(b"\x20\x01\x00\x00" + bytes(12), dtype=np.uint8), 32, 4, False),        # Teredo server
    (np.frombuffer(b"\x20\x01\x00\x00" + bytes(12), dtype=np.uint8), 32, 12, True),        # Teredo client
]


class AddressMapper:
    """Maps batches of addresses (rows of big-endian bytes) according to the policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._cpan = CryptoPAn(policy.cryptopan_key) if policy.cryptopan_key is not None else None

    def _covered_cpan(self, rows: np.ndarray) -> np.ndarray:
        scope = self.policy.cryptopan_scope
        if scope is None:
            return np.ones(len(rows), dtype=bool)
        fam = 4 if rows.shape[1] == 4 else 6
        hit = np.zeros(len(rows), dtype=bool)
        for cidr in scope:
            if cidr.family == fam:
                hit |= _rows_in(rows, cidr)
        return hit

    def map_rows(self, rows: np.ndarray, roles: np.ndarray) -> np.ndarray:
        """New values for address rows ((n, 4) or (n, 16) uint8); roles are walk.ROLE_*."""
        out = rows.copy()
        if len(rows) == 0:
            return out
        if rows.shape[1] == 16:
            self._map_embedded(out)
        p = self.policy
        if self._cpan is not None:
            hit = self._covered_cpan(rows)
            if hit.any():
                out[hit] = self._cpan.anonymize_rows(out[hit])
            return out
        if p.srcipmap or p.dstipmap:
            # tcprewrite: --srcipmap for sources, --dstipmap for destinations; an address
            # without a direction (ARP, quoted gateway, ND target) takes the first match of both
            other = roles == walk.ROLE_OTHER
            done = _apply_pairs(out, p.srcipmap, (roles == walk.ROLE_SRC) | other)
            _apply_pairs(out, p.dstipmap, ((roles == walk.ROLE_DST) | other) & ~done)
        if p.pnat:
            # like tcprewrite, --pnat applies to the result of the ip maps; first match wins
            _apply_pairs(out, p.pnat, np.ones(len(out), dtype=bool))
        return out

    def _map_embedded(self, rows: np.ndarray) -> None:
        """Rewrite IPv4 addresses embedded in IPv6 rows with the IPv4 mapping, in place."""
        for prefix, plen, at, inverted in _EMBEDDED:
            pref = Cidr(6, int.from_bytes(prefix.tobytes(), "big"), plen)
            hit = _rows_in(rows, pref)
            if not hit.any():
                continue
            v4 = rows[hit, at:at + 4]
            if inverted:
                v4 = v4 ^ 0xFF
            new = self.map_rows(v4, np.full(len(v4), walk.ROLE_OTHER, dtype=np.int64))
            rows[hit, at:at + 4] = new ^ 0xFF if inverted else new


class MacMapper:
    """Maps batches of 6-byte MAC rows: zero, or a keyed hash stable per key."""

    _KEEP = (bytes(6), b"\xff" * 6)  # carry no identity; keep so broadcast stays broadcast

    def __init__(self, mode: str, key: bytes | None) -> None:
        self.mode = mode
        self._key = key
        self._cache: dict[bytes, bytes] = {}

    def _hash(self, mac: bytes) -> bytes:
        if mac in self._KEEP:
            return mac
        h = bytearray(hmac.new(self._key or b"", b"d4-bridge-mac" + mac, hashlib.sha256).digest()[:6])
        # locally administered, and keep the group bit so multicast stays multicast
        h[0] = (h[0] & 0xFC) | 0x02 | (mac[0] & 0x01)
        return bytes(h)

    def map_rows(self, rows: np.ndarray) -> np.ndarray:
        if self.mode == "zero" or len(rows) == 0:
            return np.zeros_like(rows)
        flat = np.ascontiguousarray(rows).view("V6").ravel()
        uniq, inverse = np.unique(flat, return_inverse=True)
        out = []
        for u in uniq:
            k = u.tobytes()
            v = self._cache.get(k)
            if v is None:
                v = self._cache[k] = self._hash(k)
            out.append(v)
        return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(-1, 6)[inverse.ravel()]


def _gather(buf: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    return buf[offsets[:, None] + np.arange(width)]


class Sanitizer:
    """Applies one Policy to batches of canonical pcap records. Holds no per-stream state
    except caches, so any number of instances with the same key produce the same output."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._addr = AddressMapper(policy)
        self._mac = MacMapper(policy.mac_mode, policy.mac_key)

    def sanitize_batch(self, linktype: int, packets: bytes) -> SanitizeResult:
        """Sanitize concatenated records (16-byte LE record header + data). Raises
        PcapRecordError if the records do not tile `packets`."""
        buf = np.frombuffer(bytearray(packets), dtype=np.uint8)
        recs = walk.record_offsets(buf)
        if len(recs) and recs[-1] < 0:
            raise PcapRecordError(f"record at byte {int(recs[-2] if len(recs) > 1 else 0)}+ runs past the end of {len(packets)} bytes")
        count = len(recs)
        if count == 0:
            return SanitizeResult(b"", 0, 0, 0, 0, {})
        if linktype not in SUPPORTED_LINKTYPES:
            return SanitizeResult(b"", count, 0, 0, count, {"unsupported_linktype": count})

        verdict = np.empty(count, dtype=np.int8)
        reason = np.empty(count, dtype=np.int64)
        newcap = np.empty(count, dtype=np.int64)
        cap = 4 * count + 64  # typical packets have 2-4 sites of each kind
        while True:
            v4 = np.empty((cap, 4), dtype=np.int64)
            v6 = np.empty((cap, 3), dtype=np.int64)
            mac = np.empty((cap, 2), dtype=np.int64)
            cs = np.empty((cap, walk.CS_COLS), dtype=np.int64)
            n = np.zeros(5, dtype=np.int64)
            walk.scan(buf, linktype, self.policy.mac_mode != "keep", self.policy.payload_keep,
                      self.policy.on_unparseable == "cut", recs, verdict, reason, newcap, v4, v6, mac, cs, n)
            if not n[4]:
                break
            cap *= 4  # a batch with unusually many sites per packet; rare
        nv4, nv6, nmac, ncs = (int(x) for x in n[:4])
        v4, v6, mac, cs = v4[:nv4], v6[:nv6], mac[:nmac], cs[:ncs]

        rows4 = _gather(buf, v4[:, 0], 4)
        inv = v4[:, 3] == 1
        rows4[inv] ^= 0xFF
        new4 = self._addr.map_rows(rows4, v4[:, 2])
        new4[inv] ^= 0xFF
        new6 = self._addr.map_rows(_gather(buf, v6[:, 0], 16), v6[:, 2])
        newmac = self._mac.map_rows(_gather(buf, mac[:, 0], 6)) if nmac else np.zeros((0, 6), dtype=np.uint8)

        # changed 16-bit words per packet at most (a site may straddle one extra word)
        per_pkt = (np.bincount(v4[:, 1], minlength=count) * 3 + np.bincount(v6[:, 1], minlength=count) * 9
                   + np.bincount(mac[:, 1], minlength=count) * 4 + np.bincount(cs[:, 0], minlength=count))
        size = walk.apply(buf, recs, newcap, v4, _be32(new4), v6, new6, mac, newmac, cs,
                          nv4, nv6, nmac, ncs, int(per_pkt.max()) + 1)

        dropped = int((verdict == walk.V_DROP).sum())
        ncut = int((verdict == walk.V_CUT).sum())
        reasons: dict[str, int] = {}
        if dropped or ncut:
            codes, counts = np.unique(reason[verdict != walk.V_KEEP], return_counts=True)
            reasons = {walk.REASONS[c]: int(k) for c, k in zip(codes, counts)}
        return SanitizeResult(buf[:size].tobytes(), count, count - dropped - ncut, ncut, dropped, reasons)
