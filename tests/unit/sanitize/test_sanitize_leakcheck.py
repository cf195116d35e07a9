"""leakcheck, the independent oracle: every private value of the original, in every form, is a
leak wherever it sits in the sanitized capture; chance spellings by counters are not."""

from __future__ import annotations

import ipaddress
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from sanitize_corpus import MAC_A, MAC_B, a4, a6, eth, eth6, ip6_icmp6, ip6_udp, ipv4, ipv6, nd_opt, tcp, udp

from bridge.pcap import PcapHeader, pack_record, write_pcap
from bridge.sanitize.leakcheck import FORMS, addresses, layout, leakcheck

PRIVATE = ["10.1.0.0/16", "fd00:10:1::/48"]
CLI = Path(sys.executable).with_name("d4-bridge")
HOST, HOST6 = "10.1.2.3", "fd00:10:1::5"
PUBLIC, PUBLIC6 = "192.168.2.3", "2001:db8:ffff::5"  # where the sanitizer maps them
MAC_EUI = bytes.fromhex("0011223344aa")
EUI_IID = bytes.fromhex("021122fffe3344aa")  # MAC_EUI as an EUI-64 interface identifier


def write(path: Path, packets: list[bytes | tuple[bytes, int]], linktype: int = 1) -> Path:
    """A pcap of the packets (a (bytes, origlen) pair is a record cut by the capture), 1 s apart."""
    recs = b""
    for i, p in enumerate(packets):
        data, origlen = p if isinstance(p, tuple) else (p, None)
        recs += pack_record((i + 1) * 10**9, data, origlen=origlen)
    write_pcap(path, PcapHeader(linktype, 65535, False), recs)
    return path


def check(tmp_path: Path, orig: list, sanitized: list, linktype: int = 1, **kw):
    return leakcheck(write(tmp_path / "o.pcap", orig, linktype), write(tmp_path / "s.pcap", sanitized, linktype),
                     kw.pop("private", PRIVATE), **kw)


def u4(src: str, dst: str, payload: bytes = b"", sport: int = 40000, dport: int = 53) -> bytes:
    return eth(ipv4(src, dst, 17, udp(a4(src), a4(dst), sport, dport, payload)))


def u6(src: str, dst: str, payload: bytes = b"") -> bytes:
    return eth6(ip6_udp(src, dst, payload))


def t4(src: str, dst: str, seq: int = 1000, ack: int = 2000, flags: int = 0x02) -> bytes:
    return eth(ipv4(src, dst, 6, tcp(a4(src), a4(dst), 40000, 23, b"", flags, seq, ack)))


def num(text: str) -> int:
    return int.from_bytes(a4(text), "big")


def labels(parts) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in parts)


def nibbles(addr: bytes) -> list[str]:
    return list(addr.hex()[::-1])


