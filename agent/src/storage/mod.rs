//! Where backups are kept: destination URLs, file regions (directories that are never left) and
//! S3-compatible buckets behind one [`Store`] that checks every key, and the per-destination
//! spool that keeps a slow region from stalling the source.

mod confined;
mod dest;
mod file;
mod s3;
mod spool;
mod store;

pub use dest::DestSpec;
pub use file::FileUpload;
pub use s3::{PART_SIZE, PARTS_IN_FLIGHT, S3Upload};
pub use spool::{Item, SpoolLimits, SpoolQueue};
pub use store::{Download, Store, Upload};
