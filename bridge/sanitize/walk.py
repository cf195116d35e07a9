"""Compiled per-packet loops of the sanitizer (numba): locate every address, apply rewrites.

Two passes over a batch of canonical pcap records (16-byte little-endian record header +
captured bytes):

`scan` walks each packet's header chain once and records, without writing anything,
  - address sites: byte offset, family, role (src / dst / other), encoding (as is, inverted,
    plus one); besides the address fields, a TCP sequence number equal to an IPv4 address of
    its IP header, or an acknowledgment number equal to one plus it, is an address site too
    (Mirai-style scanners send seq == destination; the SYN-ACK/RST answering carries ack ==
    that + 1), mapped with the same role so it stays equal to the mapped address;
  - MAC sites (when the policy touches MACs);
  - checksum entries: checksum field, the byte range it covers, and the pseudo-header
    address fields it depends on;
  - a verdict per packet: keep, cut at an offset, or drop, with a reason code.
The new values of all sites are then computed for the whole batch at once in numpy
(engine.py), and `apply` writes them, patches every affected checksum incrementally
(RFC 1624) from innermost to outermost, and compacts the records in place.

Before a record is kept, `apply` checks it (`_address_left`): an address the policy rewrote
in it must not be in its payload (the bytes after the last header the walk parsed, which no
parser reads: a DNS answer, an application quoting the sender). Such a packet is dropped with
reason ``self_check``.

The header chain of a packet is linear (each layer has at most one next layer: an ICMP error
quotes one packet, a tunnel carries one packet), so the walk is a loop over layers, not a
recursion. Anything the walk cannot follow far enough to be sure that it has seen every
address is reported as unparseable with the offset of the first byte that may hold one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bridge.sanitize.layout import (  # noqa: F401 (re-exported for callers of the JIT module)
    CS_COLS, ENC_INVERTED, ENC_PLAIN, ENC_PLUS1, R_ARP, R_BAD_IP, R_BAD_OPT, R_ETHERTYPE, R_FRAG, R_GRE, R_HOMEADDR,
    R_ICMP, R_ICMP6, R_L2ADDR, R_NEST,
    R_ND_OPT, R_OK, R_PAYLOAD, R_PROTO, R_ROUTING, R_SELF_CHECK, R_SRCROUTE, R_TEREDO, R_TRUNC_EXT, R_TRUNC_IP, R_TRUNC_L2,
    R_TRUNC_L4, REASONS, ROLE_DST, ROLE_OTHER, ROLE_SRC, V_CUT, V_DROP, V_KEEP,
)

# layers of the walk
_L_ETH, _L_ETYPE, _L_IP4, _L_IP6, _L_ARP = 0, 1, 2, 3, 4

MAX_IP_LAYERS = 8
MAX_VLAN_TAGS = 8  # also bounds MPLS label stacks



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
def _add_mac(mac, n, off, pkt):
    k = n[2]
    if k >= mac.shape[0]:
        n[4] = 1
        return
    mac[k, 0] = off
    mac[k, 1] = pkt
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


@njit(cache=True)
def _tcp_numbers(buf, v4, n, p, plim, ip_src, ip_dst, pkt):
    """Record the TCP sequence / acknowledgment numbers at p that encode an address of their
    IPv4 header (ip_src, ip_dst: offsets of its address fields) as IPv4 sites, as far as the
    (possibly quoted, truncated) header [p, plim) holds them. Recorded whatever the policy: an
    address the policy leaves alone maps to itself, so the number is left alone too."""
    if p + 8 > plim:
        return
    src = _u32(buf, ip_src)
    dst = _u32(buf, ip_dst)
    seq = _u32(buf, p + 4)
    # destination first: when src == dst the role decides which map applies; scanners put dst
    if seq == dst:
        _add_v4(v4, n, p + 4, pkt, ROLE_DST, ENC_PLAIN)
    elif seq == src:
        _add_v4(v4, n, p + 4, pkt, ROLE_SRC, ENC_PLAIN)
    # ACK flag: the ack number is meaningful. Checked in quoted headers too where the quote
    # reaches the flags (RFC 1812 routers and Linux quote more than 8 bytes)
    if p + 14 <= plim and (buf[p + 13] & 0x10) != 0:
        ack = (_u32(buf, p + 8) - 1) & 0xFFFFFFFF
        if ack == dst:
            _add_v4(v4, n, p + 8, pkt, ROLE_DST, ENC_PLUS1)
        elif ack == src:
            _add_v4(v4, n, p + 8, pkt, ROLE_SRC, ENC_PLUS1)


@njit(cache=True)
def _walk(buf, d, end, linktype, pkt, mac_on, v4, v6, mac, cs, n):
    """Walk one packet [d, end). Returns (reason, offset): reason R_OK with the payload start
    of the innermost transport (-1 if none), or a failure reason with the cut offset."""
    layer = _L_ETH
    o = d
    lim = end
    et = 0
    ip_layers = 0
    if linktype == 1:
        layer = _L_ETH
    elif linktype == 113:
        if d + 16 > end:
            return R_TRUNC_L2, d
        halen = _u16(buf, d + 4)
        if mac_on:
            if halen == 6:
                _add_mac(mac, n, d + 6, pkt)
            elif halen != 0:
                return R_L2ADDR, d
        et = _u16(buf, d + 14)
        o = d + 16
        layer = _L_ETYPE
    elif linktype == 276:  # Linux SLL2: protocol first, address at 12
        if d + 20 > end:
            return R_TRUNC_L2, d
        halen = np.int64(buf[d + 11])
        if mac_on:
            if halen == 6:
                _add_mac(mac, n, d + 12, pkt)
            elif halen != 0:
                return R_L2ADDR, d
        et = _u16(buf, d)
        o = d + 20
        layer = _L_ETYPE
    elif linktype == 0:
        if d + 4 > end:
            return R_TRUNC_L2, d
        le = np.int64(buf[d]) | (np.int64(buf[d + 1]) << 8) | (np.int64(buf[d + 2]) << 16) | (np.int64(buf[d + 3]) << 24)
        be = (np.int64(buf[d]) << 24) | (np.int64(buf[d + 1]) << 16) | (np.int64(buf[d + 2]) << 8) | np.int64(buf[d + 3])
        fam = le if le < 256 else be
        o = d + 4
        if fam == 2:
            layer = _L_IP4
        elif fam == 10 or fam == 24 or fam == 28 or fam == 30:
            layer = _L_IP6
        else:
            return R_ETHERTYPE, o
    else:  # raw IP: 101, 12, 14
        if d >= end:
            return R_TRUNC_IP, d
        ver = buf[d] >> 4
        if ver == 4:
            layer = _L_IP4
        elif ver == 6:
            layer = _L_IP6
        else:
            return R_BAD_IP, d

    while True:
        if layer == _L_ETH:
            if o + 14 > lim:
                return R_TRUNC_L2, o
            if mac_on:
                _add_mac(mac, n, o, pkt)
                _add_mac(mac, n, o + 6, pkt)
            et = _u16(buf, o + 12)
            o += 14
            layer = _L_ETYPE
        elif layer == _L_ETYPE:
            tags = 0
            while et == 0x8100 or et == 0x88A8 or et == 0x9100:
                tags += 1
                if tags > MAX_VLAN_TAGS:
                    return R_ETHERTYPE, o
                if o + 4 > lim:
                    return R_TRUNC_L2, o
                et = _u16(buf, o + 2)
                o += 4
            if et == 0x8864:  # PPPoE session: 6-byte header, then the PPP protocol
                if o + 8 > lim:
                    return R_TRUNC_L2, o
                lim = min(lim, o + 6 + _u16(buf, o + 4))
                ppp = _u16(buf, o + 6)
                o += 8
                et = 0x0800 if ppp == 0x0021 else (0x86DD if ppp == 0x0057 else 0)
            elif et == 0x8847 or et == 0x8848:  # MPLS: labels up to bottom of stack, then IP
                for _k in range(MAX_VLAN_TAGS + 1):
                    if o + 4 > lim:
                        return R_TRUNC_L2, o
                    o += 4
                    if buf[o - 2] & 1:
                        break
                else:
                    return R_ETHERTYPE, o
                if o >= lim:
                    return R_TRUNC_IP, o
                ver = buf[o] >> 4
                et = 0x0800 if ver == 4 else (0x86DD if ver == 6 else 0)
            if et == 0x0800:
                layer = _L_IP4
            elif et == 0x86DD:
                layer = _L_IP6
            elif et == 0x0806 or et == 0x8035:
                layer = _L_ARP
            else:
                return R_ETHERTYPE, o
        elif layer == _L_ARP:
            if o + 8 > lim:
                return R_TRUNC_L4, o
            if _u16(buf, o + 2) != 0x0800 or buf[o + 4] != 6 or buf[o + 5] != 4:
                return R_ARP, o
            if o + 28 > lim:
                return R_TRUNC_L4, o
            if mac_on:
                _add_mac(mac, n, o + 8, pkt)
            _add_v4(v4, n, o + 14, pkt, ROLE_OTHER, 0)
            if mac_on:
                _add_mac(mac, n, o + 18, pkt)
            _add_v4(v4, n, o + 24, pkt, ROLE_OTHER, 0)
            return R_OK, -1
        else:
            ip_layers += 1
            if ip_layers > MAX_IP_LAYERS:
                return R_NEST, o
            nonfirst = False
            if layer == _L_IP4:
                if o + 20 > lim:
                    return R_TRUNC_IP, o
                if buf[o] >> 4 != 4:
                    return R_BAD_IP, o
                ihl = np.int64(buf[o] & 15) * 4
                tot = _u16(buf, o + 2)
                if ihl < 20 or tot < ihl:
                    return R_BAD_IP, o
                if o + ihl > lim:
                    return R_TRUNC_IP, o
                _add_v4(v4, n, o + 12, pkt, ROLE_SRC, 0)
                _add_v4(v4, n, o + 16, pkt, ROLE_DST, 0)
                _add_cs(cs, n, pkt, o + 10, o, o + ihl, -1, -1, 0, 0)
                i = o + 20
                oend = o + ihl
                while i < oend:
                    t = buf[i]
                    if t == 0:
                        break
                    if t == 1:
                        i += 1
                        continue
                    if i + 1 >= oend:
                        return R_BAD_OPT, o
                    ol = np.int64(buf[i + 1])
                    if ol < 2 or i + ol > oend:
                        return R_BAD_OPT, o
                    if t == 131 or t == 137:
                        return R_SRCROUTE, o
                    if t == 7 or t == 68:
                        if ol < 4:
                            return R_BAD_OPT, o
                        # filled part of the option: bytes [i, i + ptr - 1)
                        filled = min(ol, np.int64(buf[i + 2]) - 1)
                        if t == 7:
                            a = i + 3
                            while a + 4 <= i + filled:
                                _add_v4(v4, n, a, pkt, ROLE_OTHER, 0)
                                a += 4
                        else:
                            flg = buf[i + 3] & 15
                            if flg == 1 or flg == 3:
                                a = i + 4
                                while a + 8 <= i + filled:
                                    _add_v4(v4, n, a, pkt, ROLE_OTHER, 0)
                                    a += 8
                            elif flg != 0:
                                return R_BAD_OPT, o
                    i += ol
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
                    return R_TRUNC_IP, o
                if buf[o] >> 4 != 6:
                    return R_BAD_IP, o
                plen = _u16(buf, o + 4)
                proto = buf[o + 6]
                if plen == 0 and proto != 59:
                    return R_BAD_IP, o  # jumbogram or bogus length
                _add_v6(v6, n, o + 8, pkt, ROLE_SRC)
                _add_v6(v6, n, o + 24, pkt, ROLE_DST)
                plim = min(o + 40 + plen, lim)
                p = o + 40
                while True:
                    if proto == 0 or proto == 60:
                        if p + 2 > plim:
                            return R_TRUNC_EXT, p
                        hl = (np.int64(buf[p + 1]) + 1) * 8
                        if p + hl > plim:
                            return R_TRUNC_EXT, p
                        i = p + 2
                        while i < p + hl:
                            t = buf[i]
                            if t == 0:
                                i += 1
                                continue
                            if i + 1 >= p + hl:
                                return R_TRUNC_EXT, p
                            if t == 0xC9:
                                return R_HOMEADDR, p
                            i += 2 + np.int64(buf[i + 1])
                        proto = buf[p]
                        p += hl
                    elif proto == 43:
                        return R_ROUTING, p
                    elif proto == 44:
                        if p + 8 > plim:
                            return R_TRUNC_EXT, p
                        if (_u16(buf, p + 2) >> 3) != 0:
                            nonfirst = True
                        proto = buf[p]
                        p += 8
                    elif proto == 51:
                        if p + 2 > plim:
                            return R_TRUNC_EXT, p
                        hl = (np.int64(buf[p + 1]) + 2) * 4
                        if p + hl > plim:
                            return R_TRUNC_EXT, p
                        proto = buf[p]
                        p += hl
                    else:
                        break
                ps_src = o + 8
                ps_dst = o + 24
                ps_len = 16
                is_v6 = True

            # ---- transport / next layer of this IP packet ----
            if nonfirst:
                # a later fragment: no transport header; what follows is payload only for
                # protocols whose payload never holds covered addresses
                if proto == 6 or proto == 17 or proto == 50:
                    return R_OK, p
                return R_FRAG, p
            if proto == 6:
                if not is_v6:
                    _tcp_numbers(buf, v4, n, p, plim, ps_src, ps_dst, pkt)
                if p + 18 <= plim:
                    _add_cs(cs, n, pkt, p + 16, p, plim, ps_src, ps_dst, ps_len, 0)
                if p + 13 <= plim:
                    return R_OK, p + max(np.int64(buf[p + 12] >> 4) * 4, 20)
                return R_OK, plim
            elif proto == 17:
                if p + 8 > plim:
                    return R_OK, plim
                _add_cs(cs, n, pkt, p + 6, p, plim, ps_src, ps_dst, ps_len, 1)
                sport = _u16(buf, p)
                dport = _u16(buf, p + 2)
                tp = p + 8
                if sport != 3544 and dport != 3544:
                    return R_OK, tp
                # Teredo: optional origin indication (obfuscated client IPv4), then IPv6
                ulen = _u16(buf, p + 4)
                if ulen >= 8:
                    plim = min(plim, p + ulen)
                if tp + 2 <= plim and buf[tp] == 0 and buf[tp + 1] == 0:
                    if tp + 8 > plim:
                        return R_TRUNC_L4, tp
                    _add_v4(v4, n, tp + 4, pkt, ROLE_OTHER, ENC_INVERTED)
                    tp += 8
                if tp + 2 <= plim and buf[tp] == 0 and buf[tp + 1] == 1:
                    return R_TEREDO, tp
                if tp < plim and buf[tp] >> 4 == 6:
                    o = tp
                    lim = plim
                    layer = _L_IP6
                    continue
                return R_OK, tp
            elif proto == 1 or (proto == 58 and is_v6):
                if p + 8 > plim:
                    # too short to quote anything; the type tells whether an address was due
                    if p >= plim:
                        return R_OK, plim
                    t = buf[p]
                    if proto == 1:
                        if t == 0 or t == 8 or t == 3 or t == 4 or t == 11 or t == 12 or (13 <= t <= 18) or t == 10:
                            if p + 4 <= plim:
                                _add_cs(cs, n, pkt, p + 2, p, plim, -1, -1, 0, 0)
                            return R_OK, plim
                        return R_TRUNC_L4, p
                    if (1 <= t <= 4) or t == 128 or t == 129:
                        if p + 4 <= plim:
                            _add_cs(cs, n, pkt, p + 2, p, plim, ps_src, ps_dst, ps_len, 0)
                        return R_OK, plim
                    return R_TRUNC_L4, p
                t = buf[p]
                if proto == 1:
                    _add_cs(cs, n, pkt, p + 2, p, plim, -1, -1, 0, 0)
                    if t == 3 or t == 4 or t == 11 or t == 12 or t == 5:
                        if t == 5:
                            _add_v4(v4, n, p + 4, pkt, ROLE_OTHER, 0)
                        if p + 8 >= plim:
                            return R_OK, -1
                        o = p + 8
                        lim = plim
                        layer = _L_IP4
                        continue
                    if t == 0 or t == 8 or (13 <= t <= 18) or t == 10:
                        return R_OK, p + 8
                    if t == 9:
                        num = np.int64(buf[p + 4])
                        esz = np.int64(buf[p + 5]) * 4
                        if esz < 4:
                            return R_ICMP, p
                        a = p + 8
                        for _k in range(num):
                            if a + 4 > plim:
                                return R_TRUNC_L4, p
                            _add_v4(v4, n, a, pkt, ROLE_OTHER, 0)
                            a += esz
                        return R_OK, -1
                    return R_ICMP, p
                # ICMPv6
                _add_cs(cs, n, pkt, p + 2, p, plim, ps_src, ps_dst, ps_len, 0)
                if 1 <= t <= 4:
                    if p + 8 >= plim:
                        return R_OK, -1
                    o = p + 8
                    lim = plim
                    layer = _L_IP6
                    continue
                if t == 128 or t == 129:
                    return R_OK, p + 8
                if t == 130 or t == 131 or t == 132:
                    if p + 24 > plim:
                        return R_TRUNC_L4, p
                    _add_v6(v6, n, p + 8, pkt, ROLE_OTHER)
                    if t == 130 and plim - p > 24:  # MLDv2 query with sources
                        if p + 28 > plim:
                            return R_TRUNC_L4, p
                        a = p + 28
                        for _k in range(_u16(buf, p + 26)):
                            if a + 16 > plim:
                                return R_TRUNC_L4, p
                            _add_v6(v6, n, a, pkt, ROLE_OTHER)
                            a += 16
                    return R_OK, -1
                if t == 143:  # MLDv2 report
                    a = p + 8
                    for _r in range(_u16(buf, p + 6)):
                        if a + 20 > plim:
                            return R_TRUNC_L4, p
                        aux = np.int64(buf[a + 1]) * 4
                        nsrc = _u16(buf, a + 2)
                        _add_v6(v6, n, a + 4, pkt, ROLE_OTHER)
                        a += 20
                        for _k in range(nsrc):
                            if a + 16 > plim:
                                return R_TRUNC_L4, p
                            _add_v6(v6, n, a, pkt, ROLE_OTHER)
                            a += 16
                        a += aux
                    if a > plim:
                        return R_TRUNC_L4, p
                    return R_OK, -1
                if t == 133:
                    q = p + 8
                elif t == 134:
                    q = p + 16
                elif t == 135 or t == 136:
                    if p + 24 > plim:
                        return R_TRUNC_L4, p
                    _add_v6(v6, n, p + 8, pkt, ROLE_OTHER)
                    q = p + 24
                elif t == 137:
                    if p + 40 > plim:
                        return R_TRUNC_L4, p
                    _add_v6(v6, n, p + 8, pkt, ROLE_OTHER)
                    _add_v6(v6, n, p + 24, pkt, ROLE_OTHER)
                    q = p + 40
                else:
                    return R_ICMP6, p
                if q > plim:
                    return R_TRUNC_L4, p
                # neighbour-discovery options
                quoted = -1
                while q < plim:
                    if q + 2 > plim:
                        return R_ND_OPT, q
                    ot = buf[q]
                    ol = np.int64(buf[q + 1]) * 8
                    if ol == 0 or q + ol > plim:
                        return R_ND_OPT, q
                    if ot == 1 or ot == 2:
                        if mac_on:
                            if ol != 8:
                                return R_ND_OPT, q
                            _add_mac(mac, n, q + 2, pkt)
                    elif ot == 3:
                        if ol != 32:
                            return R_ND_OPT, q
                        _add_v6(v6, n, q + 16, pkt, ROLE_OTHER)
                    elif ot == 24:
                        if ol == 24:
                            _add_v6(v6, n, q + 8, pkt, ROLE_OTHER)
                        elif ol != 8:
                            return R_ND_OPT, q
                    elif ot == 25:
                        if ol < 24:
                            return R_ND_OPT, q
                        a = q + 8
                        while a + 16 <= q + ol:
                            _add_v6(v6, n, a, pkt, ROLE_OTHER)
                            a += 16
                    elif ot == 4:
                        # redirected header: quotes a packet; must be the last option
                        if q + ol != plim:
                            return R_ND_OPT, q
                        quoted = q + 8
                    elif ot != 5 and ot != 14 and ot != 31:
                        return R_ND_OPT, q
                    q += ol
                if quoted >= 0 and quoted < plim:
                    o = quoted
                    lim = plim
                    layer = _L_IP6
                    continue
                return R_OK, -1
            elif proto == 47:
                if p + 4 > plim:
                    return R_TRUNC_L4, p
                flags = _u16(buf, p)
                if (flags & 0x4FF8) != 0 or (flags & 7) != 0:
                    # routing present, strict route, recursion, reserved bits or version != 0
                    return R_GRE, p
                has_c = (flags & 0x8000) != 0
                hl = 4 + (4 if has_c else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
                if p + hl > plim:
                    return R_TRUNC_L4, p
                if has_c:
                    _add_cs(cs, n, pkt, p + 4, p, plim, -1, -1, 0, 0)
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
                    return R_GRE, p
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
                return R_OK, p + 8
            elif proto == 59:
                return R_OK, p
            else:
                return R_PROTO, p


@njit(cache=True)
def scan(buf, linktype, mac_on, payload_keep, cut_unparseable, recs, verdict, reason, newcap, v4, v6, mac, cs, n,
         payload_at):
    """Walk every record of buf; fill recs (record header offsets), the site tables and the
    per-packet verdicts.

    n = [nv4, nv6, nmac, ncs, overflow, records, bad_record_at, max_changes]; on overflow
    (n[4] = 1) the caller enlarges the tables and calls again; a record running past the end of
    buf stops the walk with n[6] = its offset. max_changes bounds the 16-bit words `apply` may
    change in one packet (a site can straddle one extra word).
    """
    size = buf.shape[0]
    r = 0
    i = 0
    while r < size:
        if r + 16 > size:
            n[6] = r
            return
        cap = np.int64(buf[r + 8]) | (np.int64(buf[r + 9]) << 8) | (np.int64(buf[r + 10]) << 16) | (np.int64(buf[r + 11]) << 24)
        d = r + 16
        end = d + cap
        if end > size:
            n[6] = r
            return
        recs[i] = r
        n[5] = i + 1
        r = end
        s0 = n[0]
        s1 = n[1]
        s2 = n[2]
        s3 = n[3]
        why, at = _walk(buf, d, end, linktype, i, mac_on, v4, v6, mac, cs, n)
        if n[4]:
            return
        pk = i
        i += 1
        changes = (n[0] - s0) * 3 + (n[1] - s1) * 9 + (n[2] - s2) * 4 + (n[3] - s3)
        if changes > n[7]:
            n[7] = changes
        payload_at[pk] = at if why == R_OK else -1
        if why == R_OK:
            if payload_keep >= 0 and at >= 0 and at + payload_keep < end:
                verdict[pk] = V_CUT
                reason[pk] = R_PAYLOAD
                newcap[pk] = at + payload_keep - d
            else:
                verdict[pk] = V_KEEP
                reason[pk] = R_OK
                newcap[pk] = cap
            continue
        reason[pk] = why
        if not cut_unparseable:
            verdict[pk] = V_DROP
            newcap[pk] = -1
            n[0] = s0
            n[1] = s1
            n[2] = s2
            n[3] = s3
            continue
        verdict[pk] = V_CUT
        newcap[pk] = at - d
        # forget the sites and checksum fields that are no longer (wholly) in the packet
        k = s0
        for j in range(s0, n[0]):
            if v4[j, 0] + 4 <= at:
                v4[k] = v4[j]
                k += 1
        n[0] = k
        k = s1
        for j in range(s1, n[1]):
            if v6[j, 0] + 16 <= at:
                v6[k] = v6[j]
                k += 1
        n[1] = k
        k = s2
        for j in range(s2, n[2]):
            if mac[j, 0] + 6 <= at:
                mac[k] = mac[j]
                k += 1
        n[2] = k
        k = s3
        for j in range(s3, n[3]):
            if cs[j, 1] + 2 <= at:
                cs[k] = cs[j]
                k += 1
        n[3] = k
    # values of the IPv4 sites (decoded), for the vectorized mapping
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


@njit(cache=True)
def record_offsets(buf):
    """Offsets of the record headers in buf; -1 in the last slot of the result when the
    records do not tile buf exactly (truncated record)."""
    count = 0
    r = 0
    size = buf.shape[0]
    while r + 16 <= size:
        cap = np.int64(buf[r + 8]) | (np.int64(buf[r + 9]) << 8) | (np.int64(buf[r + 10]) << 16) | (np.int64(buf[r + 11]) << 24)
        if r + 16 + cap > size:
            break
        count += 1
        r += 16 + cap
    ok = r == size
    out = np.empty(count + (0 if ok else 1), dtype=np.int64)
    r = 0
    for i in range(count):
        out[i] = r
        cap = np.int64(buf[r + 8]) | (np.int64(buf[r + 9]) << 8) | (np.int64(buf[r + 10]) << 16) | (np.int64(buf[r + 11]) << 24)
        r += 16 + cap
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


@njit(cache=True)
def _address_left(buf, start, end, v4, s0, s1, v6, t0, t1, pat, six, first):
    """Whether a rewritten address of this packet (its sites are v4[s0:s1], v6[t0:t1]) is in
    its payload, bytes [start, end); ``pat``, ``six`` and ``first`` (256 x False) are scratch.

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
    for j in range(k):
        first[pat[j] >> 24] = False
    for j in range(m):
        first[(v6[six[j], 3] >> 56) & 0xFF] = False
    return leak


