"""Constants and table layouts shared by the compiled loops (walk.py, remap.py) and the engine.

No numba here: a process using the ahead-of-time kernels (aot.py) imports this, not numba.
"""

from __future__ import annotations

import numpy as np

from bridge.sanitize.policy import Policy

# roles of an address site (which tcprewrite map applies)
ROLE_SRC, ROLE_DST, ROLE_OTHER = 0, 1, 2

# reason codes; index into REASONS. partial_field: the capture cut a header inside a field, which
# is cut before that field; trailer: bytes past the IP (or ARP, UDP) length were cut
REASONS = (
    "ok",
    "truncated_l2",
    "unknown_ethertype",
    "truncated_ip_header",
    "bad_ip_header",
    "bad_ip_options",
    "ip_source_route",
    "unknown_ip_proto",
    "truncated_l4",
    "unknown_icmp_type",
    "unknown_icmp6_type",
    "bad_nd_option",
    "ipv6_routing_header",
    "truncated_ext_header",
    "unsupported_gre",
    "unsupported_arp",
    "nesting_too_deep",
    "teredo_auth",
    "unsupported_l2_address",
    "payload",
    "self_check",
    "partial_field",
    "trailer",
)
(R_OK, R_TRUNC_L2, R_ETHERTYPE, R_TRUNC_IP, R_BAD_IP, R_BAD_OPT, R_SRCROUTE, R_PROTO, R_TRUNC_L4,
 R_ICMP, R_ICMP6, R_ND_OPT, R_ROUTING, R_TRUNC_EXT, R_GRE, R_ARP, R_NEST, R_TEREDO, R_L2ADDR,
 R_PAYLOAD, R_SELF_CHECK, R_PARTIAL, R_TRAILER) = range(len(REASONS))

# packet verdicts in scan's output
V_KEEP, V_CUT, V_DROP = 0, 1, 2

# how an IPv4 site stores its address (v4 column 3): as is, bit-inverted (Teredo client), or
# plus one modulo 2^32 (a TCP acknowledgment number answering a sequence number that held it)
ENC_PLAIN, ENC_INVERTED, ENC_PLUS1 = 0, 1, 2

# column layout of the site tables
# v4: off, pkt, role, encoding (ENC_*), value (the address: big-endian uint32, decoded)
# v6: off, pkt, role, high 64 bits, low 64 bits (bit patterns)
# mac: off, pkt, covered (by a checksum: inside an IP packet), value (48-bit integer)
# blank: off, length, pkt, fill byte
# cs: pkt, field, start, end, ps_src, ps_dst, ps_len, udp
CS_COLS = 8

# Rule tables of the tcprewrite-style maps, built once per policy by rules4 / rules6:
#   IPv4: int64 rows [list, from_net, from_mask, to_net, to_mask]
#   IPv6: uint64 rows [list, from_hi, from_lo, fmask_hi, fmask_lo, to_hi, to_lo, tmask_hi, tmask_lo]
# list: LIST_SRC (--srcipmap), LIST_DST (--dstipmap), LIST_PNAT (--pnat), rows in the order given.
LIST_SRC, LIST_DST, LIST_PNAT = 0, 1, 2
M64 = (1 << 64) - 1

# IPv6 addresses that embed IPv4 (slot: where the IPv4 sits)
# (NAT64_48/56/64: RFC 6052 embeddings under a /48, /56 or /64 prefix, around the u octet)
SLOT_LOW32, SLOT_6TO4, SLOT_TEREDO_SERVER, SLOT_TEREDO_CLIENT, SLOT_NAT64_48, SLOT_NAT64_56, SLOT_NAT64_64 = range(7)


def _lists(policy: Policy):
    for lid, pairs in ((LIST_SRC, policy.srcipmap), (LIST_DST, policy.dstipmap), (LIST_PNAT, policy.pnat)):
        for pair in pairs:
            yield lid, pair


def rules4(policy: Policy) -> np.ndarray:
    """The IPv4 rule table of a policy."""
    rows = [[lid, p.src.network, p.src.mask, p.dst.network, p.dst.mask]
            for lid, p in _lists(policy) if p.src.family == 4]
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


def rules6(policy: Policy) -> np.ndarray:
    """The IPv6 rule table of a policy."""
    rows = [[lid, p.src.network >> 64, p.src.network & M64, p.src.mask >> 64, p.src.mask & M64,
             p.dst.network >> 64, p.dst.network & M64, p.dst.mask >> 64, p.dst.mask & M64]
            for lid, p in _lists(policy) if p.src.family == 6]
    return np.array(rows, dtype=np.uint64).reshape(-1, 9)


