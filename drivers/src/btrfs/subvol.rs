//! Subvolume operations through libbtrfsutil (the `btrfsutil` crate), with
//! its errors turned into [`Error::Io`] carrying the errno.
//!
//! libbtrfsutil reports its own error code (which step failed) and leaves
//! the system call's `errno` set; the crate keeps only the former. The errno
//! is read right after the failed call (nothing runs in between that could
//! change it), so callers can test for `EROFS`, `EEXIST`, `ENOENT`...

use btrfsutil::subvolume::Subvolume;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use strata_driver_api::{Error, IoContext, Result};

/// The inode number of every subvolume's root directory
/// (`BTRFS_FIRST_FREE_OBJECTID`): how a nested subvolume is recognised.
pub const SUBVOL_ROOT_INO: u64 = 256;

fn util_err(op: &'static str, path: &Path, e: btrfsutil::BtrfsUtilError) -> Error {
    let os = std::io::Error::last_os_error();
    match os.raw_os_error() {
        Some(code) if code != 0 => {
            tracing::debug!(op, path = %path.display(), lib = %e, "libbtrfsutil error");
            Error::io(op, path, std::io::Error::from_raw_os_error(code))
        }
        _ => Error::Driver {
            driver: "btrfs".into(),
            msg: format!("{op} {}: {e}", path.display()),
        },
    }
}

/// Whether `path` is the root of a subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    Subvolume::is_subvolume(path).is_ok()
}

/// The subvolume id of the subvolume whose root is `path`.
///
/// # Errors
/// [`Error::Io`] (`ENOENT`, or `EINVAL`-like for a non-subvolume).
pub fn id(path: &Path) -> Result<u64> {
    Subvolume::get(path)
        .map(|s| s.id())
        .map_err(|e| util_err("subvolume id", path, e))
}

/// Creates an empty subvolume at `path` (which must not exist) and returns
/// its id. Waits for the creating transaction to commit.
///
/// # Errors
/// [`Error::Io`] (`EEXIST`, `ENOSPC`, ...).
pub fn create(path: &Path) -> Result<u64> {
    Subvolume::create(path, None)
        .map(|s| s.id())
        .map_err(|e| util_err("create subvolume", path, e))
}

/// Snapshots subvolume `source` to `dest` (writable) and returns the new
/// subvolume's id.
///
/// # Errors
/// [`Error::Io`].
pub fn snapshot(source: &Path, dest: &Path) -> Result<u64> {
    let s = Subvolume::get(source).map_err(|e| util_err("open subvolume", source, e))?;
    s.snapshot(dest, None, None)
        .map(|s| s.id())
        .map_err(|e| util_err("snapshot subvolume", dest, e))
}

/// Sets or clears the read-only property of the subvolume at `path`.
/// Idempotent.
///
/// # Errors
/// [`Error::Io`] (`EPERM` without CAP_SYS_ADMIN).
pub fn set_read_only(path: &Path, ro: bool) -> Result<()> {
    let s = Subvolume::get(path).map_err(|e| util_err("open subvolume", path, e))?;
    if s.is_ro().map_err(|e| util_err("get read-only", path, e))? == ro {
        return Ok(());
    }
    s.set_ro(ro).map_err(|e| util_err("set read-only", path, e))
}

/// The roots of the subvolumes nested anywhere below `top` (not `top`
/// itself), deepest first. Found by their root inode number (256); the
/// walk does not recurse (explicit stack) and does not follow symlinks.
///
/// # Errors
/// [`Error::Io`] from reading a directory.
pub fn nested(top: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    let mut stack: Vec<(usize, PathBuf)> = vec![(0, top.to_path_buf())];
    while let Some((depth, dir)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ctx("read dir", &dir)? {
            let entry = entry.ctx("read dir", &dir)?;
            let ft = entry.file_type().ctx("stat", entry.path())?;
            if !ft.is_dir() {
                continue;
            }
            let p = entry.path();
            let md = std::fs::symlink_metadata(&p).ctx("stat", &p)?;
            if md.ino() == SUBVOL_ROOT_INO {
                found.push((depth + 1, p.clone()));
            }
            stack.push((depth + 1, p));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Deletes the subvolume at `path` and every subvolume nested in it
/// (deepest first), clearing the read-only property of each first, and
/// returns the ids of the deleted subvolumes (for their qgroups). A plain
/// directory at `path` (not a subvolume) is removed recursively instead.
/// Missing `path`: nothing to do, empty list.
///
/// # Errors
/// [`Error::Io`]; subvolumes deleted before the error stay deleted.
pub fn delete_tree(path: &Path) -> Result<Vec<u64>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(Vec::new());
    }
    if !is_subvolume(path) {
        crate::fsutil::remove_tree(path)?;
        return Ok(Vec::new());
    }
    // Clear read-only everywhere first: deleting a subvolume removes its
    // entry from the directory (of the enclosing subvolume) that holds it.
    set_read_only(path, false)?;
    // Most subvolumes hold no others: the kernel deletes them at once
    // (it refuses one with nested subvolumes), and no walk is needed. The
    // walk goes by path, which fails (ENAMETOOLONG) in a layer holding a
    // path longer than PATH_MAX, as a layer tar can make.
    if let Ok(s) = Subvolume::get(path) {
        let id = s.id();
        if s.delete(None).is_ok() {
            return Ok(vec![id]);
        }
    }
    let nested = nested(path)?;
    for n in &nested {
        set_read_only(n, false)?;
    }
    let mut ids = Vec::with_capacity(nested.len() + 1);
    for n in nested
        .iter()
        .map(PathBuf::as_path)
        .chain(std::iter::once(path))
    {
        let s = Subvolume::get(n).map_err(|e| util_err("open subvolume", n, e))?;
        ids.push(s.id());
        s.delete(None)
            .map_err(|e| util_err("delete subvolume", n, e))?;
    }
    Ok(ids)
}
