//! Small filesystem steps the drivers share: crash-safe file replacement,
//! directory fsync, rename without replacing, and recursive removal of a
//! layer tree.

use crate::mountinfo;
use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use strata_driver_api::{Error, IoContext, Result};

/// `fsync`s the directory `dir`, making the creation, rename or removal of
/// its entries durable.
///
/// # Errors
/// [`Error::Io`] from `open` or `fsync`.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .ctx("open", dir)?
        .sync_all()
        .ctx("fsync", dir)
}

/// `syncfs`: makes every written byte of the filesystem holding `path`
/// durable. Cheaper than fsyncing each file of a freshly copied tree.
///
/// # Errors
/// [`Error::Io`] from `open` or `syncfs`.
pub fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path).ctx("open", path)?;
    nix::unistd::syncfs(f.as_raw_fd()).ctx("syncfs", path)
}

/// Renames `from` to `to`, failing with `EEXIST` instead of replacing an
/// existing `to` (`renameat2(RENAME_NOREPLACE)`). Both must be on one
/// filesystem.
///
/// # Errors
/// [`Error::Io`] naming `to`: `EEXIST`, `ENOENT` (no `from`), `EXDEV`, ...
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE).ctx("rename", to)
}

/// Replaces (or creates) the file `path` with `data`, atomically: `data`
/// is written to `staging` (a path on the same filesystem that nobody
/// else uses, created mode 0644), fsynced, renamed over `path`, and
/// `path`'s directory is fsynced. A crash leaves either the old or the
/// new file at `path` (and maybe a stale `staging`).
///
/// # Errors
/// [`Error::Io`] from any step; `staging` is removed on failure.
pub fn write_atomic(path: &Path, data: &[u8], staging: &Path) -> Result<()> {
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(staging)
            .ctx("create", staging)?;
        f.write_all(data).ctx("write", staging)?;
        f.sync_all().ctx("fsync", staging)?;
        std::fs::rename(staging, path).ctx("rename", path)?;
        if let Some(parent) = path.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(staging);
    }
    res
}

/// Removes `path` and everything below it, without following symlinks.
/// Directories whose mode keeps their owner out (0500, 0000) are made
/// accessible first when the plain removal is refused. Idempotent: a
/// missing `path` is success.
///
/// `path` should be canonical: a mount point at or below it (as the mount
/// table of this namespace shows) makes the removal fail with `EBUSY`
/// before anything is deleted, so a mounted filesystem is never emptied
/// through it.
///
/// # Errors
/// [`Error::Io`]: `EBUSY` for a mount below `path`; the first failed
/// removal otherwise (`EPERM` for immutable files, ...).
pub fn remove_tree(path: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("lstat", path, e)),
    };
    if !md.is_dir() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
            _ => Ok(()),
        };
    }
    if let Some(m) = mountinfo::mount_points_under(path)?.first() {
        return Err(Error::nix("remove (mounted inside)", m, Errno::EBUSY));
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::debug!(path = %path.display(), "removal refused; opening directory modes");
        }
        Err(e) => return Err(Error::io("remove", path, e)),
    }
    open_dir_modes(path)?;
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// Gives the owner rwx on every directory at or below `root` (symlinks are
/// not followed), so its entries can be listed and removed.
fn open_dir_modes(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let md = match std::fs::symlink_metadata(&dir) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("lstat", &dir, e)),
        };
        if !md.is_dir() {
            continue;
        }
        let mode = md.permissions().mode() & 0o7777;
        if mode & 0o700 != 0o700 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700))
                .ctx("chmod", &dir)?;
        }
        for entry in std::fs::read_dir(&dir).ctx("read_dir", &dir)? {
            let entry = entry.ctx("read_dir", &dir)?;
            if entry.file_type().ctx("lstat", entry.path())?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Whether `p` exists (without following a final symlink); a missing
/// entry or a non-directory on the way is `false`.
///
/// # Errors
/// [`Error::Io`] from `lstat` for anything else.
pub fn exists(p: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::io("lstat", p, e)),
    }
}

