//! Native diff: a layer's changes read straight from its upper (`diff`)
//! directory, with overlay's whiteouts turned into tar whiteouts.
//!
//! ```plain
//! char device 0/0                          -> Item::Whiteout(path)
//! empty regular file with the xattr
//!   trusted.overlay.whiteout               -> Item::Whiteout(path)
//! dir with trusted.overlay.opaque = "y"    -> Item::Entry(dir) + Item::Opaque(dir)
//! anything else                            -> Item::Entry(path)
//! ```
//!
//! An opaque value of `x` marks a directory that is *not* opaque but holds
//! xattr whiteouts (overlayfs documentation, "whiteouts and opaque
//! directories"), so it is a plain entry. Whiteouts are recognised by type
//! before anything else looks at link counts: overlay makes them as hard
//! links of one shared whiteout inode.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD};
use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use strata_driver_api::archive::Item;
use strata_driver_api::{Change, ChangeKind, Error, IoContext, Result};

/// The xattr marking an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The xattr marking an xattr-form whiteout.
pub const WHITEOUT_XATTR: &str = "trusted.overlay.whiteout";

/// Levels of the walk deeper than this are read by path instead of being
/// kept open (the walk holds one descriptor per open level).
const MAX_OPEN_LEVELS: usize = 64;

/// What one upper-dir entry means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Whiteout,
    OpaqueDir,
    Dir,
    Other,
}

fn io(op: &'static str, path: &Path, e: rustix::io::Errno) -> Error {
    Error::io(op, path, e.into())
}

/// Where an entry of the directory being walked is reached: from the
/// directory's open descriptor by name, or (deep levels) by full path.
#[derive(Clone, Copy)]
struct At<'a> {
    dir: Option<BorrowedFd<'a>>,
    /// The directory's full path, for errors and deep levels.
    here: &'a Path,
}

impl At<'_> {
    fn stat(&self, name: &OsStr) -> rustix::io::Result<Stat> {
        match self.dir {
            Some(fd) => rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW),
            None => rustix::fs::statat(CWD, self.here.join(name), AtFlags::SYMLINK_NOFOLLOW),
        }
    }

    fn open_dir(&self, name: &OsStr) -> rustix::io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match self.dir {
            Some(fd) => rustix::fs::openat(fd, name, flags, Mode::empty()),
            None => rustix::fs::openat(CWD, self.here.join(name), flags, Mode::empty()),
        }
    }
}

/// The names and `d_type`s of the open directory `fd` (at `path`), sorted
/// by name bytes; `.` and `..` left out.
fn list(fd: OwnedFd, path: &Path) -> Result<(Dir, Vec<(OsString, FileType)>)> {
    let mut dir = Dir::new(fd).map_err(|e| io("readdir", path, e))?;
    let mut names = Vec::new();
    for e in dir.by_ref() {
        let e = e.map_err(|e| io("readdir", path, e))?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push((OsStr::from_bytes(name).to_os_string(), e.file_type()));
    }
    names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok((dir, names))
}

/// Whether the open directory `fd` (at `path`) has `trusted.overlay.opaque`
/// set to `y`.
fn is_opaque(fd: BorrowedFd<'_>, path: &Path) -> Result<bool> {
    let mut buf = [0u8; 8];
    match rustix::fs::fgetxattr(fd, OPAQUE_XATTR, &mut buf[..]) {
        Ok(n) => Ok(&buf[..n] == b"y"),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::RANGE) => Ok(false),
        Err(e) => Err(io("fgetxattr", path, e)),
    }
}

/// What the walk calls for each entry: its path, kind and (for regular
/// files and devices) its stat.
type Visit<'a> = dyn FnMut(&Path, Kind, Option<&Stat>) -> Result<()> + 'a;

/// Walks the upper dir `root` in sorted order, each directory before its
/// contents, calling `f` with each entry's relative path, its kind and,
/// for regular files, their stat. Entries are reached from their parent's
/// open descriptor; `d_type` spares a stat of directories, symlinks and
/// other types.
fn walk(root: &Path, f: &mut Visit<'_>) -> Result<()> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open", root, e))?;
    walk_dir(root, Path::new(""), fd, 0, f)
}

fn walk_dir(root: &Path, rel: &Path, fd: OwnedFd, depth: usize, f: &mut Visit<'_>) -> Result<()> {
    let here = root.join(rel);
    let (dir, names) = list(fd, &here)?;
    // Deep levels give their descriptor back at once.
    let dir = (depth < MAX_OPEN_LEVELS).then_some(dir);
    let at = At {
        dir: match &dir {
            Some(d) => Some(d.fd().map_err(|e| io("readdir", &here, e))?),
            None => None,
        },
        here: &here,
    };
    for (name, dtype) in names {
        let r = rel.join(&name);
        let mut dtype = dtype;
        let mut st = None;
        if !matches!(
            dtype,
            FileType::Directory
                | FileType::Symlink
                | FileType::Fifo
                | FileType::Socket
                | FileType::BlockDevice
        ) {
            let s = at
                .stat(&name)
                .map_err(|e| io("lstat", &here.join(&name), e))?;
            dtype = FileType::from_raw_mode(s.st_mode);
            st = Some(s);
        }
        match dtype {
            FileType::Directory => {
                let p = here.join(&name);
                let child = at.open_dir(&name).map_err(|e| io("open", &p, e))?;
                let kind = if is_opaque(child.as_fd(), &p)? {
                    Kind::OpaqueDir
                } else {
                    Kind::Dir
                };
                f(&r, kind, None)?;
                walk_dir(root, &r, child, depth + 1, f)?;
            }
            FileType::CharacterDevice if st.as_ref().is_some_and(|s| s.st_rdev == 0) => {
                f(&r, Kind::Whiteout, None)?;
            }
            FileType::RegularFile => {
                let s = st.as_ref().expect("regular files are stat'ed");
                let kind = if s.st_size == 0 && is_xattr_whiteout(&here.join(&name))? {
                    Kind::Whiteout
                } else {
                    Kind::Other
                };
                f(&r, kind, Some(s))?;
            }
            _ => f(&r, Kind::Other, None)?,
        }
    }
    Ok(())
}

