//! Tree copy: reflink, then `copy_file_range`, then read/write (or one
//! method only: [`copy_tree_with`]).
//!
//! [`copy_tree`] copies every entry type (directories, regular files,
//! symlinks, character and block devices, fifos, sockets) with its owner,
//! mode (setuid, setgid, sticky included), extended attributes (every
//! namespace: `user.*`, `trusted.*`, `security.*`, `system.*`) and access
//! and modification times to the nanosecond. Hard links stay hard links.
//!
//! File data is cloned with `FICLONE` where the filesystem can share blocks
//! (btrfs, xfs with `reflink=1`); otherwise only the data segments of the
//! source (found with `SEEK_DATA`/`SEEK_HOLE`) are copied, with
//! `copy_file_range` or else `read`/`write` through a bounded buffer, so
//! sparse files stay sparse. The method that failed for a source filesystem
//! is not tried again for its other files.
//!
//! Metadata is applied in this order, because each step can undo an earlier
//! one: data, then owner (`chown` clears setuid/setgid and
//! `security.capability`), then mode, then xattrs (`security.capability`
//! last), then times. A directory's metadata is applied after its contents
//! are copied (so a read-only directory can be filled and its mtime stays).
//! Source files and directories are opened with `O_NOATIME` where the
//! caller may (owner or root), so copying does not move the source's
//! atimes.

mod sys;

use crate::{Error, IoContext, Result};
use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::Whence;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

/// How file data was copied. Ordered from the most sharing to the least.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CopyMethod {
    /// `FICLONE`: blocks shared, nothing copied.
    Reflink,
    /// `copy_file_range`: copied in the kernel. Note: on filesystems that
    /// can clone (btrfs, xfs with `reflink=1`), Linux 5.3 and later serve
    /// it by cloning too, so the blocks end up shared.
    CopyFileRange,
    /// `read`/`write` through user space: always new, unshared blocks.
    ReadWrite,
}

impl CopyMethod {
    /// The method's name as configuration and status show it: `reflink`,
    /// `copy_file_range`, `read-write`.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::CopyFileRange => "copy_file_range",
            CopyMethod::ReadWrite => "read-write",
        }
    }
}

/// Which methods [`copy_tree_with`] may use for file data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyChoice {
    /// The best the filesystem accepts: reflink, else `copy_file_range`,
    /// else read/write (what [`copy_tree`] does).
    #[default]
    Auto,
    /// Exactly this method for every file, no fallback: a file it cannot
    /// copy fails the copy with the method's error (`EOPNOTSUPP`, `EXDEV`,
    /// `EINVAL`...). `Only(CopyMethod::ReadWrite)` is the way to get
    /// unshared blocks on a filesystem that can clone (see
    /// [`CopyMethod::CopyFileRange`]).
    Only(CopyMethod),
}

/// What [`copy_tree`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries copied, the root included (every name: a second hard link
    /// counts as an entry).
    pub entries: u64,
    /// Bytes of file data (logical sizes; a hard-linked file counted once).
    pub bytes: u64,
    /// The method used for the last regular file (the best one the
    /// filesystem accepted), `None` when no file was copied.
    pub method: Option<CopyMethod>,
    /// The least sharing method used for any file (the greatest in
    /// [`CopyMethod`]'s order), `None` when no file was copied.
    pub worst: Option<CopyMethod>,
}

/// The size of the buffer of the read/write fallback.
const BUF_SIZE: usize = 256 * 1024;
/// The most one `copy_file_range` call is asked to copy (keeps each call
/// short, so progress is steady and offsets never overflow).
const CFR_CHUNK: u64 = 1 << 30;

