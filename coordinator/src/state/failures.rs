//! Failures as metric labels: a bounded class for each reason a job failed.

/// The class of a failure, from its reason: `lease_expired`, `agent_restarted`, `fenced`,
/// `cut`, `verify`, `destination`, `source` or `other`. A bounded label for metrics; the
/// reason itself stays with the job.
pub fn failure_reason(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if any(&["lease expired"]) {
        "lease_expired"
    } else if any(&["restarted while it held"]) {
        "agent_restarted"
    } else if any(&["older term", "fenc", "newer term"]) {
        "fenced"
    } else if any(&["cut"]) {
        "cut"
    } else if any(&[
        "checksum", "sha256", "crc", "corrupt", "mismatch", "digest", "verif",
    ]) {
        "verify"
    } else if any(&[
        "s3://",
        "file://",
        "region",
        "upload",
        "bucket",
        "destination",
        "spool",
    ]) {
        "destination"
    } else if any(&[
        "redis", "psync", "sync", "bgsave", "replica", "primary", "node",
    ]) {
        "source"
    } else {
        "other"
    }
}
