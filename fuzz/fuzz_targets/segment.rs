//! Archive segments and the replication stream inside them: any bytes decode to a checked
//! segment or are refused; the scanner, fed any stream in any pieces, finds the same commands
//! as when fed it whole, and never cuts inside a transaction.
#![no_main]

use fleetsnap_core::archive::{Scanner, commands, decode_segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, stream)) = decode_segment(data) {
        assert_eq!(h.end - h.start, stream.len() as u64);
        let _ = commands(stream, h.start, h.db);
    }
    let (split, stream) = match data.split_first() {
        Some((s, rest)) => (*s as usize + 1, rest),
        None => return,
    };
    let whole = commands(stream, 0, 0);
    let mut s = Scanner::new(0, 0);
    let mut found = Vec::new();
    let mut at = 0;
    let mut upto = 0;
    loop {
        upto = (upto + split).min(stream.len());
        match s.next(&stream[at..upto]) {
            Ok(Some(c)) => {
                at += (c.end - c.start) as usize;
                found.push(c);
            }
            Ok(None) if upto == stream.len() => break,
            Ok(None) => {}
            Err(_) => {
                assert!(whole.is_err());
                return;
            }
        }
    }
    if at == stream.len() {
        assert_eq!(whole.as_ref().ok(), Some(&found));
    }
    assert!(s.cuttable() <= s.at());
});