/// Copies the tree at `src` to `dst`, which must not exist.
///
/// `dst` is created (its parent must exist) with the metadata of `src`'s
/// root. Symlinks in `src` are copied as symlinks, never followed (the root
/// too). Owners are copied by number; copying files owned by others, device
/// nodes and `trusted.*` xattrs needs root.
///
/// Not idempotent: a second call fails because `dst` exists. A failed copy
/// leaves a partial tree at `dst`, which the caller removes.
///
/// # Errors
/// [`Error::Io`] naming the operation and the path: `EEXIST` when `dst`
/// exists; any failure to read an entry of `src` or to create or set up its
/// copy (`ENOSPC`, `EPERM` for an owner or device without privilege,
/// `EOPNOTSUPP` for xattrs the destination filesystem cannot keep).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats> {
    copy_tree_with(src, dst, CopyChoice::Auto)
}

/// [`copy_tree`] with the file data copied as `choice` says.
///
/// Same preconditions, (non-)idempotency and errors as [`copy_tree`]; with
/// [`CopyChoice::Only`], also the chosen method's error for the first file
/// it cannot copy (named by the operation: `ficlone`, `copy_file_range`).
pub fn copy_tree_with(src: &Path, dst: &Path, choice: CopyChoice) -> Result<CopyStats> {
    match std::fs::symlink_metadata(dst) {
        Ok(_) => {
            return Err(Error::io(
                "copy_tree",
                dst,
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("lstat", dst, e)),
    }
    let md = std::fs::symlink_metadata(src).ctx("lstat", src)?;
    let mut copier = Copier {
        choice,
        ..Copier::default()
    };
    let mut src = src.to_path_buf();
    let mut dst = dst.to_path_buf();
    copier.entry(&mut src, &mut dst, &md)?;
    Ok(copier.stats)
}

/// Whether files in `dir` can be reflinked (`FICLONE` works there).
///
/// Creates two hidden temporary files in `dir` (4 KiB of data in the
/// first), tries to clone one into the other and removes both. Any failure
/// (including not being able to create the files) answers `false`.
pub fn probe_reflink(dir: &Path) -> bool {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base = format!(".strata-reflink-probe.{}.{stamp}", std::process::id());
    let create = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(|file| (file, TempFile(path.to_path_buf())))
    };
    let Ok((src, _src_guard)) = create(&dir.join(format!("{base}.a"))) else {
        return false;
    };
    if src.write_all_at(&[0x5a; 4096], 0).is_err() {
        return false;
    }
    let Ok((dst, _dst_guard)) = create(&dir.join(format!("{base}.b"))) else {
        return false;
    };
    // The guards remove both files after the attempt.
    sys::ficlone(dst.as_fd(), src.as_fd()).is_ok()
}

/// Removes a file when dropped (best effort).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory being copied: its sorted names, the next one to copy, and
/// its metadata, applied when all names are done.
struct DirLevel {
    names: Vec<OsString>,
    next: usize,
    md: Metadata,
}

/// The state of one [`copy_tree`].
#[derive(Default)]
struct Copier {
    /// The methods allowed.
    choice: CopyChoice,
    stats: CopyStats,
    /// The first copy of each hard-linked source inode: (dev, ino) -> path.
    links: HashMap<(u64, u64), PathBuf>,
    /// Per source filesystem (st_dev): the best method not yet refused.
    methods: HashMap<u64, CopyMethod>,
    /// The read/write buffer, allocated on first use.
    buf: Vec<u8>,
}

impl Copier {
    /// Copies the entry at `src` (with metadata `md`) to the new path `dst`,
    /// a directory with everything below it.
    ///
    /// The walk keeps its own stack of open levels (one sorted listing
    /// each) instead of recursing, so the deepest tree path-based calls
    /// allow fits any thread's stack.
    fn entry(&mut self, src: &mut PathBuf, dst: &mut PathBuf, md: &Metadata) -> Result<()> {
        if !md.file_type().is_dir() {
            return self.leaf(src, dst, md);
        }
        self.stats.entries += 1;
        let mut stack = vec![self.enter_dir(src, dst, md)?];
        while let Some(top) = stack.last_mut() {
            if let Some(name) = top.names.get(top.next) {
                top.next += 1;
                src.push(name);
                dst.push(name);
                let child = std::fs::symlink_metadata(&*src).ctx("lstat", &*src)?;
                if child.file_type().is_dir() {
                    self.stats.entries += 1;
                    // The paths stay pushed until the level is done.
                    stack.push(self.enter_dir(src, dst, &child)?);
                    continue;
                }
                self.leaf(src, dst, &child)?;
                src.pop();
                dst.pop();
                continue;
            }
            let done = stack.pop().expect("a level is open");
            set_metadata(src, dst, &done.md)?;
            if !stack.is_empty() {
                src.pop();
                dst.pop();
            }
        }
        Ok(())
    }

    /// Creates the directory `dst` (private until its metadata is applied
    /// when its level is done) and lists `src`.
    fn enter_dir(&mut self, src: &Path, dst: &Path, md: &Metadata) -> Result<DirLevel> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .ctx("mkdir", dst)?;
        Ok(DirLevel {
            names: list(src)?,
            next: 0,
            md: md.clone(),
        })
    }

    /// Copies a non-directory entry.
    fn leaf(&mut self, src: &mut PathBuf, dst: &mut PathBuf, md: &Metadata) -> Result<()> {
        self.stats.entries += 1;
        // Hard links of any non-directory (files, symlinks, fifos, devices,
        // sockets): later names link to the first copy.
        let key = (md.dev(), md.ino());
        if md.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                return std::fs::hard_link(first, &*dst).ctx("link", &*dst);
            }
        }
        self.new_leaf(src, dst, md)?;
        if md.nlink() > 1 {
            self.links.insert(key, dst.clone());
        }
        Ok(())
    }

    /// Makes the first (or only) copy of a non-directory entry.
    fn new_leaf(&mut self, src: &mut PathBuf, dst: &mut PathBuf, md: &Metadata) -> Result<()> {
        let ft = md.file_type();
        if ft.is_file() {
            let method = self.file(src, dst, md)?;
            self.stats.bytes += md.size();
            self.stats.method = Some(method);
            self.stats.worst = self.stats.worst.max(Some(method));
            return set_metadata(src, dst, md);
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(&*src).ctx("readlink", &*src)?;
            std::os::unix::fs::symlink(&target, &*dst).ctx("symlink", &*dst)?;
            return set_metadata(src, dst, md);
        }
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else if ft.is_socket() {
            SFlag::S_IFSOCK
        } else {
            return Err(Error::io(
                "copy",
                &*src,
                std::io::Error::new(std::io::ErrorKind::Unsupported, "unknown file type"),
            ));
        };
        nix::sys::stat::mknod(&*dst, kind, Mode::from_bits_truncate(0o600), md.rdev())
            .ctx("mknod", &*dst)?;
        set_metadata(src, dst, md)
    }

    /// Copies a regular file's data to the new file `dst`; returns the
    /// method that copied it.
    fn file(&mut self, src: &Path, dst: &Path, md: &Metadata) -> Result<CopyMethod> {
        let input = open_source(src)?;
        let output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .ctx("create", dst)?;
        let dev = md.dev();
        let strict = matches!(self.choice, CopyChoice::Only(_));
        let mut method = match self.choice {
            CopyChoice::Auto => *self.methods.get(&dev).unwrap_or(&CopyMethod::Reflink),
            CopyChoice::Only(m) => m,
        };
        if method == CopyMethod::Reflink {
            match sys::ficlone(output.as_fd(), input.as_fd()) {
                Ok(()) => return Ok(CopyMethod::Reflink),
                Err(e) if strict => return Err(Error::nix("ficlone", dst, e)),
                // This pair of files only (for example different nodatacow
                // flags on btrfs): fall back without giving up reflinks.
                Err(Errno::EINVAL) => method = CopyMethod::CopyFileRange,
                // The filesystem cannot (EOPNOTSUPP; ENOTTY on kernels that
                // do not know the ioctl) or the pair is not on one
                // filesystem (EXDEV): never try again for this source.
                Err(Errno::EOPNOTSUPP | Errno::EXDEV | Errno::ENOTTY | Errno::ENOSYS) => {
                    method = CopyMethod::CopyFileRange;
                    self.methods.insert(dev, method);
                }
                Err(e) => return Err(Error::nix("ficlone", dst, e)),
            }
        }
        let size = md.size();
        let used = self.sparse_copy(&input, src, &output, dst, size, dev, method)?;
        output.set_len(size).ctx("ftruncate", dst)?;
        Ok(used)
    }

    /// Copies the data segments of `input` below `size` to the same offsets
    /// of `output`, starting with `method`; returns the method that
    /// finished the copy.
    #[allow(clippy::too_many_arguments)]
    fn sparse_copy(
        &mut self,
        input: &File,
        src: &Path,
        output: &File,
        dst: &Path,
        size: u64,
        dev: u64,
        mut method: CopyMethod,
    ) -> Result<CopyMethod> {
        let fd = input.as_raw_fd();
        let mut off = 0u64;
        while off < size {
            let data = match nix::unistd::lseek(fd, off as i64, Whence::SeekData) {
                Ok(data) => data as u64,
                // No data at or after `off`: the rest is a hole.
                Err(Errno::ENXIO) => break,
                // SEEK_DATA not supported: everything is data.
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => off,
                Err(e) => return Err(Error::nix("lseek", src, e)),
            };
            if data >= size {
                break;
            }
            let hole = match nix::unistd::lseek(fd, data as i64, Whence::SeekHole) {
                Ok(hole) => hole as u64,
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => size,
                Err(e) => return Err(Error::nix("lseek", src, e)),
            };
            let end = hole.min(size);
            if end <= data {
                break;
            }
            method = self.copy_range(input, src, output, dst, data, end, dev, method)?;
            off = end;
        }
        Ok(method)
    }

    /// Copies bytes `start..end` of `input` to the same offsets of `output`.
    #[allow(clippy::too_many_arguments)]
    fn copy_range(
        &mut self,
        input: &File,
        src: &Path,
        output: &File,
        dst: &Path,
        start: u64,
        end: u64,
        dev: u64,
        mut method: CopyMethod,
    ) -> Result<CopyMethod> {
        let mut pos = start;
        if method == CopyMethod::CopyFileRange {
            while pos < end {
                let mut off_in = pos as i64;
                let mut off_out = pos as i64;
                let len = (end - pos).min(CFR_CHUNK) as usize;
                match nix::fcntl::copy_file_range(
                    input.as_fd(),
                    Some(&mut off_in),
                    output.as_fd(),
                    Some(&mut off_out),
                    len,
                ) {
                    Ok(0) => {
                        // The source ended early or the filesystem copies
                        // nothing this way: read/write the rest (only
                        // filling what the source still has, when strict).
                        if self.choice == CopyChoice::Auto {
                            method = CopyMethod::ReadWrite;
                        }
                        break;
                    }
                    Ok(n) => pos += n as u64,
                    Err(Errno::EINTR) => {}
                    Err(e) if self.choice != CopyChoice::Auto => {
                        return Err(Error::nix("copy_file_range", dst, e))
                    }
                    Err(
                        Errno::EXDEV
                        | Errno::EINVAL
                        | Errno::EOPNOTSUPP
                        | Errno::ENOSYS
                        | Errno::EBADF
                        | Errno::EPERM,
                    ) => {
                        method = CopyMethod::ReadWrite;
                        self.methods.insert(dev, method);
                        break;
                    }
                    Err(e) => return Err(Error::nix("copy_file_range", dst, e)),
                }
            }
        }
        if pos < end && (method == CopyMethod::ReadWrite || self.choice == CopyChoice::Auto) {
            method = CopyMethod::ReadWrite;
            if self.buf.is_empty() {
                self.buf = vec![0; BUF_SIZE];
            }
            while pos < end {
                let want = ((end - pos) as usize).min(self.buf.len());
                let n = match input.read_at(&mut self.buf[..want], pos) {
                    Ok(0) => break, // the source shrank; ftruncate fills the rest
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io("read", src, e)),
                };
                output.write_all_at(&self.buf[..n], pos).ctx("write", dst)?;
                pos += n as u64;
            }
        }
        Ok(method)
    }
}

