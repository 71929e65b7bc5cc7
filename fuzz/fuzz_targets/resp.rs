//! RESP replies from a node: any bytes parse, ask for more, or are refused; a reply that parses
//! from a prefix parses the same from the whole, and is never "complete" one byte short.
#![no_main]

use fleetsnap_core::resp::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((v, n))) = parse(data) {
        assert!(n <= data.len() && n > 0);
        assert_eq!(parse(&data[..n]), Ok(Some((v.clone(), n))));
        assert!(!matches!(parse(&data[..n - 1]), Ok(Some(_))), "complete one byte short");
    }
});