# (name, the sanitized packet's payload hiding HOST/HOST6 or the prefix, the form reported)
# The original packet is always u4(198.51.100.1 -> HOST) + u6(2001:db8::1 -> HOST6), mapped in
# the sanitized capture; only the payload of the sanitized IPv4 packet carries the leak.
PAYLOAD_FORMS = [
    ("raw", a4(HOST), "raw"),
    ("raw_ipv6", a6(HOST6), "raw"),
    ("inverted_teredo", bytes(b ^ 0xFF for b in a4(HOST)), "inverted"),
    ("plus_one", (num(HOST) + 1).to_bytes(4, "big"), "plus1"),
    ("dotted_text", b"X-Forwarded-For: 10.1.2.3\r\n", "text"),
    ("dashed_text", b"host ip-10-1-2-3.internal", "text"),
    ("ipv6_text_compressed_upper", b"host=FD00:10:1::5;", "text"),
    ("ipv6_text_exploded", b"fd00:0010:0001:0000:0000:0000:0000:0005 ", "text"),
    ("mapped_text", b"from ::ffff:a01:203 ", "text6"),
    ("ptr_wire", labels(["3", "2", "1", "10", "in-addr", "arpa"]) + b"\0", "ptr"),
    ("ptr_text", b"3.2.1.10.IN-ADDR.ARPA", "ptr-text"),
    ("ptr6_wire", labels(nibbles(a6(HOST6)) + ["ip6", "arpa"]) + b"\0", "ptr"),
    ("ptr6_text", (".".join(nibbles(a6(HOST6))) + ".ip6.arpa").encode(), "ptr-text"),
    ("ptr6_text_no_suffix", (".".join(nibbles(a6(HOST6))) + " IN PTR").encode(), "ptr-text"),
    ("ip6_arpa_prefix_wire", labels(nibbles(a6("fd00:10:1::"))[-12:] + ["ip6", "arpa"]) + b"\0", "ptr-prefix"),
    ("ip6_arpa_prefix_text", b"1.0.0.0.0.1.0.0.0.0.d.f.ip6.arpa", "ptr-prefix"),
    ("in_addr_arpa_zone", labels(["1", "10", "in-addr", "arpa"]) + b"\0", "ptr-prefix"),
    ("in_addr_arpa_zone_text", b"zone 1.10.in-addr.arpa", "ptr-prefix"),
    ("ipv6_prefix_raw", a6("fd00:10:1:7::99"), "prefix"),
    ("ipv6_prefix_text", b"net fd00:10:1::/48", "prefix-text"),
    ("ipv6_prefix_text_padded", b"FD00:0010:0001", "prefix-text"),
    ("nat64_48_split", a4(HOST)[:2] + b"\0" + a4(HOST)[2:], "nat64"),
    ("mac_raw", MAC_A, "raw"),
    ("mac_text_colon_upper", b"chaddr 02:AA:BB:CC:DD:EE", "mac-text"),
    ("mac_text_dash", b"02-11-22-33-44-55", "mac-text"),
    ("mac_text_cisco", b"0211.2233.4455", "mac-text"),
    ("mac_eui64", bytes([MAC_A[0] ^ 2]) + MAC_A[1:3] + b"\xff\xfe" + MAC_A[3:], "eui64"),
    ("mac_eui64_text", b"11:22ff:fe33:4455", "eui64-text"),
]


@pytest.mark.parametrize("name,payload,form", PAYLOAD_FORMS, ids=[f[0] for f in PAYLOAD_FORMS])
def test_every_form_in_a_payload_is_reported(tmp_path, name, payload, form) -> None:
    orig = [u4("198.51.100.1", HOST), u6("2001:db8::1", HOST6)]
    leaked = [scrub_macs(u4("198.51.100.1", PUBLIC, payload)), scrub_macs(u6("2001:db8::1", PUBLIC6))]
    report = check(tmp_path, orig, leaked)
    assert [(f.packet, f.form, f.where) for f in report.leaks] == [(0, form, "payload")], report.lines()
    assert form in FORMS and not report.ok


def scrub_macs(frame: bytes) -> bytes:
    return bytes(12) + frame[12:]


def test_mapped_pair_with_macs_removed_is_clean(tmp_path) -> None:
    orig = [u4("198.51.100.1", HOST), u6("2001:db8::1", HOST6)]
    report = check(tmp_path, orig, [scrub_macs(u4("198.51.100.1", PUBLIC)), scrub_macs(u6("2001:db8::1", PUBLIC6))])
    assert report.ok and report.leaks == [], report.lines()
    assert report.private_in_orig == 2 and report.macs_in_orig == 2
    assert report.lines()[1] == "leaks: 0 in 0 packets"


def test_kept_macs_are_leaks_in_the_header(tmp_path) -> None:
    report = check(tmp_path, [u4("198.51.100.1", HOST)], [u4("198.51.100.1", PUBLIC)])
    assert [(f.form, f.where, f.address, f.kind) for f in report.leaks] == [
        ("raw", "eth.dst", MAC_B.hex(":"), "structural"), ("raw", "eth.src", MAC_A.hex(":"), "structural")]


