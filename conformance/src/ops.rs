//! A small language of filesystem operations, applied the same way to a
//! mounted layer and to a plain reference directory, so that "a layer's
//! view equals a flat directory built by the same operations in order" can
//! be checked exactly.
//!
//! Every operation that creates or rewrites a non-directory ends by setting
//! an explicit modification time (a fixed default unless given), so the
//! result does not depend on when it ran and mtimes compare to the
//! nanosecond. Paths are relative to the root they are applied under and
//! may be any bytes (non-UTF-8 included).

use crate::tree::makedev;
use anyhow::{bail, Context, Result};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The modification time (ns since the epoch) given to files when an
/// operation names none: 2023-11-14 22:13:20.123456789 UTC.
pub const DEFAULT_MTIME: i128 = 1_700_000_000_123_456_789;

/// A path from bytes (non-UTF-8 allowed).
pub fn p(bytes: impl AsRef<[u8]>) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes.as_ref()))
}

/// A special file made by `mknod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// A character device `(major, minor)`.
    Char(u64, u64),
    /// A block device `(major, minor)`.
    Block(u64, u64),
    /// A named pipe.
    Fifo,
}

/// One filesystem operation. Build them with the functions of this module
/// ([`write`], [`file`], [`mkdir`], ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creates or rewrites a regular file (an existing file keeps its inode,
    /// so hard links see the change), then sets owner, mode and mtime.
    Write {
        /// Where.
        path: PathBuf,
        /// The whole new contents.
        data: Vec<u8>,
        /// Permission bits, special bits included.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Modification time, ns.
        mtime: i128,
    },
    /// Creates a directory (fails if it exists), then sets owner and mode.
    Mkdir {
        /// Where.
        path: PathBuf,
        /// Permission bits, special bits included.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Removes a file, or a directory with everything in it (`rm -rf`, but
    /// the path must exist).
    Remove {
        /// What.
        path: PathBuf,
    },
    /// `rename(2)`: replaces an existing target of a compatible type. Where
    /// the kernel answers `EXDEV` (overlay without `redirect_dir` renaming
    /// a directory from a lower layer), does what `mv` does: copies the
    /// tree, preserving everything, then removes the source.
    Rename {
        /// From.
        from: PathBuf,
        /// To.
        to: PathBuf,
    },
    /// `chmod(2)` (not for symlinks).
    Chmod {
        /// What.
        path: PathBuf,
        /// Permission bits, special bits included.
        mode: u32,
    },
    /// `lchown(2)`.
    Chown {
        /// What.
        path: PathBuf,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// `link(2)`: a new name for an existing entry (not followed).
    Link {
        /// The existing entry.
        existing: PathBuf,
        /// The new name.
        path: PathBuf,
    },
    /// `symlink(2)`, then `lchown` and the link's own mtime.
    Symlink {
        /// The link's target, as stored.
        target: PathBuf,
        /// Where.
        path: PathBuf,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Modification time, ns.
        mtime: i128,
    },
    /// `mknod(2)`, then owner, mode and mtime.
    Mknod {
        /// Where.
        path: PathBuf,
        /// What kind of node.
        node: Node,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Modification time, ns.
        mtime: i128,
    },
    /// Binds a Unix socket there (the socket file stays after the listener
    /// closes), then mode and mtime. Paths too long for `sun_path` fall
    /// back to `mknod(S_IFSOCK)`, which makes the same kind of inode.
    Socket {
        /// Where.
        path: PathBuf,
        /// Permission bits.
        mode: u32,
        /// Modification time, ns.
        mtime: i128,
    },
    /// `lsetxattr(2)`.
    SetXattr {
        /// What.
        path: PathBuf,
        /// Attribute name (`user.x`, `trusted.x`, `security.x`).
        name: OsString,
        /// Value (any bytes, may be empty).
        value: Vec<u8>,
    },
    /// `lremovexattr(2)`.
    RemoveXattr {
        /// What.
        path: PathBuf,
        /// Attribute name.
        name: OsString,
    },
    /// Sets the modification time (not followed through symlinks); the
    /// access time is left alone.
    SetMtime {
        /// What.
        path: PathBuf,
        /// Modification time, ns.
        mtime: i128,
    },
    /// Creates a sparse file: `size` bytes of holes with `chunks` of data
    /// written at their offsets, then mode and mtime.
    Sparse {
        /// Where.
        path: PathBuf,
        /// Apparent size.
        size: u64,
        /// `(offset, data)` written into the holes.
        chunks: Vec<(u64, Vec<u8>)>,
        /// Permission bits.
        mode: u32,
        /// Modification time, ns.
        mtime: i128,
    },
}

/// A root-owned regular file of mode 0644 with the default mtime.
pub fn write(path: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Op {
    file(path, data, 0o644, 0, 0)
}

/// A regular file with mode and owner, default mtime.
pub fn file(path: impl AsRef<[u8]>, data: impl AsRef<[u8]>, mode: u32, uid: u32, gid: u32) -> Op {
    Op::Write {
        path: p(path),
        data: data.as_ref().to_vec(),
        mode,
        uid,
        gid,
        mtime: DEFAULT_MTIME,
    }
}

/// A regular file with mode 0644, root-owned, and the given mtime.
pub fn write_at(path: impl AsRef<[u8]>, data: impl AsRef<[u8]>, mode: u32, mtime: i128) -> Op {
    Op::Write {
        path: p(path),
        data: data.as_ref().to_vec(),
        mode,
        uid: 0,
        gid: 0,
        mtime,
    }
}

/// A root-owned directory of mode 0755.
pub fn mkdir(path: impl AsRef<[u8]>) -> Op {
    dir(path, 0o755, 0, 0)
}

/// A directory with mode and owner.
pub fn dir(path: impl AsRef<[u8]>, mode: u32, uid: u32, gid: u32) -> Op {
    Op::Mkdir {
        path: p(path),
        mode,
        uid,
        gid,
    }
}

/// Removes a file or a whole directory.
pub fn rm(path: impl AsRef<[u8]>) -> Op {
    Op::Remove { path: p(path) }
}

/// Renames `from` to `to`.
pub fn rename(from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) -> Op {
    Op::Rename {
        from: p(from),
        to: p(to),
    }
}

/// Changes the mode.
pub fn chmod(path: impl AsRef<[u8]>, mode: u32) -> Op {
    Op::Chmod {
        path: p(path),
        mode,
    }
}

/// Changes the owner (not followed).
pub fn chown(path: impl AsRef<[u8]>, uid: u32, gid: u32) -> Op {
    Op::Chown {
        path: p(path),
        uid,
        gid,
    }
}

/// A hard link `path` to `existing`.
pub fn link(existing: impl AsRef<[u8]>, path: impl AsRef<[u8]>) -> Op {
    Op::Link {
        existing: p(existing),
        path: p(path),
    }
}

/// A root-owned symlink `path` -> `target` with the default mtime.
pub fn symlink(target: impl AsRef<[u8]>, path: impl AsRef<[u8]>) -> Op {
    Op::Symlink {
        target: p(target),
        path: p(path),
        uid: 0,
        gid: 0,
        mtime: DEFAULT_MTIME,
    }
}

/// A root-owned special file with the default mtime.
pub fn mknod(path: impl AsRef<[u8]>, node: Node, mode: u32) -> Op {
    Op::Mknod {
        path: p(path),
        node,
        mode,
        uid: 0,
        gid: 0,
        mtime: DEFAULT_MTIME,
    }
}

/// A Unix socket of mode 0755 with the default mtime.
pub fn socket(path: impl AsRef<[u8]>) -> Op {
    Op::Socket {
        path: p(path),
        mode: 0o755,
        mtime: DEFAULT_MTIME,
    }
}

/// Sets an extended attribute.
pub fn setxattr(path: impl AsRef<[u8]>, name: &str, value: impl AsRef<[u8]>) -> Op {
    Op::SetXattr {
        path: p(path),
        name: name.into(),
        value: value.as_ref().to_vec(),
    }
}

/// Removes an extended attribute.
pub fn rmxattr(path: impl AsRef<[u8]>, name: &str) -> Op {
    Op::RemoveXattr {
        path: p(path),
        name: name.into(),
    }
}

/// Sets the modification time.
pub fn mtime(path: impl AsRef<[u8]>, ns: i128) -> Op {
    Op::SetMtime {
        path: p(path),
        mtime: ns,
    }
}

/// A sparse file of mode 0644 with the default mtime.
pub fn sparse(path: impl AsRef<[u8]>, size: u64, chunks: Vec<(u64, Vec<u8>)>) -> Op {
    Op::Sparse {
        path: p(path),
        size,
        chunks,
        mode: 0o644,
        mtime: DEFAULT_MTIME,
    }
}

fn timespec(ns: i128) -> TimeSpec {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let nanos = ns.rem_euclid(1_000_000_000) as i64;
    TimeSpec::new(secs, nanos)
}

fn set_mtime(path: &Path, ns: i128) -> Result<()> {
    nix::sys::stat::utimensat(
        None,
        path,
        &TimeSpec::UTIME_OMIT,
        &timespec(ns),
        UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("utimensat {}", path.display()))
}

fn chown_chmod(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("lchown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// What `mv` does when `rename(2)` answers `EXDEV`: replaces `to` as
/// `rename` would (an empty directory for a directory, a non-directory for
/// a non-directory), copies the tree at `from` to `to` with owners, modes,
/// xattrs, times and the hard links inside it, then removes `from`.
fn move_across(from: &Path, to: &Path) -> Result<()> {
    let what = || format!("move {} -> {} (after EXDEV)", from.display(), to.display());
    let src = fs::symlink_metadata(from).with_context(|| format!("lstat {}", from.display()))?;
    match fs::symlink_metadata(to) {
        Ok(dst) if dst.is_dir() => {
            if !src.is_dir() {
                bail!("{}: the target is a directory", what());
            }
            // rename(2) only replaces an empty directory; rmdir refuses others.
            fs::remove_dir(to).with_context(|| format!("rmdir {} (replaced)", to.display()))?;
        }
        Ok(_) => {
            if src.is_dir() {
                bail!("{}: the target is not a directory", what());
            }
            fs::remove_file(to).with_context(|| format!("unlink {} (replaced)", to.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("lstat {}", to.display())),
    }
    strata_driver_api::copy::copy_tree(from, to).with_context(what)?;
    if src.is_dir() {
        fs::remove_dir_all(from)
    } else {
        fs::remove_file(from)
    }
    .with_context(|| format!("remove {} (moved)", from.display()))
}

/// The longest socket path `bind` takes (`sun_path` is 108 bytes with NUL).
const SUN_PATH_MAX: usize = 107;

impl Op {
    /// Applies this operation under `root`. Blocking.
    ///
    /// # Errors
    /// The failing system call, naming the path.
    pub fn apply(&self, root: &Path) -> Result<()> {
        match self {
            Op::Write {
                path,
                data,
                mode,
                uid,
                gid,
                mtime,
            } => {
                let at = root.join(path);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&at)
                    .with_context(|| format!("open {}", at.display()))?;
                f.write_all(data)
                    .with_context(|| format!("write {}", at.display()))?;
                drop(f);
                chown_chmod(&at, *uid, *gid, *mode)?;
                set_mtime(&at, *mtime)
            }
            Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => {
                let at = root.join(path);
                fs::create_dir(&at).with_context(|| format!("mkdir {}", at.display()))?;
                chown_chmod(&at, *uid, *gid, *mode)
            }
            Op::Remove { path } => {
                let at = root.join(path);
                let md =
                    fs::symlink_metadata(&at).with_context(|| format!("lstat {}", at.display()))?;
                if md.is_dir() {
                    fs::remove_dir_all(&at)
                } else {
                    fs::remove_file(&at)
                }
                .with_context(|| format!("remove {}", at.display()))
            }
            Op::Rename { from, to } => {
                let (a, b) = (root.join(from), root.join(to));
                match fs::rename(&a, &b) {
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => move_across(&a, &b),
                    r => r.with_context(|| format!("rename {} -> {}", a.display(), b.display())),
                }
            }
            Op::Chmod { path, mode } => {
                let at = root.join(path);
                fs::set_permissions(&at, fs::Permissions::from_mode(*mode))
                    .with_context(|| format!("chmod {}", at.display()))
            }
            Op::Chown { path, uid, gid } => {
                let at = root.join(path);
                std::os::unix::fs::lchown(&at, Some(*uid), Some(*gid))
                    .with_context(|| format!("lchown {}", at.display()))
            }
            Op::Link { existing, path } => {
                let (a, b) = (root.join(existing), root.join(path));
                fs::hard_link(&a, &b)
                    .with_context(|| format!("link {} -> {}", b.display(), a.display()))
            }
            Op::Symlink {
                target,
                path,
                uid,
                gid,
                mtime,
            } => {
                let at = root.join(path);
                std::os::unix::fs::symlink(target, &at)
                    .with_context(|| format!("symlink {}", at.display()))?;
                std::os::unix::fs::lchown(&at, Some(*uid), Some(*gid))
                    .with_context(|| format!("lchown {}", at.display()))?;
                set_mtime(&at, *mtime)
            }
            Op::Mknod {
                path,
                node,
                mode,
                uid,
                gid,
                mtime,
            } => {
                let at = root.join(path);
                let (kind, dev) = match *node {
                    Node::Char(ma, mi) => (SFlag::S_IFCHR, makedev(ma, mi)),
                    Node::Block(ma, mi) => (SFlag::S_IFBLK, makedev(ma, mi)),
                    Node::Fifo => (SFlag::S_IFIFO, 0),
                };
                nix::sys::stat::mknod(&at, kind, Mode::from_bits_truncate(*mode), dev)
                    .with_context(|| format!("mknod {}", at.display()))?;
                chown_chmod(&at, *uid, *gid, *mode)?;
                set_mtime(&at, *mtime)
            }
            Op::Socket { path, mode, mtime } => {
                let at = root.join(path);
                if at.as_os_str().len() <= SUN_PATH_MAX {
                    let l = std::os::unix::net::UnixListener::bind(&at)
                        .with_context(|| format!("bind {}", at.display()))?;
                    drop(l);
                } else {
                    nix::sys::stat::mknod(&at, SFlag::S_IFSOCK, Mode::from_bits_truncate(*mode), 0)
                        .with_context(|| format!("mknod socket {}", at.display()))?;
                }
                fs::set_permissions(&at, fs::Permissions::from_mode(*mode))
                    .with_context(|| format!("chmod {}", at.display()))?;
                set_mtime(&at, *mtime)
            }
            Op::SetXattr { path, name, value } => {
                let at = root.join(path);
                xattr::set(&at, name, value).with_context(|| {
                    format!("setxattr {} {}", at.display(), name.to_string_lossy())
                })
            }
            Op::RemoveXattr { path, name } => {
                let at = root.join(path);
                xattr::remove(&at, name).with_context(|| {
                    format!("removexattr {} {}", at.display(), name.to_string_lossy())
                })
            }
            Op::SetMtime { path, mtime } => set_mtime(&root.join(path), *mtime),
            Op::Sparse {
                path,
                size,
                chunks,
                mode,
                mtime,
            } => {
                let at = root.join(path);
                let f =
                    fs::File::create(&at).with_context(|| format!("create {}", at.display()))?;
                f.set_len(*size)
                    .with_context(|| format!("truncate {}", at.display()))?;
                for (off, data) in chunks {
                    if off + data.len() as u64 > *size {
                        bail!("sparse chunk past the end of {}", at.display());
                    }
                    f.write_all_at(data, *off)
                        .with_context(|| format!("write {} at {off}", at.display()))?;
                }
                drop(f);
                fs::set_permissions(&at, fs::Permissions::from_mode(*mode))
                    .with_context(|| format!("chmod {}", at.display()))?;
                set_mtime(&at, *mtime)
            }
        }
    }
}

/// Applies `ops` in order under `root`. Blocking.
///
/// # Errors
/// The first failing operation, with its index.
pub fn apply(root: &Path, ops: &[Op]) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        op.apply(root)
            .with_context(|| format!("operation #{i} ({})", op.short()))?;
    }
    Ok(())
}

impl Op {
    /// A one-line description without file contents.
    pub fn short(&self) -> String {
        let s = |p: &PathBuf| crate::tree::show(p.as_os_str().as_bytes());
        match self {
            Op::Write { path, data, .. } => format!("write {} ({} bytes)", s(path), data.len()),
            Op::Mkdir { path, .. } => format!("mkdir {}", s(path)),
            Op::Remove { path } => format!("rm {}", s(path)),
            Op::Rename { from, to } => format!("rename {} {}", s(from), s(to)),
            Op::Chmod { path, mode } => format!("chmod {mode:o} {}", s(path)),
            Op::Chown { path, uid, gid } => format!("chown {uid}:{gid} {}", s(path)),
            Op::Link { existing, path } => format!("link {} {}", s(existing), s(path)),
            Op::Symlink { target, path, .. } => format!("symlink {} {}", s(target), s(path)),
            Op::Mknod { path, node, .. } => format!("mknod {} {node:?}", s(path)),
            Op::Socket { path, .. } => format!("socket {}", s(path)),
            Op::SetXattr { path, name, .. } => {
                format!("setxattr {} {}", s(path), name.to_string_lossy())
            }
            Op::RemoveXattr { path, name } => {
                format!("removexattr {} {}", s(path), name.to_string_lossy())
            }
            Op::SetMtime { path, mtime } => format!("mtime {} {mtime}", s(path)),
            Op::Sparse { path, size, .. } => format!("sparse {} {size}", s(path)),
        }
    }
}

/// Prepares a fresh reference root at `dir`: created, mode 0755, owned by
/// root (as a driver's empty layer is). Blocking.
///
/// # Errors
/// `mkdir`, `chown` or `chmod` failing.
pub fn reference_root(dir: &Path) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    chown_chmod(dir, 0, 0, 0o755)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Kind, Manifest};

    /// Whether this runs as root; if not, says that `test` is skipped
    /// (needing root for `what`), and fails under `CI=true`.
    fn root_or_skip(test: &str, what: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        // Written past the test harness's capture, so the skip is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIP {test}: needs root ({what})");
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI needs root");
        false
    }

    #[test]
    fn ops_build_expected_tree() {
        if !root_or_skip("ops_build_expected_tree", "chown, mknod") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        reference_root(&root).unwrap();
        apply(
            &root,
            &[
                dir("d", 0o1705, 1, 2),
                file("d/f", b"hello", 0o4222, 0, 0),
                symlink("d/f", "s"),
                link("d/f", "h"),
                mknod("fifo", Node::Fifo, 0o600),
                mknod("chr", Node::Char(1, 3), 0o666),
                socket("sock"),
                setxattr("d/f", "user.k", b"v"),
                sparse("sp", 1 << 20, vec![(4096, b"x".to_vec())]),
                write(b"caf\xe9", b""),
                rename("h", "h2"),
                mtime("s", 5_000_000_001),
            ],
        )
        .unwrap();
        let m = Manifest::capture(&root).unwrap();
        let d = m.get("/d").unwrap();
        assert_eq!((d.kind, d.mode, d.uid, d.gid), (Kind::Dir, 0o1705, 1, 2));
        let f = m.get("/d/f").unwrap();
        assert_eq!(f.mode, 0o4222);
        assert_eq!(f.mtime_ns, Some(DEFAULT_MTIME));
        assert_eq!(f.xattrs.get(&b"user.k"[..]).unwrap(), b"v");
        assert_eq!(m.link_peers("/h2"), vec![b"/d/f".to_vec(), b"/h2".to_vec()]);
        assert_eq!(m.get("/s").unwrap().mtime_ns, Some(5_000_000_001));
        assert_eq!(m.get("/sock").unwrap().kind, Kind::Socket);
        assert_eq!(m.get("/chr").unwrap().rdev, Some((1, 3)));
        assert!(m.get(b"/caf\xe9").is_some());
        assert!(m.get("/sp").unwrap().blocks < 64);
    }

    /// The `EXDEV` fallback gives the tree a real rename would: the same
    /// manifest as `rename(2)` on one filesystem, links inside kept.
    #[test]
    fn move_across_matches_rename() {
        if !root_or_skip("move_across_matches_rename", "chown") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let build = |name: &str| {
            let root = t.path().join(name);
            fs::create_dir(&root).unwrap();
            apply(
                &root,
                &[
                    mkdir("d"),
                    write("d/f", b"data"),
                    link("d/f", "d/g"),
                    symlink("f", "d/s"),
                    setxattr("d/f", "user.k", b"v"),
                    mkdir("d/e"),
                    mtime("d/s", 5_000_000_001),
                    mkdir("empty"),
                    write("x", b"x"),
                    write("y", b"y"),
                ],
            )
            .unwrap();
            root
        };
        let (a, b) = (build("a"), build("b"));
        apply(&a, &[rename("d", "empty"), rename("x", "y")]).unwrap();
        move_across(&b.join("d"), &b.join("empty")).unwrap();
        move_across(&b.join("x"), &b.join("y")).unwrap();
        let (ma, mb) = (
            Manifest::capture(&a).unwrap(),
            Manifest::capture(&b).unwrap(),
        );
        crate::tree::assert_equal(&ma, &mb).unwrap();
        assert_eq!(mb.link_peers("/empty/f").len(), 2);
        // rename(2)'s refusals hold too.
        fs::create_dir(b.join("full")).unwrap();
        fs::write(b.join("full/z"), b"z").unwrap();
        assert!(move_across(&b.join("empty"), &b.join("full")).is_err());
        assert!(move_across(&b.join("y"), &b.join("full")).is_err());
    }
}
