"""Admission rules: keys file, uuid v4, blacklists, registration, type changes."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from bridge.d4.keys import Admission, KeysFileError, is_uuid_v4, next_header_refusal, parse_keys

U = uuidlib.UUID("cd980d75-dcf1-47da-bb60-aabe94fea6b2")


def test_parse_keys_file():
    keys = parse_keys(f"# comment\n\n{U} = private key to change\n{uuidlib.UUID(int=4).hex}=a=b\n")
    assert keys[U.hex] == b"private key to change"
    assert keys[uuidlib.UUID(int=4).hex] == b"a=b"  # everything after the first '='
    with pytest.raises(KeysFileError, match=":1:"):
        parse_keys("not-a-uuid = k")
    with pytest.raises(KeysFileError, match="expected"):
        parse_keys(f"{U} =")


def test_uuid_v4_rule_of_d4_core():
    assert is_uuid_v4(U.hex)
    assert not is_uuid_v4(uuidlib.uuid1().hex)
    assert not is_uuid_v4("00000000000000000000000000000000")
    assert not is_uuid_v4(U.hex[:16] + "0" + U.hex[17:])  # variant bits not RFC 4122
    assert not is_uuid_v4("zz")


def test_first_header_refusals():
    adm = Admission.build({}, b"k", False, [str(U)], [], [1, 2, 4, 8, 254])
    assert adm.first_header_refusal(U.hex, 1) == "blacklisted_uuid"
    other = uuidlib.uuid4().hex
    assert adm.first_header_refusal(other, 1) is None
    assert adm.first_header_refusal(other, 3) == "type_not_accepted"
    assert adm.first_header_refusal(other, 254) == "meta_header_missing"
    assert adm.first_header_refusal(uuidlib.uuid1().hex, 1) == "bad_uuid"


def test_keys_registration_and_default():
    listed = uuidlib.uuid4().hex
    stranger = uuidlib.uuid4().hex
    assert Admission.build({listed: b"a"}, None, False, [], [], [1]).static_key(stranger) == (None, "unknown_uuid")
    assert Admission.build({listed: b"a"}, b"d", False, [], [], [1]).static_key(stranger) == (b"d", None)
    reg = Admission.build({listed: b"a"}, b"d", True, [], [], [1])
    assert reg.static_key(stranger) == (None, "not_registered")
    assert reg.static_key(listed) == (b"a", None)


def test_ip_blacklist_prefixes():
    adm = Admission.build({}, None, False, [], ["10.0.0.0/8", "2001:db8::/32"], [1])
    assert adm.ip_refused("10.1.2.3")
    assert adm.ip_refused("::ffff:10.1.2.3")  # IPv4-mapped, as dual-stack listeners report it
    assert adm.ip_refused("2001:db8::1%eth0")
    assert not adm.ip_refused("192.0.2.1")


def test_type_changes():
    acc = frozenset({1, 2, 254})
    assert next_header_refusal(U.hex, 1, U.hex, 1, acc) is None
    assert next_header_refusal(U.hex, 2, U.hex, 254, acc) is None
    assert next_header_refusal(U.hex, 254, U.hex, 2, acc) == "type_changed"  # d4-core issue 42
    assert next_header_refusal(U.hex, 1, U.hex, 4, acc) == "type_changed"
    assert next_header_refusal(U.hex, 1, uuidlib.uuid4().hex, 1, acc) == "uuid_changed"


def test_peer_address_as_d4_core_records_it():
    from bridge.hops.ingress import peer_address

    assert peer_address("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_address("fe80::1%eth0") == "fe80::1"
    assert peer_address("2001:db8::1") == "2001:db8::1"
    assert peer_address("192.0.2.1") == "192.0.2.1"
