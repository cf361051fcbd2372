//! Native diff of an aufs layer: its `diff/<id>` branch already is in the
//! tar's whiteout format.
//!
//! ```plain
//! .wh..wh..opq            -> Item::Opaque(dir)
//! .wh..wh.<anything else> -> skipped with its contents (plnk, orph, aufs
//!                            bookkeeping, strata's copy-up temp files)
//! .wh.<name>              -> Item::Whiteout(dir/name)
//! anything else           -> Item::Entry(path)
//! ```

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use strata_driver_api::archive::Item;
use strata_driver_api::{Change, ChangeKind, IoContext, Result};

/// What one branch entry means.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// A whiteout of this name (in the same directory).
    Whiteout(std::ffi::OsString),
    /// The directory holding it is opaque.
    Opaque,
    /// Private AUFS or strata bookkeeping: never exported.
    Private,
    /// A real entry.
    Entry,
}

fn classify(name: &OsStr) -> Kind {
    let b = name.as_bytes();
    if b == b".wh..wh..opq" {
        Kind::Opaque
    } else if b.starts_with(b".wh..wh.") {
        Kind::Private
    } else if let Some(rest) = b.strip_prefix(b".wh.") {
        Kind::Whiteout(OsStr::from_bytes(rest).to_os_string())
    } else {
        Kind::Entry
    }
}

/// What [`walk`] calls for each entry: its path, its meaning, its metadata
/// (for real entries).
type Visit<'a> = dyn FnMut(&Path, &Kind, Option<&fs::Metadata>) -> Result<()> + 'a;

fn walk(root: &Path, rel: &Path, f: &mut Visit<'_>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .ctx("readdir", &dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .ctx("readdir", &dir)?;
    names.sort();
    for name in names {
        let kind = classify(&name);
        match &kind {
            Kind::Private => {}
            Kind::Opaque => f(rel, &kind, None)?,
            Kind::Whiteout(n) => f(&rel.join(n), &kind, None)?,
            Kind::Entry => {
                let r = rel.join(&name);
                let p = root.join(&r);
                let md = fs::symlink_metadata(&p).ctx("lstat", &p)?;
                f(&r, &kind, Some(&md))?;
                if md.is_dir() {
                    walk(root, &r, f)?;
                }
            }
        }
    }
    Ok(())
}

/// The tar items of a branch directory (the archive writer sorts them).
///
/// # Errors
/// [`Error::Io`] naming the entry that could not be read.
pub fn branch_items(branch: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    walk(branch, Path::new(""), &mut |rel, kind, _| {
        match kind {
            Kind::Opaque => items.push(Item::Opaque(rel.to_path_buf())),
            Kind::Whiteout(_) => items.push(Item::Whiteout(rel.to_path_buf())),
            Kind::Entry => items.push(Item::Entry(rel.to_path_buf())),
            Kind::Private => {}
        }
        Ok(())
    })?;
    Ok(items)
}

/// Bytes of the regular files of a branch, hard links once, whiteouts not
/// counted: what applying its diff writes.
///
/// # Errors
/// [`Error::Io`] naming the entry that could not be read.
pub fn branch_size(branch: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    walk(branch, Path::new(""), &mut |_, kind, md| {
        if let (Kind::Entry, Some(md)) = (kind, md) {
            if md.is_file() && (md.nlink() < 2 || seen.insert((md.dev(), md.ino()))) {
                total += md.len();
            }
        }
        Ok(())
    })?;
    Ok(total)
}

fn abs(rel: &Path) -> PathBuf {
    Path::new("/").join(rel)
}

/// The changes of a branch against the full tree of its parent (`lower`,
/// `None` for none), sorted by path. Entries are Added or Modified as the
/// lower tree lacks or has them; whiteouts of lower paths are Deleted, and
/// so are lower entries hidden by an opaque directory.
///
/// # Errors
/// [`Error::Io`] naming the entry that could not be read.
pub fn branch_changes(branch: &Path, lower: Option<&Path>) -> Result<Vec<Change>> {
    let mut out = BTreeSet::new();
    let in_lower = |rel: &Path| -> Result<bool> {
        match lower {
            Some(l) => crate::fsutil::exists(&l.join(rel)),
            None => Ok(false),
        }
    };
    walk(branch, Path::new(""), &mut |rel, kind, _| {
        match kind {
            Kind::Whiteout(_) => {
                if in_lower(rel)? {
                    out.insert(Change {
                        path: abs(rel),
                        kind: ChangeKind::Deleted,
                    });
                }
            }
            Kind::Opaque => {
                if let Some(l) = lower {
                    let ld = l.join(rel);
                    if fs::symlink_metadata(&ld).is_ok_and(|m| m.is_dir()) {
                        for e in fs::read_dir(&ld).ctx("readdir", &ld)? {
                            let name = e.ctx("readdir", &ld)?.file_name();
                            if !crate::fsutil::exists(&branch.join(rel).join(&name))? {
                                out.insert(Change {
                                    path: abs(&rel.join(&name)),
                                    kind: ChangeKind::Deleted,
                                });
                            }
                        }
                    }
                }
            }
            Kind::Entry => {
                let kind = if in_lower(rel)? {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                };
                out.insert(Change {
                    path: abs(rel),
                    kind,
                });
            }
            Kind::Private => {}
        }
        Ok(())
    })?;
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_skip_private_dirs() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path();
        fs::create_dir_all(b.join("d/.wh..wh.plnk")).unwrap();
        fs::create_dir_all(b.join(".wh..wh.orph")).unwrap();
        fs::write(b.join("d/.wh..wh.plnk/x"), b"x").unwrap();
        fs::write(b.join("d/.wh..wh..opq"), b"").unwrap();
        fs::write(b.join(".wh.gone"), b"").unwrap();
        fs::write(b.join("d/f"), b"hello").unwrap();
        let items = branch_items(b).unwrap();
        assert_eq!(
            items,
            vec![
                Item::Whiteout("gone".into()),
                Item::Entry("d".into()),
                Item::Opaque("d".into()),
                Item::Entry("d/f".into()),
            ]
        );
        assert_eq!(branch_size(b).unwrap(), 5);
    }
}
