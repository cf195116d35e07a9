"""``d4-bridge export``: write the packets of any PcapBatch topic to a pcap file (inspect any hop)."""

from __future__ import annotations

import logging
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError

from bridge import kafka, metrics, records
from bridge.config import Config
from bridge.hop import Shutdown, setup_logging
from bridge.pcap import global_header

log = logging.getLogger(__name__)


def run(cfg: Config) -> int:
    """Consume ``export.topic`` with a throw-away group and append every packet to ``export.pcap``.

    Records of another link type than the first one cannot share a pcap file;
    they are counted and reported, never silently skipped.
    """
    setup_logging(cfg.log_level)
    ecfg = cfg.export
    if not ecfg.pcap:
        print("d4-bridge export: --pcap OUT is required", file=sys.stderr)
        return 2
    conf = kafka.consumer_conf(cfg.kafka, "export", f"d4-bridge-export-{uuid.uuid4().hex[:12]}")
    conf["auto.offset.reset"] = "earliest" if ecfg.from_beginning else "latest"
    consumer = Consumer(conf)
    assigned: list[float] = []

    def on_assign(_consumer: Consumer, _partitions: list) -> None:
        # The idle clock starts once the group join is done, or a short --idle-exit
        # would end the export before the first fetch could return anything.
        if not assigned:
            assigned.append(time.monotonic())

    consumer.subscribe([ecfg.topic], on_assign=on_assign)
    shutdown = Shutdown().install()
    written = skipped = bad = 0
    linktype: int | None = None
    last_data: float | None = None
    with open(ecfg.pcap, "wb") as out:
        try:
            while not shutdown.is_set():
                msg = consumer.poll(0.2)
                if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                    idle_since = last_data if last_data is not None else (assigned[0] if assigned else None)
                    if ecfg.idle_exit and idle_since is not None and time.monotonic() - idle_since > ecfg.idle_exit:
                        break
                    continue
                if msg.error():
                    log.warning("export: consumer error: %s", msg.error())
                    continue
                last_data = time.monotonic()
                try:
                    rec = records.decode(msg.value(), expect="PcapBatch")
                except records.RecordError as exc:
                    bad += 1
                    log.warning("export: %s[%d]@%d is not a PcapBatch (%s)", msg.topic(), msg.partition(),
                                msg.offset(), exc)
                    continue
                if linktype is None:
                    linktype = rec["linktype"]
                    out.write(global_header(linktype, max(rec["snaplen"], 1), rec["ts_precision"] == "nsec"))
                if rec["linktype"] != linktype:
                    skipped += rec["packet_count"]
                    continue
                out.write(rec["packets"])
                written += rec["packet_count"]
                metrics.EXPORT_PACKETS.inc(rec["packet_count"])
        finally:
            consumer.close()
    print(f"exported {written} packets to {ecfg.pcap}", file=sys.stderr)
    if skipped or bad:
        print(f"not exported: {skipped} packets of another link type, {bad} records that are not PcapBatch",
              file=sys.stderr)
        return 1
    return 0
