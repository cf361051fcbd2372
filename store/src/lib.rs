//! The layer store of strata: layer records in SQLite around one storage
//! driver, persistent mount refcounts shared by every process on a root,
//! crash recovery, digests, and the host configuration.
//!
//! ```plain
//! <root>/strata.db     the records (SQLite, rollback journal)
//! <root>/strata.lock   flock serialising mount-count transitions
//! <root>/<driver>/     the driver's data
//! ```
//!
//! Start with [`Config::load`] and [`Store::open`].

pub mod config;
pub mod crash;
pub mod db;
mod error;
pub mod fsck;
pub mod fsinfo;
pub mod lock;
pub mod migrate;
pub mod owner;
pub mod select;
mod store;
pub mod stream;

pub use config::{Config, Origin, Overrides};
pub use db::{Layer, State};
pub use error::{Error, Result};
pub use fsck::{Finding, FindingKind, FsckReport};
pub use select::{Rejected, Selection};
pub use store::{DiffOutcome, Store, DB_FILE, LOCK_FILE};
