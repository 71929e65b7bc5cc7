//! What a node says about itself (`INFO` fields, `CLUSTER NODES`), read into a report: any
//! text is read without a panic.
#![no_main]

use fleetsnap_core::InstanceReport;
use fleetsnap_core::report::shard_slots;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (info, nodes) = text.split_once('\u{0}').unwrap_or((&text, ""));
    let pairs: Vec<(String, String)> = info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = InstanceReport::from_info("n", "127.0.0.1:6379", &pairs);
    let _ = r.lag_bytes();
    let myid = nodes.split_whitespace().next().unwrap_or("");
    let _ = shard_slots(nodes, myid);
});
