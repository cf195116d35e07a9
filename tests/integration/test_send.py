"""``d4-bridge send`` end to end: pcap file over verified TLS, a conf dir on stdin, and a server
killed mid-stream (reconnect + resend: nothing lost)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
import uuid as uuidlib

import pytest

from bridge import kafka
from bridge.broker import free_port
from bridge.d4.tls import write_self_signed_pem
from bridge.pcap import PcapHeader, iter_packets, record_offsets, write_pcap

from d4util import CLI, ENV, IngressThread, capture, ingress_config, packets_of, read_topic

pytestmark = pytest.mark.integration

KEY = "sensor secret"


def records_list(packets: bytes) -> list[bytes]:
    offs = list(record_offsets(packets)) + [len(packets)]
    return [packets[a:b] for a, b in zip(offs, offs[1:])]


def test_send_pcap_file_over_verified_tls(kafka_config, unique, tmp_path):
    pem = write_self_signed_pem(tmp_path / "server.pem")
    cfg = ingress_config(kafka_config, unique, cert=str(pem), hmac_key=KEY.encode())
    _, recs = capture(5000, 21, nsec=True)
    path = tmp_path / "in.pcap"
    write_pcap(path, PcapHeader(1, 65535, True), recs)
    u = uuidlib.uuid4()
    with IngressThread(cfg) as ing:
        done = subprocess.run(CLI + ["send", "--server", f"127.0.0.1:{ing.port}", "--uuid", str(u),
                                     "--hmac-key", KEY, "--ca", str(pem), str(path)],
                              env=ENV, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        out = read_topic(kafka_config, cfg.ingress.topic, "PcapBatch",
                         until=lambda rs: len(packets_of(rs, u.hex)) >= len(recs))
    assert packets_of(out, u.hex) == recs
    assert all(r["ts_precision"] == "nsec" for r in out)


def test_send_confdir_from_stdin(kafka_config, unique, tmp_path):
    cfg = ingress_config(kafka_config, unique, no_tls=True, hmac_key=KEY.encode())
    stream, recs = capture(2000, 22)
    conf = tmp_path / "conf"
    conf.mkdir()
    with IngressThread(cfg) as ing:
        for name, value in (("key", KEY + "\n"), ("type", "1\n"), ("version", "1\n"), ("snaplen", "4096\n"),
                            ("destination", f"127.0.0.1:{ing.port}\n"), ("source", "stdin\n")):
            (conf / name).write_text(value)
        done = subprocess.run(CLI + ["send", "-c", str(conf), "--no-tls"], input=stream, env=ENV,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        u = uuidlib.UUID((conf / "uuid").read_text().strip())  # generated like the C client does
        out = read_topic(kafka_config, cfg.ingress.topic, "PcapBatch",
                         until=lambda rs: len(packets_of(rs, u.hex)) >= len(recs))
    assert packets_of(out, u.hex) == recs


def start_ingress(kafka_config, port: int, topic: str) -> subprocess.Popen:
    proc = subprocess.Popen(CLI + ["ingress", "--bootstrap", kafka_config.bootstrap, "--listen",
                                   f"127.0.0.1:{port}", "--no-tls", "--hmac-key", KEY, "--topic", topic],
                            env=ENV, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("ingress did not start: " + proc.stderr.read().decode())


def test_server_killed_mid_stream_nothing_lost(kafka_config, unique, tmp_path):
    topic = unique("pcap")
    kafka.create_topics(kafka_config, 1, topics=[topic])
    port = free_port()
    stream, recs = capture(20000, 23)
    u = uuidlib.uuid4()
    ingress = start_ingress(kafka_config, port, topic)
    send = subprocess.Popen(CLI + ["send", "--server", f"127.0.0.1:{port}", "--uuid", str(u), "--hmac-key", KEY,
                                   "--no-tls", "--frame-size", "8192", "-"],
                            stdin=subprocess.PIPE, env=ENV, stderr=subprocess.PIPE)

    def writer():
        for i in range(0, len(stream), 32768):  # ~16 MB over ~5 s: the kill lands mid-stream
            send.stdin.write(stream[i:i + 32768])
            send.stdin.flush()
            time.sleep(0.01)
        send.stdin.close()

    w = threading.Thread(target=writer)
    w.start()
    read_topic(kafka_config, topic, "PcapBatch", until=lambda rs: any(r["sensor_uuid"] == u.hex for r in rs))
    assert w.is_alive(), "the stream ended before the kill"
    ingress.send_signal(signal.SIGKILL)
    ingress.wait(10)
    time.sleep(1.0)
    ingress = start_ingress(kafka_config, port, topic)
    try:
        w.join(120)
        assert send.wait(120) == 0, send.stderr.read().decode()
        stderr = send.stderr.read().decode()
        out = read_topic(kafka_config, topic, "PcapBatch", idle=3.0)
    finally:
        ingress.terminate()
        ingress.wait(30)
    sessions = {r["session_id"] for r in out if r["sensor_uuid"] == u.hex}
    assert len(sessions) >= 2, "the kill did not land mid-stream"
    want = records_list(recs)
    got = records_list(packets_of(out, u.hex))
    # every record arrives, in order; a resend may repeat records the dead server had received
    nxt = 0
    index = {r: i for i, r in enumerate(want)}
    for rec in got:
        i = index[rec]
        assert i <= nxt, f"record {nxt} lost (jumped to {i})"
        nxt = max(nxt, i + 1)
    assert nxt == len(want)
    resent = [int(n) for n in re.findall(r"resent (\d+) bytes", stderr)]
    assert max(resent) > 0, stderr  # the data in flight at the kill was sent again
    # timestamps of the records are intact (records decode as packets)
    assert sum(1 for _ in iter_packets(recs)) == len(want)


def test_send_meta_header_then_extended_type_lines(kafka_config, unique, tmp_path):
    """A d4-goclient-style conf dir of type 2: the meta header goes first as type 2, the lines
    from stdin follow as type 254 and arrive line-aligned with their meta type."""
    cfg = ingress_config(kafka_config, unique, no_tls=True, hmac_key=KEY.encode())
    conf = tmp_path / "conf"
    conf.mkdir()
    lines = b"".join(b'{"ja3": "%032x"}\n' % i for i in range(500))
    with IngressThread(cfg) as ing:
        for name, value in (("key", KEY), ("type", "2"), ("snaplen", "1000"),
                            ("destination", f"127.0.0.1:{ing.port}"), ("metaheader.json", '{"type": "ja3-jl"}')):
            (conf / name).write_text(value + "\n")
        done = subprocess.run(CLI + ["send", "-c", str(conf), "--no-tls"], input=lines, env=ENV,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        out = read_topic(kafka_config, cfg.ingress.records_topic, "D4Record",
                         until=lambda rs: b"".join(r["data"] for r in rs if r["d4_type"] == 254) == lines)
    assert out[0]["d4_type"] == 2 and out[0]["data"].strip() == b'{"type": "ja3-jl"}'
    data = [r for r in out if r["d4_type"] == 254]
    assert b"".join(r["data"] for r in data) == lines
    assert all(r["meta_type"] == "ja3-jl" and r["data"].endswith(b"\n") for r in data)

