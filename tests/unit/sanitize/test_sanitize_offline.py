"""Offline tools: sanitize-file and leakcheck, as functions and through the command line."""

from __future__ import annotations

import io
import struct

import pytest
from sanitize_corpus import PNAT, PRIVATE, cases, records

from bridge.cli import main
from bridge.pcap import PcapHeader, iter_packets, read_pcap, write_pcap
from bridge.sanitize import policy_from_flags
from bridge.sanitize.leakcheck import leakcheck
from bridge.sanitize.offline import sanitize_file


@pytest.fixture()
def corpus_pcap(tmp_path):
    eth_cases = [c for c in cases() if c.linktype == 1]
    path = tmp_path / "orig.pcap"
    write_pcap(path, PcapHeader(1, 65535, False), records(eth_cases))
    return path, eth_cases


def big_endian_copy(src, dst) -> None:
    """Rewrite a little-endian pcap in big-endian byte order (as a SPARC/PowerPC capture)."""
    header, recs = read_pcap(src)
    out = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, header.snaplen, header.linktype)
    for ts, caplen, origlen, data in iter_packets(recs):
        out += struct.pack(">IIII", ts // 10**9, ts % 10**9 // 1000, caplen, origlen) + bytes(data)
    dst.write_bytes(out)


def test_sanitize_file_then_leakcheck_clean(corpus_pcap, tmp_path):
    # payloads kept: every byte of the corpus reaches the output, the hardest case for leaks
    orig, eth_cases = corpus_pcap
    out = tmp_path / "out.pcap"
    summary = sanitize_file(orig, out, policy_from_flags(pnat=PNAT, payload="keep"), progress=True,
                            stream=io.StringIO())
    assert summary.count == len(eth_cases)
    assert summary.dropped == sum(c.expect == "drop" for c in eth_cases)
    # only bytes past a packet's IP length are cut (reason "trailer"), never a payload
    assert summary.kept + summary.cut == summary.count - summary.dropped
    assert summary.cut == summary.reasons["trailer"]
    assert sum(summary.reasons.values()) == summary.dropped + summary.cut
    report = leakcheck(orig, out, PRIVATE)
    assert report.ok, report.lines()
    assert report.private_in_orig > 40 and report.packets_sanitized == summary.kept + summary.cut


def test_default_policy_cuts_payloads_then_leakcheck_clean(corpus_pcap, tmp_path):
    orig, eth_cases = corpus_pcap
    out = tmp_path / "out.pcap"
    summary = sanitize_file(orig, out, policy_from_flags(pnat=PNAT), progress=False)
    assert summary.count == len(eth_cases)
    assert summary.dropped == sum(c.expect == "drop" for c in eth_cases)
    # a packet with payload is cut (counted by reason "payload"), one without is kept whole
    # (but for bytes past its IP length: reason "trailer")
    assert summary.kept + summary.cut == summary.count - summary.dropped
    assert summary.cut == summary.reasons["payload"] + summary.reasons["trailer"]
    assert summary.reasons["payload"] > len(eth_cases) // 4
    assert sum(summary.reasons.values()) == summary.dropped + summary.cut
    report = leakcheck(orig, out, PRIVATE)
    assert report.ok, report.lines()
    assert report.private_in_orig > 40 and report.packets_sanitized == summary.kept + summary.cut


def test_leakcheck_finds_what_a_narrow_policy_leaves(corpus_pcap, tmp_path):
    orig, _ = corpus_pcap
    out = tmp_path / "out.pcap"
    # a policy that forgets 192.168.0.0/16: every 192.168 address of the corpus must be reported
    sanitize_file(orig, out, policy_from_flags(pnat="10.0.0.0/8:44.0.0.0/8"), progress=False)
    report = leakcheck(orig, out, PRIVATE)
    assert not report.ok
    leaked = {f.address for f in report.leaks}
    assert "192.168.1.5" in leaked and "fd00::5" in leaked and not any(a.startswith("10.") for a in leaked)
    assert {f.kind for f in report.leaks} == {"structural", "raw"}
    assert "leaks:" in "\n".join(report.lines())


def test_leakcheck_reports_checksums_broken_by_sanitizing(corpus_pcap, tmp_path):
    orig, _ = corpus_pcap
    out = tmp_path / "out.pcap"
    sanitize_file(orig, out, policy_from_flags(pnat=PNAT), progress=False)
    header, recs = read_pcap(out)
    first = bytearray(recs)
    first[16 + 14 + 10] ^= 0xFF  # IPv4 header checksum of the first packet
    write_pcap(out, header, bytes(first))
    report = leakcheck(orig, out, PRIVATE)
    assert not report.ok and report.new_checksum_errors == {"ipv4_header": 1}


def test_big_endian_input_and_truncated_last_record(corpus_pcap, tmp_path):
    orig, eth_cases = corpus_pcap
    be = tmp_path / "be.pcap"
    big_endian_copy(orig, be)
    out_le, out_be = tmp_path / "le.out", tmp_path / "be.out"
    sanitize_file(orig, out_le, policy_from_flags(pnat=PNAT), progress=False)
    sanitize_file(be, out_be, policy_from_flags(pnat=PNAT), progress=False)
    assert out_le.read_bytes() == out_be.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(orig.read_bytes()[:-5])
    summary = sanitize_file(cut, tmp_path / "cut.out", policy_from_flags(pnat=PNAT), progress=False)
    assert summary.count == len(eth_cases) and summary.reasons["truncated_record"] == 1


def test_command_line(corpus_pcap, tmp_path, capsys):
    orig, _ = corpus_pcap
    out = tmp_path / "out.pcap"
    assert main(["sanitize-file", str(orig), str(out), "--pnat", PNAT, "--payload", "headers"]) == 0
    err = capsys.readouterr().err
    assert "payload:" in err and "dropped" in err
    assert main(["leakcheck", str(orig), str(out), "--private", ",".join(PRIVATE)]) == 0
    assert main(["sanitize-file", str(orig), str(out), "--pnat", "10.0.0.0/8:44.0.0.0/8"]) == 0
    assert main(["leakcheck", str(orig), str(out), "--private", ",".join(PRIVATE)]) == 1
    assert "leaks:" in capsys.readouterr().out
    assert main(["sanitize-file", str(orig), str(out), "--pnat", "10.0.0.0/33:1.0.0.0/8"]) == 2
    assert "10.0.0.0/33" in capsys.readouterr().err


def test_less_safe_choices_are_announced(corpus_pcap, tmp_path, capsys):
    orig, _ = corpus_pcap
    out = tmp_path / "out.pcap"
    assert main(["sanitize-file", str(orig), str(out), "--pnat", PNAT]) == 0
    assert "less safe" not in capsys.readouterr().err
    assert main(["sanitize-file", str(orig), str(out), "--pnat", PNAT, "--compat", "tcprewrite"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "less safe" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING")
    assert "MAC addresses and payloads" in warnings[0] and "compat tcprewrite" in warnings[0]
    assert main(["sanitize-file", str(orig), str(out), "--pnat", PNAT, "--compat", "tcprewrite", "--mac", "zero"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "less safe" in line]
    assert len(warnings) == 1 and "keeps payloads" in warnings[0] and "MAC" not in warnings[0]
    assert main(["sanitize-file", str(orig), str(out), "--pnat", PNAT, "--compat", "tcprewrite", "--mac", "zero",
                 "--payload", "headers"]) == 0
    assert "less safe" not in capsys.readouterr().err
