//! Which shard holds a key at a cluster's point, for restores that put several shards into one
//! target. Each key lives in one shard at any instant, but a shard's base and tail can both
//! hold a key that a slot migration moved to another shard before the point: the source's
//! base has it, and its tail ends with the `DEL` that `MIGRATE` propagates; the destination's
//! tail has the `RESTORE-ASKING` that brought it, or its newer base has it. Restored one after
//! the other, the source would write its older value over the destination's, or delete it.
//!
//! The holder of a key: the shard whose tail brought it in by migration last (up to its
//! point); else, for a slot that more than one shard's base served, the shard with the newest
//! of those bases; else whichever shard has it (no other can).

use std::collections::HashMap;

use fleetsnap_core::keys::key_slot;

use super::read::PointInTime;

/// Slots in a Redis Cluster.
const SLOTS: usize = 16384;

/// See the module's documentation.
pub struct Owners {
    /// Per key brought in by migration: the shard (index) that did last, and when.
    arrived: HashMap<Vec<u8>, (usize, i64)>,
    /// Per slot that several bases served: the shard whose base is newest.
    contested: HashMap<u16, usize>,
}

impl Owners {
    /// From each shard's point (its base says the slots it served).
    pub fn new(shards: &[PointInTime]) -> Self {
        let mut arrived: HashMap<Vec<u8>, (usize, i64)> = HashMap::new();
        for (i, p) in shards.iter().enumerate() {
            for (key, &ms) in p.arrived.iter() {
                let e = arrived.entry(key.clone()).or_insert((i, ms));
                if ms > e.1 {
                    *e = (i, ms);
                }
            }
        }
        // Per slot: how many bases served it, and the newest of them.
        let mut served: Vec<(u8, Option<(i64, usize)>)> = vec![(0, None); SLOTS];
        for (i, p) in shards.iter().enumerate() {
            for &(a, b) in &p.base.slot_ranges {
                for slot in a..=b.min(SLOTS as u16 - 1) {
                    let s = &mut served[slot as usize];
                    s.0 = s.0.saturating_add(1);
                    if s.1.is_none_or(|(at, _)| p.base.at_ms > at) {
                        s.1 = Some((p.base.at_ms, i));
                    }
                }
            }
        }
        let contested = served
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n > 1)
            .filter_map(|(slot, (_, newest))| newest.map(|(_, i)| (slot as u16, i)))
            .collect();
        Owners { arrived, contested }
    }

    /// Whether shard `i` restores `key`.
    pub fn keeps(&self, i: usize, key: &[u8]) -> bool {
        if let Some((holder, _)) = self.arrived.get(key) {
            return *holder == i;
        }
        self.contested.get(&key_slot(key)).is_none_or(|h| *h == i)
    }

    /// Whether any key may be in two shards: nothing to decide otherwise.
    pub fn any(&self) -> bool {
        !self.arrived.is_empty() || !self.contested.is_empty()
    }
}
