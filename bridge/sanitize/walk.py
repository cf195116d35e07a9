"""Compiled per-packet loops of the sanitizer (numba): locate every address, apply rewrites.

Two passes over a batch of canonical pcap records (16-byte little-endian record header +
captured bytes):

`scan` walks each packet's header chain once and records, without writing anything,
  - address sites: byte offset, family, role (src / dst / other), encoding (as is, inverted,
    plus one); besides the address fields, TCP sequence and acknowledgment numbers are
    address sites (pnat: always; Crypto-PAn: when equal to an address of their header, or one
    plus it), since Mirai-style scanners send seq == destination and the SYN-ACK/RST answering
    carries ack == that + 1; a number outside the policy's ranges maps to itself;
  - MAC sites (when the policy touches MACs);
  - blanks: byte ranges the walk does not understand inside a header it keeps (unknown TCP
    options, unknown IPv6 option TLVs and ND options, padding contents, MPTCP address HMACs),
    overwritten with a fill byte that carries nothing (NOP, Pad, zero);
  - checksum entries: checksum field, the byte range it covers, and the pseudo-header
    address fields it depends on;
  - a verdict per packet: keep, cut at an offset, or drop, with a reason code.
The new values of all sites are then computed for the whole batch at once in numpy
(engine.py), and `apply` writes them and the blanks, patches every affected checksum
incrementally (RFC 1624) from innermost to outermost, and compacts the records in place.

Allow-list, not deny-list: a packet keeps only the bytes the walk understands. The walk
returns, besides the payload start, the end of what it understood (the innermost IP total
length, the end of an ARP body): bytes past it (Ethernet padding and trailers, bytes hidden
behind a short IP total length) are cut from the record, whatever the payload policy. A
header field cut by the capture inside a value that could hold an address (or inside a
checksum covering one) is cut before that field, so no partial value is left.

Before a record is kept, `apply` checks it (`_address_left`): an address the policy rewrote
in it must not be in its payload (the bytes after the last header the walk parsed, which no
parser reads: a DNS answer, an application quoting the sender), nor may the payload end in the
first bytes of one. Such a packet is dropped with reason ``self_check``.

The header chain of a packet is linear (each layer has at most one next layer: an ICMP error
quotes one packet, a tunnel carries one packet), so the walk is a loop over layers, not a
recursion. Anything the walk cannot follow far enough to be sure that it has seen every
address is reported as unparseable with the offset of the first byte that may hold one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bridge.sanitize.layout import (  # noqa: F401 (re-exported for callers of the JIT module)
    CS_COLS, ENC_INVERTED, ENC_PLAIN, ENC_PLUS1, R_ARP, R_BAD_IP, R_BAD_OPT, R_ETHERTYPE, R_GRE, R_ICMP, R_ICMP6,
    R_L2ADDR, R_NEST, R_ND_OPT, R_OK, R_PARTIAL, R_PAYLOAD, R_PROTO, R_ROUTING, R_SELF_CHECK, R_SRCROUTE, R_TEREDO,
    R_TRAILER, R_TRUNC_EXT, R_TRUNC_IP, R_TRUNC_L2, R_TRUNC_L4, REASONS, ROLE_DST, ROLE_OTHER, ROLE_SRC, V_CUT, V_DROP, V_KEEP,
)

# layers of the walk
_L_ETH, _L_ETYPE, _L_IP4, _L_IP6, _L_ARP = 0, 1, 2, 3, 4

MAX_IP_LAYERS = 8
MAX_VLAN_TAGS = 8  # also bounds MPLS label stacks

# scan and apply allocate nothing, so they run without numba's reference-counting runtime:
# with it, every array an inlined helper receives is counted up and down (atomically) on every
# packet, which cost more than the walk itself (scan 0.17 s per 1M packets, 0.07 s without)
_no_rt = njit(cache=True, _nrt=False)

# fill bytes of blanks
_FILL_ZERO, _FILL_NOP = 0, 1

# IPv4 options kept (RFC 791 and the IANA registry): EOL, NOP, Record Route, Timestamp,
# Traceroute (RFC 1393), Security (RFC 1108), Stream ID, Router Alert. Their address slots are
# rewritten; any other option type is not understood.
# IPv6 option TLVs kept: Pad1, PadN (contents zeroed), Tunnel Encapsulation Limit, Router Alert,
# RPL, Jumbo Payload, Home Address (rewritten); any other is turned into PadN.
# TCP options kept: EOL, NOP, MSS, window scale, SACK-permitted, SACK, timestamps, MD5
# signature, user timeout, TCP-AO, MPTCP (ADD_ADDR rewritten), Fast Open; any other becomes NOPs.


@njit(cache=True, inline="always")
def _u16(buf, i):
    return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])


@njit(cache=True, inline="always")
def _u32(buf, i):
    return (np.int64(buf[i]) << 24) | (np.int64(buf[i + 1]) << 16) | (np.int64(buf[i + 2]) << 8) | np.int64(buf[i + 3])


@njit(cache=True, inline="always")
def _add_v4(v4, n, off, pkt, role, enc):
    k = n[0]
    if k >= v4.shape[0]:
        n[4] = 1
        return
    v4[k, 0] = off
    v4[k, 1] = pkt
    v4[k, 2] = role
    v4[k, 3] = enc
    n[0] = k + 1


@njit(cache=True, inline="always")
def _add_v6(v6, n, off, pkt, role):
    k = n[1]
    if k >= v6.shape[0]:
        n[4] = 1
        return
    v6[k, 0] = off
    v6[k, 1] = pkt
    v6[k, 2] = role
    n[1] = k + 1


@njit(cache=True, inline="always")
def _add_mac(mac, n, off, pkt, covered):
    """A MAC site; covered: whether a checksum covers it (inside an IP packet)."""
    k = n[2]
    if k >= mac.shape[0]:
        n[4] = 1
        return
    mac[k, 0] = off
    mac[k, 1] = pkt
    mac[k, 2] = covered
    mac[k, 3] = 0
    n[2] = k + 1


@njit(cache=True, inline="always")
def _add_cs(cs, n, pkt, field, start, end, ps_src, ps_dst, ps_len, udp):
    k = n[3]
    if k >= cs.shape[0]:
        n[4] = 1
        return
    cs[k, 0] = pkt
    cs[k, 1] = field
    cs[k, 2] = start
    cs[k, 3] = end
    cs[k, 4] = ps_src
    cs[k, 5] = ps_dst
    cs[k, 6] = ps_len
    cs[k, 7] = udp
    n[3] = k + 1


@njit(cache=True, inline="always")
def _add_blank(blank, n, off, length, pkt, fill):
    """A blank: [off, off + length) is to be overwritten with `fill`."""
    if length <= 0:
        return
    k = n[8]
    if k >= blank.shape[0]:
        n[4] = 1
        return
    blank[k, 0] = off
    blank[k, 1] = length
    blank[k, 2] = pkt
    blank[k, 3] = fill
    n[8] = k + 1


@njit(cache=True, inline="always")
def _in_ranges(value, rules):
    """Whether the IPv4 value lies in the FROM range of one of the rules (layout.rules4)."""
    for r in range(rules.shape[0]):
        if (value & rules[r, 2]) == rules[r, 1]:
            return True
    return False


@njit(cache=True, inline="always")
def _tcp_numbers(buf, v4, n, p, plim, ip_src, ip_dst, pkt, seq_rules):
    """Record the TCP sequence / acknowledgment numbers at p as IPv4 sites, as far as the
    (possibly quoted, truncated) header [p, plim) holds them whole. ip_src, ip_dst: offsets of
    the IPv4 header's address fields (-1 for IPv6). A number equal to one of them takes its
    role, so it stays equal to the mapped address; a number inside the FROM range of one of
    seq_rules (the pnat rules; none for Crypto-PAn) is a site too, with role other."""
    if p + 8 > plim:
        return
    src = _u32(buf, ip_src) if ip_src >= 0 else -1
    dst = _u32(buf, ip_dst) if ip_dst >= 0 else -1
    seq = _u32(buf, p + 4)
    # destination first: when src == dst the role decides which map applies; scanners put dst
    if seq == dst:
        _add_v4(v4, n, p + 4, pkt, ROLE_DST, ENC_PLAIN)
    elif seq == src:
        _add_v4(v4, n, p + 4, pkt, ROLE_SRC, ENC_PLAIN)
    elif _in_ranges(seq, seq_rules):
        _add_v4(v4, n, p + 4, pkt, ROLE_OTHER, ENC_PLAIN)
    if p + 12 > plim:
        return
    # an acknowledgment number answers a sequence number: one past the value it encodes
    ack = (_u32(buf, p + 8) - 1) & 0xFFFFFFFF
    if ack == dst:
        _add_v4(v4, n, p + 8, pkt, ROLE_DST, ENC_PLUS1)
    elif ack == src:
        _add_v4(v4, n, p + 8, pkt, ROLE_SRC, ENC_PLUS1)
    elif _in_ranges(ack, seq_rules):
        _add_v4(v4, n, p + 8, pkt, ROLE_OTHER, ENC_PLUS1)


@njit(cache=True, inline="always")
def _ip4_options(buf, o, ihl, pkt, v4, n):
    """Walk the IPv4 options [o + 20, o + ihl): every address slot of a kept option becomes a
    site (filled or not: an attacker can prespecify addresses beyond the pointer). Returns a
    reason: R_OK, R_SRCROUTE or R_BAD_OPT (unknown option, bad length, data after EOL)."""
    i = o + 20
    oend = o + ihl
    while i < oend:
        t = buf[i]
        if t == 0:
            for j in range(i + 1, oend):
                if buf[j] != 0:
                    return R_BAD_OPT
            return R_OK
        if t == 1:
            i += 1
            continue
        if i + 1 >= oend:
            return R_BAD_OPT
        ol = np.int64(buf[i + 1])
        if ol < 2 or i + ol > oend:
            return R_BAD_OPT
        if t == 131 or t == 137:
            return R_SRCROUTE
        if t == 7:
            if ol < 3 or (ol - 3) % 4 != 0:
                return R_BAD_OPT
            for a in range(i + 3, i + ol, 4):
                _add_v4(v4, n, a, pkt, ROLE_OTHER, ENC_PLAIN)
        elif t == 68:
            if ol < 4 or (ol - 4) % 4 != 0:
                return R_BAD_OPT
            flg = buf[i + 3] & 15
            if flg != 0 and flg != 1 and flg != 3:
                return R_BAD_OPT
            # every word: the addresses of flags 1 and 3, and timestamps (32 free bits each)
            for a in range(i + 4, i + ol, 4):
                _add_v4(v4, n, a, pkt, ROLE_OTHER, ENC_PLAIN)
        elif t == 82:  # traceroute: id, outbound and return hop counts, originator address
            if ol != 12:
                return R_BAD_OPT
            _add_v4(v4, n, i + 8, pkt, ROLE_OTHER, ENC_PLAIN)
        elif t == 130:
            if ol != 11:
                return R_BAD_OPT
        elif t == 136 or t == 148:
            if ol != 4:
                return R_BAD_OPT
        else:
            return R_BAD_OPT
        i += ol
    return R_OK


@_no_rt
def _ip6_tlvs(buf, start, stop, pkt, v6, blank, n):
    """Walk the option TLVs of a hop-by-hop or destination options header [start, stop).
    Unknown options become PadN (type 1, contents zeroed), padding contents are zeroed, a
    Home Address option is an address site. Returns R_OK or R_TRUNC_EXT (a TLV overruns)."""
    i = start
    while i < stop:
        t = buf[i]
        if t == 0:
            i += 1
            continue
        if i + 2 > stop:
            return R_TRUNC_EXT
        ol = np.int64(buf[i + 1])
        if i + 2 + ol > stop:
            return R_TRUNC_EXT
        known = (t == 4 and ol == 1) or (t == 5 and ol == 2) or (t == 0x63 and ol == 4) or (t == 0xC2 and ol == 4)
        if t == 0xC9 and ol == 16:
            _add_v6(v6, n, i + 2, pkt, ROLE_OTHER)
        elif t == 1:
            _blank_nonzero(buf, blank, n, i + 2, ol, pkt)
        elif not known:
            _add_blank(blank, n, i, 1, pkt, _FILL_NOP)
            _blank_nonzero(buf, blank, n, i + 2, ol, pkt)
        i += 2 + ol
    return R_OK


@njit(cache=True, inline="always")
def _blank_nonzero(buf, blank, n, off, length, pkt):
    """Zero [off, off + length) if any byte of it is not zero (padding carries nothing)."""
    for j in range(off, off + length):
        if buf[j] != 0:
            _add_blank(blank, n, off, length, pkt, _FILL_ZERO)
            return


@njit(cache=True, inline="always")
def _tcp_options(buf, q, qend, cut_by_capture, pkt, v4, v6, blank, n):
    """Walk the TCP options [q, qend). Kept options stay, MPTCP ADD_ADDR addresses are sites
    (their HMAC is zeroed: it is computed over the address), anything else becomes NOPs,
    bytes after EOL are zeroed. When the capture cut the options (cut_by_capture, qend = end
    of the capture), an option running past qend is not kept: returns where the kept options
    end (qend when all are)."""
    while q < qend:
        k = buf[q]
        if k == 0:
            _blank_nonzero(buf, blank, n, q + 1, qend - q - 1, pkt)
            return qend
        if k == 1:
            q += 1
            continue
        if q + 2 > qend:
            if cut_by_capture:
                return q
            _add_blank(blank, n, q, qend - q, pkt, _FILL_NOP)
            return qend
        ol = np.int64(buf[q + 1])
        if ol < 2 or q + ol > qend:
            if cut_by_capture and ol >= 2:
                return q
            _add_blank(blank, n, q, qend - q, pkt, _FILL_NOP)
            return qend
        ok = ((k == 2 and ol == 4) or (k == 3 and ol == 3) or (k == 4 and ol == 2) or (k == 5 and (ol - 2) % 8 == 0)
              or (k == 8 and ol == 10) or (k == 19 and ol == 18) or (k == 28 and ol == 4) or (k == 29 and ol >= 4)
              or (k == 34 and (ol == 2 or (ol >= 6 and ol <= 18 and ol % 2 == 0))))
        if k == 30 and ol >= 3:
            sub = buf[q + 2] >> 4
            if sub == 3:  # ADD_ADDR (RFC 6824 and 8684): the length tells the family and the HMAC
                if ol == 8 or ol == 10 or ol == 16 or ol == 18:
                    _add_v4(v4, n, q + 4, pkt, ROLE_OTHER, ENC_PLAIN)
                    ok = True
                elif ol == 20 or ol == 22 or ol == 28 or ol == 30:
                    _add_v6(v6, n, q + 4, pkt, ROLE_OTHER)
                    ok = True
                if ok and (ol == 16 or ol == 18 or ol == 28 or ol == 30):
                    _add_blank(blank, n, q + ol - 8, 8, pkt, _FILL_ZERO)
            else:
                # keys, tokens, nonces, sequence mappings (no addresses), in the lengths of
                # RFC 6824 / 8684 only
                ok = ((sub == 0 and (ol == 4 or ol == 12 or ol == 20 or ol == 22 or ol == 24))
                      or (sub == 1 and (ol == 12 or ol == 16 or ol == 24)) or (sub == 2 and 4 <= ol <= 28)
                      or (sub == 4 and ol >= 4) or (sub == 5 and (ol == 3 or ol == 4))
                      or ((sub == 6 or sub == 7) and ol == 12) or (sub == 8 and ol == 4))
        if not ok:
            _add_blank(blank, n, q, ol, pkt, _FILL_NOP)
        q += ol
    return qend


@_no_rt
def _nd_options(buf, q, plim, pkt, mac_on, v6, mac, blank, n):
    """Walk the neighbour-discovery options [q, plim). Returns (reason, offset, quoted): the
    start of a Redirected Header option's quoted packet (-1 if none). Options without
    addresses of a known format stay, address options are sites, link-layer address options
    are MAC sites; the body of any other option (DNSSL and other names, URIs, NAT64 prefixes
    that this walk does not map) is zeroed."""
    quoted = -1
    while q < plim:
        if q + 2 > plim:
            return R_ND_OPT, q, -1
        ot = buf[q]
        ol = np.int64(buf[q + 1]) * 8
        if ol == 0 or q + ol > plim:
            return R_ND_OPT, q, -1
        if ot == 1 or ot == 2:
            if ol != 8:
                return R_ND_OPT, q, -1
            if mac_on:
                _add_mac(mac, n, q + 2, pkt, True)
        elif ot == 3:
            if ol != 32:
                return R_ND_OPT, q, -1
            _blank_nonzero(buf, blank, n, q + 12, 4, pkt)  # reserved
            _add_v6(v6, n, q + 16, pkt, ROLE_OTHER)
        elif ot == 24:
            if ol == 24:
                _add_v6(v6, n, q + 8, pkt, ROLE_OTHER)
            elif ol == 16:
                # a prefix of at most 64 bits: as the high half of an address
                _add_blank(blank, n, q + 8, 8, pkt, _FILL_ZERO)
            elif ol != 8:
                return R_ND_OPT, q, -1
        elif ot == 25:
            if ol < 24 or (ol - 8) % 16 != 0:
                return R_ND_OPT, q, -1
            _blank_nonzero(buf, blank, n, q + 2, 2, pkt)
            for a in range(q + 8, q + ol, 16):
                _add_v6(v6, n, a, pkt, ROLE_OTHER)
        elif ot == 4:
            # redirected header: quotes a packet; must be the last option
            if q + ol != plim:
                return R_ND_OPT, q, -1
            _blank_nonzero(buf, blank, n, q + 2, 6, pkt)
            quoted = q + 8
        elif ot == 5 or ot == 14:
            if ot == 5:
                _blank_nonzero(buf, blank, n, q + 2, 2, pkt)
        else:
            _add_blank(blank, n, q + 2, ol - 2, pkt, _FILL_ZERO)
        q += ol
    return R_OK, -1, quoted


@njit(cache=True, inline="always")
def _tcp_header(buf, p, plim, bound, is_v6, ps_src, ps_dst, ps_len, pkt, seq_rules, v4, v6, cs, blank, n):
    """The TCP header at p (segment bytes [p, plim)). Returns (reason, payload start, bound)."""
    _tcp_numbers(buf, v4, n, p, plim, -1 if is_v6 else ps_src, -1 if is_v6 else ps_dst, pkt, seq_rules)
    if p + 20 > plim:
        # cut by the capture: keep whole fields only, never a partial number or checksum
        if p + 18 <= plim:
            _add_cs(cs, n, pkt, p + 16, p, plim, ps_src, ps_dst, ps_len, 0)
            return R_PARTIAL, plim, plim
        cut = plim
        if plim >= p + 4 and plim < p + 8:
            cut = p + 4
        elif plim < p + 12:
            cut = p + 8
        elif plim > p + 16:
            cut = p + 16
        return R_PARTIAL, cut, cut
    doff = np.int64(buf[p + 12] >> 4) * 4
    if doff < 20:
        return R_TRUNC_L4, p, bound
    _add_cs(cs, n, pkt, p + 16, p, plim, ps_src, ps_dst, ps_len, 0)
    hend = p + doff
    if hend <= plim:
        _tcp_options(buf, p + 20, hend, False, pkt, v4, v6, blank, n)
        return R_OK, hend, bound
    stop = _tcp_options(buf, p + 20, plim, True, pkt, v4, v6, blank, n)
    return R_PARTIAL, stop, stop


@_no_rt
def _walk(buf, d, end, linktype, pkt, mac_on, seq_rules, v4, v6, mac, cs, blank, n):
    """Walk one packet [d, end). Returns (reason, offset, bound): reason R_OK (or R_PARTIAL:
    the capture cut a header, which is kept to its last whole field) with the payload start of
    the innermost layer (-1 if none) and the end of the bytes understood; or a failure reason
    with the cut offset."""
    layer = _L_ETH
    o = d
    lim = end
    bound = end
    et = 0
    ip_layers = 0
    if linktype == 1:
        layer = _L_ETH
    elif linktype == 113 or linktype == 276:
        # Linux SLL: type, ARPHRD, address length, 8-byte address, protocol; SLL2: protocol,
        # reserved, interface, ARPHRD, type, address length, address
        hl = 16 if linktype == 113 else 20
        if d + hl > end:
            return R_TRUNC_L2, d, end
        halen = _u16(buf, d + 4) if linktype == 113 else np.int64(buf[d + 11])
        at = d + 6 if linktype == 113 else d + 12
        if halen == 6:
            if mac_on:
                _add_mac(mac, n, at, pkt, False)
        elif halen == 4:  # IPv4 tunnel devices: the address is the tunnel's IPv4 endpoint
            _add_v4(v4, n, at, pkt, ROLE_OTHER, ENC_PLAIN)
        elif halen != 0:
            return R_L2ADDR, d, end
        _blank_nonzero(buf, blank, n, at + halen, 8 - halen, pkt)
        if linktype == 276:
            _blank_nonzero(buf, blank, n, d + 2, 2, pkt)  # reserved
        et = _u16(buf, d + 14) if linktype == 113 else _u16(buf, d)
        o = d + hl
        layer = _L_ETYPE
    elif linktype == 0:
        if d + 4 > end:
            return R_TRUNC_L2, d, end
        le = np.int64(buf[d]) | (np.int64(buf[d + 1]) << 8) | (np.int64(buf[d + 2]) << 16) | (np.int64(buf[d + 3]) << 24)
        be = (np.int64(buf[d]) << 24) | (np.int64(buf[d + 1]) << 16) | (np.int64(buf[d + 2]) << 8) | np.int64(buf[d + 3])
        fam = le if le < 256 else be
        o = d + 4
        if fam == 2:
            layer = _L_IP4
        elif fam == 10 or fam == 24 or fam == 28 or fam == 30:
            layer = _L_IP6
        else:
            return R_ETHERTYPE, o, end
    else:  # raw IP: 101, 12, 14 (either version), 228 (IPv4 only), 229 (IPv6 only)
        if d >= end:
            return R_TRUNC_IP, d, end
        ver = buf[d] >> 4
        if ver == 4 and linktype != 229:
            layer = _L_IP4
        elif ver == 6 and linktype != 228:
            layer = _L_IP6
        else:
            return R_BAD_IP, d, end

    while True:
        if layer == _L_ETH:
            if o + 14 > lim:
                return R_TRUNC_L2, o, end
            if mac_on:
                _add_mac(mac, n, o, pkt, ip_layers > 0)
                _add_mac(mac, n, o + 6, pkt, ip_layers > 0)
            et = _u16(buf, o + 12)
            o += 14
            layer = _L_ETYPE
        elif layer == _L_ETYPE:
            tags = 0
            while et == 0x8100 or et == 0x88A8 or et == 0x9100:
                tags += 1
                if tags > MAX_VLAN_TAGS:
                    return R_ETHERTYPE, o, end
                if o + 4 > lim:
                    return R_TRUNC_L2, o, end
                et = _u16(buf, o + 2)
                o += 4
            if et == 0x8864:  # PPPoE session: 6-byte header, then the PPP protocol
                if o + 8 > lim:
                    return R_TRUNC_L2, o, end
                lim = min(lim, o + 6 + _u16(buf, o + 4))
                ppp = _u16(buf, o + 6)
                o += 8
                et = 0x0800 if ppp == 0x0021 else (0x86DD if ppp == 0x0057 else 0)
            elif et == 0x8847 or et == 0x8848:  # MPLS: labels up to bottom of stack, then IP
                for _k in range(MAX_VLAN_TAGS + 1):
                    if o + 4 > lim:
                        return R_TRUNC_L2, o, end
                    o += 4
                    if buf[o - 2] & 1:
                        break
                else:
                    return R_ETHERTYPE, o, end
                if o >= lim:
                    return R_TRUNC_IP, o, end
                ver = buf[o] >> 4
                et = 0x0800 if ver == 4 else (0x86DD if ver == 6 else 0)
            if et == 0x0800:
                layer = _L_IP4
            elif et == 0x86DD:
                layer = _L_IP6
            elif et == 0x0806 or et == 0x8035:
                layer = _L_ARP
            else:
                return R_ETHERTYPE, o, end
        elif layer == _L_ARP:
            if o + 8 > lim:
                return R_TRUNC_L4, o, end
            if _u16(buf, o + 2) != 0x0800 or buf[o + 4] != 6 or buf[o + 5] != 4:
                return R_ARP, o, end
            if o + 28 > lim:
                return R_TRUNC_L4, o, end
            if mac_on:
                _add_mac(mac, n, o + 8, pkt, ip_layers > 0)
            _add_v4(v4, n, o + 14, pkt, ROLE_OTHER, ENC_PLAIN)
            if mac_on:
                _add_mac(mac, n, o + 18, pkt, ip_layers > 0)
            _add_v4(v4, n, o + 24, pkt, ROLE_OTHER, ENC_PLAIN)
            return R_OK, -1, o + 28
        else:
            ip_layers += 1
            if ip_layers > MAX_IP_LAYERS:
                return R_NEST, o, end
            nonfirst = False
            if layer == _L_IP4:
                if o + 20 > lim:
                    return R_TRUNC_IP, o, end
                if buf[o] >> 4 != 4:
                    return R_BAD_IP, o, end
                ihl = np.int64(buf[o] & 15) * 4
                tot = _u16(buf, o + 2)
                if ihl < 20 or tot < ihl:
                    return R_BAD_IP, o, end
                if o + ihl > lim:
                    return R_TRUNC_IP, o, end
                _add_v4(v4, n, o + 12, pkt, ROLE_SRC, ENC_PLAIN)
                _add_v4(v4, n, o + 16, pkt, ROLE_DST, ENC_PLAIN)
                _add_cs(cs, n, pkt, o + 10, o, o + ihl, -1, -1, 0, 0)
                if ihl > 20:
                    why = _ip4_options(buf, o, ihl, pkt, v4, n)
                    if why != R_OK:
                        return why, o, end
                p = o + ihl
                plim = min(o + tot, lim)
                proto = buf[o + 9]
                nonfirst = (_u16(buf, o + 6) & 0x1FFF) != 0
                ps_src = o + 12
                ps_dst = o + 16
                ps_len = 4
                is_v6 = False
            else:
                if o + 40 > lim:
                    return R_TRUNC_IP, o, end
                if buf[o] >> 4 != 6:
                    return R_BAD_IP, o, end
                plen = _u16(buf, o + 4)
                proto = buf[o + 6]
                if plen == 0 and proto != 59:
                    return R_BAD_IP, o, end  # jumbogram or bogus length
                _add_v6(v6, n, o + 8, pkt, ROLE_SRC)
                _add_v6(v6, n, o + 24, pkt, ROLE_DST)
                plim = min(o + 40 + plen, lim)
                p = o + 40
                while True:
                    if proto == 0 or proto == 60:
                        if p + 2 > plim:
                            return R_TRUNC_EXT, p, end
                        hl = (np.int64(buf[p + 1]) + 1) * 8
                        if p + hl > plim:
                            return R_TRUNC_EXT, p, end
                        if _ip6_tlvs(buf, p + 2, p + hl, pkt, v6, blank, n) != R_OK:
                            return R_TRUNC_EXT, p, end
                        proto = buf[p]
                        p += hl
                    elif proto == 43:
                        return R_ROUTING, p, end
                    elif proto == 44:
                        if p + 8 > plim:
                            return R_TRUNC_EXT, p, end
                        _blank_nonzero(buf, blank, n, p + 1, 1, pkt)  # reserved
                        if (_u16(buf, p + 2) >> 3) != 0:
                            nonfirst = True
                        proto = buf[p]
                        p += 8
                    elif proto == 51:
                        if p + 2 > plim:
                            return R_TRUNC_EXT, p, end
                        hl = (np.int64(buf[p + 1]) + 2) * 4
                        if p + hl > plim:
                            return R_TRUNC_EXT, p, end
                        proto = buf[p]
                        p += hl
                    else:
                        break
                ps_src = o + 8
                ps_dst = o + 24
                ps_len = 16
                is_v6 = True
            # bytes past this IP packet's length (padding, trailers, whatever a short total
            # length hides) are not part of it
            bound = plim

            # ---- transport / next layer of this IP packet ----
            if nonfirst:
                return R_OK, p, bound  # a later fragment: no transport header, all payload
            if proto == 6:
                return _tcp_header(buf, p, plim, bound, is_v6, ps_src, ps_dst, ps_len, pkt, seq_rules, v4, v6, cs, blank, n)
            elif proto == 17:
                if p + 8 > plim:
                    # cut by the capture: ports and length stay, a partial checksum does not
                    cut = p + 6 if plim == p + 7 else plim
                    return R_PARTIAL, cut, cut
                _add_cs(cs, n, pkt, p + 6, p, plim, ps_src, ps_dst, ps_len, 1)
                ulen = _u16(buf, p + 4)
                if ulen >= 8 and p + ulen < plim:
                    plim = p + ulen
                    bound = plim
                sport = _u16(buf, p)
                dport = _u16(buf, p + 2)
                tp = p + 8
                if sport != 3544 and dport != 3544:
                    return R_OK, tp, bound
                # Teredo: optional origin indication (obfuscated client IPv4), then IPv6
                if tp + 2 <= plim and buf[tp] == 0 and buf[tp + 1] == 0:
                    if tp + 8 > plim:
                        return R_TRUNC_L4, tp, end
                    _add_v4(v4, n, tp + 4, pkt, ROLE_OTHER, ENC_INVERTED)
                    tp += 8
                if tp + 2 <= plim and buf[tp] == 0 and buf[tp + 1] == 1:
                    return R_TEREDO, tp, end
                if tp < plim and buf[tp] >> 4 == 6:
                    o = tp
                    lim = plim
                    layer = _L_IP6
                    continue
                return R_OK, tp, bound
            elif proto == 1 or (proto == 58 and is_v6):
                if p + 8 > plim:
                    # too short to quote anything; the type tells whether an address was due
                    if p + 4 > plim:
                        cut = p + 2 if plim == p + 3 else plim  # never a partial checksum
                        return R_PARTIAL, cut, cut
                    t = buf[p]
                    if proto == 1:
                        if t == 0 or t == 8 or t == 3 or t == 4 or t == 11 or t == 12 or (13 <= t <= 18) or t == 10:
                            _add_cs(cs, n, pkt, p + 2, p, plim, -1, -1, 0, 0)
                            return R_PARTIAL, plim, plim
                        return R_TRUNC_L4, p, end
                    if (1 <= t <= 4) or t == 128 or t == 129:
                        _add_cs(cs, n, pkt, p + 2, p, plim, ps_src, ps_dst, ps_len, 0)
                        return R_PARTIAL, plim, plim
                    return R_TRUNC_L4, p, end
                t = buf[p]
                if proto == 1:
                    _add_cs(cs, n, pkt, p + 2, p, plim, -1, -1, 0, 0)
                    if t == 3 or t == 4 or t == 11 or t == 12 or t == 5:
                        if t == 5:
                            _add_v4(v4, n, p + 4, pkt, ROLE_OTHER, ENC_PLAIN)
                        elif t != 4 and buf[p + 5] != 0:
                            # RFC 4884 length (32-bit words): the quote ends there, extension
                            # objects (interface names and addresses, RFC 5837) follow: cut
                            plim = min(plim, p + 8 + np.int64(buf[p + 5]) * 4)
                            bound = plim
                        if p + 8 >= plim:
                            return R_OK, -1, bound
                        o = p + 8
                        lim = plim
                        layer = _L_IP4
                        continue
                    if t == 0 or t == 8 or (13 <= t <= 18) or t == 10:
                        return R_OK, p + 8, bound
                    if t == 9:
                        num = np.int64(buf[p + 4])
                        esz = np.int64(buf[p + 5]) * 4
                        if esz < 4:
                            return R_ICMP, p, end
                        a = p + 8
                        for _k in range(num):
                            if a + esz > plim:
                                return R_TRUNC_L4, p, end
                            _add_v4(v4, n, a, pkt, ROLE_OTHER, ENC_PLAIN)
                            _blank_nonzero(buf, blank, n, a + 8, esz - 8, pkt)
                            a += esz
                        return R_OK, -1, a
                    return R_ICMP, p, end
                # ICMPv6
                _add_cs(cs, n, pkt, p + 2, p, plim, ps_src, ps_dst, ps_len, 0)
                if 1 <= t <= 4:
                    if (t == 1 or t == 3) and buf[p + 4] != 0:
                        # RFC 4884 length (64-bit words): extension objects follow the quote
                        plim = min(plim, p + 8 + np.int64(buf[p + 4]) * 8)
                        bound = plim
                    if p + 8 >= plim:
                        return R_OK, -1, bound
                    o = p + 8
                    lim = plim
                    layer = _L_IP6
                    continue
                if t == 128 or t == 129:
                    return R_OK, p + 8, bound
                if t == 130 or t == 131 or t == 132:
                    if p + 24 > plim:
                        return R_TRUNC_L4, p, end
                    _add_v6(v6, n, p + 8, pkt, ROLE_OTHER)
                    if t == 130 and plim - p > 24:  # MLDv2 query with sources
                        if p + 28 > plim:
                            return R_TRUNC_L4, p, end
                        a = p + 28
                        for _k in range(_u16(buf, p + 26)):
                            if a + 16 > plim:
                                return R_TRUNC_L4, p, end
                            _add_v6(v6, n, a, pkt, ROLE_OTHER)
                            a += 16
                        return R_OK, -1, a
                    return R_OK, -1, p + 24
                if t == 143:  # MLDv2 report
                    a = p + 8
                    for _r in range(_u16(buf, p + 6)):
                        if a + 20 > plim:
                            return R_TRUNC_L4, p, end
                        aux = np.int64(buf[a + 1]) * 4
                        nsrc = _u16(buf, a + 2)
                        _add_v6(v6, n, a + 4, pkt, ROLE_OTHER)
                        a += 20
                        for _k in range(nsrc):
                            if a + 16 > plim:
                                return R_TRUNC_L4, p, end
                            _add_v6(v6, n, a, pkt, ROLE_OTHER)
                            a += 16
                        if a + aux > plim:
                            return R_TRUNC_L4, p, end
                        _add_blank(blank, n, a, aux, pkt, _FILL_ZERO)  # auxiliary data: undefined
                        a += aux
                    return R_OK, -1, a
                if t == 133:
                    q = p + 8
                    _blank_nonzero(buf, blank, n, p + 4, 4, pkt)  # reserved
                elif t == 134:
                    q = p + 16
                elif t == 135 or t == 136:
                    if p + 24 > plim:
                        return R_TRUNC_L4, p, end
                    _blank_nonzero(buf, blank, n, p + 5, 3, pkt)  # reserved (NA: after the flags)
                    if t == 135:
                        _blank_nonzero(buf, blank, n, p + 4, 1, pkt)
                    _add_v6(v6, n, p + 8, pkt, ROLE_OTHER)
                    q = p + 24
                elif t == 137:
                    if p + 40 > plim:
                        return R_TRUNC_L4, p, end
                    _blank_nonzero(buf, blank, n, p + 4, 4, pkt)  # reserved
                    _add_v6(v6, n, p + 8, pkt, ROLE_OTHER)
                    _add_v6(v6, n, p + 24, pkt, ROLE_OTHER)
                    q = p + 40
                else:
                    return R_ICMP6, p, end
                if q > plim:
                    return R_TRUNC_L4, p, end
                why, at, quoted = _nd_options(buf, q, plim, pkt, mac_on, v6, mac, blank, n)
                if why != R_OK:
                    return why, at, end
                if quoted >= 0 and quoted < plim:
                    o = quoted
                    lim = plim
                    layer = _L_IP6
                    continue
                return R_OK, -1, bound
            elif proto == 47:
                if p + 4 > plim:
                    return R_TRUNC_L4, p, end
                flags = _u16(buf, p)
                if (flags & 0x4FF8) != 0 or (flags & 7) != 0:
                    # routing present, strict route, recursion, reserved bits or version != 0
                    return R_GRE, p, end
                has_c = (flags & 0x8000) != 0
                hl = 4 + (4 if has_c else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
                if p + hl > plim:
                    return R_TRUNC_L4, p, end
                f = p + 4
                if has_c:
                    _add_cs(cs, n, pkt, p + 4, p, plim, -1, -1, 0, 0)
                    _blank_nonzero(buf, blank, n, p + 6, 2, pkt)  # reserved
                    f += 4
                # key and sequence number: 32 free bits each, so they are treated as addresses
                if flags & 0x2000:
                    _add_v4(v4, n, f, pkt, ROLE_OTHER, ENC_PLAIN)
                    f += 4
                if flags & 0x1000:
                    _add_v4(v4, n, f, pkt, ROLE_OTHER, ENC_PLAIN)
                gp = _u16(buf, p + 2)
                o = p + hl
                lim = plim
                if gp == 0x0800:
                    layer = _L_IP4
                elif gp == 0x86DD:
                    layer = _L_IP6
                elif gp == 0x6558:
                    layer = _L_ETH
                else:
                    return R_GRE, p, end
                continue
            elif proto == 4:
                o = p
                lim = plim
                layer = _L_IP4
                continue
            elif proto == 41:
                o = p
                lim = plim
                layer = _L_IP6
                continue
            elif proto == 50:
                return R_OK, min(p + 8, plim), bound
            elif proto == 59:
                return R_OK, p, bound
            else:
                return R_PROTO, p, end

@_no_rt
def scan(buf, linktype, mac_on, seq_rules, payload_keep, cut_unparseable, recs, verdict, reason, newcap, v4, v6, mac, cs,
         blank, n, payload_at):
    """Walk every record of buf; fill recs (record header offsets), the site tables and the
    per-packet verdicts.

    n = [nv4, nv6, nmac, ncs, overflow, records, bad_record_at, max_changes, nblank]; on
    overflow (n[4] = 1) the caller enlarges the tables and calls again; a record running past
    the end of buf ends the walk with n[6] = its offset (the records before it are done).
    max_changes bounds the 16-bit words `apply` may change in one packet (a site can straddle
    one extra word).
    """
    size = buf.shape[0]
    r = 0
    i = 0
    while r < size:
        if r + 16 > size:
            n[6] = r
            break
        cap = _record_cap(buf, r)
        d = r + 16
        end = d + cap
        if end > size:
            n[6] = r
            break
        recs[i] = r
        n[5] = i + 1
        r = end
        s0 = n[0]
        s1 = n[1]
        s2 = n[2]
        s3 = n[3]
        s8 = n[8]
        why, at, bound = _walk(buf, d, end, linktype, i, mac_on, seq_rules, v4, v6, mac, cs, blank, n)
        if n[4]:
            return
        pk = i
        i += 1
        changes = (n[0] - s0) * 3 + (n[1] - s1) * 9 + (n[2] - s2) * 4 + (n[3] - s3)
        for j in range(s8, n[8]):
            changes += (blank[j, 1] // 16 + 1) * 9
        if changes > n[7]:
            n[7] = changes
        if why == R_OK or why == R_PARTIAL:
            payload_at[pk] = at
            if payload_keep >= 0 and at >= 0 and at + payload_keep < bound:
                verdict[pk] = V_CUT
                reason[pk] = R_PAYLOAD
                newcap[pk] = at + payload_keep - d
            elif bound < end:
                verdict[pk] = V_CUT
                reason[pk] = R_PARTIAL if why == R_PARTIAL else R_TRAILER
                newcap[pk] = bound - d
            else:
                verdict[pk] = V_KEEP
                reason[pk] = R_OK
                newcap[pk] = cap
            continue
        payload_at[pk] = -1
        reason[pk] = why
        if not cut_unparseable:
            verdict[pk] = V_DROP
            newcap[pk] = -1
            n[0] = s0
            n[1] = s1
            n[2] = s2
            n[3] = s3
            n[8] = s8
            continue
        verdict[pk] = V_CUT
        newcap[pk] = at - d
        # forget the sites and checksum fields that are no longer (wholly) in the packet
        k = s0
        for j in range(s0, n[0]):
            if v4[j, 0] + 4 <= at:
                _copy_row(v4, k, j)
                k += 1
        n[0] = k
        k = s1
        for j in range(s1, n[1]):
            if v6[j, 0] + 16 <= at:
                _copy_row(v6, k, j)
                k += 1
        n[1] = k
        k = s2
        for j in range(s2, n[2]):
            if mac[j, 0] + 6 <= at:
                _copy_row(mac, k, j)
                k += 1
        n[2] = k
        k = s3
        for j in range(s3, n[3]):
            if cs[j, 1] + 2 <= at:
                _copy_row(cs, k, j)
                k += 1
        n[3] = k
        k = s8
        for j in range(s8, n[8]):
            if blank[j, 0] < at:
                _copy_row(blank, k, j)
                blank[k, 1] = min(blank[j, 1], at - blank[j, 0])
                k += 1
        n[8] = k
    # values of the sites (IPv4 decoded, MACs as 48-bit integers), for the vectorized mapping
    for k in range(n[0]):
        val = _u32(buf, v4[k, 0])
        enc = v4[k, 3]
        if enc == ENC_INVERTED:
            val ^= 0xFFFFFFFF
        elif enc == ENC_PLUS1:
            val = (val - 1) & 0xFFFFFFFF
        v4[k, 4] = val
    for k in range(n[1]):
        off = v6[k, 0]
        for half in range(2):
            val = np.int64(0)
            for b in range(8):
                val = (val << 8) | np.int64(buf[off + 8 * half + b])
            v6[k, 3 + half] = val
    for k in range(n[2]):
        off = mac[k, 0]
        val = np.int64(0)
        for b in range(6):
            val = (val << 8) | np.int64(buf[off + b])
        mac[k, 3] = val


@njit(cache=True, inline="always")
def _copy_row(table, k, j):
    """table[k] = table[j], element by element (a row view would need the refcounting runtime)."""
    for c in range(table.shape[1]):
        table[k, c] = table[j, c]


@njit(cache=True, inline="always")
def _record_cap(buf, r):
    """The captured length of the record whose 16-byte header is at r (little-endian)."""
    return (np.int64(buf[r + 8]) | (np.int64(buf[r + 9]) << 8) | (np.int64(buf[r + 10]) << 16)
            | (np.int64(buf[r + 11]) << 24))


@njit(cache=True)
def record_offsets(buf):
    """Offsets of the record headers in buf; -1 in the last slot of the result when the
    records do not tile buf exactly (truncated record)."""
    count = 0
    r = 0
    size = buf.shape[0]
    while r + 16 <= size:
        cap = _record_cap(buf, r)
        if r + 16 + cap > size:
            break
        count += 1
        r += 16 + cap
    ok = r == size
    out = np.empty(count + (0 if ok else 1), dtype=np.int64)
    r = 0
    for i in range(count):
        out[i] = r
        r += 16 + _record_cap(buf, r)
    if not ok:
        out[count] = -1
    return out


@njit(cache=True, inline="always")
def _record_change(buf, d, off, nbytes, ch, nch, old):
    """Record the 16-bit words (aligned from the packet start d) that cover the bytes
    [off, off + nbytes) just written; `old` holds those bytes before the write. IPv4
    option addresses can sit at odd offsets, so a site may straddle words."""
    w = off - ((off - d) & 1)
    while w < off + nbytes:
        hi_old = old[w - off] if w >= off else buf[w]
        lo_old = old[w + 1 - off] if w + 1 < off + nbytes else buf[w + 1]
        ov = (np.int64(hi_old) << 8) | np.int64(lo_old)
        nv = _u16(buf, w)
        if ov != nv:
            ch[nch, 0] = w
            ch[nch, 1] = ov
            ch[nch, 2] = nv
            nch += 1
        w += 2
    return nch


@njit(cache=True, inline="always")
def _v4_stored(value, enc):
    """The four bytes (as an integer) an IPv4 site holds for the address ``value``."""
    if enc == ENC_INVERTED:
        return value ^ 0xFFFFFFFF
    if enc == ENC_PLUS1:
        return (value + 1) & 0xFFFFFFFF
    return value


@njit(cache=True, inline="always")
def _v6_at(buf, off, hi, lo):
    """Whether the 16 bytes at ``off`` are the IPv6 address (hi, lo) (int64 bit patterns)."""
    a = np.int64(0)
    b = np.int64(0)
    for i in range(8):
        a = (a << 8) | np.int64(buf[off + i])
        b = (b << 8) | np.int64(buf[off + 8 + i])
    return a == hi and b == lo


@njit(cache=True, inline="always")
def _v6_byte(hi, lo, k):
    """Byte k (0 = most significant) of the IPv6 address (hi, lo)."""
    w = hi if k < 8 else lo
    return (w >> (8 * (7 - (k & 7)))) & 0xFF


@_no_rt
def _tail_left(buf, start, end, pat, k, v6, six, m):
    """Whether the payload [start, end), cut short, ends in the first two or more bytes of one
    of the patterns (IPv4 values pat[:k], IPv6 sites v6[six[:m]]): a partial copy."""
    for j in range(k):
        for size in range(2, 4):
            if end - size < start:
                break
            same = True
            for b in range(size):
                if np.int64(buf[end - size + b]) != (pat[j] >> (8 * (3 - b))) & 0xFF:
                    same = False
                    break
            if same:
                return True
    for j in range(m):
        hi = v6[six[j], 3]
        lo = v6[six[j], 4]
        for size in range(2, 16):
            if end - size < start:
                break
            same = True
            for b in range(size):
                if np.int64(buf[end - size + b]) != _v6_byte(hi, lo, b):
                    same = False
                    break
            if same:
                return True
    return False


@_no_rt
def _address_left(buf, start, end, cut_short, v4, s0, s1, v6, t0, t1, pat, six, first):
    """Whether a rewritten address of this packet (its sites are v4[s0:s1], v6[t0:t1]) is in
    its payload, bytes [start, end), or (when the payload was cut short, cut_short) the payload
    ends in the first bytes of one; ``pat``, ``six`` and ``first`` (256 x False) are scratch.

    Addresses in 0.0.0.0/8, 255.255.255.255 and :: identify nobody and are runs of bytes that
    occur everywhere, so they are not looked for. Only bytes whose value starts a pattern are
    looked at closer (``first``), which keeps the check to about a nanosecond per payload byte.
    """
    k = 0  # IPv4 patterns in pat[:k]
    for s in range(s0, s1):
        value = v4[s, 4]
        enc = v4[s, 3]
        old = _v4_stored(value, enc)
        if _u32(buf, v4[s, 0]) == old:
            continue  # the policy left this site as it was
        for form in range(2 if enc != ENC_PLAIN else 1):
            w = old if form == 0 else value
            if (w >> 24) != 0 and w != 0xFFFFFFFF:
                pat[k] = w
                first[w >> 24] = True
                k += 1
    m = 0  # rewritten IPv6 sites in six[:m]
    for t in range(t0, t1):
        hi = v6[t, 3]
        if (hi != 0 or v6[t, 4] != 0) and not _v6_at(buf, v6[t, 0], hi, v6[t, 4]):
            six[m] = t
            first[(hi >> 56) & 0xFF] = True
            m += 1
    leak = False
    if k or m:
        for p in range(start, end - 3):
            if not first[buf[p]]:
                continue
            w = _u32(buf, p)
            for j in range(k):
                if w == pat[j]:
                    leak = True
            if p + 16 <= end:
                for j in range(m):
                    if _v6_at(buf, p, v6[six[j], 3], v6[six[j], 4]):
                        leak = True
            if leak:
                break
        if not leak and cut_short:
            leak = _tail_left(buf, start, end, pat, k, v6, six, m)
    for j in range(k):
        first[pat[j] >> 24] = False
    for j in range(m):
        first[(v6[six[j], 3] >> 56) & 0xFF] = False
    return leak


@_no_rt
def apply(buf, recs, newcap, v4, v4_new, v6, v6_new, mac, mac_new, cs, blank, nv4, nv6, nmac, ncs, nblank, verdict,
          reason, payload_at, ch, old, pat, six, first):
    """Write the new site values and the blanks, fix checksums, drop/cut records; returns the
    new length of buf (records compacted towards the start). A record failing the self-check
    (`_address_left` on its payload, which starts at payload_at: -1 for none) is dropped:
    verdict V_DROP, reason R_SELF_CHECK.

    Scratch, from the caller: ch (at least max_changes x 3), old (16 bytes), pat (2 * nv4 + 1),
    six (nv6 + 1), first (256 x False; left so)."""
    a4 = 0
    a6 = 0
    am = 0
    ab = 0
    ac = 0
    out = 0
    for i in range(recs.shape[0]):
        r = recs[i]
        d = r + 16
        nc = newcap[i]
        nch = 0
        s0 = a4
        t0 = a6
        # sites of this packet (tables are in packet order)
        while a4 < nv4 and v4[a4, 1] == i:
            off = v4[a4, 0]
            val = v4_new[a4]
            if _u32(buf, off) == val:  # an address the policy leaves alone
                a4 += 1
                continue
            for b in range(4):
                old[b] = buf[off + b]
            buf[off] = (val >> 24) & 0xFF
            buf[off + 1] = (val >> 16) & 0xFF
            buf[off + 2] = (val >> 8) & 0xFF
            buf[off + 3] = val & 0xFF
            nch = _record_change(buf, d, off, 4, ch, nch, old)
            a4 += 1
        while a6 < nv6 and v6[a6, 1] == i:
            off = v6[a6, 0]
            for half in range(2):
                val = v6_new[a6, half]
                for b in range(8):
                    old[8 * half + b] = buf[off + 8 * half + b]
                    buf[off + 8 * half + b] = (val >> np.uint64(56 - 8 * b)) & np.uint64(0xFF)
            nch = _record_change(buf, d, off, 16, ch, nch, old)
            a6 += 1
        while am < nmac and mac[am, 1] == i:
            off = mac[am, 0]
            val = mac_new[am]
            if mac[am, 2]:
                for b in range(6):
                    old[b] = buf[off + b]
                    buf[off + b] = (val >> np.uint64(40 - 8 * b)) & np.uint64(0xFF)
                nch = _record_change(buf, d, off, 6, ch, nch, old)
            else:  # no checksum covers a link-layer header: nothing to patch
                for b in range(6):
                    buf[off + b] = (val >> np.uint64(40 - 8 * b)) & np.uint64(0xFF)
            am += 1
        while ab < nblank and blank[ab, 2] == i:
            # in chunks of the scratch size; words straddling two chunks are recorded twice,
            # as two successive changes, which add up to the whole change
            off = blank[ab, 0]
            stop = off + blank[ab, 1]
            fill = blank[ab, 3]
            while off < stop:
                size = min(16, stop - off)
                for b in range(size):
                    old[b] = buf[off + b]
                    buf[off + b] = fill
                nch = _record_change(buf, d, off, size, ch, nch, old)
                off += size
            ab += 1
        c0 = ac
        while ac < ncs and cs[ac, 0] == i:
            ac += 1
        # checksums, innermost (recorded last) first, so outer ones see the inner updates
        for e in range(ac - 1, c0 - 1, -1):
            if nch == 0:
                break
            field = cs[e, 1]
            start = cs[e, 2]
            stop = cs[e, 3]
            ps_src = cs[e, 4]
            ps_dst = cs[e, 5]
            ps_len = cs[e, 6]
            acc = np.int64(0)
            hit = False
            for c in range(nch):
                w = ch[c, 0]
                if (start <= w < stop) or (ps_len > 0 and ((ps_src <= w < ps_src + ps_len) or (ps_dst <= w < ps_dst + ps_len))):
                    acc += (0xFFFF ^ ch[c, 1]) + ch[c, 2]
                    hit = True
            if not hit:
                continue
            cur = _u16(buf, field)
            if cs[e, 7] == 1 and cur == 0:
                continue  # UDP without checksum stays without
            # RFC 1624 eqn 3, with the same end-around-carry arithmetic as tcprewrite
            acc += 0xFFFF + (0xFFFF ^ cur)
            while acc > 0xFFFF:
                acc = (acc & 0xFFFF) + (acc >> 16)
            new = 0xFFFF ^ acc
            if cs[e, 7] == 1 and new == 0:
                new = 0xFFFF
            if new != cur:
                buf[field] = (new >> 8) & 0xFF
                buf[field + 1] = new & 0xFF
                ch[nch, 0] = field
                ch[nch, 1] = cur
                ch[nch, 2] = new
                nch += 1
        if nc < 0:
            continue
        cap = _record_cap(buf, r)
        # most telescope packets have no payload (SYN-ACK, RST): nothing to look at, no call
        if payload_at[i] >= 0 and d + nc - payload_at[i] >= 2:
            origlen = (np.int64(buf[r + 12]) | (np.int64(buf[r + 13]) << 8) | (np.int64(buf[r + 14]) << 16)
                       | (np.int64(buf[r + 15]) << 24))
            if _address_left(buf, payload_at[i], d + nc, nc < cap or cap < origlen, v4, s0, a4, v6, t0, a6, pat, six,
                             first):
                verdict[i] = V_DROP
                reason[i] = R_SELF_CHECK
                continue
        size = 16 + nc
        if out != r or nc != cap:
            for b in range(8):
                buf[out + b] = buf[r + b]
            buf[out + 8] = nc & 0xFF
            buf[out + 9] = (nc >> 8) & 0xFF
            buf[out + 10] = (nc >> 16) & 0xFF
            buf[out + 11] = (nc >> 24) & 0xFF
            # unsigned indices: numba then leaves out its negative-index fix-up, a third of the copy
            src = np.uint64(r)
            dst = np.uint64(out)
            for b in range(np.uint64(12), np.uint64(size)):
                buf[dst + b] = buf[src + b]
        out += size
    return out
