//! Command streams (a consistent cut's tail, an AOF's incremental file): any bytes split into
//! commands or are refused, and what splits re-encodes to the same bytes.
#![no_main]

use fleetsnap_core::resp::parse_commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(commands) = parse_commands(data) {
        let mut out = Vec::new();
        for c in &commands {
            out.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
            for a in c {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        assert_eq!(parse_commands(&out), Some(commands));
    }
});
