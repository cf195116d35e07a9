"""``d4-bridge send`` option resolution and input cutting (no network)."""

from __future__ import annotations

import ssl
import uuid as uuidlib

import pytest

from bridge.assembler import PcapAssembler
from bridge.config import Config, Secret
from bridge.d4.tls import write_self_signed_pem
from bridge.hops.send import resolve, send_lines, send_pcap
from bridge.pcap import global_header, pack_record


class Collect:
    """Stands in for D4Sender.send: records the messages (resume points) it is given."""

    def __init__(self):
        self.messages: list[bytes] = []

    def send(self, payload: bytes) -> None:
        self.messages.append(payload)


def confdir(tmp_path, **files):
    d = tmp_path / "conf"
    d.mkdir()
    for name, value in files.items():
        (d / name.replace("_json", ".json")).write_text(value)
    return d


def test_confdir_settings_and_flag_overrides(tmp_path):
    u = uuidlib.uuid4()
    d = confdir(tmp_path, uuid=str(u), key="k\n", type="1", snaplen="4096", destination="127.0.0.1:4443")
    cfg = Config()
    cfg.send.confdir = str(d)
    cfg.send.no_tls = True
    plan = resolve(cfg)
    assert (plan.host, plan.port, plan.uuid, plan.key, plan.d4_type) == ("127.0.0.1", 4443, u.bytes, b"k", 1)
    assert plan.options.frame_size == 4096 and plan.tls is None
    cfg.send.server = "[::1]:9999"
    cfg.send.hmac_key = Secret("flag key")
    cfg.send.frame_size = 1000
    plan = resolve(cfg)
    assert (plan.host, plan.port, plan.key, plan.options.frame_size) == ("::1", 9999, b"flag key", 1000)


def test_root_ca_of_confdir_verifies_unless_insecure(tmp_path):
    pem = write_self_signed_pem(tmp_path / "ca.pem")
    d = confdir(tmp_path, key="k", type="1", destination="127.0.0.1:4443")
    (d / "rootCA.crt").write_bytes(pem.read_bytes())
    cfg = Config()
    cfg.send.confdir = str(d)
    assert resolve(cfg).tls.verify_mode == ssl.CERT_REQUIRED
    cfg.send.insecure = True
    assert resolve(cfg).tls.verify_mode == ssl.CERT_NONE


def test_missing_settings_are_named():
    cfg = Config()
    with pytest.raises(ValueError, match="server"):
        resolve(cfg)
    cfg.send.server = "127.0.0.1:4443"
    with pytest.raises(ValueError, match="uuid"):
        resolve(cfg)
    cfg.send.uuid = str(uuidlib.uuid4())
    with pytest.raises(ValueError, match="HMAC"):
        resolve(cfg)
    cfg.send.hmac_key = Secret("k")
    cfg.send.type = 2
    with pytest.raises(ValueError, match="metaheader"):
        resolve(cfg)


def test_meta_type_from_confdir(tmp_path):
    d = confdir(tmp_path, key="k", type="2", destination="h:1", metaheader_json='{"type": "ja3-jl"}')
    cfg = Config()
    cfg.send.confdir = str(d)
    plan = resolve(cfg)
    assert plan.options.meta_header == b'{"type": "ja3-jl"}' and plan.d4_type == 2


def test_pcap_messages_are_whole_records():
    recs = [pack_record(1_700_000_000_000_000_000 + i, bytes([i % 256]) * (60 + i % 900)) for i in range(2000)]
    stream = global_header(1, 65535, False) + b"".join(recs)
    out = Collect()
    chunks = iter([stream[i:i + 777] for i in range(0, len(stream), 777)])
    send_pcap(out, chunks, PcapAssembler(batch_bytes=4096, max_age=None))
    assert b"".join(out.messages) == b"".join(recs)
    starts = set()
    pos = 0
    for r in recs:
        starts.add(pos)
        pos += len(r)
    offset = 0
    for m in out.messages:  # every message starts at a record boundary
        assert offset in starts
        offset += len(m)


def test_lines_are_cut_at_newlines_and_flushed_on_idle():
    out = Collect()
    send_lines(out, iter([b"a\nb", b"c\nd", b"", b"e\n"]), frame_size=100)
    assert out.messages == [b"a\n", b"bc\n", b"d", b"e\n"]