@njit(cache=True)
def apply(buf, recs, newcap, v4, v4_new, v6, v6_new, mac, mac_new, cs, nv4, nv6, nmac, ncs, max_changes,
          verdict, reason, payload_at):
    """Write the new site values, fix checksums, drop/cut records; returns the new length of
    buf (records compacted towards the start). A record failing the self-check
    (`_address_left` on its payload, which starts at payload_at: -1 for none) is dropped:
    verdict V_DROP, reason R_SELF_CHECK."""
    ch = np.empty((max_changes, 3), dtype=np.int64)
    old = np.empty(16, dtype=np.uint8)
    pat = np.empty(2 * nv4 + 1, dtype=np.int64)
    six = np.empty(nv6 + 1, dtype=np.int64)
    first = np.zeros(256, dtype=np.bool_)
    a4 = 0
    a6 = 0
    am = 0
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
            for b in range(4):
                old[b] = buf[off + b]
            val = v4_new[a4]
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
            for b in range(6):
                old[b] = buf[off + b]
                buf[off + b] = mac_new[am, b]
            nch = _record_change(buf, d, off, 6, ch, nch, old)
            am += 1
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
        # most telescope packets have no payload (SYN-ACK, RST): nothing to look at, no call
        if payload_at[i] >= 0 and d + nc - payload_at[i] >= 4 and \
                _address_left(buf, payload_at[i], d + nc, v4, s0, a4, v6, t0, a6, pat, six, first):
            verdict[i] = V_DROP
            reason[i] = R_SELF_CHECK
            continue
        size = 16 + nc
        if out != r or nc != (np.int64(buf[r + 8]) | (np.int64(buf[r + 9]) << 8) | (np.int64(buf[r + 10]) << 16) | (np.int64(buf[r + 11]) << 24)):
            for b in range(8):
                buf[out + b] = buf[r + b]
            buf[out + 8] = nc & 0xFF
            buf[out + 9] = (nc >> 8) & 0xFF
            buf[out + 10] = (nc >> 16) & 0xFF
            buf[out + 11] = (nc >> 24) & 0xFF
            for b in range(12, size):
                buf[out + b] = buf[r + b]
        out += size
    return out
