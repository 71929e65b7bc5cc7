//! Manifests and storage keys as a region holds them: any bytes parse or are refused, and a
//! manifest that parses names only objects whose keys pass the layout's rules.
#![no_main]

use fleetsnap_core::Manifest;
use fleetsnap_core::manifest::{backup_dir, check_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = check_key(text);
    }
    if let Ok(m) = Manifest::from_json(data, "fuzz") {
        let dir = backup_dir("", &m.cluster, &m.backup_id);
        for o in m.shards.iter().flat_map(|s| &s.objects) {
            let key = format!("{dir}/{}", o.name);
            assert!(check_key(&key).is_ok(), "a valid manifest names {key:?}");
        }
        let again = Manifest::from_json(&m.to_json(), "fuzz").expect("a manifest round-trips");
        assert_eq!(again, m);
    }
});
