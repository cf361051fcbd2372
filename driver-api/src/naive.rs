//! The naive differ: compares a layer's tree with its parent's.
//!
//! Docker's naive-differ semantics, walked without building a map of either
//! tree: both trees are listed one directory at a time (entries sorted by
//! name bytes), entries are `lstat`ed (symlinks are never followed) and file
//! contents are never read.
//!
//! An entry in both trees is [`ChangeKind::Modified`] when any of these
//! differ: the file type, the mode (permission bits and setuid, setgid,
//! sticky), the owner, the group, the device number, the symlink target, the
//! extended attributes (every namespace except `trusted.overlay.*` and
//! `user.overlay.*`, which belong to an overlay mount's own bookkeeping), the
//! mtime (to the nanosecond), and for non-directories the size.
//!
//! Every directory with a changed descendant is reported modified too (the
//! root never is), so that a tar of the changes carries the directory's
//! metadata: deleting `/a/b/c` gives `C /a`, `C /a/b`, `D /a/b/c`.
//!
//! Where the same path has the same inode number and the same ctime in both
//! trees (snapshots on btrfs or device-mapper keep inode numbers), the entry
//! is taken as unchanged without comparing anything else ("inode
//! shortcut"); directories are still descended into.

use crate::{Change, ChangeKind, IoContext, Result};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How the entries present in both trees were judged by
/// [`changes_with_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries compared in full (metadata, symlink target, xattrs).
    pub compared: u64,
    /// Entries found unchanged by the inode shortcut (same inode number and
    /// ctime in both trees), without comparing anything else.
    pub shortcut: u64,
    /// Entries present only in the layer (each reported `Added`).
    pub added: u64,
    /// Entries present only in the parent (descendants of a deleted
    /// directory are not visited and not counted).
    pub deleted: u64,
}

/// The changes of the tree at `layer` against the tree at `parent` (`None`:
/// the empty tree), sorted by path.
///
/// Paths are absolute (`/etc/passwd`), built from the raw name bytes, and
/// sorted component by component (a directory comes right before its
/// contents: `/a`, `/a/b`, `/a.c`). Read-only; the same trees give the same
/// list.
///
/// # Errors
/// [`crate::Error::Io`] naming the operation and the path when a directory
/// cannot be listed, an entry cannot be `lstat`ed, or a symlink or an
/// extended attribute cannot be read.
pub fn changes(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>> {
    changes_with_stats(layer, parent).map(|(changes, _)| changes)
}

/// [`changes`], with counts of how the entries present in both trees were
/// judged (see [`DiffStats`]).
///
/// # Errors
/// As [`changes`].
pub fn changes_with_stats(layer: &Path, parent: Option<&Path>) -> Result<(Vec<Change>, DiffStats)> {
    let mut walker = Walker {
        out: Vec::new(),
        stats: DiffStats::default(),
        rel: Vec::new(),
    };
    let mut layer_dir = layer.to_path_buf();
    let mut parent_dir = parent.map(Path::to_path_buf);
    walker.walk(&mut layer_dir, parent_dir.as_mut())?;
    Ok((walker.out, walker.stats))
}

/// Bytes of added or modified regular files among `changes` (read under
/// `root` with `lstat`), each inode (device, inode number) counted once.
/// Symlinks, directories, devices, fifos and sockets count 0; deleted paths
/// are not looked at.
///
/// Read-only.
///
/// # Errors
/// [`crate::Error::Io`] (`lstat` and the path) when an added or modified path
/// does not exist under `root` or cannot be examined.
pub fn changes_size(root: &Path, changes: &[Change]) -> Result<u64> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut total = 0u64;
    for change in changes {
        if change.kind == ChangeKind::Deleted {
            continue;
        }
        let rel = change.path.strip_prefix("/").unwrap_or(&change.path);
        let path = root.join(rel);
        let md = std::fs::symlink_metadata(&path).ctx("lstat", &path)?;
        if !md.file_type().is_file() {
            continue;
        }
        // Only inodes with more than one name can be met twice.
        if md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total += md.size();
    }
    Ok(total)
}

/// The state of one walk: the changes so far, the counts, and the relative
/// path (raw bytes, without a leading `/`) of the directory being walked.
struct Walker {
    out: Vec<Change>,
    stats: DiffStats,
    rel: Vec<u8>,
}