def test_a_mac_given_by_the_caller_is_private(tmp_path) -> None:
    other = bytes.fromhex("0a0b0c0d0e0f")
    orig = [scrub_macs(u4("198.51.100.1", HOST))]
    report = check(tmp_path, orig, [scrub_macs(u4("198.51.100.1", PUBLIC, b"mac 0A:0B:0C:0D:0E:0F"))], macs=[other])
    assert [(f.form, f.address) for f in report.leaks] == [("mac-text", "0a:0b:0c:0d:0e:0f")]


@pytest.mark.parametrize("dst", ["::ffff:10.1.2.3", "::10.1.2.3", "::ffff:0:10.1.2.3", "64:ff9b::10.1.2.3",
                                 "64:ff9b:1::10.1.2.3", "2001:db8::5efe:10.1.2.3", "2001:db8::200:5efe:10.1.2.3",
                                 "2002:a01:203::1", "2001:0:a01:203::1", "2001:0:c000:201::f5fe:fdfc"])
def test_ipv4_embedded_in_an_ipv6_header_is_reported(tmp_path, dst) -> None:
    # the embedded address belongs to another packet: its IPv4 form is a leak where IPv6 embeds IPv4
    orig = [scrub_macs(u4("198.51.100.1", HOST)), scrub_macs(u6("2001:db8::1", "2001:db8::2"))]
    leaked = [scrub_macs(u4("198.51.100.1", PUBLIC)), scrub_macs(u6("2001:db8::1", dst))]
    report = check(tmp_path, orig, leaked)
    assert [(f.packet, f.where, f.form) for f in report.leaks] == [
        (1, "ip6.dst", "inverted" if dst.endswith("fdfc") else "raw")], report.lines()


def test_interface_identifier_spelling_an_ipv4_address_is_a_coincidence(tmp_path) -> None:
    # pnat keeps interface identifiers; one that spells packet 0's address in its last 4 bytes
    # embeds nothing (no embedding prefix), and is not learned as an address of packet 1 either
    orig = [scrub_macs(u4("198.51.100.1", "10.1.0.5")), scrub_macs(u6("2001:db8::1", "fd00:10:1::1234:a01:5"))]
    clean = [scrub_macs(u4("198.51.100.1", "192.168.0.5")), scrub_macs(u6("2001:db8::1", "2001:db8:ffff::1234:a01:5"))]
    report = check(tmp_path, orig, clean)
    assert report.ok and report.coincidences == 1 and report.private_in_orig == 2, report.lines()


def test_nat64_prefix_of_48_bits_splits_the_address(tmp_path) -> None:
    # RFC 6052: a /48 prefix puts a.b before the u octet, c.d after it
    split = str(ipaddress.IPv6Address(b"\x00\x64\xff\x9b\x00\x01" + a4(HOST)[:2] + b"\0" + a4(HOST)[2:] + bytes(5)))
    orig = [scrub_macs(u4("198.51.100.1", HOST)), scrub_macs(u6("2001:db8::1", "2001:db8::2"))]
    report = check(tmp_path, orig, [scrub_macs(u4("198.51.100.1", PUBLIC)), scrub_macs(u6("2001:db8::1", split))])
    assert [(f.where, f.form) for f in report.leaks] == [("ip6.dst", "nat64")]


def test_eui64_identifier_shows_the_mac_even_when_macs_are_hashed(tmp_path) -> None:
    # raw IP (no link layer): the MAC is only known from the private address's EUI-64 identifier
    host = "fd00:10:1::" + ":".join(EUI_IID[i:i + 2].hex() for i in range(0, 8, 2))
    orig = [ip6_udp("2001:db8::1", host)]
    leaked = [ip6_udp("2001:db8::1", "2001:db8:ffff:0:" + host.split("::")[1])]  # prefix mapped, IID kept
    report = check(tmp_path, orig, leaked, linktype=101)
    assert [(f.where, f.form, f.address) for f in report.leaks] == [("ip6.dst", "eui64", MAC_EUI.hex(":"))]
    assert report.macs_in_orig == 1


