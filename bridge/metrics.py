"""Every Prometheus metric of d4-bridge, defined once, plus the /metrics endpoint.

Conventions: ``d4bridge_<hop>_...``; counters end in ``_total``; durations are
``_seconds`` histograms; sizes ``_bytes``; errors carry a bounded ``reason``
label. Never put an address, a uuid or a file path in a label value.
"""

from __future__ import annotations

import json
import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Latency buckets from 1 ms to ~1 min: batches close within 100 ms, so the
# interesting range is 1 ms .. 2 s, with a tail for outages.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- shared plumbing (every hop) -------------------------------------------------------------

HOP_INFO = Gauge("d4bridge_hop_up", "1 while the hop's main loop runs", ["hop"])
DELIVERY_FAILURES = Counter(
    "d4bridge_kafka_delivery_failures_total", "Records the broker refused or that timed out", ["hop", "reason"]
)
DELIVERED = Counter("d4bridge_kafka_delivered_total", "Records acknowledged by the broker", ["hop"])
PRODUCE_BLOCKED = Counter(
    "d4bridge_kafka_produce_blocked_seconds_total",
    "Time produce() waited because the local producer queue was full (backpressure)",
    ["hop"],
)
PRODUCER_QUEUE = Gauge("d4bridge_kafka_producer_queue_messages", "Messages waiting in the producer queue", ["hop"])
CONSUMER_LAG = Gauge(
    "d4bridge_kafka_consumer_lag_messages", "Consumer lag per partition (librdkafka statistics)",
    ["hop", "topic", "partition"],
)
DLQ_RECORDS = Counter("d4bridge_dlq_records_total", "Records sent to the dead-letter topic", ["hop", "reason"])
REBALANCES = Counter("d4bridge_kafka_rebalances_total", "Partition assignment changes", ["hop", "kind"])

# --- ingress -------------------------------------------------------------------------------

INGRESS_SESSIONS_ACTIVE = Gauge("d4bridge_ingress_sessions_active", "Open D4 sessions")
INGRESS_SESSIONS = Counter("d4bridge_ingress_sessions_total", "D4 sessions accepted")
INGRESS_FRAMES = Counter("d4bridge_ingress_frames_total", "D4 frames accepted", ["type"])
INGRESS_BYTES = Counter("d4bridge_ingress_bytes_total", "D4 payload bytes accepted")
INGRESS_PACKETS = Counter("d4bridge_ingress_packets_total", "pcap packets produced to the pcap topic")
INGRESS_REJECTIONS = Counter("d4bridge_ingress_rejections_total", "Connections closed by a rule", ["reason"])
INGRESS_PRODUCE_SECONDS = Histogram(
    "d4bridge_ingress_produce_seconds", "Batch close to broker acknowledgement", buckets=LATENCY_BUCKETS
)
INGRESS_CAPTURE_AGE = Histogram(
    "d4bridge_ingress_capture_age_seconds", "Wall clock minus capture time of a batch's last packet at produce",
    buckets=LATENCY_BUCKETS,
)
INGRESS_ASSEMBLER_ERRORS = Counter("d4bridge_ingress_assembler_errors_total", "Broken pcap streams", ["reason"])
INGRESS_INFLIGHT = Gauge("d4bridge_ingress_inflight_bytes", "Record bytes produced and not yet acknowledged")
INGRESS_PAUSED = Gauge("d4bridge_ingress_reading_paused", "1 while socket reading is paused (broker behind)")

# --- queue ---------------------------------------------------------------------------------

