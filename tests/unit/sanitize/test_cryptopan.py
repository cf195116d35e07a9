"""Crypto-PAn: the published reference vectors, and prefix preservation for IPv6."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sanitize.cryptopan import CryptoPAn

REFERENCE_KEY = bytes([21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16,
                       216, 152, 143, 131, 121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2])

# Crypto-PAn 1.0 sample trace and port vectors (shared/reference/sanitization.md sec. 2.2)
VECTORS = """128.11.68.132->135.242.180.132 129.118.74.4->134.136.186.123 130.132.252.244->133.68.164.234
141.223.7.43->141.167.8.160 141.233.145.108->141.129.237.235 152.163.225.39->151.140.114.167
156.29.3.236->147.225.12.42 165.247.96.84->162.9.99.234 166.107.77.190->160.132.178.185
192.102.249.13->252.138.62.131 192.215.32.125->252.43.47.189 192.233.80.103->252.25.108.8
192.41.57.43->252.222.221.184 193.150.244.223->253.169.52.216 195.205.63.100->255.186.223.5
198.200.171.101->249.199.68.213 198.26.132.101->249.36.123.202 198.36.213.5->249.7.21.132
198.51.77.238->249.18.186.254 199.217.79.101->248.38.184.213 24.5.0.80->100.9.15.210
4.3.88.225->124.60.155.63 64.14.118.196->0.255.183.58 10.185.25.118->117.161.29.118
127.0.0.1->33.0.243.129 0.0.0.0->120.255.240.1 255.255.255.255->206.120.97.255""".split()

CP = CryptoPAn(REFERENCE_KEY)


def test_reference_ipv4_vectors_one_batch():
    pairs = [v.split("->") for v in VECTORS]
    rows = np.array([list(ipaddress.IPv4Address(a).packed) for a, _ in pairs] * 3, dtype=np.uint8)
    out = CP.anonymize_rows(rows)
    got = [str(ipaddress.IPv4Address(r.tobytes())) for r in out]
    assert got == [b for _, b in pairs] * 3


def test_ipv6_vector_and_cache_consistency():
    # correct (non byte-swapped) IPv6 construction, see sanitization.md sec. 2.2
    assert CP.anonymize("::1") == "78ff:f001:9fc0:20df:8380:b1f1:704:ed"
    fresh = CryptoPAn(REFERENCE_KEY, cache_size=1)
    assert [fresh.anonymize(a) for a in ("24.5.0.80", "::1", "24.5.0.80")] == ["100.9.15.210", CP.anonymize("::1"), "100.9.15.210"]


def common_prefix(a: bytes, b: bytes) -> int:
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return len(a) * 8 - x.bit_length()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), st.integers(0, 128))
def test_ipv6_prefix_preserving(a, b, share):
    # force a shared prefix of `share` bits, then check the outputs share exactly as many
    mask = ((1 << share) - 1) << (128 - share) if share else 0
    bi = (int.from_bytes(a, "big") & mask) | (int.from_bytes(b, "big") & ~mask & ((1 << 128) - 1))
    b = bi.to_bytes(16, "big")
    rows = np.frombuffer(a + b, dtype=np.uint8).reshape(2, 16)
    out = CP.anonymize_rows(rows)
    assert common_prefix(out[0].tobytes(), out[1].tobytes()) == common_prefix(a, b)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=4, max_size=4), min_size=2, max_size=50, unique=True))
def test_ipv4_prefix_preserving_and_one_to_one(addrs):
    out = CP.anonymize_rows(np.frombuffer(b"".join(addrs), dtype=np.uint8).reshape(-1, 4))
    assert len({r.tobytes() for r in out}) == len(addrs)
    for i in range(1, len(addrs)):
        assert common_prefix(out[0].tobytes(), out[i].tobytes()) == common_prefix(addrs[0], addrs[i])