def test_another_packets_address_in_a_payload_is_a_leak(tmp_path) -> None:
    orig = [scrub_macs(u4("198.51.100.1", "10.1.0.5")), scrub_macs(u4("198.51.100.2", "10.1.0.6", b"abcd"))]
    leaked = [scrub_macs(u4("198.51.100.1", "192.168.0.5")),
              scrub_macs(u4("198.51.100.2", "192.168.0.6", a4("10.1.0.5")))]
    report = check(tmp_path, orig, leaked)
    assert [(f.packet, f.form, f.where, f.address) for f in report.leaks] == [(1, "raw", "payload", "10.1.0.5")]


def test_own_address_in_tcp_sequence_number_is_a_leak(tmp_path) -> None:
    orig = [scrub_macs(t4("198.51.100.7", "10.1.245.33", num("10.1.245.33")))]  # Mirai: seq == dst
    leaked = [scrub_macs(t4("198.51.100.7", "192.168.245.33", num("10.1.245.33")))]
    report = check(tmp_path, orig, leaked)
    assert [(f.form, f.where, f.offset, f.address) for f in report.leaks] == [("raw", "tcp", 38, "10.1.245.33")]


def test_own_address_plus_one_in_tcp_ack_is_a_leak(tmp_path) -> None:
    orig = [scrub_macs(t4("10.1.245.33", "198.51.100.7", 7, num("10.1.245.33") + 1, 0x12))]
    leaked = [scrub_macs(t4("192.168.245.33", "198.51.100.7", 7, num("10.1.245.33") + 1, 0x12))]
    report = check(tmp_path, orig, leaked)
    assert [(f.form, f.where, f.offset) for f in report.leaks] == [("plus1", "tcp", 42)]


def test_another_packets_address_spelled_by_a_counter_is_a_coincidence(tmp_path) -> None:
    # packet 2's sequence number happens to spell packet 1's private address: counted, not a leak
    orig = [scrub_macs(t4("198.51.100.7", "10.1.0.5", 12345)),
            scrub_macs(t4("198.51.100.8", "10.1.0.6", num("10.1.0.5")))]
    clean = [scrub_macs(t4("198.51.100.7", "192.168.0.5", 12345)),
             scrub_macs(t4("198.51.100.8", "192.168.0.6", num("10.1.0.5")))]
    report = check(tmp_path, orig, clean)
    assert report.leaks == [] and report.coincidences == 1 and report.ok
    assert report.lines()[-2].startswith("coincidences (not leaks): 1 ")


def test_value_learned_from_original_text_only(tmp_path) -> None:
    # 10.1.77.77 appears nowhere in a header: the original names it in a text payload
    orig = [scrub_macs(u4("198.51.100.1", "198.51.100.2", b"X-Forwarded-For: 10.1.77.77"))]
    leaked = [scrub_macs(u4("198.51.100.1", "198.51.100.2", b"X-Forwarded-For: " + a4("10.1.77.77")))]
    report = check(tmp_path, orig, leaked)
    assert [(f.form, f.address) for f in report.leaks] == [("raw", "10.1.77.77")]


def test_address_hidden_in_arp_padding_and_ip_trailer(tmp_path) -> None:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, a4("198.51.100.1"), bytes(6), a4("198.51.100.2"))
    frame = eth(arp + a4("10.1.9.9") + bytes(14), 0x0806)
    trailer = u4("198.51.100.1", "198.51.100.2", b"x") + a4("10.1.9.8")  # beyond the IP total length
    report = check(tmp_path, [frame, trailer], [scrub_macs(frame), scrub_macs(trailer)])
    assert [(f.packet, f.where, f.address) for f in report.leaks] == [
        (0, "arp.sha", MAC_A.hex(":")), (0, "arp.padding", "10.1.9.9"), (1, "trailer", "10.1.9.8")]


