//! Tree manifests: everything the suite compares about a directory tree,
//! captured from disk, and a readable comparison of two of them.
//!
//! A [`Manifest`] lists every entry under a root (the root itself included,
//! as `/`), sorted by path bytes, with: file type, mode including the
//! setuid/setgid/sticky bits, owner, size, a sha256 of the contents of
//! regular files (streamed, never held in memory), symlink target, device
//! number, hard-link group, extended attributes (except the overlay driver's
//! own `trusted.overlay.*` / `user.overlay.*`), modification time in
//! nanoseconds for everything but directories, and allocated blocks.
//!
//! [`assert_equal`] compares all of it except the allocated blocks (which
//! depend on the backing filesystem; sparse scenarios check them directly).

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The type of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Char => "char device",
            Kind::Block => "block device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        })
    }
}

/// One entry of a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path bytes relative to the root, starting with `/` (`/` is the root).
    pub path: Vec<u8>,
    /// File type.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 07777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes; 0 for directories (whose size depends on the filesystem).
    pub size: u64,
    /// Hex sha256 of the contents, for regular files.
    pub sha256: Option<String>,
    /// Symlink target bytes, for symlinks.
    pub target: Option<Vec<u8>>,
    /// Device number `(major, minor)`, for character and block devices.
    pub rdev: Option<(u64, u64)>,
    /// Hard-link group: the index (in the manifest) of the first path of the
    /// group, when at least two paths of this tree share the inode.
    pub link_group: Option<usize>,
    /// Extended attributes, except `trusted.overlay.*` and `user.overlay.*`.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Modification time in nanoseconds since the epoch; `None` for directories.
    pub mtime_ns: Option<i128>,
    /// Allocated 512-byte blocks (`st_blocks`); not compared by [`compare`].
    pub blocks: u64,
}

impl Entry {
    /// The path as text (lossy for non-UTF-8 names), for messages.
    pub fn display_path(&self) -> String {
        show(&self.path)
    }
}

/// Renders path bytes for messages: invalid UTF-8 bytes as `\xNN`.
pub fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Every entry of a tree, sorted by path bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries, the root (`/`) first.
    pub entries: Vec<Entry>,
}

/// Whether an xattr name belongs to the overlay driver's own bookkeeping.
fn is_driver_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Linux `dev_t` encoding: builds a device number.
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Linux `dev_t` encoding: the major number.
pub fn major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

/// Linux `dev_t` encoding: the minor number.
pub fn minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn read_xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = xattr::list(path).with_context(|| format!("listxattr {}", path.display()))?;
    for name in names {
        let nb = name.as_bytes();
        if is_driver_xattr(nb) {
            continue;
        }
        let value = xattr::get(path, &name)
            .with_context(|| format!("getxattr {} {}", path.display(), show(nb)))?
            .unwrap_or_default();
        out.insert(nb.to_vec(), value);
    }
    Ok(out)
}

fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"/" {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(&rel[1..]))
    }
}