/// Whether the empty regular file at `path` is an xattr-form whiteout.
fn is_xattr_whiteout(path: &Path) -> Result<bool> {
    Ok(xattr::get(path, WHITEOUT_XATTR)
        .ctx("getxattr", path)?
        .is_some())
}

/// The tar items of an upper directory, in walk order (the archive writer
/// sorts them). The root itself is not an item.
///
/// # Errors
/// [`Error::Io`] naming the entry that could not be read.
pub fn upper_items(upper: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    walk(upper, &mut |rel, kind, _| {
        match kind {
            Kind::Whiteout => items.push(Item::Whiteout(rel.to_path_buf())),
            Kind::OpaqueDir => {
                items.push(Item::Entry(rel.to_path_buf()));
                items.push(Item::Opaque(rel.to_path_buf()));
            }
            Kind::Dir | Kind::Other => items.push(Item::Entry(rel.to_path_buf())),
        }
        Ok(())
    })?;
    Ok(items)
}

/// Bytes of the regular files of an upper directory, hard links counted
/// once, whiteouts not counted: what applying its diff writes.
///
/// # Errors
/// [`Error::Io`] naming the entry that could not be read.
pub fn upper_size(upper: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    walk(upper, &mut |_, kind, st| {
        if let (Kind::Other, Some(st)) = (kind, st) {
            if st.st_nlink < 2 || seen.insert((st.st_dev, st.st_ino)) {
                total += st.st_size as u64;
            }
        }
        Ok(())
    })?;
    Ok(total)
}

fn abs(rel: &Path) -> PathBuf {
    Path::new("/").join(rel)
}

/// The changes of an upper directory against the full tree of its parent
/// (`lower`, `None` for a layer without parent), sorted by path: entries of
/// the upper are Added when the lower tree lacks them, else Modified;
/// whiteouts of existing lower paths are Deleted; the lower entries hidden
/// by an opaque directory (and not in the upper) are Deleted.
///
/// # Errors
/// [`Error::Io`] naming the entry that could not be read.
pub fn upper_changes(upper: &Path, lower: Option<&Path>) -> Result<Vec<Change>> {
    let mut out = BTreeSet::new();
    walk(upper, &mut |rel, kind, _| {
        let in_lower = match lower {
            Some(l) => crate::fsutil::exists(&l.join(rel))?,
            None => false,
        };
        match kind {
            Kind::Whiteout => {
                if in_lower {
                    out.insert(Change {
                        path: abs(rel),
                        kind: ChangeKind::Deleted,
                    });
                }
            }
            Kind::OpaqueDir | Kind::Dir | Kind::Other => {
                out.insert(Change {
                    path: abs(rel),
                    kind: if in_lower {
                        ChangeKind::Modified
                    } else {
                        ChangeKind::Added
                    },
                });
                if kind == Kind::OpaqueDir && in_lower {
                    let l = lower.expect("in_lower implies a lower").join(rel);
                    if fs::symlink_metadata(&l).ctx("lstat", &l)?.is_dir() {
                        for e in fs::read_dir(&l).ctx("readdir", &l)? {
                            let name = e.ctx("readdir", &l)?.file_name();
                            if !crate::fsutil::exists(&upper.join(rel).join(&name))? {
                                out.insert(Change {
                                    path: abs(&rel.join(&name)),
                                    kind: ChangeKind::Deleted,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_upper_items_and_changes() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("up");
        let low = t.path().join("low");
        fs::create_dir_all(up.join("a/b")).unwrap();
        fs::write(up.join("a/b/f"), b"hello").unwrap();
        fs::hard_link(up.join("a/b/f"), up.join("a/g")).unwrap();
        fs::create_dir_all(low.join("a")).unwrap();
        let items = upper_items(&up).unwrap();
        assert_eq!(
            items,
            vec![
                Item::Entry("a".into()),
                Item::Entry("a/b".into()),
                Item::Entry("a/b/f".into()),
                Item::Entry("a/g".into()),
            ]
        );
        assert_eq!(upper_size(&up).unwrap(), 5);
        let ch = upper_changes(&up, Some(&low)).unwrap();
        let kinds: Vec<_> = ch
            .iter()
            .map(|c| (c.path.to_str().unwrap().to_string(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("/a".to_string(), ChangeKind::Modified),
                ("/a/b".to_string(), ChangeKind::Added),
                ("/a/b/f".to_string(), ChangeKind::Added),
                ("/a/g".to_string(), ChangeKind::Added),
            ]
        );
    }
}