QUEUE_DEPTH = Gauge("d4bridge_queue_depth", "Items waiting in the analyzer queue (LLEN)")
QUEUE_PROCESSING = Gauge("d4bridge_queue_processing", "Items in this consumer's processing list")
QUEUE_FILES = Counter("d4bridge_queue_files_total", "Queue files fully produced")
QUEUE_LINES = Counter("d4bridge_queue_lines_total", "Queue line items produced")
QUEUE_PACKETS = Counter("d4bridge_queue_packets_total", "pcap packets produced from queue files")
QUEUE_BYTES = Counter("d4bridge_queue_bytes_total", "pcap record bytes produced from queue files")
QUEUE_FILE_AGE = Histogram(
    "d4bridge_queue_file_age_seconds", "File age (now - mtime) when picked up",
    buckets=(1, 5, 15, 30, 60, 150, 300, 600, 1800, 3600, 21600),
)
QUEUE_FAILURES = Counter("d4bridge_queue_failures_total", "Queue items that failed", ["reason"])
QUEUE_FAILED = Gauge("d4bridge_queue_failed_items", "Items in the queue's failed list (all consumers)")
QUEUE_RETRIES = Counter(
    "d4bridge_queue_retries_total", "Items or Redis operations re-done after a broker or Redis failure", ["reason"]
)
QUEUE_RECLAIMED = Counter("d4bridge_queue_reclaimed_total", "Items taken over from dead consumers' processing lists")

# --- sanitize ------------------------------------------------------------------------------

SANITIZE_INPUT_PACKETS = Counter("d4bridge_sanitize_input_packets_total", "Packets read from the input topic")
SANITIZE_INPUT_BYTES = Counter("d4bridge_sanitize_input_bytes_total", "pcap record bytes read from the input topic")
SANITIZE_PACKETS = Counter("d4bridge_sanitize_packets_total", "Sanitized packets written")
SANITIZE_BYTES = Counter("d4bridge_sanitize_bytes_total", "Sanitized record bytes written")
SANITIZE_DROPPED = Counter("d4bridge_sanitize_dropped_total", "Packets dropped (could not be made safe)", ["reason"])
SANITIZE_CUT = Counter("d4bridge_sanitize_cut_total", "Packets cut before an unparseable part", ["reason"])
SANITIZE_BATCH_SECONDS = Histogram(
    "d4bridge_sanitize_batch_seconds", "Time to sanitize one input record", buckets=LATENCY_BUCKETS
)
SANITIZE_TRANSACTIONS = Counter("d4bridge_sanitize_transactions_total", "Kafka transactions", ["result"])
SANITIZE_LEAKS = Counter(
    "d4bridge_sanitize_leaks_total",
    "Packets dropped by the self-check: a rewritten address still elsewhere in the packet (payload, unknown field)",
)

# --- egress --------------------------------------------------------------------------------

# no uuid label (metric convention): sessions are counted, identities are in the logs
EGRESS_CONNECTED = Gauge("d4bridge_egress_connected", "Upstream D4 sessions currently connected")
EGRESS_SESSIONS = Gauge("d4bridge_egress_sessions", "Upstream D4 sessions open or reconnecting")
EGRESS_FRAMES = Counter("d4bridge_egress_frames_total", "D4 frames written upstream (re-sent ones included)")
EGRESS_BYTES = Counter("d4bridge_egress_bytes_total", "pcap payload bytes written upstream (first transmission)")
EGRESS_RESENT_BYTES = Counter("d4bridge_egress_resent_bytes_total", "Payload bytes re-sent after a reconnect")
EGRESS_PACKETS = Counter("d4bridge_egress_packets_total", "pcap packets written upstream (first transmission)")
EGRESS_RECONNECTS = Counter(
    "d4bridge_egress_reconnects_total",
    "Upstream sessions lost or not established, by reason (refused = closed right after connecting)", ["reason"],
)
EGRESS_SEND_SECONDS = Histogram(
    "d4bridge_egress_send_seconds", "Time to write one record's frames to the socket (reconnects included)",
    buckets=LATENCY_BUCKETS,
)
EGRESS_QUEUED_BYTES = Gauge("d4bridge_egress_queued_bytes", "Record bytes read from Kafka, not yet written upstream")
EGRESS_PAUSED = Gauge("d4bridge_egress_paused", "1 while consumption is paused (upstream slow or down)")
EGRESS_RECORD_AGE = Histogram(
    "d4bridge_egress_record_age_seconds", "Now minus capture time of a batch's last packet at send",
    buckets=LATENCY_BUCKETS,
)
EGRESS_DUPLICATES = Counter(
    "d4bridge_egress_duplicate_packets_total",
    "Packets of a sanitized batch seen twice (same source offset) and not forwarded again",
)
EGRESS_REFUSED = Counter("d4bridge_egress_refused_total", "Records refused (e.g. not sanitized)", ["reason"])

