//! Command streams (a consistent cut's tail, an AOF's incremental file): any bytes split into
//! commands or are refused, what splits re-encodes to the same bytes, and read through a buffer
//! of a few bytes (commands and arguments cut across reads) they split the same.
#![no_main]

use fleetsnap_core::resp::{CommandReader, parse_commands};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_commands(data);
    let mut reader = CommandReader::new(std::io::BufReader::with_capacity(3, data));
    let mut read = Vec::new();
    let piecewise = loop {
        match reader.next_command() {
            Ok(Some(c)) => read.push(c),
            Ok(None) => break Some(read),
            Err(_) => break None,
        }
    };
    assert_eq!(piecewise, whole);
    if let Some(commands) = whole {
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
