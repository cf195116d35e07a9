"""What arrived at the demo's hub, and the summary the demo prints.

The hub's pcap topic is read back once at the end (every partition, from the beginning):
its records give the packets the hub received (written to a pcap file for ``leakcheck``),
which source each one came from (the sanitized telescope prefix tells), duplicates, and the
end-to-end latency of each packet: the hub ingress's batch close time (``created_ns``) minus
the packet's capture time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from bridge import kafka, records
from bridge.config import KafkaConfig
from bridge.demo_procs import DemoError
from bridge.pcap import RECORD_HEADER, PcapHeader, global_header, read_pcap, ts_ns

_ETH_IPV4, _ETH_ARP, _ETH_IPV6 = 0x0800, 0x0806, 0x86DD


@dataclass
class HubCapture:
    """Packets the hub received, attributed to sources, with their latencies."""

    unique: int = 0
    duplicates: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    latency_s: dict[str, list[float]] = field(default_factory=dict)
    unattributed: int = 0


def pnat_v4(prefix: str, pnat_from: str, pnat_to: str) -> ipaddress.IPv4Network:
    """Where tcprewrite --pnat FROM:TO puts ``prefix`` (a subnet of FROM): network bits of TO, host bits kept."""
    net, src, dst = (ipaddress.IPv4Network(p) for p in (prefix, pnat_from, pnat_to))
    host = int(net.network_address) & int(src.hostmask)
    return ipaddress.IPv4Network((int(dst.network_address) | host, net.prefixlen))


def _attribute(data: memoryview, prefixes: list[tuple[str, ipaddress.IPv4Network]], ipv6_source: str) -> str:
    """The source whose (sanitized) telescope prefix holds the packet's telescope address."""
    if len(data) < 14:
        return ""
    ethertype = int.from_bytes(data[12:14], "big")
    if ethertype == _ETH_IPV6:
        return ipv6_source
    if ethertype == _ETH_IPV4 and len(data) >= 34:
        addr = ipaddress.IPv4Address(bytes(data[30:34]))  # destination: the telescope address
    elif ethertype == _ETH_ARP and len(data) >= 42:
        addr = ipaddress.IPv4Address(bytes(data[38:42]))  # ARP target: the telescope address asked for
    else:
        return ""
    for name, net in prefixes:
        if addr in net:
            return name
    return ""


def read_hub(kcfg: KafkaConfig, topic: str, pcap_path: Path, header: PcapHeader,
             prefixes: list[tuple[str, ipaddress.IPv4Network]], ipv6_source: str, live_start_ns: int,
             timeout: float = 30.0) -> HubCapture:
    """Read every record of ``topic``; write its packets to ``pcap_path``; attribute and time them.

    Every capture of the demo has the link type and precision of ``header``; a record with
    others cannot share the pcap file and stops the demo (DemoError).
    """
    conf = kafka.consumer_conf(kcfg, "demo", f"d4-bridge-demo-{uuidlib.uuid4().hex[:12]}")
    conf["enable.partition.eof"] = True
    consumer = Consumer(conf)
    out = HubCapture(per_source={name: 0 for name, _ in prefixes} | {ipv6_source: 0})
    seen: set[bytes] = set()
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])  # offset 0: from the beginning
        pending = set(parts)
        with open(pcap_path, "wb") as pcap:
            pcap.write(global_header(header.linktype, header.snaplen, header.nsec))
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                rec = records.decode(msg.value(), expect="PcapBatch")
                nsec = rec["ts_precision"] == "nsec"
                if (rec["linktype"], nsec) != (header.linktype, header.nsec):
                    raise DemoError(f"{topic}[{msg.partition()}]@{msg.offset()}: link type {rec['linktype']} "
                                    f"({rec['ts_precision']}) differs from every capture of the demo")
                pcap.write(rec["packets"])
                _account(out, seen, rec["packets"], nsec, rec["created_ns"], prefixes, ipv6_source, live_start_ns)
    finally:
        consumer.close()
    return out


