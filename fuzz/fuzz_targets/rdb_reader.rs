//! The key-by-key RDB reader over any bytes, in each of its modes (checking the trailer or not,
//! decoding values or keeping payloads, skipping module values): never a panic, never an
//! allocation beyond what the input could fill (libFuzzer's -malloc_limit_mb catches one).
#![no_main]

use fleetsnap_core::digest::DatasetDigest;
use fleetsnap_core::rdbread::{Item, RdbReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for mode in 0..3 {
        let reader = match mode {
            0 => RdbReader::new(data),
            1 => RdbReader::checked_elsewhere(data).map(|r| r.decoding()),
            _ => RdbReader::checked_elsewhere(data).map(|r| r.decoding().skipping_modules()),
        };
        let Ok(mut r) = reader else { return };
        let mut digest = DatasetDigest::default();
        let mut items = 0;
        loop {
            match r.next_item() {
                Ok(Some(Item::Entry(e))) => {
                    // A kept payload decodes on request; a decoded one feeds the digest.
                    if let Ok(v) = e.value() {
                        digest.add(&e, &v);
                    }
                    let _ = e.dump_payload(r.version());
                    items += 1;
                }
                Ok(Some(_)) => items += 1,
                Ok(None) => {
                    let _ = r.ensure_end();
                    break;
                }
                Err(_) => break,
            }
            assert!(items <= data.len(), "more items than bytes");
        }
        let _ = digest.finish();
    }
});
