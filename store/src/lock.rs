//! The root's lock file: an exclusive `flock` on `<root>/strata.lock`
//! serialises mount-count transitions (and the driver call that goes with
//! each) across processes, which a database transaction alone cannot do
//! because the driver call happens outside SQLite.

use crate::error::Result;
use nix::fcntl::Flock;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A held lock; released on drop (or when the process dies).
#[derive(Debug)]
pub struct RootLock {
    _lock: Flock<File>,
}

/// Takes the exclusive lock on `path`, waiting for other holders.
/// Blocking work runs on a blocking thread.
///
/// # Errors
/// [`strata_driver_api::Error::Io`] opening or locking the file.
pub async fn lock(path: &Path) -> Result<RootLock> {
    let path: PathBuf = path.to_path_buf();
    let lock = tokio::task::spawn_blocking(move || -> Result<RootLock> {
        Ok(RootLock {
            _lock: strata_drivers::fsutil::lock_exclusive(&path)?,
        })
    })
    .await
    .map_err(strata_driver_api::join_error)??;
    Ok(lock)
}