/// The names in `dir`, sorted by their bytes (a stable copy order). The
/// directory is opened without following a symlink and, where allowed,
/// without touching its atime.
fn list(dir: &Path) -> Result<Vec<OsString>> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut handle = match nix::dir::Dir::open(dir, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => nix::dir::Dir::open(dir, flags, Mode::empty()),
        other => other,
    }
    .ctx("opendir", dir)?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let entry = entry.ctx("readdir", dir)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Opens a regular file of the source for reading: never through a
/// symlink, and where allowed (owner or `CAP_FOWNER`) without touching its
/// atime, so a copy leaves the source's times as they were.
fn open_source(src: &Path) -> Result<File> {
    let open = |extra: libc::c_int| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | extra)
            .open(src)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
    .ctx("open", src)
}

/// Applies `md` (the metadata of `src`) and `src`'s xattrs to the new entry
/// `dst`: owner, then mode, then xattrs, then times.
fn set_metadata(src: &Path, dst: &Path, md: &Metadata) -> Result<()> {
    let is_symlink = md.file_type().is_symlink();
    let now = std::fs::symlink_metadata(dst).ctx("lstat", dst)?;
    // An unprivileged copy of one's own files needs no chown (and would be
    // refused for another owner anyway).
    if now.uid() != md.uid() || now.gid() != md.gid() {
        std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid())).ctx("lchown", dst)?;
    }
    if !is_symlink {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .ctx("chmod", dst)?;
    }
    copy_xattrs(src, dst)?;
    let atime = TimeSpec::new(md.atime(), md.atime_nsec());
    let mtime = TimeSpec::new(md.mtime(), md.mtime_nsec());
    nix::sys::stat::utimensat(
        None,
        dst,
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .ctx("utimensat", dst)
}

