"""Backscatter events as MISP events with a ``ddos`` object: JSON files and a MISP push.

The object is built with pymisp against the ``ddos`` template that pymisp ships (strict: an
attribute the template does not know, or a second value where it allows one, raises), so what
we write is what MISP itself accepts. One MISP event per attack: its uuid is derived from the
attack id, so the file of an attack is overwritten by its newer events and a pushed event is
edited in place (the newest event of an attack is the truth, as on ``d4.backscatter``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import ssl
import threading
import urllib.error
import urllib.request
import uuid as uuidlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pymisp import MISPEvent, MISPObject

log = logging.getLogger(__name__)

# uuid5 namespace of d4-bridge attack ids (fixed: the same attack maps to the same MISP event everywhere)
ATTACK_NAMESPACE = uuidlib.UUID("6c1f0b7e-4d9a-5e2b-9d3f-d4b0a5c47e21")
_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP"}
_TYPES = {"tcp": "tcp-syn", "udp": "udp", "icmp": "icmp"}
CAPTURE_ORIGIN = "Indirect network capture (e.g. backscatter)"


def event_uuid(attack_id: str) -> str:
    """The MISP event uuid of an attack."""
    return str(uuidlib.uuid5(ATTACK_NAMESPACE, attack_id))


def _when(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def misp_event(event: dict[str, Any]) -> MISPEvent:
    """A MISP event holding one ``ddos`` object for a BackscatterEvent (dict)."""
    ev = MISPEvent()
    ev.uuid = event_uuid(event["attack_id"])
    ev.info = (f"DDoS against {event['victim']} ({event['protocol']}), "
               f"about {event['estimated_pps']:,.0f} packets/s, inferred from backscatter")
    ev.date = _when(event["first_seen_ns"]).date()
    ev.analysis = 2 if event["status"] == "final" else 1  # completed / ongoing
    ev.threat_level_id = 3  # low: an inference from darknet traffic, not an observed incident
    ev.distribution = 0  # this organisation only, until an analyst shares it
    ddos = MISPObject("ddos", strict=True)
    ddos.add_attribute("ip-dst", event["victim"])
    for port in event["ports"]:
        ddos.add_attribute("dst-port", port)
    ddos.add_attribute("protocol", _PROTOCOLS.get(event["protocol"], "IP"))
    ddos.add_attribute("type", "flooding-attack")
    if event["protocol"] in _TYPES:
        ddos.add_attribute("type", _TYPES[event["protocol"]])
    ddos.add_attribute("first-seen", _when(event["first_seen_ns"]))
    ddos.add_attribute("last-seen", _when(event["last_seen_ns"]))
    ddos.add_attribute("total-pps", int(round(event["estimated_pps"])))
    ddos.add_attribute("capture-origin", CAPTURE_ORIGIN)
    sites = ", ".join(f"{site} {n}" for site, n in sorted(event["sites"].items()))
    ddos.add_attribute("text", (
        f"d4-bridge attack {event['attack_id']} ({event['status']}, event {event['seq']}): {event['packets']} "
        f"backscatter packets at {event['telescope_addresses']} telescope addresses of {event['monitored_addresses']} "
        f"watched (packets per site: {sites}); rate estimated as packets x 2^32 / address-seconds watched "
        f"({event['address_seconds']:.0f}), assuming uniformly spoofed sources"))
    # stable uuids: a newer event of the attack edits these attributes instead of adding copies
    ddos.uuid = str(uuidlib.uuid5(ATTACK_NAMESPACE, f"{event['attack_id']}/ddos"))
    for i, attr in enumerate(ddos.attributes):
        attr.uuid = str(uuidlib.uuid5(uuidlib.UUID(ddos.uuid), f"{attr.object_relation}/{i}"))
    ev.add_object(ddos)
    return ev


def misp_json(event: dict[str, Any]) -> str:
    """The MISP JSON (``{"Event": ...}``, as MISP exports and imports it) of a BackscatterEvent,
    checked against the ``ddos`` template."""
    return json.dumps({"Event": json.loads(misp_event(event).to_json())}, indent=2, sort_keys=True)


class MispOutput:
    """Writes attacks as MISP JSON files and pushes them to a MISP instance, off the caller's thread.

    A full queue drops the oldest work (counted and logged): the Kafka topic stays the record of
    truth, and a later event of the same attack replaces the lost one anyway.
    """

    def __init__(self, directory: str = "", url: str = "", key_file: str = "", timeout: float = 10.0,
                 max_pending: int = 1000) -> None:
        self.directory = Path(directory) if directory else None
        self.url = url.rstrip("/")
        self.key = Path(key_file).read_text().strip() if url else ""
        if url and not self.key:
            raise ValueError(f"MISP key file {key_file!r} is empty")
        self.timeout = timeout
        self._pushed: set[str] = set()  # event uuids known to exist on the MISP side
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_pending)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="misp-output", daemon=True)
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        """Queue one BackscatterEvent for the outputs."""
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    log.warning("analyze: MISP output behind; an older attack event was dropped")
                except queue.Empty:
                    pass

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued work (bounded by ``timeout``)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        from bridge import metrics  # the module stays importable (and testable) without the hop's metrics

        while (event := self._queue.get()) is not None:
            try:
                text = misp_json(event)
            except Exception:  # a template refusal is a bug of ours: never a crash of the hop
                log.exception("analyze: attack %s does not make a valid MISP event", event.get("attack_id"))
                metrics.ANALYZE_MISP.labels("build", "error").inc()
                continue
            if self.directory is not None:
                self._write(event, text)
                metrics.ANALYZE_MISP.labels("file", "ok").inc()
            if self.url:
                ok = self._push(event_uuid(event["attack_id"]), text)
                metrics.ANALYZE_MISP.labels("push", "ok" if ok else "error").inc()

    def _write(self, event: dict[str, Any], text: str) -> None:
        assert self.directory is not None
        path = self.directory / f"{event_uuid(event['attack_id'])}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a reader never sees half a file

    def _push(self, uid: str, text: str) -> bool:
        """Add the event, or edit it when MISP already has it; False (logged) when MISP refused."""
        attempts = ("edit", "add") if uid in self._pushed else ("add", "edit")
        for action in attempts:
            path = f"/events/{action}" + (f"/{uid}" if action == "edit" else "")
            status, body = self._post(path, text)
            if 200 <= status < 300:
                self._pushed.add(uid)
                return True
            if action == "add" and status in (403, 409) and "already exists" in body.lower():
                continue  # pushed before this process started: edit it
            if action == "edit" and status == 404:
                continue
            log.warning("analyze: MISP %s of event %s refused: HTTP %d %s", action, uid, status, body[:200])
            return False
        return False

    def _post(self, path: str, text: str) -> tuple[int, str]:
        req = urllib.request.Request(self.url + path, data=text.encode(), method="POST", headers={
            "Authorization": self.key, "Accept": "application/json", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=ssl.create_default_context()) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)