def _account(out: HubCapture, seen: set[bytes], packets: bytes, nsec: bool, created_ns: int,
             prefixes: list[tuple[str, ipaddress.IPv4Network]], ipv6_source: str, live_start_ns: int) -> None:
    view = memoryview(packets)
    pos = 0
    while pos < len(view):
        sec, frac, caplen, _ = RECORD_HEADER.unpack_from(view, pos)
        end = pos + 16 + caplen
        digest = _digest(view[pos:end])
        if digest in seen:
            out.duplicates += 1
        else:
            seen.add(digest)
            out.unique += 1
            source = _attribute(view[pos + 16:end], prefixes, ipv6_source)
            if source:
                out.per_source[source] += 1
                captured = ts_ns(sec, frac, nsec)
                if captured >= live_start_ns:
                    out.latency_s.setdefault(source, []).append((created_ns - captured) / 1e9)
            else:
                out.unattributed += 1
        pos = end


def _digest(record: memoryview | bytes) -> bytes:
    return hashlib.blake2b(record, digest_size=16).digest()


def record_digests(packets: bytes) -> Counter[bytes]:
    """Multiset of whole records (header + data) of canonical packed records."""
    view = memoryview(packets)
    out: Counter[bytes] = Counter()
    pos = 0
    while pos < len(view):
        end = pos + 16 + RECORD_HEADER.unpack_from(view, pos)[2]
        out[_digest(view[pos:end])] += 1
        pos = end
    return out


def compare_content(expected_pcap: Path, received_pcap: Path) -> tuple[int, int]:
    """(records expected but not received, records received but not expected), as multisets."""
    expected = record_digests(read_pcap(expected_pcap)[1])
    received = record_digests(read_pcap(received_pcap)[1])
    return sum((expected - received).values()), sum((received - expected).values())


def percentiles(values: Iterable[float], qs: tuple[float, ...] = (50, 99)) -> list[float | None]:
    """Percentiles of ``values`` (None when empty)."""
    arr = np.fromiter(values, dtype=np.float64)
    if not arr.size:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(arr, qs)]


