//! The lab's fixed numbers, shared by the fleet, its processes and the workload.

/// Every host's Redis port (each host has its own address).
pub const REDIS_PORT: u16 = 6379;

/// Shards in the Redis Cluster.
pub const SHARDS: usize = 3;
