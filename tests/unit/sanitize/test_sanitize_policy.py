"""Policy parsing: tcprewrite CIDR-map syntax, TOML files, refusals that name the bad part."""

from __future__ import annotations

import pytest

from bridge.config import load_config
from bridge.sanitize.policy import PolicyError, load_policy, parse_cidr_map, policy_from_config, policy_from_flags


def test_tcprewrite_syntax():
    pairs = parse_cidr_map("10.1.0.0/16:192.168.0.0/16,172.16.0.0/12:10.1.0.0/24,[2001:db8::/32]:[fd00::/16],10.9.9.9:1.2.3.4", "pnat")
    assert [str(p) for p in pairs] == ["10.1.0.0/16:192.168.0.0/16", "172.16.0.0/12:10.1.0.0/24",
                                       "[2001:db8::/32]:[fd00::/16]", "10.9.9.9/32:1.2.3.4/32"]
    # host bits in FROM are masked away, as tcprewrite's ip_in_cidr does
    assert str(parse_cidr_map("10.1.2.3/16:192.168.0.0/16", "pnat")[0]) == "10.1.0.0/16:192.168.0.0/16"


@pytest.mark.parametrize("spec, part", [
    ("10.1.0.0/33:192.168.0.0/16", "10.1.0.0/33"),
    ("10.1.0.0/16", "must be FROM:TO"),
    ("10.1.0.0/16:192.168.0.0/16,", "empty pair"),
    ("10.256.0.0/16:192.168.0.0/16", "10.256.0.0/16"),
    ("[fd00::/8]:[10.0.0.0/8]", "mixes IPv4 and IPv6"),
    ("[fd00::/8:[2001:db8::/32]", "[FROM/len]:[TO/len]"),
    ("10.0.0.0/8:0.0.0.0/0", "/0 TO prefix"),
])
def test_bad_pnat_names_the_part(spec, part):
    with pytest.raises(PolicyError) as exc:
        policy_from_flags(pnat=spec)
    assert part in str(exc.value)


def test_policy_file_full(tmp_path):
    (tmp_path / "k").write_text("00" * 32 + "\n")
    f = tmp_path / "site-a.toml"
    f.write_text('[addresses]\ncryptopan_key_file = "k"\ncryptopan_scope = ["10.0.0.0/8", "fd00::/8"]\n'
                 '[mac]\nmode = "hash"\n[payload]\nmode = "cut"\nbytes = 32\n[unparseable]\naction = "cut"\n')
    p = load_policy(f)
    assert p.name == "site-a" and p.mode == "cryptopan" and p.payload_keep == 32 and p.on_unparseable == "cut"
    assert [str(c) for c in p.cryptopan_scope] == ["10.0.0.0/8", "fd00::/8"]
    assert p.mac_key == p.cryptopan_key == bytes(32)
    assert len(p.key_fingerprint) == 16 and "00" * 16 not in repr(p)
    # version is a content hash: a different key or rule gives a different version
    (tmp_path / "k").write_bytes(bytes(range(32)))
    assert load_policy(f).version != p.version
    assert load_policy(f).key_fingerprint != p.key_fingerprint


@pytest.mark.parametrize("text, part", [
    ('[addresses]\n', "no address rewriting"),
    ('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\ncryptopan_key_file = "k"\n', "not both"),
    ('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[mac]\nmode = "scramble"\n', "mac.mode"),
    ('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[mac]\nmode = "hash"\n', "mac.mode: hash needs"),
    ('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[payload]\nmode = "cut"\n', "payload.bytes"),
    ('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[unparseable]\naction = "keep"\n', "unparseable.action"),
    ('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\nextra = 1\n', "unknown key(s) extra"),
    ('[addresses]\ncryptopan_key_file = "short"\n', "32 raw bytes or 64 hex"),
    ('[addresses]\ncryptopan_key_file = "missing"\n', "cannot read key file"),
    ('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\ncryptopan_scope = "all"\n', "cryptopan_scope"),
    ('[addresses\n', "invalid TOML"),
    ('compat = "tcpdump"\n[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n', "compat: 'tcpdump' is not one of"),
    ('compat = "tcprewrite"\n[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[mac]\nkey_file = "k"\n', "mac.key_file"),
])
def test_bad_policy_files(tmp_path, text, part):
    (tmp_path / "k").write_bytes(bytes(32))
    (tmp_path / "short").write_bytes(bytes(31))
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(f)
    assert part in str(exc.value)