def read_events(path: Path) -> list[dict[str, Any]]:
    """The analyzer's JSON-line events (a torn last line from a stopped process is skipped)."""
    events = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def match_attacks(truth: list[Any], events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each simulated attack with the hub's report of it; victims reported that were never attacked.

    The report of an attack is its newest event (highest seq: the final one once it came), as
    any consumer of d4.backscatter reads it; a victim reported under several attack ids (a split)
    shows the one with the most packets and its id count.
    """
    newest: dict[str, dict[str, Any]] = {}
    for ev in events:
        if ev["attack_id"] not in newest or ev["seq"] > newest[ev["attack_id"]]["seq"]:
            newest[ev["attack_id"]] = ev
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for ev in newest.values():
        by_key.setdefault((ev["victim"], ev["protocol"]), []).append(ev)
    rows = []
    simulated = set()
    for att in truth:
        key = (att.victim, att.protocol)
        simulated.add(key)
        reports = by_key.get(key, [])
        ev = max(reports, key=lambda e: e["packets"]) if reports else None
        rows.append({
            "kind": att.kind, "victim": att.victim, "protocol": att.protocol, "port": att.port,
            "simulated_pps": att.pps, "detected": ev is not None,
            "estimated_pps": round(ev["estimated_pps"]) if ev else None,
            "error": round(ev["estimated_pps"] / att.pps - 1, 3) if ev else None,
            "status": ev["status"] if ev else None, "attack_ids": len(reports),
            "sites": sorted(ev["sites"]) if ev else [], "monitored_addresses": ev["monitored_addresses"] if ev else 0,
            "packets_at_hub": ev["packets"] if ev else 0,
        })
    false_positives = sorted(f"{v}/{p}" for v, p in by_key if (v, p) not in simulated)
    return rows, false_positives


# --------------------------------------------------------------------------- rendering


def _fmt_s(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def _fmt_exit(rc: int | None) -> str:
    return "d4-bridge leakcheck did not finish" if rc is None else f"d4-bridge leakcheck exit {rc}"


def _fmt_content(c: dict[str, Any]) -> str:
    if c["missing"] is None:
        return "not compared (sanitize-file failed)"
    if not c["missing"] and not c["unexpected"]:
        return "identical"
    return f"{c['missing']} missing, {c['unexpected']} unexpected"


def render_text(s: dict[str, Any]) -> str:
    """The summary as a human-readable table."""
    lines = [
        "", "d4-bridge demo: private site -> public hub", "=" * 44,
        f"{'source':<10} {'transport':<34} {'captured':>9} {'at hub':>9}",
    ]
    for name, src in s["sources"].items():
        lines.append(f"{name:<10} {src['transport']:<34} {src['captured']:>9} {src['delivered']:>9}")
    lines.append(f"{'total':<10} {'':<34} {s['captured']:>9} {s['delivered_to_hub']:>9}")
    san = s["sanitizer"]
    drops = ", ".join(f"{r} {n}" for r, n in sorted(san["dropped"].items())) or "none"
    cuts = ", ".join(f"{r} {n}" for r, n in sorted(san["cut"].items())) or "none"
    lines += [
        "",
        f"sanitizer ({san['workers']} workers, --pnat {san['pnat']}):",
        f"  packets in {san['input']}, out {san['output']}",
        f"  dropped by reason: {drops}",
        f"  cut by reason:     {cuts}",
        f"lost: {s['lost']}   duplicates at hub: {s['duplicates']}   dead letters: {s['dead_letters']}",
        f"hub packets vs offline `d4-bridge sanitize-file` of all captures: {_fmt_content(s['content'])}",
        f"private addresses at the hub ({', '.join(s['leaks']['private'])}): "
        f"{'unknown' if s['leaks']['found'] is None else s['leaks']['found']}"
        f"   [{_fmt_exit(s['leaks']['leakcheck_exit'])}]",
        *[f"  {line}" for line in s["leaks"]["report"] if s["leaks"]["found"] != 0],
        "",
        f"attacks detected: {s['attacks']['detected']} of {s['attacks']['simulated']} simulated"
        f"   (other victims reported: {len(s['attacks']['false_positives'])})",
        f"  {'kind':<17} {'victim':<15} {'proto':<5} {'simulated pps':>13} {'estimated pps':>13} {'error':>6} "
        f"{'report':>7}",
    ]
    for a in s["attacks"]["list"]:
        est = "-" if a["estimated_pps"] is None else f"{a['estimated_pps']:,}"
        err = "-" if a["error"] is None else f"{a['error']:+.0%}"
        lines.append(f"  {a['kind']:<17} {a['victim']:<15} {a['protocol']:<5} {a['simulated_pps']:>13,.0f} "
                     f"{est:>13} {err:>6} {a['status'] or 'NONE':>7}")
    monitored = max((a["monitored_addresses"] for a in s["attacks"]["list"]), default=0)
    lines += [
        f"  estimate: packets x 2^32 / address-seconds watched, the addresses as each source announced them "
        f"({monitored:,} in all), counted while the source was capturing",
        f"  MISP events (ddos objects) written: {len(s['attacks'].get('misp_events', []))}",
    ]
    lat = s["latency"]
    lines += [
        "",
        "end-to-end latency (capture -> hub topic), live packets:",
        f"  D4 sensors:        p50 {_fmt_s(lat['sensors_p50_s'])}, p99 {_fmt_s(lat['sensors_p99_s'])}",
        f"  d4-core queue:     p50 {_fmt_s(lat['queue_p50_s'])}, p99 {_fmt_s(lat['queue_p99_s'])}"
        f"  (includes the {lat['rotate_s']:.0f} s file rotation)",
        "",
        "metrics:",
    ]
    lines += [f"  {name:<12} {url}" for name, url in s["metrics"].items()]
    verdict = "OK: nothing lost, nothing leaked" if s["ok"] else "FAILED: " + "; ".join(s["problems"])
    lines += ["", verdict, ""]
    return "\n".join(lines)
