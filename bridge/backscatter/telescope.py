"""Telescopes: the monitored IPv4 address space of each site (pure core).

Moore's extrapolation multiplies the observed rate by 2^32 / n, where n is the
number of monitored addresses; when several sites contribute, n is the size of
the UNION of their prefixes (overlaps counted once, backscatter.md §I). Sites that
announce their monitored address count need no prefixes here (the aggregator
takes their count); configured prefixes are the override for sites that do not.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping, Sequence

import numpy as np


class PrefixSet:
    """A union of IPv4 prefixes as sorted, merged [start, end) spans."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        spans = sorted(
            (int(net.network_address), int(net.broadcast_address) + 1)
            for net in (ipaddress.IPv4Network(str(p).strip(), strict=False) for p in prefixes)
        )
        merged: list[list[int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = np.array([lo for lo, _ in merged], dtype=np.int64)
        self.ends = np.array([hi for _, hi in merged], dtype=np.int64)
        self.size = int((self.ends - self.starts).sum())

    def contains(self, addrs: np.ndarray) -> np.ndarray:
        """Boolean mask: which addresses (uint32 array) fall inside the set."""
        if self.size == 0:
            return np.zeros(addrs.shape, dtype=np.bool_)
        a = addrs.astype(np.int64)
        idx = np.searchsorted(self.starts, a, side="right") - 1
        return (idx >= 0) & (a < self.ends[np.clip(idx, 0, None)])

    def prefixes(self) -> list[str]:
        """The merged spans as CIDR strings."""
        out: list[str] = []
        for lo, hi in zip(self.starts.tolist(), self.ends.tolist()):
            out += [str(n) for n in ipaddress.summarize_address_range(
                ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi - 1))]
        return out


class Telescopes:
    """Monitored prefixes per site, with a default for sites not listed (either may be empty)."""

    def __init__(self, default: Sequence[str], per_site: Mapping[str, Sequence[str]] | None = None) -> None:
        self.default = PrefixSet(default)
        self.per_site = {site: PrefixSet(p) for site, p in (per_site or {}).items()}
        self._union_cache: dict[frozenset[str], int] = {}

    def of(self, site: str) -> PrefixSet:
        """The prefixes monitored by ``site``."""
        return self.per_site.get(site, self.default)

    def monitored(self, sites: Iterable[str]) -> int:
        """Distinct addresses in the union of the sites' telescopes."""
        key = frozenset(sites)
        if key not in self._union_cache:
            prefixes: list[str] = []
            for site in key:
                prefixes += self.of(site).prefixes()
            self._union_cache[key] = PrefixSet(prefixes).size
        return self._union_cache[key]
