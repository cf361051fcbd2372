//! Qgroup quotas: a layer's size limit is a limit on its subvolume's level-0
//! qgroup (`0/<subvolid>`).
//!
//! Which limit: the **exclusive** bytes (`max_excl`). A child is a snapshot
//! that shares all of its parent's extents; its referenced bytes start at
//! the parent's size, its exclusive bytes at (almost) zero, and every byte
//! the layer writes (new files, rewritten shared extents) is charged to its
//! exclusive count. So `--size` limits the layer's own data, as
//! [`strata_driver_api::CreateOpts::size`] says, and a write that would
//! pass it fails with `EDQUOT`. (Docker limited the referenced bytes, so
//! its limit included the image.) Metadata counts too: a limit smaller than
//! a few hundred KiB leaves little room.
//!
//! A snapshot inherits its source qgroup's limits; every new layer's limits
//! are therefore set explicitly when quotas are on (cleared when no size
//! was asked).
//!
//! Quotas are switched on the first time a size is asked for (followed by a
//! wait for the initial rescan), and never switched off: the host may have
//! had them on before.

use super::sys;
use nix::errno::Errno;
use std::path::Path;
use std::time::{Duration, Instant};
use strata_driver_api::Result;

/// How long a layer's removal lets [`destroy`] wait for the kernel to finish
/// dropping a deleted subvolume before leaving the qgroup to a later sweep.
pub const DESTROY_WAIT: Duration = Duration::from_secs(20);

/// Level-0 qgroup id of subvolume `subvolid` (`0/<subvolid>`).
pub fn level0(subvolid: u64) -> u64 {
    subvolid
}

/// Whether quotas are on for the filesystem holding `path` (as
/// `/sys/fs/btrfs/<fsid>/qgroups` says: the directory exists only then).
///
/// # Errors
/// [`Error::Io`] from finding the filesystem's UUID.
pub fn enabled(path: &Path) -> Result<bool> {
    let fsid = sys::fsid(path)?;
    Ok(Path::new("/sys/fs/btrfs")
        .join(fsid)
        .join("qgroups")
        .is_dir())
}

/// Turns quotas on for the filesystem holding `path` unless they are on,
/// then waits for the initial rescan. Idempotent.
///
/// # Errors
/// [`Error::Io`] from the ioctls.
pub fn ensure_enabled(path: &Path) -> Result<()> {
    if enabled(path)? {
        return Ok(());
    }
    tracing::info!(path = %path.display(), "enabling btrfs quotas");
    sys::quota_enable(path)?;
    sys::quota_rescan_wait(path)
}

/// Limits subvolume `subvolid`'s exclusive bytes to `size`, or clears its
/// limits for `None`. Quotas must be on.
///
/// # Errors
/// [`Error::Io`] from the ioctl.
pub fn limit(path: &Path, subvolid: u64, size: Option<u64>) -> Result<()> {
    sys::qgroup_limit(path, level0(subvolid), None, size)
}

/// Destroys the level-0 qgroups of deleted subvolumes `ids`, when quotas
/// are on. A qgroup the kernel still refuses (`EBUSY`: the deleted
/// subvolume is not yet dropped by the cleaner) is retried, with
/// transaction commits in between to wake the cleaner, for up to `wait`; a
/// qgroup that disappears meanwhile (newer kernels remove it themselves once
/// the subvolume is dropped) counts as destroyed. Returns the ids still
/// refused after the wait, for a later sweep.
///
/// # Errors
/// [`Error::Io`] from the ioctls, other than the cases above.
pub fn destroy(path: &Path, ids: &[u64], wait: Duration) -> Result<Vec<u64>> {
    if ids.is_empty() || !enabled(path)? {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + wait;
    let mut left: Vec<u64> = ids.to_vec();
    loop {
        let mut busy = Vec::new();
        for &id in &left {
            match sys::qgroup_destroy(path, level0(id)) {
                Ok(()) => {}
                Err(e)
                    if sys::is_errno(&e, Errno::ENOENT) || sys::is_errno(&e, Errno::ENOTCONN) => {}
                Err(e) if sys::is_errno(&e, Errno::EBUSY) => busy.push(id),
                Err(e) => return Err(e),
            }
        }
        if busy.is_empty() || Instant::now() >= deadline {
            return Ok(busy);
        }
        left = busy;
        // A commit wakes the cleaner thread that drops deleted subvolumes.
        if let Err(e) = btrfsutil::sync::sync(path) {
            tracing::debug!(error = %e, "btrfs sync");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
