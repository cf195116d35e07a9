"""egress configuration checks (no broker needed): server, frame size, identities, TLS."""

from __future__ import annotations

import ssl
import uuid

import pytest

from bridge.config import load_config
from bridge.egress_identity import IdentityError
from bridge.hops.egress import resolve

SITE = str(uuid.uuid4())
MAPPED = uuid.uuid4().hex
UP = str(uuid.uuid4())


def cfg(**egress):
    return load_config(overrides={f"egress.{k}": v for k, v in egress.items()}, env={})


def test_site_identity_covers_every_sensor():
    plan = resolve(cfg(server="[::1]:4443", uuid=SITE, hmac_key="k", insecure=True))
    assert (plan.host, plan.port) == ("::1", 4443)
    ident = plan.identities.lookup(uuid.uuid4().hex)
    assert ident is not None and ident.uuid_hex == uuid.UUID(SITE).hex and ident.key.reveal() == b"k"
    assert isinstance(plan.tls, ssl.SSLContext) and plan.tls.verify_mode == ssl.CERT_NONE
    assert plan.options.frame_size == 65536


def test_map_entries_win_and_the_site_identity_is_the_default(tmp_path):
    (tmp_path / "ids.toml").write_text(f'[sensors."{MAPPED}"]\nuuid = "{UP}"\nkey = "m"\n')
    plan = resolve(cfg(server="h:1", uuid=SITE, hmac_key="k", no_tls=True, identity_map=str(tmp_path / "ids.toml")))
    assert plan.tls is None
    assert plan.identities.lookup(MAPPED).uuid_hex == uuid.UUID(UP).hex
    assert plan.identities.lookup(uuid.uuid4().hex).uuid_hex == uuid.UUID(SITE).hex


def test_map_alone_leaves_unmapped_sensors_without_identity(tmp_path):
    (tmp_path / "ids.toml").write_text(f'[sensors."{MAPPED}"]\nuuid = "{UP}"\nkey = "m"\n')
    plan = resolve(cfg(server="h:1", no_tls=True, identity_map=str(tmp_path / "ids.toml")))
    assert plan.identities.lookup(uuid.uuid4().hex) is None


@pytest.mark.parametrize("settings, message", [
    ({}, "no server"),
    ({"server": "h:1", "frame_size": 1_000_001, "uuid": SITE, "hmac_key": "k"}, "frame-size must be 1..1000000"),
    ({"server": "h:1", "uuid": SITE}, "give both --uuid and --hmac-key"),
    ({"server": "h:1"}, "no upstream identity"),
])
def test_bad_configurations_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve(cfg(no_tls=True, **settings))


def test_non_v4_site_uuid_is_refused():
    with pytest.raises(IdentityError, match="version-4"):
        resolve(cfg(server="h:1", uuid=str(uuid.uuid1()), hmac_key="k", no_tls=True))


def test_frame_size_at_the_d4_core_limit_is_accepted():
    assert resolve(cfg(server="h:1", uuid=SITE, hmac_key="k", no_tls=True, frame_size=1_000_000)).options.frame_size \
        == 1_000_000


def test_identities_with_a_telescope_get_a_site_announcement(tmp_path):
    from bridge.d4.site_meta import parse_site_announcement

    (tmp_path / "ids.toml").write_text(f'[sensors."{MAPPED}"]\nuuid = "{UP}"\nkey = "m"\n'
                                       'telescope = "10.9.0.0/24, 10.9.0.128/25"\n')
    plan = resolve(load_config(overrides={"site": "north", "egress.server": "h:1", "egress.uuid": SITE,
                                          "egress.hmac_key": "k", "egress.no_tls": True,
                                          "egress.identity_map": str(tmp_path / "ids.toml"),
                                          "egress.telescope": "10.1.0.0/16,10.2.0.0/17,fd00::/8"}, env={}))
    got = {u: parse_site_announcement(raw) for u, raw in plan.announcements.items()}
    assert got == {uuid.UUID(SITE).hex: ("north", 65536 + 32768), uuid.UUID(UP).hex: ("north", 256)}
    assert resolve(cfg(server="h:1", uuid=SITE, hmac_key="k", no_tls=True)).announcements == {}


def test_site_announcements_are_recognised_and_nothing_else():
    from bridge.d4.site_meta import parse_site_announcement, site_announcement

    assert parse_site_announcement(site_announcement("a", 5)) == ("a", 5)
    for raw in (b'{"type": "ja3-jl"}', b"not json", b'{"type": "d4-bridge-site", "site": "a"}',
                b'{"type": "d4-bridge-site", "site": "a", "monitored_addresses": true}', b"[]"):
        assert parse_site_announcement(raw) is None