impl Manifest {
    /// Captures the tree at `root`. Blocking: call it from
    /// `spawn_blocking` in async code. Read-only.
    ///
    /// # Errors
    /// Any failing `lstat`, `readdir`, `readlink`, `read` or xattr call,
    /// naming the path.
    pub fn capture(root: &Path) -> Result<Manifest> {
        let mut paths: Vec<Vec<u8>> = vec![b"/".to_vec()];
        let mut stack: Vec<Vec<u8>> = vec![b"/".to_vec()];
        while let Some(dir) = stack.pop() {
            let abs = join(root, &dir);
            for ent in fs::read_dir(&abs).with_context(|| format!("readdir {}", abs.display()))? {
                let ent = ent.with_context(|| format!("readdir {}", abs.display()))?;
                let mut rel = dir.clone();
                if rel != b"/" {
                    rel.push(b'/');
                }
                rel.extend_from_slice(ent.file_name().as_bytes());
                let ft = ent
                    .file_type()
                    .with_context(|| format!("file type {}", ent.path().display()))?;
                if ft.is_dir() {
                    stack.push(rel.clone());
                }
                paths.push(rel);
            }
        }
        paths.sort();
        let mut entries = Vec::with_capacity(paths.len());
        let mut inodes: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        for (i, rel) in paths.into_iter().enumerate() {
            let abs = join(root, &rel);
            let md =
                fs::symlink_metadata(&abs).with_context(|| format!("lstat {}", abs.display()))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_char_device() {
                Kind::Char
            } else if ft.is_block_device() {
                Kind::Block
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            if kind != Kind::Dir && md.nlink() > 1 {
                inodes.entry((md.dev(), md.ino())).or_default().push(i);
            }
            let sha256 = match kind {
                Kind::File => Some(sha256_file(&abs)?),
                _ => None,
            };
            let target = match kind {
                Kind::Symlink => Some(
                    fs::read_link(&abs)
                        .with_context(|| format!("readlink {}", abs.display()))?
                        .into_os_string()
                        .into_vec(),
                ),
                _ => None,
            };
            let rdev = match kind {
                Kind::Char | Kind::Block => Some((major(md.rdev()), minor(md.rdev()))),
                _ => None,
            };
            entries.push(Entry {
                path: rel,
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if kind == Kind::Dir { 0 } else { md.size() },
                sha256,
                target,
                rdev,
                link_group: None,
                xattrs: read_xattrs(&abs)?,
                mtime_ns: if kind == Kind::Dir {
                    None
                } else {
                    Some(md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128)
                },
                blocks: md.blocks(),
            });
        }
        for members in inodes.values() {
            if members.len() > 1 {
                let first = members[0];
                for &m in members {
                    entries[m].link_group = Some(first);
                }
            }
        }
        Ok(Manifest { entries })
    }

    /// Captures the tree at `root` on a blocking thread.
    ///
    /// # Errors
    /// As [`Manifest::capture`].
    pub async fn capture_async(root: PathBuf) -> Result<Manifest> {
        tokio::task::spawn_blocking(move || Manifest::capture(&root))
            .await
            .context("capture task panicked")?
    }

    /// The entry at `path` (`/a/b` form), if any.
    pub fn get(&self, path: impl AsRef<[u8]>) -> Option<&Entry> {
        let p = path.as_ref();
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(p))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The paths of all entries (`/a/b` form), in order.
    pub fn paths(&self) -> Vec<Vec<u8>> {
        self.entries.iter().map(|e| e.path.clone()).collect()
    }

    /// A copy without the entries for which `drop` is true. Hard-link groups
    /// are renumbered; a group left with one member is dissolved.
    pub fn without(&self, drop: impl Fn(&Entry) -> bool) -> Manifest {
        let kept: Vec<Entry> = self.entries.iter().filter(|e| !drop(e)).cloned().collect();
        Manifest::regroup(kept, |e| e.link_group)
    }

    /// Rebuilds link groups of `entries` from a key (old group ids).
    fn regroup(mut entries: Vec<Entry>, key: impl Fn(&Entry) -> Option<usize>) -> Manifest {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(k) = key(e) {
                groups.entry(k).or_default().push(i);
            }
        }
        for e in entries.iter_mut() {
            e.link_group = None;
        }
        for members in groups.values() {
            if members.len() > 1 {
                for &m in members {
                    entries[m].link_group = Some(members[0]);
                }
            }
        }
        Manifest { entries }
    }

    /// A copy with every hard-link group dissolved (for comparisons where
    /// links may legitimately be broken).
    pub fn without_links(&self) -> Manifest {
        let mut m = self.clone();
        for e in m.entries.iter_mut() {
            e.link_group = None;
        }
        m
    }

    /// The paths sharing `path`'s hard-link group (itself included), empty
    /// when it is in no group.
    pub fn link_peers(&self, path: impl AsRef<[u8]>) -> Vec<Vec<u8>> {
        match self.get(path).and_then(|e| e.link_group) {
            Some(g) => self
                .entries
                .iter()
                .filter(|e| e.link_group == Some(g))
                .map(|e| e.path.clone())
                .collect(),
            None => Vec::new(),
        }
    }
}

fn link_path(m: &Manifest, e: &Entry) -> Option<String> {
    e.link_group.map(|g| m.entries[g].display_path())
}

