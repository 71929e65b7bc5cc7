//! The streaming RDB verifier over any bytes, fed in the chunking the first byte picks: never a
//! panic, and the same verdict whatever the chunking.
#![no_main]

use fleetsnap_core::RdbVerifier;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let whole = {
        let mut v = RdbVerifier::new();
        v.update(bytes).and_then(|()| v.finish())
    };
    let mut v = RdbVerifier::new();
    let mut chunked = Ok(());
    for c in bytes.chunks(usize::from(step).max(1)) {
        chunked = v.update(c);
        if chunked.is_err() {
            break;
        }
    }
    let chunked = chunked.and_then(|()| v.finish());
    assert_eq!(whole.is_ok(), chunked.is_ok(), "the verdict depends on the chunking");
});
