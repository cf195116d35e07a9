"""MISP output: the demo's attacks as MISP events whose ddos object passes pymisp's template."""

from __future__ import annotations

import json
import time

import numpy as np
from pymisp import MISPEvent, MISPObject

from bridge import demo_sources as ds
from bridge.backscatter.aggregate import Aggregator
from bridge.backscatter.classify import classify
from bridge.backscatter.telescope import PrefixSet, Telescopes
from bridge.misp import event_uuid, misp_json

TEMPLATE = MISPObject("ddos", strict=True)._definition


def _demo_finals() -> tuple[list[dict], list]:
    """The demo's capture (backlog of the d4-core source, then all three live) through one aggregator."""
    live_start = time.time_ns()
    backlog = ds.build_backlog(live_start, 90.0, 300.0)
    live, truth = ds.build_live(live_start, 20.0, 600.0)
    agg = Aggregator(Telescopes([]))
    agg.tick(live_start, announcements=[(name, "demo-site", PrefixSet([prefix]).size)
                                        for name, prefix in ds.SOURCE_PREFIXES.items()])
    feeds = [(ds.QUEUE_SOURCE, backlog)] + list(live.items())
    batches = []
    for name, src in feeds:
        for lo in range(0, src.count, 500):
            hi = min(src.count, lo + 500)
            batches.append((int(src.ts_ns[lo]), name, src.slice(lo, hi)))
    events = []
    for _, name, packets in sorted(batches, key=lambda b: b[0]):
        events += agg.process(classify(packets), "demo-site", name)
    return [e for e in events + agg.finish() if e["status"] == "final"], truth


def test_the_demos_attacks_make_valid_misp_ddos_events() -> None:
    finals, truth = _demo_finals()
    assert {e["victim"] for e in finals} == {t.victim for t in truth}
    for e in finals:
        t = next(t for t in truth if t.victim == e["victim"])
        assert abs(e["estimated_pps"] - t.pps) <= 0.2 * t.pps, (t.kind, e["estimated_pps"], t.pps)
        doc = json.loads(misp_json(e))
        ev = MISPEvent()
        ev.load(doc)
        assert ev.uuid == event_uuid(e["attack_id"]) and ev.analysis == 2
        [obj] = ev.objects
        assert obj.name == "ddos" and obj.template_uuid == TEMPLATE["uuid"]
        strict = MISPObject("ddos", strict=True)  # rebuilt from the file: unknown relations raise here
        values: dict[str, list] = {}
        for attr in obj.attributes:
            strict.add_attribute(attr.object_relation, attr.value)
            values.setdefault(attr.object_relation, []).append(attr.value)
        strict.to_json(strict=True)  # required fields present, single-valued ones single
        for rel, vals in values.items():
            allowed = TEMPLATE["attributes"][rel].get("values_list")
            assert allowed is None or set(vals) <= set(allowed), (rel, vals)
            assert len(vals) == 1 or TEMPLATE["attributes"][rel].get("multiple"), rel
        assert values["ip-dst"] == [e["victim"]] and int(values["total-pps"][0]) == round(e["estimated_pps"])
        assert values["protocol"] == [{"tcp": "TCP", "udp": "UDP", "icmp": "ICMP"}[e["protocol"]]]
        assert [int(p) for p in values.get("dst-port", [])] == e["ports"]


def test_a_newer_event_of_an_attack_keeps_its_misp_uuids() -> None:
    """Updates edit the same MISP event and attributes instead of adding copies."""
    base = {"attack_id": "198.51.100.10/tcp/1", "status": "update", "victim": "198.51.100.10", "protocol": "tcp",
            "ports": [443], "first_seen_ns": 10**18, "last_seen_ns": 10**18 + 60 * 10**9, "estimated_pps": 1e5,
            "seq": 1, "packets": 100, "telescope_addresses": 99, "monitored_addresses": 65536, "sites": {"a": 100},
            "address_seconds": 3.9e6}
    older = json.loads(misp_json(base))["Event"]
    newer = json.loads(misp_json(dict(base, status="final", seq=2, last_seen_ns=base["last_seen_ns"] + 10**9)))["Event"]
    assert older["uuid"] == newer["uuid"] and older["Object"][0]["uuid"] == newer["Object"][0]["uuid"]
    assert [a["uuid"] for a in older["Object"][0]["Attribute"]] == [a["uuid"] for a in newer["Object"][0]["Attribute"]]
    assert np.unique([a["uuid"] for a in newer["Object"][0]["Attribute"]]).size == len(newer["Object"][0]["Attribute"])


def test_push_adds_then_edits_an_attack_already_on_the_misp_side(tmp_path) -> None:
    """A loopback MISP that already has the event (pushed before a restart): the add is refused, the edit
    follows; the file is the newest event's."""
    import http.server
    import threading

    from bridge.misp import MispOutput

    posts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.path, self.headers["Authorization"], json.loads(body)))
            exists = self.path == "/events/add"
            reply = b'{"message": "Event already exists"}' if exists else body
            self.send_response(403 if exists else 200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "key").write_text("k3y\n")
    event = {"attack_id": "198.51.100.10/tcp/1", "status": "final", "victim": "198.51.100.10", "protocol": "tcp",
             "ports": [443], "first_seen_ns": 10**18, "last_seen_ns": 10**18 + 90 * 10**9, "estimated_pps": 1e5,
             "seq": 3, "packets": 100, "telescope_addresses": 99, "monitored_addresses": 65536, "sites": {"a": 100},
             "address_seconds": 3.9e6}
    try:
        out = MispOutput(str(tmp_path / "misp"), f"http://127.0.0.1:{server.server_address[1]}", str(tmp_path / "key"))
        out.put(dict(event, status="update", seq=2))
        out.put(event)
        out.close()
    finally:
        server.shutdown()
        server.server_close()
    uid = event_uuid(event["attack_id"])
    assert [p for p, _, _ in posts] == ["/events/add", f"/events/edit/{uid}", f"/events/edit/{uid}"]
    assert {auth for _, auth, _ in posts} == {"k3y"} and posts[-1][2]["Event"]["analysis"] == "2"
    [path] = (tmp_path / "misp").glob("*.json")
    assert path.name == f"{uid}.json" and json.loads(path.read_text())["Event"]["analysis"] == "2"
