"""Packet classes of the backscatter classifier, and protocol names (no numba here: the hub
imports this whether its loops come from the ahead-of-time build or the JIT)."""

from __future__ import annotations

CLASS_NAMES = (
    "not_ipv4", "malformed", "other", "scan", "mirai", "masscan", "icmp_request",
    "syn_ack", "rst", "icmp_echo_reply", "icmp_unreachable", "icmp_source_quench", "icmp_redirect",
    "icmp_time_exceeded", "icmp_parameter_problem", "icmp_timestamp_reply", "icmp_info_reply",
    "icmp_mask_reply",
)
"""Packet classes; ``Classified.cls`` holds indexes into this tuple."""

FIRST_BACKSCATTER = CLASS_NAMES.index("syn_ack")
"""Classes from this index on are backscatter."""

(NOT_IPV4, MALFORMED, OTHER, SCAN, MIRAI, MASSCAN, ICMP_REQUEST, SYN_ACK, RST) = range(9)

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