# --- send (sensor client) ------------------------------------------------------------------

SEND_FRAMES = Counter("d4bridge_send_frames_total", "D4 frames written")
SEND_BYTES = Counter("d4bridge_send_bytes_total", "Payload bytes written")
SEND_RECONNECTS = Counter("d4bridge_send_reconnects_total", "Reconnections", ["reason"])
SEND_RESENT_BYTES = Counter("d4bridge_send_resent_bytes_total", "Bytes re-sent after a reconnect")

# --- analyze -------------------------------------------------------------------------------

ANALYZE_PACKETS = Counter("d4bridge_analyze_packets_total", "Packets classified", ["class"])
ANALYZE_ATTACKS_ACTIVE = Gauge("d4bridge_analyze_attacks_active", "Declared attacks not yet expired")
ANALYZE_EVENTS = Counter("d4bridge_analyze_events_total", "Backscatter events emitted", ["status"])
ANALYZE_EVICTIONS = Counter("d4bridge_analyze_evictions_total", "Tracked victims evicted by the state cap")
ANALYZE_LATE = Counter("d4bridge_analyze_late_packets_total",
                       "Backscatter packets that came after their attack was final (counted, not merged)")
ANALYZE_DUPLICATES = Counter("d4bridge_analyze_duplicates_total", "Same packet seen by several sites")
ANALYZE_OUTSIDE = Counter("d4bridge_analyze_outside_telescope_packets_total",
                          "Backscatter-class packets to addresses outside their site's telescope (ignored)")
ANALYZE_SNAPSHOTS = Counter("d4bridge_analyze_snapshots_total", "State snapshots written to the state topic")
ANALYZE_INPUT_ENDED = Counter("d4bridge_analyze_input_ended_total",
                              "Times every sensor fell silent, so every open attack was made final")
# The one metric with addresses in a label (the exception to the rule above): the victims of the
# attacks in progress, for the hub dashboard's "current attacks" table. Victims are the public
# hosts the hub exists to report; a series is removed at the attack's final event, and at most
# ATTACK_SERIES_MAX exist at a time, so the label set stays bounded.
ANALYZE_ATTACK_PPS = Gauge("d4bridge_analyze_attack_estimated_pps",
                           "Estimated rate of each attack in progress (latest event)", ["victim", "protocol", "sites"])
ATTACK_SERIES_MAX = 500
ANALYZE_MISP = Counter("d4bridge_analyze_misp_total", "MISP events written or pushed", ["output", "result"])
ANALYZE_REPLAYED = Counter("d4bridge_analyze_replayed_events_total",
                           "Events recomputed after a restart or rebalance and not emitted again (already published)")

# --- sink / export -------------------------------------------------------------------------

SINK_FILES = Counter("d4bridge_sink_files_total", "pcap files finished")
SINK_PACKETS = Counter("d4bridge_sink_packets_total", "Packets written to files")
SINK_BYTES = Counter("d4bridge_sink_bytes_total", "Record bytes written to files")
SINK_QUEUE_PUSHES = Counter("d4bridge_sink_queue_pushes_total", "File paths pushed to the analyzer queue")
EXPORT_PACKETS = Counter("d4bridge_export_packets_total", "Packets exported to a pcap file")


def start_http(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on ``port`` (0 = off)."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)


def stats_callback(hop: str):
    """A librdkafka ``stats_cb`` exporting consumer lag and producer queue depth."""

    def on_stats(raw: str) -> None:
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        if stats.get("type") == "producer":
            PRODUCER_QUEUE.labels(hop).set(stats.get("msg_cnt", 0))
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                lag = pstats.get("consumer_lag", -1)
                if pid != "-1" and lag is not None and lag >= 0:
                    CONSUMER_LAG.labels(hop, topic, pid).set(lag)

    return on_stats
