//! The agent's metrics: every family it exports, with its type and help.

use fleetsnap_telemetry::metrics::Kind as MetricKind;

pub(super) const REPORTS_SENT: &str = "fleetsnap_agent_reports_sent_total";
pub(super) const LAST_REPORT: &str = "fleetsnap_agent_last_report_timestamp_seconds";
pub(super) const CONNECTED: &str = "fleetsnap_agent_coordinator_connected";
pub(super) const INSTANCE_UP: &str = "fleetsnap_agent_instance_up";
pub(super) const JOBS: &str = "fleetsnap_agent_jobs_total";
pub(super) const JOB_SECONDS: &str = "fleetsnap_agent_job_duration_seconds";
pub(super) const UPLOADED: &str = "fleetsnap_agent_uploaded_bytes_total";
pub(super) const UPLOAD_SECONDS: &str = "fleetsnap_agent_upload_duration_seconds";
pub(super) const SOURCE_BYTES: &str = "fleetsnap_agent_source_bytes_total";
pub(super) const UPLOAD_FAILURES: &str = "fleetsnap_agent_upload_failures_total";

/// Every metric the agent exports, with its type and help: described at start, so a scrape
/// lists each family before its first sample.
pub(super) const METRICS: [(&str, MetricKind, &str); 10] = [
    (
        REPORTS_SENT,
        MetricKind::Counter,
        "Reports sent to the leader.",
    ),
    (
        LAST_REPORT,
        MetricKind::Gauge,
        "When the last report went to the leader (Unix time).",
    ),
    (
        CONNECTED,
        MetricKind::Gauge,
        "1 while a session with the coordinator leader is open, else 0.",
    ),
    (
        INSTANCE_UP,
        MetricKind::Gauge,
        "1 when the Redis instance answered the last poll, else 0.",
    ),
    (
        JOBS,
        MetricKind::Counter,
        "Jobs this agent ran, by kind and outcome.",
    ),
    (
        JOB_SECONDS,
        MetricKind::Gauge,
        "How long the last job of each kind took.",
    ),
    (
        UPLOADED,
        MetricKind::Counter,
        "Bytes stored in regions by snapshots, by cluster, shard and region.",
    ),
    (
        UPLOAD_SECONDS,
        MetricKind::Gauge,
        "How long the last snapshot of a shard took to reach a region, by cluster, shard and region.",
    ),
    (
        SOURCE_BYTES,
        MetricKind::Counter,
        "Bytes read from sources for snapshots, by cluster and shard.",
    ),
    (
        UPLOAD_FAILURES,
        MetricKind::Counter,
        "Snapshots a region did not take, by cluster, shard and region.",
    ),
];
