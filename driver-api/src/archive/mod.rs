//! The one diff format of every driver: an uncompressed OCI image layer tar.
//!
//! STUB: the interface below is fixed; the implementation is being written.

use crate::{Change, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How deletions are represented in the directory a tar is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Carry the deletions out: the target holds the full merged tree (vfs,
    /// btrfs, devmapper, the naive apply).
    Plain,
    /// Overlay's upper-dir format: a char device 0/0 per deleted name,
    /// `trusted.overlay.opaque=y` on opaque directories.
    Overlay,
    /// AUFS's branch format, which is the tar's: `.wh.<name>` files and
    /// `.wh..wh..opq` markers are kept as they are.
    Aufs,
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Bytes of regular-file content written (hard links counted once).
    pub bytes: u64,
    /// Tar entries applied (whiteouts included).
    pub entries: u64,
}

/// One entry to write into a layer tar, relative to the tree's root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Item {
    /// The entry at this path of the tree (file, dir, link, device...), read
    /// from disk with its metadata.
    Entry(PathBuf),
    /// A deletion of this path: written as `.wh.<name>` in its parent.
    Whiteout(PathBuf),
    /// This directory is opaque: written as `<dir>/.wh..wh..opq`.
    Opaque(PathBuf),
}

/// Writes a canonical tar of `items`, reading entries under `root`.
pub fn write_items<W: Write>(root: &Path, items: Vec<Item>, out: W) -> Result<W> {
    let _ = (root, items);
    Ok(out)
}

/// Writes a canonical tar of `changes` (paths absolute within `root`).
pub fn write_changes<W: Write>(root: &Path, changes: &[Change], out: W) -> Result<W> {
    let _ = (root, changes);
    Ok(out)
}

/// Applies a layer tar (plain, gzip or zstd) into `target`.
pub fn apply<R: Read>(tar: R, target: &Path, format: WhiteoutFormat) -> Result<ApplyStats> {
    let _ = (tar, target, format);
    Ok(ApplyStats::default())
}
