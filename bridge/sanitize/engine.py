"""Sanitizer engine: rewrite a batch of canonical pcap records according to a Policy.

Pipeline per batch (walk.py and remap.py hold the compiled loops, kernels.py picks the build):
  1. `scan` locates every address, MAC and checksum of every packet (one pass);
  2. the new values of all sites are computed at once, vectorized over the batch
     (tcprewrite-style CIDR maps compiled, Crypto-PAn once per distinct address with batched AES);
  3. `apply` writes them and the blanks, patches checksums incrementally and drops/cuts packets.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import numpy as np

from bridge.sanitize import kernels, layout
from bridge.sanitize.policy import Cidr, Policy
from bridge.sanitize.valuecache import ValueCache

SUPPORTED_LINKTYPES = frozenset({0, 1, 12, 14, 101, 113, 228, 229, 276})


class PcapRecordError(ValueError):
    """The packet records do not tile the buffer (a record runs past the end)."""


@dataclass
class SanitizeResult:
    """Outcome of one batch: the sanitized records and what happened to the packets."""

    packets: bytes | memoryview
    count: int
    kept: int
    cut: int
    dropped: int
    reasons: dict[str, int] = field(default_factory=dict)
    consumed: int = 0  # input bytes of the records done (with partial_ok, the rest is a record's start)


def _in_scope6(hi: np.ndarray, lo: np.ndarray, cidr: Cidr) -> np.ndarray:
    mhi, mlo = np.uint64(cidr.mask >> 64), np.uint64(cidr.mask & layout.M64)
    return ((hi & mhi) == np.uint64(cidr.network >> 64)) & ((lo & mlo) == np.uint64(cidr.network & layout.M64))


def _eui64_rows(lo: np.ndarray) -> np.ndarray:
    """Which low halves of IPv6 addresses are modified EUI-64 interface identifiers (RFC 4291
    appendix A: the MAC with ff:fe in the middle, the universal/local bit inverted)."""
    return ((lo >> np.uint64(24)) & np.uint64(0xFFFF)) == np.uint64(0xFFFE)


_UL_BIT = np.uint64(0x020000)  # the universal/local bit within a MAC's top 24 bits


def _iid_macs(lo: np.ndarray) -> np.ndarray:
    """The MACs (48-bit integers) inside EUI-64 interface identifiers."""
    return (((lo >> np.uint64(40)) ^ _UL_BIT) << np.uint64(24)) | (lo & np.uint64(0xFFFFFF))


def _macs_iid(macs: np.ndarray) -> np.ndarray:
    """EUI-64 interface identifiers of MACs (48-bit integers)."""
    return ((((macs >> np.uint64(24)) ^ _UL_BIT) << np.uint64(40)) | np.uint64(0xFFFE << 24)
            | (macs & np.uint64(0xFFFFFF)))


class MacMapper:
    """Maps batches of MACs (48-bit integers): zero, or a keyed hash stable per key."""

    _KEEP = (bytes(6), b"\xff" * 6)  # carry no identity; keep so broadcast stays broadcast

    def __init__(self, mode: str, key: bytes | None) -> None:
        self.mode = mode
        self._key = key
        self._cache = ValueCache(self._hash_keys)

    def _hash(self, mac: bytes) -> bytes:
        if mac in self._KEEP:
            return mac
        h = bytearray(hmac.new(self._key or b"", b"d4-bridge-mac" + mac, hashlib.sha256).digest()[:6])
        # locally administered, and keep the group bit so multicast stays multicast
        h[0] = (h[0] & 0xFC) | 0x02 | (mac[0] & 0x01)
        return bytes(h)

    def _hash_keys(self, keys: np.ndarray) -> np.ndarray:
        """The hashes of distinct MACs held as 48-bit integers ((n, 1) keys), as 48-bit integers."""
        return np.array([int.from_bytes(self._hash(k.to_bytes(6, "big")), "big") for k in keys.ravel().tolist()],
                        dtype=np.uint64)

    def map(self, macs: np.ndarray) -> np.ndarray:
        """New MACs for MACs given as 48-bit integers (uint64); the mode must not be keep."""
        if self.mode == "zero":
            return np.zeros(len(macs), dtype=np.uint64)
        return self._cache.map(macs).ravel()


class AddressMapper:
    """Maps batches of addresses according to the policy: IPv4 as uint32 arrays, IPv6 as
    (hi, lo) uint64 halves.

    tcprewrite-style maps (compiled, remap.py) take an IPv6 address in two steps: IPv4 embedded
    in it is mapped with the IPv4 mapping, then the address itself; an EUI-64 interface
    identifier then carries the MAC as the MAC policy maps it. Crypto-PAn (cryptopan.py, once
    per distinct address) maps the whole 128 bits exactly as reference Crypto-PAn does, which
    leaves no embedded value readable; the two extra steps apply only to addresses outside
    its scope."""

    def __init__(self, policy: Policy, macs: MacMapper) -> None:
        self.policy = policy
        self._macs = macs
        self._cpan = None
        if policy.cryptopan_key is not None:
            from bridge.sanitize.cryptopan import CryptoPAn  # imports `cryptography`: only when used

            self._cpan = CryptoPAn(policy.cryptopan_key)
        self._rules4, self._rules6 = layout.rules4(policy), layout.rules6(policy)
        scope = policy.cryptopan_scope
        self._scope4 = None if scope is None else [c for c in scope if c.family == 4]
        self._scope6 = None if scope is None else [c for c in scope if c.family == 6]

    def map_v4(self, vals: np.ndarray, roles: np.ndarray) -> np.ndarray:
        """New values for uint32 IPv4 addresses; roles are layout.ROLE_*."""
        if self._cpan is None:
            return kernels.map4(vals, roles, self._rules4)
        if self._scope4 is None:
            return self._cpan.anonymize_v4(vals)
        out = vals.copy()
        hit = np.ones(len(out), dtype=bool)
        if self._scope4 is not None:
            hit[:] = False
            for c in self._scope4:
                hit |= (out & np.uint32(c.mask)) == np.uint32(c.network)
        if hit.any():
            out[hit] = self._cpan.anonymize_v4(out[hit])
        return out

    def _map_parts(self, hi: np.ndarray, lo: np.ndarray) -> None:
        """Map, in place, the IPv4 addresses embedded in (hi, lo) and the MACs in their EUI-64
        interface identifiers."""
        idx, slot, v4 = kernels.embedded(hi, lo)
        if len(idx):
            kernels.set_embedded(hi, lo, idx, slot,
                                 self.map_v4(v4, np.full(len(v4), layout.ROLE_OTHER, dtype=np.int64)))
        if self._macs.mode != "keep":
            eui = _eui64_rows(lo)
            if eui.any():
                lo[eui] = _macs_iid(self._macs.map(_iid_macs(lo[eui])))

    def map_v6(self, hi: np.ndarray, lo: np.ndarray, roles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New (hi, lo) halves for IPv6 addresses."""
        hi, lo = hi.copy(), lo.copy()
        if len(hi) == 0:
            return hi, lo
        if self._cpan is None:
            self._map_parts(hi, lo)
            kernels.map6(hi, lo, roles, self._rules6)
            return hi, lo
        hit = np.ones(len(hi), dtype=bool)
        if self._scope6 is not None:
            hit[:] = False
            for c in self._scope6:
                hit |= _in_scope6(hi, lo, c)
        if not hit.all():
            rest_hi, rest_lo = hi[~hit], lo[~hit]
            self._map_parts(rest_hi, rest_lo)
            hi[~hit], lo[~hit] = rest_hi, rest_lo
        if hit.any():
            mapped = self._cpan.anonymize_v6(np.stack((hi[hit], lo[hit]), axis=1))
            hi[hit], lo[hit] = mapped[:, 0], mapped[:, 1]
        return hi, lo


