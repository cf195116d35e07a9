"""leakcheck: a packet's own private address anywhere in it is a leak; another packet's is chance."""

from __future__ import annotations

import socket
import struct

import dpkt

from bridge.pcap import PcapHeader, pack_record, write_pcap
from bridge.sanitize.leakcheck import leakcheck


def tcp_syn(src: str, dst: str, seq: int, sport: int = 40000, dport: int = 23) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=dpkt.tcp.TH_SYN)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=50, data=tcp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    return bytes(eth)


def addr(text: str) -> int:
    return struct.unpack(">I", socket.inet_aton(text))[0]


def write(path, packets: list[tuple[int, bytes]]) -> None:
    write_pcap(path, PcapHeader(1, 65535, False), b"".join(pack_record(ts, p) for ts, p in packets))


def test_own_address_in_tcp_sequence_number_is_a_leak(tmp_path) -> None:
    orig = [(1_000, tcp_syn("198.51.100.7", "10.1.245.33", addr("10.1.245.33")))]  # Mirai: seq == dst
    leaked = [(1_000, tcp_syn("198.51.100.7", "192.168.245.33", addr("10.1.245.33")))]  # dst mapped, seq not
    write(tmp_path / "o.pcap", orig)
    write(tmp_path / "s.pcap", leaked)
    report = leakcheck(tmp_path / "o.pcap", tmp_path / "s.pcap", ["10.0.0.0/8"])
    assert [(f.kind, f.where, f.address) for f in report.leaks] == [("raw", "byte 38", "10.1.245.33")]
    assert not report.ok


def test_another_packets_address_by_chance_is_not_a_leak(tmp_path) -> None:
    # packet 2's sequence number happens to spell packet 1's private address
    orig = [(1_000, tcp_syn("198.51.100.7", "10.1.0.5", 12345)),
            (2_000, tcp_syn("198.51.100.8", "10.1.0.6", addr("10.1.0.5")))]
    clean = [(1_000, tcp_syn("198.51.100.7", "192.168.0.5", 12345)),
             (2_000, tcp_syn("198.51.100.8", "192.168.0.6", addr("10.1.0.5")))]
    write(tmp_path / "o.pcap", orig)
    write(tmp_path / "s.pcap", clean)
    report = leakcheck(tmp_path / "o.pcap", tmp_path / "s.pcap", ["10.0.0.0/8"])
    assert report.leaks == [] and report.raw_coincidences == 1 and report.ok


def test_structural_leak_is_found(tmp_path) -> None:
    orig = [(1_000, tcp_syn("198.51.100.7", "10.1.0.5", 1))]
    write(tmp_path / "o.pcap", orig)
    write(tmp_path / "s.pcap", orig)  # not sanitized at all
    report = leakcheck(tmp_path / "o.pcap", tmp_path / "s.pcap", ["10.0.0.0/8"])
    assert any(f.kind == "structural" and f.address == "10.1.0.5" for f in report.leaks)


def test_own_address_plus_one_in_tcp_ack_is_a_leak(tmp_path) -> None:
    def syn_ack(dst: str, ack: int) -> bytes:
        tcp = dpkt.tcp.TCP(sport=23, dport=40000, seq=7, ack=ack, flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
        ip = dpkt.ip.IP(src=socket.inet_aton("198.51.100.7"), dst=socket.inet_aton(dst), p=6, ttl=50, data=tcp)
        ip.len = len(ip)
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))

    write(tmp_path / "o.pcap", [(1_000, syn_ack("10.1.245.33", addr("10.1.245.33") + 1))])
    write(tmp_path / "s.pcap", [(1_000, syn_ack("192.168.245.33", addr("10.1.245.33") + 1))])
    report = leakcheck(tmp_path / "o.pcap", tmp_path / "s.pcap", ["10.0.0.0/8"])
    assert [(f.kind, f.where) for f in report.leaks] == [("raw", "byte 42")]