def test_cut_inside_a_copy_of_the_packets_own_address(tmp_path) -> None:
    full = scrub_macs(u4("198.51.100.1", HOST, a4(HOST)))
    full6 = scrub_macs(u6("2001:db8::1", HOST6, a6(HOST6)))
    orig = [full, full6]
    cut = scrub_macs(u4("198.51.100.1", PUBLIC, a4(HOST)))[:-2]  # the payload copy cut after 2 bytes
    cut6 = scrub_macs(u6("2001:db8::1", PUBLIC6, a6(HOST6)))[:-11]
    report = check(tmp_path, orig, [(cut, len(full)), (cut6, len(full6))])
    assert [(f.packet, f.form, f.length, f.address) for f in report.leaks] == [
        (0, "partial", 2, HOST), (1, "partial", 5, HOST6)]


@pytest.mark.parametrize("payload,cut,length", [
    (a4("10.1.0.5"), 1, 3),                                             # another packet's address
    (b"X-Forwarded-For: 10.1.0.5\r\n", 4, 6),                          # its text, cut after "10.1.0"
    (labels(["5", "0", "1", "10", "in-addr", "arpa"]) + b"\0", 17, 6),  # its reverse name
])
def test_cut_inside_a_kept_copy_of_another_packets_value(tmp_path, payload, cut, length) -> None:
    orig = [scrub_macs(u4("198.51.100.1", "10.1.0.5")), scrub_macs(u4("198.51.100.2", "198.51.100.3", payload))]
    whole = scrub_macs(u4("198.51.100.2", "198.51.100.3", payload))
    leaked = [scrub_macs(u4("198.51.100.1", "192.168.0.5")), (whole[:-cut], len(whole))]
    report = check(tmp_path, orig, leaked)
    assert [(f.packet, f.form, f.length, f.address) for f in report.leaks] == [(1, "partial", length, "10.1.0.5")]
    # the same bytes are no leak when the sanitizer wrote them (not kept from the original)
    written = scrub_macs(u4("198.51.100.2", "198.51.100.3", b"\xee" * len(payload)))
    assert check(tmp_path, orig, [leaked[0], (written[:-cut], len(whole))]).ok


def test_cut_inside_an_address_field_the_sanitizer_kept(tmp_path) -> None:
    whole = scrub_macs(u4("198.51.100.1", HOST))
    cut = whole[:14 + 16 + 3]  # the capture ends after 3 bytes of the destination address
    mapped = scrub_macs(u4("198.51.100.1", PUBLIC))[:len(cut)]
    assert check(tmp_path, [(cut, len(whole))], [(mapped, len(whole))]).ok
    report = check(tmp_path, [(cut, len(whole))], [(cut, len(whole))])
    assert [(f.form, f.where, f.address) for f in report.leaks] == [("partial", "ip4.dst", "0a0102...")]


def test_quoted_packet_and_nd_options(tmp_path) -> None:
    quote = ipv6(HOST6, "2001:db8::9", 17, udp(a6(HOST6), a6("2001:db8::9"), 1, 2, b"q"))
    err = ip6_icmp6("2001:db8::1", "2001:db8::2", 1, 0, bytes(4) + quote)
    na = ip6_icmp6("2001:db8::1", "2001:db8::2", 136, 0, b"\x60\0\0\0" + a6("2001:db8::1") + nd_opt(2, MAC_EUI))
    report = check(tmp_path, [eth6(err), eth6(na)], [scrub_macs(eth6(err)), scrub_macs(eth6(na))])
    assert [(f.packet, f.where, f.address) for f in report.leaks] == [
        (0, "quote.ip6.src", HOST6), (1, "nd.lladdr", MAC_EUI.hex(":"))]