class Sanitizer:
    """Applies one Policy to batches of canonical pcap records. Holds no per-stream state
    except caches, so any number of instances with the same key produce the same output."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._mac = MacMapper(policy.mac_mode, policy.mac_key)
        self._addr = AddressMapper(policy, self._mac)
        # TCP sequence/acknowledgment numbers inside these ranges are mapped as addresses
        # (pnat: cheap); Crypto-PAn maps only those equal to an address of their header (each
        # distinct value costs an AES run)
        self._seq_rules = layout.rules4(policy) if policy.mode == "pnat" else np.zeros((0, 5), dtype=np.int64)
        # work tables reused across batches: fresh ones would cost page faults every batch
        # (hence one Sanitizer per thread)
        self._scratch: dict[str, np.ndarray] = {}

    def _table(self, name: str, rows: int, cols: int, dtype: type) -> np.ndarray:
        """A C-contiguous (rows, cols) work table (1-D when cols is 0), reused when big enough."""
        have = self._scratch.get(name)
        if have is None or len(have) < rows:
            have = np.empty((rows + rows // 2, cols) if cols else rows + rows // 2, dtype=dtype)
            self._scratch[name] = have
        return have[:rows]

    @staticmethod
    def _count(buf: np.ndarray) -> int:
        recs = kernels.record_offsets(buf)
        if len(recs) and recs[-1] < 0:
            raise PcapRecordError(f"a record runs past the end of {len(buf)} bytes")
        return len(recs)

    def sanitize_batch(self, linktype: int, packets: bytes | memoryview) -> SanitizeResult:
        """Sanitize concatenated records (16-byte LE record header + data); `packets` is not
        modified. Raises PcapRecordError if the records do not tile `packets`."""
        res = self.sanitize_inplace(linktype, np.frombuffer(bytearray(packets), dtype=np.uint8))
        res.packets = bytes(res.packets)
        return res

    def sanitize_inplace(self, linktype: int, buf: np.ndarray, partial_ok: bool = False) -> SanitizeResult:
        """Sanitize the records in the writable uint8 array buf in place: the kept (and cut)
        records are compacted to its start; result.packets is a view of them. With partial_ok
        the last record may be incomplete (a stream read in chunks): it is left as it is, at
        buf[result.consumed:]; otherwise that raises PcapRecordError."""
        if linktype not in SUPPORTED_LINKTYPES:
            count = self._count(buf)
            return SanitizeResult(b"", count, 0, 0, count, {"unsupported_linktype": count} if count else {}, len(buf))
        slots = len(buf) // 16 + 1
        recs = self._table("recs", slots, 0, np.int64)
        verdict = self._table("verdict", slots, 0, np.int8)
        reason = self._table("reason", slots, 0, np.int64)
        newcap = self._table("newcap", slots, 0, np.int64)
        payload_at = self._table("payload_at", slots, 0, np.int64)
        cap = len(buf) // 8 + 64  # sites per byte of input; more is possible (retried below)
        while True:
            v4 = self._table("v4", cap, 5, np.int64)
            v6 = self._table("v6", cap, 5, np.int64)
            mac = self._table("mac", cap, 4, np.int64)
            cs = self._table("cs", cap, layout.CS_COLS, np.int64)
            blank = self._table("blank", cap, 4, np.int64)
            n = np.array([0, 0, 0, 0, 0, 0, -1, 0, 0], dtype=np.int64)
            kernels.scan(buf, linktype, self.policy.mac_mode != "keep", self._seq_rules,
                         self.policy.payload_keep, self.policy.on_unparseable == "cut", recs, verdict, reason, newcap,
                         v4, v6, mac, cs, blank, n, payload_at)
            if n[6] >= 0 and not partial_ok:
                raise PcapRecordError(f"record at byte {int(n[6])} runs past the end of {len(buf)} bytes")
            if not n[4]:
                break
            cap *= 4
        nv4, nv6, nmac, ncs, _, count = (int(x) for x in n[:6])
        nblank = int(n[8])
        consumed = int(n[6]) if n[6] >= 0 else len(buf)
        if count == 0:
            return SanitizeResult(b"", 0, 0, 0, 0, {}, consumed)
        recs, verdict, reason, newcap = recs[:count], verdict[:count], reason[:count], newcap[:count]
        v4, v6, mac, cs, blank = v4[:nv4], v6[:nv6], mac[:nmac], cs[:ncs], blank[:nblank]

        new4 = self._addr.map_v4(v4[:, 4].astype(np.uint32), v4[:, 2])
        enc = v4[:, 3]  # re-encode as the site stores it (layout.ENC_*); uint32 wraps mod 2^32
        new4 ^= (enc == layout.ENC_INVERTED).astype(np.uint32) * np.uint32(0xFFFFFFFF)
        new4 += (enc == layout.ENC_PLUS1).astype(np.uint32)
        hi, lo = self._addr.map_v6(v6[:, 3].astype(np.uint64), v6[:, 4].astype(np.uint64), v6[:, 2])
        new6 = np.stack((hi, lo), axis=1)
        newmac = self._mac.map(mac[:, 3].astype(np.uint64)) if nmac else np.zeros(0, dtype=np.uint64)
        scratch = (self._table("ch", int(n[7]) + 1, 3, np.int64), self._table("old", 16, 0, np.uint8),
                   self._table("pat", 2 * nv4 + 1, 0, np.int64), self._table("six", nv6 + 1, 0, np.int64),
                   np.zeros(256, dtype=np.bool_))
        size = kernels.apply(buf, recs, newcap, v4, new4, v6, new6, mac, newmac, cs, blank, nv4, nv6, nmac, ncs, nblank,
                             verdict, reason, payload_at, *scratch)

        dropped = int((verdict == layout.V_DROP).sum())
        ncut = int((verdict == layout.V_CUT).sum())
        reasons: dict[str, int] = {}
        if dropped or ncut:
            counts = np.bincount(reason[verdict != layout.V_KEEP], minlength=len(layout.REASONS))
            reasons = {layout.REASONS[c]: int(counts[c]) for c in np.flatnonzero(counts)}
        return SanitizeResult(memoryview(buf[:size]), count, count - dropped - ncut, ncut, dropped, reasons, consumed)
