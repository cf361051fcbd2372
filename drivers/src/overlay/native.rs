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

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use strata_driver_api::archive::Item;
use strata_driver_api::{Change, ChangeKind, IoContext, Result};

/// The xattr marking an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The xattr marking an xattr-form whiteout.
pub const WHITEOUT_XATTR: &str = "trusted.overlay.whiteout";

/// What one upper-dir entry means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Whiteout,
    OpaqueDir,
    Dir,
    Other,
}

fn classify(path: &Path, md: &fs::Metadata) -> Result<Kind> {
    let ft = md.file_type();
    if ft.is_char_device() && md.rdev() == 0 {
        return Ok(Kind::Whiteout);
    }
    if ft.is_file()
        && md.len() == 0
        && xattr::get(path, WHITEOUT_XATTR)
            .ctx("getxattr", path)?
            .is_some()
    {
        return Ok(Kind::Whiteout);
    }
    if ft.is_dir() {
        let opaque = xattr::get(path, OPAQUE_XATTR).ctx("getxattr", path)?;
        return Ok(if opaque.as_deref() == Some(b"y") {
            Kind::OpaqueDir
        } else {
            Kind::Dir
        });
    }
    Ok(Kind::Other)
}

fn walk(
    root: &Path,
    rel: &Path,
    f: &mut dyn FnMut(&Path, &Path, &fs::Metadata, Kind) -> Result<()>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .ctx("readdir", &dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .ctx("readdir", &dir)?;
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = root.join(&r);
        let md = fs::symlink_metadata(&p).ctx("lstat", &p)?;
        let kind = classify(&p, &md)?;
        f(&p, &r, &md, kind)?;
        if matches!(kind, Kind::Dir | Kind::OpaqueDir) {
            walk(root, &r, f)?;
        }
    }
    Ok(())
}

/// The tar items of an upper directory, in walk order (the archive writer
/// sorts them). The root itself is not an item.
///
/// # Errors
/// [`Error::Io`] naming the entry that could not be read.
pub fn upper_items(upper: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    walk(upper, Path::new(""), &mut |_, rel, _, kind| {
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
    walk(upper, Path::new(""), &mut |_, _, md, kind| {
        if kind == Kind::Other
            && md.file_type().is_file()
            && (md.nlink() < 2 || seen.insert((md.dev(), md.ino())))
        {
            total += md.len();
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
    walk(upper, Path::new(""), &mut |_, rel, _, kind| {
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
