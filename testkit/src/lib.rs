//! Test kit: real `redis-server` processes (standalone, primary + replicas, Redis Cluster) and real
//! S3-compatible regions (Garage, moto), each on free loopback ports in its own temporary
//! directory. Readiness is polled; everything is killed and removed on drop, also after a failed
//! test (and, through `PR_SET_PDEATHSIG`, when the test process itself dies).

pub mod data;
pub mod fleet;
pub mod otlp;
mod process;
pub mod proxy;
pub mod redis;
pub mod s3;

pub use data::{
    Dataset, assert_same_data, assert_same_data_across, filled_server, write_dataset, write_extras,
};
pub use process::{Process, free_port, output_within, poll_until};
pub use redis::{Flavour, RedisCluster, RedisServer, ReplicaSet};
pub use s3::{Garage, Moto, S3Region, credentials_file};