def test_ipv6_esp_packet_does_not_crash(tmp_path) -> None:
    esp = eth6(ipv6(HOST6, "2001:db8::9", 50, struct.pack("!II", 0x1234, 1) + b"\xaa" * 24))
    assert addresses(1, esp) == [("eth.ip6.src", a6(HOST6)), ("eth.ip6.dst", a6("2001:db8::9"))]
    assert check(tmp_path, [esp], [scrub_macs(eth6(ipv6(PUBLIC6, "2001:db8::9", 50, esp[54:])))]).ok
    assert [r[3] for r in layout(1, esp)][-2:] == ["esp", "payload"]


def test_every_finding_counted_first_n_shown(tmp_path) -> None:
    orig = [u4("198.51.100.1", HOST) for _ in range(30)]
    report = check(tmp_path, orig, orig)
    assert len(report.leaks) == 90  # two MACs and the address in each packet
    lines = report.lines(5)
    assert lines[1] == "leaks: 90 in 30 packets"
    assert lines[2] == "  raw: 90 (eth.dst 30, eth.src 30, ip4.dst 30)"
    assert sum(line.startswith("  packet ") for line in lines) == 5 and "  ... 85 more (--show N prints more)" in lines


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "leakcheck", *args], capture_output=True, text=True, timeout=120)


def test_exit_codes_through_the_cli(tmp_path) -> None:
    orig = write(tmp_path / "o.pcap", [u4("198.51.100.1", HOST)])
    clean = write(tmp_path / "c.pcap", [scrub_macs(u4("198.51.100.1", PUBLIC))])
    leaky = write(tmp_path / "l.pcap", [scrub_macs(u4("198.51.100.1", PUBLIC, b"mac 02:aa:bb:cc:dd:99"))])
    private = ",".join(PRIVATE)
    ok = cli(str(orig), str(clean), "--private", private)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1] == "leaks: 0 in 0 packets"
    found = cli(str(orig), str(leaky), "--private", private, "--mac", "02-AA-BB-CC-DD-99", "--show", "0")
    assert found.returncode == 1 and "  mac-text: 1 (payload 1)" in found.stdout.splitlines()
    (tmp_path / "text.pcap").write_text("not a capture")
    (tmp_path / "ng.pcap").write_bytes(bytes.fromhex("0a0d0d0a") + bytes(40))
    for bad in (tmp_path / "missing.pcap", tmp_path / "text.pcap", tmp_path / "ng.pcap"):
        run = cli(str(orig), str(bad), "--private", private)
        assert run.returncode == 2 and run.stdout == "" and "d4-bridge leakcheck:" in run.stderr, bad
    assert cli(str(orig), str(clean)).returncode == 2  # --private is required
    assert cli(str(orig), str(clean), "--private", private, "--mac", "nonsense").returncode == 2


def test_new_bad_checksum_exits_1(tmp_path) -> None:
    orig = write(tmp_path / "o.pcap", [scrub_macs(u4("198.51.100.1", HOST))])
    broken = bytearray(scrub_macs(u4("198.51.100.1", PUBLIC)))
    broken[14 + 10] ^= 0xFF
    san = write(tmp_path / "s.pcap", [bytes(broken)])
    run = cli(str(orig), str(san), "--private", ",".join(PRIVATE))
    assert run.returncode == 1 and run.stdout.splitlines()[-1] == "checksums: ipv4_header 1 bad (new)"


def test_undecoded_bytes_still_get_their_raw_scan(tmp_path) -> None:
    # an EtherType nobody decodes carries the address; a 5-byte frame is beyond dpkt
    unknown = bytes(12) + b"\x88\xb5" + b"junk" + a4(HOST) + b"more"
    report = check(tmp_path, [unknown, b"\x08\x00\x45\x00\x00"], [unknown, b"\x08\x00\x45\x00\x00"])
    assert [(f.form, f.where, f.address) for f in report.leaks] == [("raw", "l2.payload", HOST)]
    assert report.undecoded_orig == 1 and "undecoded by dpkt: 1 original packets" in report.lines()[-2]