def test_flags_override_file(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('name = "n"\n[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[payload]\nmode = "headers"\n')
    p = policy_from_flags(policy_file=str(f), pnat="192.168.0.0/16:46.1.0.0/16", payload="keep")
    assert p.name == "n" and [str(x) for x in p.pnat] == ["192.168.0.0/16:46.1.0.0/16"] and p.payload_keep == -1
    assert p.key_fingerprint == ""
    with pytest.raises(PolicyError, match="cut:N"):
        policy_from_flags(pnat="10.0.0.0/8:44.0.0.0/8", payload="cut:x")


def test_safe_defaults_without_a_policy_file(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(bytes(range(32)))
    p = policy_from_flags(pnat="10.0.0.0/8:44.0.0.0/8")
    # pnat has no key: a keyless MAC hash would be a public function of the MAC, so zero
    assert (p.payload_mode, p.payload_keep, p.mac_mode, p.on_unparseable, p.compat) == ("headers", 0, "zero", "drop", "none")
    assert p.less_safe() == ""
    c = policy_from_flags(cryptopan_key=str(key))
    assert (c.payload_mode, c.mac_mode, c.mac_key, c.on_unparseable) == ("headers", "hash", bytes(range(32)), "drop")
    assert c.less_safe() == ""


def test_safe_defaults_in_a_policy_file_that_omits_them(tmp_path):
    (tmp_path / "mac.key").write_bytes(bytes(range(1, 33)))
    f = tmp_path / "p.toml"
    f.write_text('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n')
    p = load_policy(f)
    assert (p.payload_mode, p.mac_mode, p.on_unparseable) == ("headers", "zero", "drop")
    # a MAC key alone makes the default a hash with that key
    f.write_text('[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[mac]\nkey_file = "mac.key"\n')
    p = load_policy(f)
    assert (p.mac_mode, p.mac_key, p.payload_mode) == ("hash", bytes(range(1, 33)), "headers")


def test_compat_tcprewrite_keeps_macs_and_payloads(tmp_path):
    safe = policy_from_flags(pnat="10.0.0.0/8:44.0.0.0/8")
    p = policy_from_flags(pnat="10.0.0.0/8:44.0.0.0/8", compat="tcprewrite")
    assert (p.mac_mode, p.payload_mode, p.payload_keep, p.on_unparseable) == ("keep", "keep", -1, "drop")
    assert p.normalized()["compat"] == "tcprewrite" and p.version != safe.version
    assert p.less_safe().startswith("less safe: ") and "MAC addresses and payloads" in p.less_safe()
    # explicit choices still win, and the version tells them apart from the plain compat policy
    q = policy_from_flags(pnat="10.0.0.0/8:44.0.0.0/8", compat="tcprewrite", mac="zero", payload="cut:16")
    assert (q.mac_mode, q.payload_keep, q.compat) == ("zero", 16, "tcprewrite") and q.less_safe() == ""
    assert len({safe.version, p.version, q.version}) == 3
    # the same choice as a policy file key; a flag overrides it either way
    f = tmp_path / "p.toml"
    f.write_text('compat = "tcprewrite"\n[addresses]\npnat = "10.0.0.0/8:44.0.0.0/8"\n[mac]\nmode = "zero"\n')
    r = load_policy(f)
    assert (r.compat, r.mac_mode, r.payload_mode) == ("tcprewrite", "zero", "keep")
    assert "keeps payloads" in r.less_safe() and "MAC" not in r.less_safe()
    back = policy_from_flags(policy_file=str(f), compat="none")
    assert (back.compat, back.mac_mode, back.payload_mode) == ("none", "zero", "headers")


def test_an_explicit_keep_without_compat_is_announced_too():
    p = policy_from_flags(pnat="10.0.0.0/8:44.0.0.0/8", mac="keep")
    assert (p.mac_mode, p.payload_mode) == ("keep", "headers")
    assert "keeps MAC addresses" in p.less_safe() and "compat" not in p.less_safe()


def test_policy_from_config_reads_compat():
    cfg = load_config(overrides={"sanitize.pnat": "10.0.0.0/8:44.0.0.0/8", "sanitize.compat": "tcprewrite"}, env={})
    assert policy_from_config(cfg.sanitize).compat == "tcprewrite"
    cfg = load_config(overrides={"sanitize.pnat": "10.0.0.0/8:44.0.0.0/8"}, env={"D4BRIDGE_SANITIZE_COMPAT": "bad"})
    with pytest.raises(PolicyError, match="compat"):
        policy_from_config(cfg.sanitize)
