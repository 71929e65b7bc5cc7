//! The chaos suite: the whole system as separate hosts in network namespaces, broken the ways
//! production breaks, with a checker that proves no backup was lost and no incomplete backup was
//! called complete. `fleetsnap-chaos --help` runs it; docs/CHAOS.md holds its reports.

pub mod archive;
pub mod checker;
pub mod ctx;
pub mod fleet;
pub mod layout;
pub mod net;
pub mod proc;
pub mod proxy;
pub mod scenario;
pub mod workload;
