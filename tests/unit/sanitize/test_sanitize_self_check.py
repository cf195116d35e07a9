"""The engine's self-check: a rewritten address still present elsewhere in the packet drops it.

The walk rewrites the address fields it knows; a packet can also carry its own address where
no parser looks (a DNS answer, a payload quoting the sender). Such a packet must not leave.
The default payload policy (headers) removes payloads before the self-check sees them, so the
tests of the self-check itself ask for the payload to be kept.
"""

from __future__ import annotations

from bridge.pcap import iter_packets
from bridge.sanitize import Sanitizer, policy_from_flags
from sanitize_corpus import Case, a4, a6, eth, eth6, ip4_tcp, ip4_udp, ip6_udp, records

PNAT = "10.0.0.0/8:44.0.0.0/8,[fd00::/8]:[2a00::/8]"


def sanitize(policy, packets: list[bytes], linktype: int = 1):
    res = Sanitizer(policy).sanitize_batch(linktype, records([Case(f"p{i}", linktype, p) for i, p in enumerate(packets)]))
    return res, [bytes(data) for *_hdr, data in iter_packets(res.packets)]


def test_own_address_in_the_payload_drops_only_that_packet():
    clean = eth(ip4_udp("10.1.2.3", "198.51.100.7", b"answer: 203.0.113.9 " + a4("203.0.113.9")))
    leaky = eth(ip4_udp("10.1.2.3", "198.51.100.7", b"answer: " + a4("10.1.2.3")))  # a DNS A record of itself
    res, out = sanitize(policy_from_flags(pnat=PNAT, payload="keep"), [clean, leaky, clean])
    assert (res.count, res.kept, res.dropped) == (3, 2, 1)
    assert res.reasons == {"self_check": 1}
    assert all(a4("10.1.2.3") not in p for p in out)
    assert all(a4("44.1.2.3") in p for p in out)


def test_own_destination_at_any_alignment_and_in_the_tcp_payload():
    for shift in range(4):
        pkt = eth(ip4_tcp("198.51.100.7", "10.9.8.7", b"x" * shift + a4("10.9.8.7") + b"tail"))
        res, _ = sanitize(policy_from_flags(pnat=PNAT, payload="keep"), [pkt])
        assert res.reasons == {"self_check": 1}, shift


def test_an_address_the_policy_keeps_at_a_site_is_not_a_find():
    # srcipmap maps sources only: the same address as destination stays, by the user's choice
    pkt = eth(ip4_udp("10.1.1.1", "10.1.1.1", b"payload"))
    res, out = sanitize(policy_from_flags(srcipmap="10.0.0.0/8:44.0.0.0/8", payload="keep"), [pkt])
    assert res.kept == 1 and res.reasons == {}
    assert out[0][26:30] == a4("44.1.1.1") and out[0][30:34] == a4("10.1.1.1")


def test_public_addresses_and_other_hosts_are_left_to_leakcheck():
    # only the packet's own rewritten addresses are looked for; another private host's address
    # in a payload is beyond what the engine can know (leakcheck reports those offline)
    pkt = eth(ip4_udp("10.1.2.3", "198.51.100.7", a4("198.51.100.7") + a4("10.77.0.1")))
    res, _ = sanitize(policy_from_flags(pnat=PNAT, payload="keep"), [pkt])
    assert res.kept == 1 and res.reasons == {}


def test_unspecified_addresses_are_not_looked_for(tmp_path):
    # Crypto-PAn rewrites 0.0.0.0 too (a DHCP discover); zero bytes are everywhere in a packet
    key = tmp_path / "key"
    key.write_bytes(bytes(range(32)))
    pkt = eth(ip4_udp("0.0.0.0", "255.255.255.255", bytes(64)))
    res, _ = sanitize(policy_from_flags(cryptopan_key=str(key), payload="keep"), [pkt])
    assert res.kept == 1 and res.reasons == {}


def test_ipv6_own_address_in_the_payload():
    leaky = eth6(ip6_udp("fd00::1:2", "2001:db8::53", b"AAAA " + a6("fd00::1:2")))
    clean = eth6(ip6_udp("fd00::1:2", "2001:db8::53", b"AAAA " + a6("2001:db8::99")))
    res, out = sanitize(policy_from_flags(pnat=PNAT, payload="keep"), [leaky, clean])
    assert res.reasons == {"self_check": 1} and res.kept == 1
    assert a6("fd00::1:2") not in out[0]


def test_a_cut_payload_takes_the_address_with_it():
    pkt = eth(ip4_udp("10.1.2.3", "198.51.100.7", b"0123456789" + a4("10.1.2.3")))
    res, out = sanitize(policy_from_flags(pnat=PNAT, payload="cut:4"), [pkt])
    assert res.reasons == {"payload": 1} and res.cut == 1  # cut by the policy, not by the self-check
    assert a4("10.1.2.3") not in out[0] and a4("44.1.2.3") in out[0]


def test_the_default_policy_cuts_the_payload_with_the_address_in_it():
    leaky = eth(ip4_udp("10.1.2.3", "198.51.100.7", b"answer: " + a4("10.1.2.3")))
    res, out = sanitize(policy_from_flags(pnat=PNAT), [leaky])
    assert (res.count, res.kept, res.cut, res.dropped) == (1, 0, 1, 0) and res.reasons == {"payload": 1}
    assert len(out[0]) == 14 + 20 + 8 and a4("10.1.2.3") not in out[0] and a4("44.1.2.3") in out[0]
