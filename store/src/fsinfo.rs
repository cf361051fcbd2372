//! The backing filesystem of a path, by name, and `syncfs`.

use nix::sys::statfs::{self, FsType};
use std::os::fd::AsRawFd;
use std::path::Path;
use strata_driver_api::{IoContext, Result};

/// The name of the filesystem `path` (or its nearest existing ancestor) is
/// on: `btrfs`, `xfs`, `ext4`, `tmpfs`, ... or `0x<magic>` when unknown.
///
/// # Errors
/// [`strata_driver_api::Error::Io`] from `statfs`.
pub fn backing_fs(path: &Path) -> Result<String> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    let st = statfs::statfs(p).ctx("statfs", p)?;
    Ok(fs_name(st.filesystem_type()))
}

fn fs_name(t: FsType) -> String {
    let known: &[(FsType, &str)] = &[
        (statfs::BTRFS_SUPER_MAGIC, "btrfs"),
        (statfs::XFS_SUPER_MAGIC, "xfs"),
        (statfs::EXT4_SUPER_MAGIC, "ext4"),
        (statfs::TMPFS_MAGIC, "tmpfs"),
        (statfs::OVERLAYFS_SUPER_MAGIC, "overlay"),
        (statfs::NFS_SUPER_MAGIC, "nfs"),
        (statfs::FUSE_SUPER_MAGIC, "fuse"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == t)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("0x{:x}", t.0))
}

/// Flushes the filesystem `dir` is on to stable storage (`syncfs`).
///
/// # Errors
/// [`strata_driver_api::Error::Io`] from opening `dir` or from `syncfs`.
pub fn syncfs(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).ctx("open", dir)?;
    nix::unistd::syncfs(f.as_raw_fd()).ctx("syncfs", dir)
}
