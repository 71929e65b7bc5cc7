//! Command-line interface of `fleetsnap-agent`.
//!
//! Exit codes: 0 success; 1 failure, nothing stored or restored; 2 bad usage; 3 partial success
//! (some destinations failed, the others hold a complete backup).

mod archive;
mod args;
mod print;
mod run;
mod snapshot;

pub use print::{EXIT_PARTIAL, human, print_drill};
pub use run::main;