fn describe_attrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={}", show(k), show(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// The differences between two manifests, one line each, labelled with
/// `la` and `lb`. Allocated blocks are not compared. Empty when equal.
pub fn compare(a: &Manifest, b: &Manifest, la: &str, lb: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.entries.len() || j < b.entries.len() {
        let ea = a.entries.get(i);
        let eb = b.entries.get(j);
        match (ea, eb) {
            (Some(x), Some(y)) if x.path == y.path => {
                let p = x.display_path();
                if x.kind != y.kind {
                    out.push(format!("{p}: type {} in {la}, {} in {lb}", x.kind, y.kind));
                } else {
                    if x.mode != y.mode {
                        out.push(format!(
                            "{p}: mode {:04o} in {la}, {:04o} in {lb}",
                            x.mode, y.mode
                        ));
                    }
                    if (x.uid, x.gid) != (y.uid, y.gid) {
                        out.push(format!(
                            "{p}: owner {}:{} in {la}, {}:{} in {lb}",
                            x.uid, x.gid, y.uid, y.gid
                        ));
                    }
                    if x.size != y.size {
                        out.push(format!("{p}: size {} in {la}, {} in {lb}", x.size, y.size));
                    }
                    if x.sha256 != y.sha256 {
                        out.push(format!("{p}: contents differ"));
                    }
                    if x.target != y.target {
                        out.push(format!(
                            "{p}: symlink target {:?} in {la}, {:?} in {lb}",
                            x.target.as_deref().map(show),
                            y.target.as_deref().map(show)
                        ));
                    }
                    if x.rdev != y.rdev {
                        out.push(format!(
                            "{p}: device {:?} in {la}, {:?} in {lb}",
                            x.rdev, y.rdev
                        ));
                    }
                    let (lx, ly) = (link_path(a, x), link_path(b, y));
                    if lx != ly {
                        out.push(format!(
                            "{p}: hard-link group {} in {la}, {} in {lb}",
                            lx.unwrap_or_else(|| "none".into()),
                            ly.unwrap_or_else(|| "none".into())
                        ));
                    }
                    if x.xattrs != y.xattrs {
                        out.push(format!(
                            "{p}: xattrs {} in {la}, {} in {lb}",
                            describe_attrs(&x.xattrs),
                            describe_attrs(&y.xattrs)
                        ));
                    }
                    if x.mtime_ns != y.mtime_ns {
                        out.push(format!(
                            "{p}: mtime {:?} ns in {la}, {:?} ns in {lb}",
                            x.mtime_ns, y.mtime_ns
                        ));
                    }
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.path < y.path => {
                out.push(format!("{}: only in {la} ({})", x.display_path(), x.kind));
                i += 1;
            }
            (Some(_), Some(y)) => {
                out.push(format!("{}: only in {lb} ({})", y.display_path(), y.kind));
                j += 1;
            }
            (Some(x), None) => {
                out.push(format!("{}: only in {la} ({})", x.display_path(), x.kind));
                i += 1;
            }
            (None, Some(y)) => {
                out.push(format!("{}: only in {lb} ({})", y.display_path(), y.kind));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// How many differences [`assert_equal`] lists before cutting off.
pub const MAX_LISTED: usize = 20;

/// Fails with a readable list of the first differences when the two
/// manifests differ (see [`compare`]); `a` is labelled `left`, `b` `right`.
///
/// # Errors
/// When the trees differ.
pub fn assert_equal(a: &Manifest, b: &Manifest) -> Result<()> {
    assert_equal_as(a, b, "left", "right")
}

/// As [`assert_equal`] with chosen labels for the two sides.
///
/// # Errors
/// When the trees differ.
pub fn assert_equal_as(a: &Manifest, b: &Manifest, la: &str, lb: &str) -> Result<()> {
    let diffs = compare(a, b, la, lb);
    if diffs.is_empty() {
        return Ok(());
    }
    let n = diffs.len();
    let mut msg = format!("trees differ ({la} vs {lb}), {n} difference(s):");
    for d in diffs.iter().take(MAX_LISTED) {
        msg.push_str("\n  ");
        msg.push_str(d);
    }
    if n > MAX_LISTED {
        msg.push_str(&format!("\n  ... and {} more", n - MAX_LISTED));
    }
    anyhow::bail!(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_round_trip() {
        for (ma, mi) in [(0, 0), (1, 3), (8, 0), (259, 100_000), (4095, 1_048_575)] {
            let d = makedev(ma, mi);
            assert_eq!((major(d), minor(d)), (ma, mi));
        }
    }

    #[test]
    fn capture_and_compare() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), b"x").unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink("a", t.path().join("d/s")).unwrap();
        let m = Manifest::capture(t.path()).unwrap();
        let paths: Vec<String> = m.entries.iter().map(|e| e.display_path()).collect();
        assert_eq!(paths, ["/", "/a", "/b", "/d", "/d/s"]);
        assert_eq!(m.get("/a").unwrap().link_group, Some(1));
        assert_eq!(m.get("/b").unwrap().link_group, Some(1));
        assert_eq!(m.get("/d/s").unwrap().target.as_deref(), Some(&b"a"[..]));
        assert_equal(&m, &m).unwrap();

        fs::write(t.path().join("c"), b"y").unwrap();
        let m2 = Manifest::capture(t.path()).unwrap();
        let err = assert_equal(&m, &m2).unwrap_err().to_string();
        assert!(err.contains("/c: only in right"), "{err}");
        let m3 = m2.without(|e| e.path == b"/c" || e.path == b"/b");
        assert_eq!(m3.get("/a").unwrap().link_group, None);
    }
}
