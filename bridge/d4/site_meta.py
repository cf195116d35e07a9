"""The site announcement: a D4 type-2 meta header telling a hub what a sensor watches (pure).

A site's egress opens, next to each upstream pcap session, a short type-2 session whose meta
header is::

    {"type": "d4-bridge-site", "site": "<site name>", "monitored_addresses": <count>}

followed by the same JSON as one type-254 line, then closes it. d4-core accepts the session
(type 2 may run beside an uuid's type-1 session; it files the line under the extended type once
``d4-bridge-site`` is in ``server:accepted_extended_type``, and logs it as unsupported before);
a d4-bridge hub keeps the latest announcement of each sensor uuid and extrapolates with the
count. The count is what that upstream identity's packets cover, before sanitization maps the
addresses anywhere: two sites mapped onto one public prefix still announce two telescopes.
"""

from __future__ import annotations

import json

SITE_META_TYPE = "d4-bridge-site"


def site_announcement(site: str, monitored_addresses: int) -> bytes:
    """The meta header JSON announcing ``site`` and its monitored address count."""
    if monitored_addresses <= 0:
        raise ValueError("monitored_addresses must be positive")
    return json.dumps({"type": SITE_META_TYPE, "site": site, "monitored_addresses": int(monitored_addresses)},
                      sort_keys=True).encode()


def parse_site_announcement(raw: bytes) -> tuple[str, int] | None:
    """(site, monitored addresses) of a site announcement; None for any other meta header."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("type") != SITE_META_TYPE:
        return None
    site, count = obj.get("site"), obj.get("monitored_addresses")
    if not isinstance(site, str) or not site or isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        return None
    return site, count