/// Xattr names in the order they are set: sorted, `security.capability`
/// last (any later change of the file could clear it).
fn xattr_order(mut names: Vec<OsString>) -> Vec<OsString> {
    names.sort_by(|a, b| {
        let cap = |n: &OsString| n.as_bytes() == b"security.capability";
        (cap(a), a.as_bytes()).cmp(&(cap(b), b.as_bytes()))
    });
    names
}

/// Copies every extended attribute of `src` to `dst` (neither followed when
/// a symlink), `security.capability` last.
fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    let names = match xattr::list(src) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
        Err(e) => return Err(Error::io("listxattr", src, e)),
    };
    for name in xattr_order(names.collect()) {
        let Some(value) = xattr::get(src, &name).ctx("getxattr", src)? else {
            continue;
        };
        if let Err(e) = xattr::set(dst, &name, &value) {
            // The error keeps its errno (ENOSPC, EOPNOTSUPP); the name goes
            // to the log.
            tracing::debug!(path = %dst.display(), name = ?name, "setxattr failed: {e}");
            return Err(Error::io("setxattr", dst, e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_is_set_last() {
        let names = [
            "user.b",
            "security.capability",
            "trusted.a",
            "security.selinux",
        ]
        .map(OsString::from)
        .to_vec();
        let order = xattr_order(names);
        assert_eq!(
            order,
            [
                "security.selinux",
                "trusted.a",
                "user.b",
                "security.capability"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn a_fresh_copier_starts_with_reflink() {
        let copier = Copier::default();
        assert!(copier.methods.is_empty());
        assert_eq!(copier.stats, CopyStats::default());
    }
}