/// Replaces each `Opaque(dir)` item of a layer's own tree (`branch`: an
/// AUFS diff dir or an overlay upper dir) by whiteouts of the entries the
/// lower tree (`lower`, the parent's full tree; `None` for a layer with no
/// parent) has in `dir` and the branch does not: the same deletions, in the
/// form the naive differ writes, so native diffs give the canonical tar the
/// other drivers give.
///
/// # Errors
/// [`Error::Io`] naming the directory or entry that could not be read.
#[cfg(any(feature = "aufs", feature = "overlay"))]
pub fn opaque_as_whiteouts(
    branch: &Path,
    lower: Option<&Path>,
    items: Vec<strata_driver_api::archive::Item>,
) -> Result<Vec<strata_driver_api::archive::Item>> {
    use strata_driver_api::archive::Item;
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let Item::Opaque(dir) = &it else {
            out.push(it);
            continue;
        };
        let Some(lower) = lower else { continue };
        let ld = lower.join(dir);
        if !std::fs::symlink_metadata(&ld).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        for e in std::fs::read_dir(&ld).ctx("readdir", &ld)? {
            let name = e.ctx("readdir", &ld)?.file_name();
            if !exists(&branch.join(dir).join(&name))? {
                out.push(Item::Whiteout(dir.join(&name)));
            }
        }
    }
    Ok(out)
}

/// A `busy.lock` file shared by the processes working on one driver root:
/// work that leaves scratch state behind while it runs (a create's staging
/// dir, a remove's trash, a probe's or a view's mount) holds it shared, and
/// the sweep that deletes scratch state left by crashed processes runs only
/// when it gets it exclusively, so one process's open never sweeps away
/// another's work in progress. A crashed process's lock dies with it.
///
/// `exclusive`: try without waiting (`Ok(None)` when some work holds it);
/// shared: wait for a running sweep to finish.
///
/// # Errors
/// Opening or locking the file.
pub fn busy_lock(path: &Path, exclusive: bool) -> Result<Option<nix::fcntl::Flock<File>>> {
    use nix::fcntl::{Flock, FlockArg};
    let f = lock_file(path)?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockShared
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) if exclusive => Ok(None),
        Err((_, e)) => Err(Error::nix("flock", path, e)),
    }
}

/// An exclusive `flock` on the file `path` (created if missing), waiting
/// for other holders; released on drop or when the process dies.
///
/// # Errors
/// Opening or locking the file.
pub fn lock_exclusive(path: &Path) -> Result<nix::fcntl::Flock<File>> {
    nix::fcntl::Flock::lock(lock_file(path)?, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::nix("flock", path, e))
}

/// Opens the lock file `path` for `flock`, creating it if missing.
fn lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx("open", path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn write_atomic_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one", &d.path().join("s1")).unwrap();
        write_atomic(&p, b"two", &d.path().join("s2")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!d.path().join("s1").exists() && !d.path().join("s2").exists());
    }

    #[test]
    fn rename_noreplace_refuses_existing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        let e = rename_noreplace(&d.path().join("a"), &d.path().join("b")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        rename_noreplace(&d.path().join("a"), &d.path().join("c")).unwrap();
    }

    #[test]
    fn remove_tree_handles_closed_dirs_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let t = d.path().join("tree");
        std::fs::create_dir_all(t.join("a/b/c")).unwrap();
        std::fs::write(t.join("a/b/c/f"), b"x").unwrap();
        symlink(&outside, t.join("a/link")).unwrap();
        for (p, m) in [("a/b/c", 0o000), ("a/b", 0o500), ("a", 0o555)] {
            std::fs::set_permissions(t.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&t).unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        remove_tree(&f).unwrap();
        assert!(!f.exists());
    }
}
