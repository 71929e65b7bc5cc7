//! The streaming verifier against RDB files written by real Redis versions (`shared/rdb-vectors`).

use std::path::PathBuf;

use fleetsnap_core::{RdbError, RdbVerifier};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rdb-vectors")
}

fn verify(name: &str) -> Result<fleetsnap_core::RdbSummary, RdbError> {
    let bytes = std::fs::read(vectors().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e} (shared/ must sit beside the repository)"));
    let mut v = RdbVerifier::new();
    for chunk in bytes.chunks(7) {
        v.update(chunk)?;
    }
    v.finish()
}

#[test]
fn old_encodings_with_checksums_verify() {
    for name in [
        "hash-ziplist.rdb",
        "list-quicklist.rdb",
        "zset-ziplist.rdb",
        "scriptbackup.rdb",
    ] {
        let s = verify(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.checksum.is_some(), "{name}: checksum expected");
    }
}

#[test]
fn a_zero_trailer_is_accepted_as_checksums_off() {
    let s = verify("encodings.rdb").unwrap();
    assert_eq!(s.checksum, None);
}

#[test]
fn an_aof_with_an_rdb_preamble_is_not_an_rdb() {
    assert!(verify("rdb-preamble.aof").is_err());
}

#[test]
fn every_flipped_byte_of_a_real_file_is_refused() {
    let bytes = std::fs::read(vectors().join("hash-ziplist.rdb")).unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        let mut v = RdbVerifier::new();
        let r = v.update(&bad).and_then(|_| v.finish().map(drop));
        assert!(r.is_err(), "flip at byte {i} of {} accepted", bytes.len());
    }
}
