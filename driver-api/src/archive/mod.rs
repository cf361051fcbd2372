//! The one diff format of every driver: an uncompressed OCI image layer tar.
//!
//! # Writing
//! [`write_items`] and [`write_changes`] produce a canonical tar: the same
//! tree and the same items give the same bytes. Items are sorted by their
//! tar path compared component by component as byte strings (a directory
//! comes right before its contents: `a`, `a/b`, `a.c`). Headers are ustar,
//! with a PAX `x` header before an entry when a field does not fit (long
//! path or link, nanosecond mtime, xattrs, big ids or sizes); numeric
//! owners only; hard links (regular files with several names among the
//! items) are written once, later names as type `1`; sparse files use the
//! PAX sparse format 1.0 that GNU tar reads. Sockets cannot be stored in a
//! tar and are skipped with a warning. Whiteouts are empty regular files
//! `dir/.wh.<name>`, opaque directories `dir/.wh..wh..opq`, with all
//! metadata zero.
//!
//! # Applying
//! [`apply`] reads a plain, gzip or zstd tar and treats it as hostile:
//! names are validated (no absolute paths, no `..`, no NUL), every path is
//! resolved from a directory fd of the target without following symlinks,
//! and nodes are created with `*at` calls only; devices, fifos and setuid
//! files are never opened. Whiteouts are carried out in the chosen
//! [`WhiteoutFormat`]. PAX global headers are validated and ignored; GNU
//! old-style sparse entries (`S`) and PAX sparse 0.x are refused.

mod apply;
mod format;
mod read;
mod sys;
mod write;

use crate::{Change, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The prefix of a whiteout's name.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The largest zstd window (log2 bytes) [`apply`] accepts: 32 MiB. Streams
/// made with `zstd --long` (128 MiB windows) are refused.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 25;
/// The name of the opaque-directory marker.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

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

/// Writes a canonical tar of `items`, reading entries under `root`, then
/// the end-of-archive blocks; flushes and returns `out`.
///
/// Item paths are relative to `root` (a leading `/` and `.` components are
/// ignored); an `Entry` of the root itself is not written, duplicates are
/// written once. Entries are read with `lstat` (symlinks are never
/// followed); file data is streamed through a fixed buffer. Deterministic:
/// the same tree and items give the same bytes.
///
/// # Errors
/// [`crate::Error::Archive`] for a path with a `..` component, for a name
/// beginning with `.wh.` (it would read as a whiteout), for a whiteout of
/// the root, or for a file that changed size while being read;
/// [`crate::Error::Io`] for a missing entry or a failed read or write. On
/// error, `out` holds a partial tar.
pub fn write_items<W: Write>(root: &Path, items: Vec<Item>, out: W) -> Result<W> {
    write::write_items(root, items, out)
}

/// Writes a canonical tar of `changes` (paths absolute within `root`, as
/// the differ reports them): added and modified paths become entries,
/// deleted ones whiteouts. See [`write_items`].
///
/// # Errors
/// As [`write_items`].
pub fn write_changes<W: Write>(root: &Path, changes: &[Change], out: W) -> Result<W> {
    write::write_changes(root, changes, out)
}

/// Applies a layer tar (plain, gzip or zstd, detected by magic) into the
/// existing directory `target`, with deletions in `format`.
///
/// Existing entries are replaced (a directory over a directory is kept and
/// gets the new metadata). Missing parent directories are created 0755,
/// owned by root. Metadata is applied in the order owner, mode, xattrs,
/// times; directory times are set at the end, deepest first. In
/// [`WhiteoutFormat::Plain`], a deletion restores the times of its parent
/// directory afterwards.
///
/// Not idempotent. On error it returns at once and `target` may hold part
/// of the tar: the caller discards it.
///
/// # Errors
/// [`crate::Error::Archive`] naming the entry for a malformed or hostile
/// tar: bad checksum or numeric field, malformed or oversized (> 1 MiB)
/// extension headers, truncation, absolute names, `..`, NUL bytes, a
/// symlink or non-directory in a parent position, a hard link to a missing
/// or outside target, whiteout misuse, `trusted.overlay.*` or
/// `user.overlay.*` xattrs, unsupported entry types. [`crate::Error::Io`]
/// (with the entry's name as path) when a system call fails.
pub fn apply<R: Read>(tar: R, target: &Path, format: WhiteoutFormat) -> Result<ApplyStats> {
    let mut tar = tar;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match tar.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::Error::io("read", "layer tar", e)),
        }
    }
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(tar);
    if magic[..n].starts_with(&[0x1f, 0x8b]) {
        apply::apply(flate2::read::MultiGzDecoder::new(head), target, format)
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let mut dec = zstd::stream::read::Decoder::new(head)
            .map_err(|e| crate::Error::io("zstd", "layer tar", e))?;
        // A frame may ask for a window of up to 2 GiB; refuse more than
        // 32 MiB so a hostile stream cannot blow the memory budget.
        dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
            .map_err(|e| crate::Error::io("zstd", "layer tar", e))?;
        apply::apply(dec, target, format)
    } else {
        apply::apply(head, target, format)
    }
}