impl Walker {
    /// The absolute change path of `name` inside the current directory.
    fn change_path(&self, name: &OsStr) -> PathBuf {
        let mut bytes = Vec::with_capacity(self.rel.len() + name.len() + 2);
        bytes.push(b'/');
        bytes.extend_from_slice(&self.rel);
        if !self.rel.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name.as_bytes());
        PathBuf::from(OsStr::from_bytes(&bytes))
    }

    fn push(&mut self, name: &OsStr, kind: ChangeKind) {
        let path = self.change_path(name);
        self.out.push(Change { path, kind });
    }

    /// Enters directory `name`: the relative path grows; returns the length
    /// to restore with [`Walker::leave`].
    fn enter(&mut self, name: &OsStr) -> usize {
        let len = self.rel.len();
        if len != 0 {
            self.rel.push(b'/');
        }
        self.rel.extend_from_slice(name.as_bytes());
        len
    }

    fn leave(&mut self, len: usize) {
        self.rel.truncate(len);
    }

    /// Walks the directories `layer` and `parent` (`None`: report all of
    /// `layer` as added) and reports the differences below them.
    ///
    /// The walk keeps its own stack of open levels (one sorted listing per
    /// tree each) instead of recursing, so the deepest tree path-based
    /// calls allow fits any thread's stack. `layer` and `parent` stay
    /// pushed with a level's name while it is open.
    fn walk(&mut self, layer: &mut PathBuf, mut parent: Option<&mut PathBuf>) -> Result<()> {
        let mut stack = vec![Level {
            in_layer: list(layer)?,
            in_parent: match parent.as_deref() {
                Some(p) => Some(list(p)?),
                None => None,
            },
            i: 0,
            j: 0,
            mark: None,
            rel_len: 0,
            parent_pushed: false,
        }];
        while let Some(top) = stack.last_mut() {
            let order = match (top.in_layer.get(top.i), &top.in_parent) {
                (None, None) => None,
                (Some(_), None) => Some(Ordering::Less),
                (l, Some(ps)) => match (l, ps.get(top.j)) {
                    (None, None) => None,
                    (Some(l), Some(p)) => Some(l.as_bytes().cmp(p.as_bytes())),
                    (Some(_), None) => Some(Ordering::Less),
                    (None, Some(_)) => Some(Ordering::Greater),
                },
            };
            let Some(order) = order else {
                // The level is done.
                let done = stack.pop().expect("a level is open");
                self.leave(done.rel_len);
                if !stack.is_empty() {
                    layer.pop();
                }
                if done.parent_pushed {
                    if let Some(p) = parent.as_deref_mut() {
                        p.pop();
                    }
                }
                // Docker's ancestor rule: an unchanged directory stays in
                // the list only when something below it changed.
                if let Some((mark, false)) = done.mark {
                    if self.out.len() == mark + 1 {
                        self.out.pop();
                    }
                }
                continue;
            };
            match order {
                Ordering::Greater => {
                    let name = &top.in_parent.as_ref().expect("both trees")[top.j];
                    top.j += 1;
                    let path = self.change_path(name);
                    self.out.push(Change {
                        path,
                        kind: ChangeKind::Deleted,
                    });
                    self.stats.deleted += 1;
                }
                Ordering::Less => {
                    let name = top.in_layer[top.i].clone();
                    top.i += 1;
                    layer.push(&name);
                    let md = lstat(layer)?;
                    self.push(&name, ChangeKind::Added);
                    self.stats.added += 1;
                    if md.file_type().is_dir() {
                        let rel_len = self.enter(&name);
                        stack.push(Level {
                            in_layer: list(layer)?,
                            in_parent: None,
                            i: 0,
                            j: 0,
                            mark: None,
                            rel_len,
                            parent_pushed: false,
                        });
                    } else {
                        layer.pop();
                    }
                }
                Ordering::Equal => {
                    let name = top.in_layer[top.i].clone();
                    top.i += 1;
                    top.j += 1;
                    let p = parent.as_deref_mut().expect("both trees");
                    layer.push(&name);
                    p.push(&name);
                    let (lmd, pmd) = (lstat(layer)?, lstat(p)?);
                    let modified = self.both_differ(layer, &lmd, p, &pmd)?;
                    // Pushed before its descendants; an unchanged directory
                    // tentatively (see the end of a level).
                    let mark = self.out.len();
                    self.push(&name, ChangeKind::Modified);
                    if lmd.file_type().is_dir() {
                        let rel_len = self.enter(&name);
                        let in_parent = if pmd.file_type().is_dir() {
                            Some(list(p)?)
                        } else {
                            // A non-directory became a directory: all of
                            // it is new.
                            None
                        };
                        stack.push(Level {
                            in_layer: list(layer)?,
                            in_parent,
                            i: 0,
                            j: 0,
                            mark: Some((mark, modified)),
                            rel_len,
                            parent_pushed: true,
                        });
                    } else {
                        if !modified {
                            self.out.pop();
                        }
                        layer.pop();
                        p.pop();
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether an entry present in both trees differs, by the inode
    /// shortcut or a full comparison (counted in the stats).
    fn both_differ(
        &mut self,
        layer: &Path,
        lmd: &Metadata,
        parent: &Path,
        pmd: &Metadata,
    ) -> Result<bool> {
        if lmd.ino() == pmd.ino()
            && lmd.ctime() == pmd.ctime()
            && lmd.ctime_nsec() == pmd.ctime_nsec()
        {
            self.stats.shortcut += 1;
            return Ok(false);
        }
        self.stats.compared += 1;
        differs(layer, lmd, parent, pmd)
    }
}

/// A directory being walked: its sorted names in the layer and (unless all
/// of it is added) in the parent, the next index in each, where its own
/// change was pushed and whether it is modified itself (`None` for the root
/// and for added directories), and the length of the relative path to
/// restore when it is done.
struct Level {
    in_layer: Vec<OsString>,
    in_parent: Option<Vec<OsString>>,
    i: usize,
    j: usize,
    mark: Option<(usize, bool)>,
    rel_len: usize,
    parent_pushed: bool,
}

/// The names in `dir`, sorted by their bytes.
fn list(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("read_dir", dir)? {
        names.push(entry.ctx("read_dir", dir)?.file_name());
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn lstat(path: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(path).ctx("lstat", path)
}

/// Whether an entry present in both trees differs (without the inode
/// shortcut).
fn differs(layer: &Path, l: &Metadata, parent: &Path, p: &Metadata) -> Result<bool> {
    // st_mode holds the file type and every permission bit.
    if l.mode() != p.mode() || l.uid() != p.uid() || l.gid() != p.gid() || l.rdev() != p.rdev() {
        return Ok(true);
    }
    if l.mtime() != p.mtime() || l.mtime_nsec() != p.mtime_nsec() {
        return Ok(true);
    }
    let ft = l.file_type();
    if !ft.is_dir() && l.size() != p.size() {
        return Ok(true);
    }
    if ft.is_symlink() {
        let lt = std::fs::read_link(layer).ctx("readlink", layer)?;
        let pt = std::fs::read_link(parent).ctx("readlink", parent)?;
        if lt != pt {
            return Ok(true);
        }
    }
    // Every entry type may carry xattrs (trusted.*, security.* on symlinks
    // and devices too).
    Ok(xattrs(layer)? != xattrs(parent)?)
}

/// Whether an xattr is overlayfs's own bookkeeping, not the file's.
fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// The extended attributes of `path` (not following a symlink), sorted by
/// name, without overlayfs's own.
fn xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(crate::Error::io("listxattr", path, e)),
    };
    let mut all = Vec::new();
    for name in names {
        if is_overlay_xattr(name.as_bytes()) {
            continue;
        }
        // An attribute removed between list and get is simply absent.
        if let Some(value) = xattr::get(path, &name).ctx("getxattr", path)? {
            all.push((name, value));
        }
    }
    all.sort();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_xattrs_are_ignored() {
        assert!(is_overlay_xattr(b"trusted.overlay.opaque"));
        assert!(is_overlay_xattr(b"user.overlay.redirect"));
        assert!(!is_overlay_xattr(b"trusted.overlayx"));
        assert!(!is_overlay_xattr(b"user.foo"));
        assert!(!is_overlay_xattr(b"security.capability"));
    }

    #[test]
    fn change_paths_are_absolute() {
        let mut w = Walker {
            out: Vec::new(),
            stats: DiffStats::default(),
            rel: Vec::new(),
        };
        assert_eq!(w.change_path(OsStr::new("a")), Path::new("/a"));
        let saved = w.enter(OsStr::new("a"));
        let inner = w.enter(OsStr::new("b"));
        assert_eq!(w.change_path(OsStr::new("c")), Path::new("/a/b/c"));
        w.leave(inner);
        assert_eq!(w.change_path(OsStr::new("c")), Path::new("/a/c"));
        w.leave(saved);
        assert!(w.rel.is_empty());
    }

    #[test]
    fn missing_layer_names_the_path() {
        let err = changes(Path::new("/nonexistent-strata-layer"), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("read_dir"), "{text}");
        assert!(text.contains("/nonexistent-strata-layer"), "{text}");
    }
}
