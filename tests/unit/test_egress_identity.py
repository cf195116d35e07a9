"""egress_identity: site identity and TOML identity map."""

from __future__ import annotations

import uuid

import pytest

from bridge.egress_identity import IdentityError, IdentityMap, load_identity_map, make_identity, parse_identity_map

UP1 = str(uuid.uuid4())
UP2 = str(uuid.uuid4())
SENSOR = str(uuid.uuid4())


def test_identity_needs_a_v4_uuid_and_a_key():
    ident = make_identity(UP1.upper(), b"k", "site")
    assert ident.uuid_hex == uuid.UUID(UP1).hex and ident.uuid_bytes == uuid.UUID(UP1).bytes
    assert ident.key.reveal() == b"k"
    with pytest.raises(IdentityError, match="version-4"):
        make_identity(str(uuid.uuid1()), b"k", "site")
    with pytest.raises(IdentityError, match="not a uuid"):
        make_identity("nope", b"k", "site")
    with pytest.raises(IdentityError, match="no HMAC key"):
        make_identity(UP1, b"", "site")


def test_map_routes_listed_sensors_and_falls_back_to_default(tmp_path):
    (tmp_path / "up2.key").write_bytes(b"second key\n")
    path = tmp_path / "ids.toml"
    path.write_text(f'[default]\nuuid = "{UP1}"\nkey = "first"\n\n'
                    f'[sensors."{SENSOR.upper()}"]\nuuid = "{UP2}"\nkey_file = "up2.key"\n')
    m = load_identity_map(path)
    listed = m.lookup(uuid.UUID(SENSOR).hex)
    assert listed is not None and listed.uuid_hex == uuid.UUID(UP2).hex and listed.key.reveal() == b"second key"
    other = m.lookup(uuid.uuid4().hex)
    assert other is not None and other.uuid_hex == uuid.UUID(UP1).hex
    assert len(m.identities) == 2


def test_map_without_default_has_no_identity_for_others():
    m = parse_identity_map(f'[sensors."{SENSOR}"]\nuuid = "{UP2}"\nkey = "x"\n')
    assert m.lookup(uuid.uuid4().hex) is None
    assert IdentityMap().lookup(SENSOR) is None


@pytest.mark.parametrize("text, message", [
    ("", "no identity"),
    ("[other]\n", "unknown table"),
    (f'[default]\nuuid = "{UP1}"\n', "exactly one of key or key_file"),
    (f'[default]\nuuid = "{UP1}"\nkey = "a"\nkey_file = "b"\n', "exactly one of key or key_file"),
    ('[default]\nkey = "a"\n', "missing uuid"),
    (f'[default]\nuuid = "{UP1}"\nkey = "a"\ncolour = 1\n', "unknown key"),
    (f'[sensors.x]\nuuid = "{UP1}"\nkey = "a"\n', "'x' is not a uuid"),
    (f'[default]\nuuid = "{UP1}"\nkey_file = "/nonexistent/k"\n', "cannot read key file"),
    ("[default\n", "not valid TOML"),
])
def test_bad_maps_are_refused_with_the_entry_named(text, message):
    with pytest.raises(IdentityError, match=message):
        parse_identity_map(text)
