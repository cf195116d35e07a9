"""Configuration directories read with d4-goclient / C client semantics."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from bridge.d4.confdir import ConfDirError, load_confdir, read_setting


def make(tmp_path, **files):
    for name, content in files.items():
        (tmp_path / name.replace("_json", ".json")).write_bytes(content)
    return tmp_path


def test_sample_conf(tmp_path):
    d = make(tmp_path, uuid=b"1d940331-9fc9-4381-8fc9-3b624db66025\n", key=b"private key to change\n",
             type=b"1\n", version=b"1\n", snaplen=b"4096\n", destination=b"127.0.0.1:4443\n")
    conf = load_confdir(d)
    assert conf.uuid == uuidlib.UUID("1d940331-9fc9-4381-8fc9-3b624db66025")
    assert conf.key == b"private key to change"
    assert (conf.d4_type, conf.version, conf.snaplen) == (1, 1, 4096)
    assert conf.destination == "127.0.0.1:4443"
    assert conf.meta_header is None and conf.root_ca is None


def test_key_trims_one_newline_then_one_cr_like_goclient(tmp_path):
    (tmp_path / "k").write_bytes(b"sec ret\r\n\n")
    assert read_setting(tmp_path / "k") == b"sec ret\r\n"  # only one \n removed, then no \r at end
    (tmp_path / "k").write_bytes(b"key\r\n")
    assert read_setting(tmp_path / "k") == b"key"
    (tmp_path / "k").write_bytes(b"x" * 150)
    assert read_setting(tmp_path / "k") == b"x" * 100  # goclient reads at most 100 bytes


def test_missing_uuid_is_generated_and_written(tmp_path):
    d = make(tmp_path, key=b"k", type=b"1")
    conf = load_confdir(d)
    assert conf.uuid.version == 4
    assert uuidlib.UUID((d / "uuid").read_text().strip()) == conf.uuid
    assert load_confdir(d).uuid == conf.uuid  # stable once written


def test_defaults_like_goclient(tmp_path):
    d = make(tmp_path, key=b"k", type=b"1", snaplen=b"garbage", version=b"0", uuid=b"not a uuid")
    conf = load_confdir(d)
    assert conf.snaplen == 4096 and conf.version == 1 and conf.destination == "stdout"


def test_meta_header_required_and_validated_for_type_2(tmp_path):
    d = make(tmp_path, key=b"k", type=b"2")
    with pytest.raises(ConfDirError, match="metaheader.json"):
        load_confdir(d)
    (d / "metaheader.json").write_bytes(b'{"notype": 1}')
    with pytest.raises(ConfDirError, match="type"):
        load_confdir(d)
    (d / "metaheader.json").write_bytes(b'{"type": "ja3-jl"}\n')
    assert load_confdir(d).meta_header == b'{"type": "ja3-jl"}\n'


def test_root_ca_and_missing_key(tmp_path):
    d = make(tmp_path, type=b"1")
    with pytest.raises(ConfDirError, match="key"):
        load_confdir(d)
    (d / "key").write_bytes(b"k")
    (d / "rootCA.crt").write_bytes(b"pem")
    assert load_confdir(d).root_ca == d / "rootCA.crt"
