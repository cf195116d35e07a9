"""Sanitizer engine on the nasty corpus: no private address survives, checksums verify (dpkt +
an independent checksum), broken packets are dropped or cut with the right reason."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pcap import iter_packets, pack_record
from bridge.sanitize import PcapRecordError, Sanitizer, policy_from_flags
from bridge.sanitize.leakcheck import addresses, checksum_errors
from sanitize_corpus import MAC_A, MAC_B, MAC_ND, PNAT, PRIVATE, Case, a4, cases, eth, ip4_tcp, ip4_udp, ipv6, records

NETS = [ipaddress.ip_network(c) for c in PRIVATE]


def private(raw: bytes) -> bool:
    ip = ipaddress.ip_address(raw)
    return any(ip.version == n.version and ip in n for n in NETS)


def private_addresses(linktype: int, data: bytes) -> list[tuple[str, str]]:
    return [(w, str(ipaddress.ip_address(a))) for w, a in addresses(linktype, data) if private(a)]


def raw_private_patterns(corpus: list[Case]) -> set[bytes]:
    pats = {a for c in corpus for _w, a in addresses(c.linktype, c.data) if private(a)}
    return pats | {bytes(b ^ 0xFF for b in p) for p in pats if len(p) == 4}


def run(policy, corpus: list[Case]) -> list[tuple[Case, object, bytes]]:
    """Sanitize each case alone; returns (case, result, sanitized packet bytes or b'')."""
    s = Sanitizer(policy)
    out = []
    for case in corpus:
        res = s.sanitize_batch(case.linktype, records([case]))
        data = bytes(next(iter_packets(res.packets))[3]) if res.packets else b""
        out.append((case, res, data))
    return out


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return cases()


def test_corpus_really_contains_private_addresses(corpus):
    # guards the leak tests below against a corpus the oracle cannot see into
    missing = [c.name for c in corpus if c.expect == "keep" and not private_addresses(c.linktype, c.data)]
    assert missing == []
    assert all(checksum_errors(c.linktype, c.data, len(c.data)) == [] for c in corpus if c.expect == "keep")


@pytest.mark.parametrize("mode", ["pnat", "cryptopan"])
def test_corpus_no_leaks_valid_checksums(corpus, mode, tmp_path):
    if mode == "pnat":
        policy = policy_from_flags(pnat=PNAT)
    else:
        key = tmp_path / "key"
        key.write_bytes(bytes(range(32)))
        policy = policy_from_flags(cryptopan_key=str(key))
    patterns = raw_private_patterns(corpus)
    problems = []
    for case, res, data in run(policy, corpus):
        got = "drop" if res.dropped else "keep"
        if got != case.expect or (case.reason and res.reasons != {case.reason: 1}):
            problems.append(f"{case.name}: {got} {res.reasons}, expected {case.expect} {case.reason}")
        if not data:
            continue
        leaks = private_addresses(case.linktype, data)
        raw = [p.hex() for p in patterns if p in data]
        bad = checksum_errors(case.linktype, data, len(case.data))  # a cut packet keeps its original length
        if leaks or raw or bad:
            problems.append(f"{case.name}: leaks={leaks} raw={raw} checksums={bad}")
        if data == case.data:
            problems.append(f"{case.name}: unchanged")
    assert problems == []


def test_cut_policy_cuts_before_the_first_uncertain_byte(corpus):
    policy = policy_from_flags(pnat=PNAT, on_unparseable="cut")
    patterns = raw_private_patterns(corpus)
    for case, res, data in run(policy, corpus):
        if case.expect == "drop":
            assert res.cut == 1 and res.dropped == 0 and res.reasons == {case.reason: 1}, case.name
            assert len(data) < len(case.data), case.name
            assert private_addresses(case.linktype, data) == [], case.name
            assert not [p for p in patterns if p in data], case.name


def test_cut_offsets():
    by_name = {c.name: c for c in cases()}
    policy = policy_from_flags(pnat=PNAT, on_unparseable="cut")
    s = Sanitizer(policy)
    expect = {"truncated_quoted_dst": 14 + 20 + 8, "ospf": 14 + 20, "lldp": 14, "ipv4_lsrr": 14,
              "truncated_ip_src": 14}
    for name, cut_at in expect.items():
        res = s.sanitize_batch(1, records([by_name[name]]))
        (_ts, caplen, origlen, data), = list(iter_packets(res.packets))
        assert caplen == cut_at, name
        assert origlen == len(by_name[name].data)
    # the outer header before the cut point is rewritten, its checksum fixed
    res = s.sanitize_batch(1, records([by_name["truncated_quoted_dst"]]))
    data = bytes(next(iter_packets(res.packets))[3])
    assert data[30:34] == a4("44.1.2.3")
    assert checksum_errors(1, data, len(data)) == []


def test_batch_of_everything_matches_one_by_one(corpus):
    policy = policy_from_flags(pnat=PNAT)
    singles = [data for _c, _r, data in run(policy, corpus) if data]
    for linktype in {c.linktype for c in corpus}:
        group = [c for c in corpus if c.linktype == linktype]
        res = Sanitizer(policy).sanitize_batch(linktype, records(group))
        assert res.count == len(group)
        assert res.dropped == sum(c.expect == "drop" for c in group)
        assert res.kept + res.cut + res.dropped == res.count
        for _ts, _cap, _orig, data in iter_packets(res.packets):
            assert bytes(data) in singles


def test_pnat_exact_mapping_and_first_match_wins():
    policy = policy_from_flags(pnat="10.1.0.0/16:192.168.0.0/16,10.0.0.0/8:172.31.0.0/16")
    s = Sanitizer(policy)
    res = s.sanitize_batch(1, records([Case("a", 1, eth(ip4_tcp("10.1.2.3", "10.200.7.9")))]))
    data = bytes(next(iter_packets(res.packets))[3])
    assert data[26:30] == a4("192.168.2.3")          # first pair
    assert data[30:34] == a4("172.31.7.9")           # second pair, host bits under TO's /16


def test_srcipmap_dstipmap_directions():
    policy = policy_from_flags(srcipmap="10.0.0.0/8:44.0.0.0/8", dstipmap="10.0.0.0/8:45.0.0.0/8")
    res = Sanitizer(policy).sanitize_batch(1, records([Case("a", 1, eth(ip4_udp("10.1.1.1", "10.2.2.2")))]))
    data = bytes(next(iter_packets(res.packets))[3])
    assert data[26:30] == a4("44.1.1.1") and data[30:34] == a4("45.2.2.2")


def test_unsupported_linktype_drops_everything():
    res = Sanitizer(policy_from_flags(pnat=PNAT)).sanitize_batch(105, records(cases()[:3]))
    assert (res.count, res.dropped, res.packets, res.reasons) == (3, 3, b"", {"unsupported_linktype": 3})


def test_records_that_do_not_tile_are_refused():
    blob = records(cases()[:2])
    with pytest.raises(PcapRecordError):
        Sanitizer(policy_from_flags(pnat=PNAT)).sanitize_batch(1, blob[:-3])
    assert Sanitizer(policy_from_flags(pnat=PNAT)).sanitize_batch(1, b"").count == 0


@pytest.mark.parametrize("mode", ["zero", "hash"])
def test_mac_policy_covers_ethernet_arp_nd_sll(corpus, mode, tmp_path):
    key = tmp_path / "mac.key"
    key.write_bytes(bytes(range(1, 33)))
    policy = policy_from_flags(policy_file=None, pnat=PNAT, mac=mode) if mode == "zero" else \
        _policy_with_mac_key(tmp_path, key)
    results = run(policy, corpus)
    for case, _res, data in results:
        for mac in (MAC_A, MAC_B, MAC_ND):
            assert mac not in data, (case.name, mac.hex())
    if mode == "hash":
        # stable per key: the same MAC maps to the same value in every packet, group bit kept
        first = results[0][2]
        again = run(policy, corpus[:1])[0][2]
        assert first[:12] == again[:12]
        assert first[0] & 1 == MAC_B[0] & 1 and first[0] & 2


def _policy_with_mac_key(tmp_path, key):
    f = tmp_path / "p.toml"
    f.write_text(f'name = "m"\n[addresses]\npnat = "{PNAT}"\n[mac]\nmode = "hash"\nkey_file = "{key}"\n')
    return policy_from_flags(policy_file=str(f))


def test_payload_policies():
    case = Case("p", 1, eth(ip4_tcp("10.1.2.3", "8.8.8.8", b"secret payload 10.1.2.3")))
    full = len(case.data)
    for payload, expect_len in (("keep", full), ("headers", 14 + 20 + 20), ("cut:4", 14 + 20 + 20 + 4)):
        res = Sanitizer(policy_from_flags(pnat=PNAT, payload=payload)).sanitize_batch(1, records([case]))
        (_ts, caplen, origlen, data), = list(iter_packets(res.packets))
        assert (caplen, origlen) == (expect_len, full), payload
        assert res.cut == (payload != "keep")
    # ICMP errors: the quoted packet is header, rewritten, and kept
    icmp_case = next(c for c in cases() if c.name == "icmp_unreach")
    res = Sanitizer(policy_from_flags(pnat=PNAT, payload="headers")).sanitize_batch(1, records([icmp_case]))
    data = bytes(next(iter_packets(res.packets))[3])
    assert len(data) == 14 + 20 + 8 + 20 + 8


def test_quoted_checksums_are_patched_not_recomputed():
    # a quoted UDP checksum that was already wrong stays wrong by the same amount (RFC 1624
    # keeps "was invalid" information instead of blessing the packet)
    case = next(c for c in cases() if c.name == "icmp_unreach")
    res = Sanitizer(policy_from_flags(pnat=PNAT, payload="keep")).sanitize_batch(1, records([case]))
    data = bytes(next(iter_packets(res.packets))[3])
    inner = data[14 + 20 + 8:]
    assert inner[12:16] == a4("44.1.2.3") and inner[16:20] == a4("44.1.9.9")
    from sanitize_corpus import csum
    assert csum(inner[:20]) == 0
    udp = inner[20:]
    pseudo = inner[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert csum(pseudo + udp) == 0


def test_many_sites_per_packet_grow_the_tables():
    # Router advertisements with 255 entries: far more sites than the default table size
    from sanitize_corpus import icmp, ipv4
    body = b"".join(a4(f"10.1.{i // 256}.{i % 256}") + bytes(4) for i in range(255))
    pkt = eth(ipv4("10.1.0.1", "224.0.0.1", 1, icmp(9, 0, struct.pack("!BBH", 255, 2, 1800), body)))
    res = Sanitizer(policy_from_flags(pnat=PNAT)).sanitize_batch(1, pack_record(0, pkt))
    data = bytes(next(iter_packets(res.packets))[3])
    assert private_addresses(1, data) == []
    assert checksum_errors(1, data, len(data)) == []


def test_ipv6_pnat_is_bit_exact_for_unaligned_prefixes():
    # tcprewrite's remap_ipv6 mishandles prefixes that are not whole bytes (reference sec. 1.2);
    # ours keeps exactly the host bits under TO's mask
    from sanitize_corpus import a6, eth6, ip6_udp

    res = Sanitizer(policy_from_flags(pnat="[fd00::/12]:[2a50::/12]")).sanitize_batch(
        1, records([Case("u", 1, eth6(ip6_udp("fd0f:1::5", "2606:4700::1")))]))
    data = bytes(next(iter_packets(res.packets))[3])
    assert data[22:38] == a6("2a5f:1::5")


CPAN_KEY = bytes([21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16,
                  216, 152, 143, 131, 121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2])


def _cpan_v6_through_engine(tmp_path, src: str, dst: str) -> tuple[str, str]:
    key = tmp_path / "cpan.key"
    key.write_bytes(CPAN_KEY)
    res = Sanitizer(policy_from_flags(cryptopan_key=str(key))).sanitize_batch(
        229, pack_record(0, ipv6(src, dst, 59, b"")))
    data = bytes(next(iter_packets(res.packets))[3])
    return str(ipaddress.IPv6Address(data[8:24])), str(ipaddress.IPv6Address(data[24:40]))


def test_cryptopan_ipv6_is_reference_exact_for_embedding_forms(tmp_path):
    # IPv4-mapped, compatible, NAT64, 6to4, Teredo: no pre-mapping of the embedded IPv4, all
    # 128 bits exactly as reference Crypto-PAn (cryptopan.py is checked against its vectors)
    from bridge.sanitize.cryptopan import CryptoPAn

    cp = CryptoPAn(CPAN_KEY)
    pairs = [("::ffff:192.0.2.128", "::192.0.2.1"), ("64:ff9b::10.1.2.3", "2002:a01:203::1"),
             ("2001:0:a01:203::f5fe:fdfc", "fd00:10:1::5efe:a01:203")]
    for src, dst in pairs:
        assert _cpan_v6_through_engine(tmp_path, src, dst) == (cp.anonymize(src), cp.anonymize(dst))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_cryptopan_ipv6_engine_matches_reference_for_any_input(tmp_path_factory, raw):
    from bridge.sanitize.cryptopan import CryptoPAn

    addr = str(ipaddress.IPv6Address(raw))
    got = _cpan_v6_through_engine(tmp_path_factory.mktemp("k"), addr, "2001:db8::1")
    assert got[0] == CryptoPAn(CPAN_KEY).anonymize(addr)
