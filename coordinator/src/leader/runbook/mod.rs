//! Runbooks on the leader: planning ([`plan`]) and running ([`run`]) them.

mod plan;
mod run;
