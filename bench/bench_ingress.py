"""Ingress throughput: D4 sensors over TLS -> ``d4-bridge ingress`` -> embedded broker.

Target (issue 3): >= 100 MB/s of sensor payload on this 2-core machine with 1 and 8 concurrent
sensors, TLS on, every record acknowledged by the broker; ingress peak RSS < 300 MB.

Each sensor sends a pre-signed stream of 32 KiB frames (d4-goclient's frame size) carrying a
synthetic capture (packet sizes uniform in 60..1514 bytes). The clock runs from the first byte
sent until the ingress reports every packet produced and nothing left unacknowledged
(/metrics: d4bridge_ingress_packets_total, d4bridge_ingress_inflight_bytes). The ingress,
the broker and the sensors share the machine's two cores, so each configuration runs
BENCH_INGRESS_REPEAT times (default 3) and the median is reported; cpu-s/GB (CPU time per GB of
payload, from /proc) does not depend on what else runs. BENCH_INGRESS_MB sets the payload per run.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Figure, peak_rss_mb, report  # noqa: E402

from bridge import kafka  # noqa: E402
from bridge.broker import EmbeddedBroker, free_port, wait_for_port  # noqa: E402
from bridge.config import KafkaConfig  # noqa: E402
from bridge.d4.frame import FrameSigner  # noqa: E402
from bridge.d4.tls import write_self_signed_pem  # noqa: E402
from bridge.pcap import global_header, pack_record  # noqa: E402

KEY = b"bench key"
FRAME = 32768
STREAM_MB = int(os.environ.get("BENCH_INGRESS_MB", "400"))  # total sensor payload per run
REPEAT = int(os.environ.get("BENCH_INGRESS_REPEAT", "3"))


def capture(total_bytes: int, seed: int = 1) -> tuple[bytes, int]:
    """A pcap stream of about ``total_bytes`` and its packet count."""
    rng = random.Random(seed)
    blob = rng.randbytes(1514)
    parts = [global_header(1, 65535, False)]
    size = 24
    n = 0
    while size < total_bytes:
        length = rng.randint(60, 1514)
        parts.append(pack_record(1_700_000_000_000_000_000 + n * 1000, blob[:length]))
        size += 16 + length
        n += 1
    return b"".join(parts), n


def signed(stream: bytes, sensor: bytes) -> bytes:
    signer = FrameSigner(KEY)
    view = memoryview(stream)
    return b"".join(signer.encode(1, sensor, view[i:i + FRAME], 1_700_000_000) for i in range(0, len(stream), FRAME))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (a load-independent cost measure)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def run(bootstrap: str, broker_pid: int, pem: Path, stream: bytes, packets: int,
        streams: list[bytes]) -> dict[str, float]:
    """One measured run: ``streams`` (one pre-signed D4 stream per sensor) sent concurrently."""
    sensors = len(streams)
    topic = f"bench-pcap-{uuidlib.uuid4().hex[:8]}"
    kafka.create_topics(KafkaConfig(bootstrap=bootstrap), 3, topics=[topic])
    port, mport = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "ingress", "--bootstrap", bootstrap, "--listen", f"127.0.0.1:{port}",
         "--cert", str(pem), "--hmac-key", KEY.decode(), "--topic", topic, "--metrics-port", str(mport),
         "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        wait_for_port("127.0.0.1", port, 30, proc)
        wait_for_port("127.0.0.1", mport, 30, proc)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        socks = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) for _ in range(sensors)]
        base = scrape(mport).get("d4bridge_ingress_packets_total", 0.0)

        def pump(sock: ssl.SSLSocket, data: bytes) -> None:
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):
                sock.sendall(view[i:i + (1 << 20)])

        threads = [threading.Thread(target=pump, args=(s, d)) for s, d in zip(socks, streams)]
        cpu0 = (cpu_seconds(proc.pid), cpu_seconds(broker_pid), own_cpu())
        faults0 = minor_faults(proc.pid)
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = time.perf_counter() - start
        for s in socks:
            s.close()  # the assembler closes the last batch at session end
        want = base + packets * sensors
        while True:
            m = scrape(mport)
            if m.get("d4bridge_ingress_packets_total", 0) >= want and m.get("d4bridge_ingress_inflight_bytes", 1) == 0:
                break
            if proc.poll() is not None:
                raise RuntimeError("ingress died")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        cpu = [b - a for a, b in zip(cpu0, (cpu_seconds(proc.pid), cpu_seconds(broker_pid), own_cpu()))]
        faults = minor_faults(proc.pid) - faults0
        rss = peak_rss_mb(proc.pid)
        rejected = sum(v for k, v in m.items() if k.startswith("d4bridge_ingress_rejections_total"))
        if rejected:
            raise RuntimeError(f"{rejected} rejections during the benchmark")
    finally:
        proc.terminate()
        proc.wait(30)
    total = len(stream) * sensors
    return {"mb_s": total / 1e6 / elapsed, "pkt_s": packets * sensors / elapsed, "rss": rss,
            "seconds": elapsed, "send_seconds": sent, "mb": total / 1e6,
            "cpu_ingress": cpu[0], "cpu_broker": cpu[1], "cpu_sensors": cpu[2], "faults": faults}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median throughput (its own CPU and RSS figures go with it)."""
    return sorted(runs, key=lambda r: r["mb_s"])[len(runs) // 2]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    pem = write_self_signed_pem(work / "server.pem")
    figures: list[Figure] = []
    load = os.getloadavg()[0]
    with EmbeddedBroker(log_file=work / "tansu.log") as broker:
        assert broker.proc is not None
        for sensors in (1, 8):
            stream, packets = capture(STREAM_MB * 1_000_000 // sensors)
            streams = [signed(stream, uuidlib.uuid4().bytes) for _ in range(sensors)]
            runs = [run(broker.bootstrap, broker.proc.pid, pem, stream, packets, streams) for _ in range(REPEAT)]
            r = median_run(runs)
            note = (f"median of {REPEAT}: " + ", ".join(f"{x['mb_s']:.0f}" for x in runs)
                    + f" MB/s; {r['mb']:.0f} MB per run")
            per_gb = 1000 / r["mb"]
            figures += [
                Figure(f"ingress throughput, {sensors} sensor(s), TLS, acked", r["mb_s"], "MB/s", 100, note=note),
                Figure(f"ingress packets/s, {sensors} sensor(s)", r["pkt_s"], "pkt/s"),
                Figure(f"ingress peak RSS, {sensors} sensor(s)", max(x["rss"] for x in runs), "MB", 300,
                       higher_is_better=False, note="largest of the runs"),
                Figure(f"  CPU: ingress process (all threads), {sensors} sensor(s)", r["cpu_ingress"] * per_gb,
                       "cpu-s/GB", note=f"= {1000 / (r['cpu_ingress'] * per_gb):.0f} MB/s per core"),
                Figure(f"  CPU: broker (Tansu), {sensors} sensor(s)", r["cpu_broker"] * per_gb, "cpu-s/GB"),
                Figure(f"  CPU: sensors (TLS clients, this process), {sensors} sensor(s)",
                       r["cpu_sensors"] * per_gb, "cpu-s/GB"),
                Figure(f"  page faults: ingress process, {sensors} sensor(s)", r["faults"] * per_gb, "faults/GB"),
            ]
    figures.append(Figure("machine load average (1 min) at start", load, "",
                          note="other work on the 2 cores slows every figure but cpu-s/GB"))
    report("ingress", figures)
    print(f"(bench process peak RSS {peak_rss_mb():.0f} MB, not part of the figures)")


if __name__ == "__main__":
    main()
