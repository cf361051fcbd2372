//! Applying a layer tar into a directory, treating the tar as hostile.
//!
//! Every path is resolved from a directory fd of the target, one component
//! at a time with `O_NOFOLLOW | O_DIRECTORY`, so a symlink in a parent
//! position is an error and nothing is ever created outside the target.

use super::read::{Entry, Kind, TarReader};
use super::sys;
use super::{ApplyStats, WhiteoutFormat, OPAQUE, WH_PREFIX};
use crate::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    fchmodat, fstatat, futimens, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use xattr::FileExt as _;

/// Deepest path (in components) accepted in a tar or removed from a target.
const MAX_DEPTH: usize = 4096;
/// Size of the buffer file data is copied through.
const COPY_BUF: usize = 64 * 1024;

type Time = (i64, u32);

fn ts(t: Time) -> TimeSpec {
    TimeSpec::new(t.0, i64::from(t.1))
}

fn stat_times(st: &FileStat) -> (Time, Time) {
    (
        (st.st_atime, st.st_atime_nsec as u32),
        (st.st_mtime, st.st_mtime_nsec as u32),
    )
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn is_symlink(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
}

/// Splits a tar name into validated components. `Ok(None)` is the root.
fn normalize(raw: &[u8]) -> std::result::Result<Option<Vec<Vec<u8>>>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.contains(&0) {
        return Err("NUL byte in name");
    }
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut comps = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            // `./` prefixes, `//` and `.` components name the same path.
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            c if c.len() > 255 => return Err("component longer than 255 bytes"),
            c => comps.push(c.to_vec()),
        }
    }
    if comps.len() > MAX_DEPTH {
        return Err("path too deep");
    }
    Ok(if comps.is_empty() { None } else { Some(comps) })
}

/// Applies `tar` into `target` (see [`super::apply`]).
pub(super) fn apply<R: Read>(tar: R, target: &Path, format: WhiteoutFormat) -> Result<ApplyStats> {
    let root = File::open(target).map_err(|e| Error::io("open", target, e))?;
    if !root
        .metadata()
        .map_err(|e| Error::io("fstat", target, e))?
        .is_dir()
    {
        return Err(Error::io(
            "open",
            target,
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    let mut a = Applier {
        root,
        format,
        stats: ApplyStats::default(),
        touched: HashSet::new(),
        entries: HashSet::new(),
        whiteouts: HashSet::new(),
        dir_times: HashMap::new(),
        cache: None,
        buf: vec![0u8; COPY_BUF],
    };
    let mut reader = TarReader::new(tar);
    while let Some(e) = reader.next_entry()? {
        a.entry(&mut reader, e)?;
    }
    a.finish_dir_times()?;
    Ok(a.stats)
}

struct Applier {
    root: File,
    format: WhiteoutFormat,
    stats: ApplyStats,
    /// Paths this tar created or updated, and all their ancestors.
    touched: HashSet<Vec<u8>>,
    /// Paths of real entries of this tar.
    entries: HashSet<Vec<u8>>,
    /// Paths whited out by this tar.
    whiteouts: HashSet<Vec<u8>>,
    /// Directory times applied at the end, deepest first.
    dir_times: HashMap<Vec<Vec<u8>>, (Time, Time)>,
    /// The last resolved parent directory.
    cache: Option<(Vec<Vec<u8>>, File)>,
    buf: Vec<u8>,
}

/// What a raw tar name refers to, for error messages.
struct Ctx<'a> {
    raw: &'a [u8],
}

impl Ctx<'_> {
    fn err(&self, why: impl Into<String>) -> Error {
        Error::archive(self.raw, why)
    }
    fn io(&self, op: &'static str, e: impl Into<std::io::Error>) -> Error {
        Error::io(op, PathBuf::from(OsStr::from_bytes(self.raw)), e.into())
    }
}

impl Applier {
    fn entry<R: Read>(&mut self, reader: &mut TarReader<R>, e: Entry) -> Result<()> {
        let cx = Ctx { raw: &e.name };
        let Some(comps) = normalize(&e.name).map_err(|w| cx.err(w))? else {
            // The root itself: ignored.
            return Ok(());
        };
        // AUFS metadata (`.wh..wh.plnk`, `.wh..wh.orph`, `.wh..wh.aufs`)
        // anywhere in the path: skipped.
        let last = comps.len() - 1;
        if comps
            .iter()
            .enumerate()
            .any(|(i, c)| c.starts_with(b".wh..wh.") && !(i == last && c == OPAQUE))
        {
            tracing::debug!(entry = %String::from_utf8_lossy(&e.name), "skipping AUFS metadata");
            return Ok(());
        }
        if let Some(c) = comps[..last].iter().find(|c| c.starts_with(WH_PREFIX)) {
            return Err(cx.err(format!(
                "whiteout name `{}` used as a directory",
                String::from_utf8_lossy(c)
            )));
        }
        for (k, _) in &e.xattrs {
            if k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay.") {
                return Err(cx.err(format!(
                    "overlay xattr `{}` is not allowed in a layer tar",
                    String::from_utf8_lossy(k)
                )));
            }
        }
        let base = &comps[last];
        if let Some(target) = base.strip_prefix(WH_PREFIX) {
            if e.kind != Kind::Regular || e.sparse.is_some() {
                return Err(cx.err("whiteout entry is not a regular file"));
            }
            self.stats.entries += 1;
            if base == OPAQUE {
                return self.opaque(&cx, &comps, &e, reader);
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(cx.err("whiteout of an invalid name"));
            }
            let mut wpath = comps[..last].to_vec();
            wpath.push(target.to_vec());
            let joined = wpath.join(&b'/');
            if self.entries.contains(&joined) {
                return Err(cx.err("whiteout and entry of the same name in one tar"));
            }
            self.whiteouts.insert(joined);
            return self.whiteout(&cx, &comps, &wpath, &e, reader);
        }
        let joined = comps.join(&b'/');
        if self.whiteouts.contains(&joined) {
            return Err(cx.err("entry and whiteout of the same name in one tar"));
        }
        self.entries.insert(joined);
        self.stats.entries += 1;
        self.real_entry(&cx, &comps, &e, reader)
    }

    /// Marks `comps` and its ancestors as made by this tar.
    fn touch(&mut self, comps: &[Vec<u8>]) {
        for n in (1..=comps.len()).rev() {
            if !self.touched.insert(comps[..n].join(&b'/')) {
                break;
            }
        }
    }

    /// Opens the directory `comps` under the target, never following a
    /// symlink. With `create`, missing directories are made (0755, root).
    /// `Ok(None)`: a component is missing (only without `create`).
    fn open_dir(&mut self, cx: &Ctx, comps: &[Vec<u8>], create: bool) -> Result<Option<File>> {
        if let Some((c, f)) = &self.cache {
            if c.as_slice() == comps {
                return Ok(Some(f.try_clone().map_err(|e| cx.io("dup", e))?));
            }
        }
        let mut cur = self.root.try_clone().map_err(|e| cx.io("dup", e))?;
        for (i, c) in comps.iter().enumerate() {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            let next = match sys::openat(&cur, c, flags, 0) {
                Ok(f) => f,
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(
                        Some(cur.as_raw_fd()),
                        c.as_slice(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(cx.io("mkdirat", e)),
                    }
                    let f = sys::openat(&cur, c, flags, 0).map_err(|e| cx.io("openat", e))?;
                    nix::unistd::fchown(
                        f.as_raw_fd(),
                        Some(Uid::from_raw(0)),
                        Some(Gid::from_raw(0)),
                    )
                    .map_err(|e| cx.io("fchown", e))?;
                    nix::sys::stat::fchmod(f.as_raw_fd(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| cx.io("fchmod", e))?;
                    self.touch(&comps[..=i]);
                    f
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let what = match fstatat(
                        Some(cur.as_raw_fd()),
                        c.as_slice(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    ) {
                        Ok(st) if is_symlink(&st) => "is a symlink",
                        _ => "is not a directory",
                    };
                    return Err(cx.err(format!(
                        "parent component `{}` {what}",
                        String::from_utf8_lossy(&comps[..=i].join(&b'/'))
                    )));
                }
                Err(e) => return Err(cx.io("openat", e)),
            };
            cur = next;
        }
        self.cache = Some((
            comps.to_vec(),
            cur.try_clone().map_err(|e| cx.io("dup", e))?,
        ));
        Ok(Some(cur))
    }

    /// Removes `name` in `dir` (a directory recursively), never following
    /// symlinks. Returns whether something was removed.
    fn remove(&mut self, cx: &Ctx, dir: &File, name: &[u8]) -> Result<bool> {
        self.cache = None;
        match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => {
                remove_at(cx, dir, name, &st, 0)?;
                Ok(true)
            }
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(cx.io("fstatat", e)),
        }
    }

    fn real_entry<R: Read>(
        &mut self,
        cx: &Ctx,
        comps: &[Vec<u8>],
        e: &Entry,
        reader: &mut TarReader<R>,
    ) -> Result<()> {
        let (parent_comps, name) = comps.split_at(comps.len() - 1);
        let name = name[0].as_slice();
        let parent = self
            .open_dir(cx, parent_comps, true)?
            .expect("created parents exist");
        let pfd = parent.as_raw_fd();
        self.touch(comps);

        // An existing entry: a directory over a directory is kept, anything
        // else is replaced.
        let existing = match fstatat(Some(pfd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(err) => return Err(cx.io("fstatat", err)),
        };
        if e.kind == Kind::Dir {
            if !existing.as_ref().is_some_and(is_dir) {
                if existing.is_some() {
                    self.remove(cx, &parent, name)?;
                }
                nix::sys::stat::mkdirat(Some(pfd), name, Mode::from_bits_truncate(0o700))
                    .map_err(|err| cx.io("mkdirat", err))?;
            }
            let d = sys::openat(
                &parent,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                0,
            )
            .map_err(|err| cx.io("openat", err))?;
            self.meta_fd(cx, &d, e, false)?;
            self.dir_times
                .insert(comps.to_vec(), (e.atime.unwrap_or(e.mtime), e.mtime));
            return Ok(());
        }
        // Link targets are resolved before the name is replaced.
        let link_src = if e.kind == Kind::HardLink {
            let Some(lcomps) =
                normalize(&e.link).map_err(|w| cx.err(format!("hard link target: {w}")))?
            else {
                return Err(cx.err("hard link to the root"));
            };
            if lcomps == comps {
                return Err(cx.err("hard link to itself"));
            }
            let (lp, ln) = lcomps.split_at(lcomps.len() - 1);
            let Some(ldir) = self.open_dir(cx, lp, false)? else {
                return Err(cx.err("hard link target does not exist"));
            };
            match fstatat(
                Some(ldir.as_raw_fd()),
                ln[0].as_slice(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) if is_dir(&st) => return Err(cx.err("hard link to a directory")),
                Ok(_) => {}
                Err(Errno::ENOENT) => return Err(cx.err("hard link target does not exist")),
                Err(err) => return Err(cx.io("fstatat", err)),
            }
            Some((ldir, ln[0].clone()))
        } else {
            None
        };
        if existing.is_some() {
            self.remove(cx, &parent, name)?;
        }
        match e.kind {
            Kind::Regular => {
                let f = sys::openat(
                    &parent,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                    0o600,
                )
                .map_err(|err| cx.io("openat", err))?;
                self.write_data(cx, &f, e, reader)?;
                self.meta_fd(cx, &f, e, true)?;
            }
            Kind::HardLink => {
                let (ldir, ln) = link_src.expect("resolved above");
                linkat(
                    Some(ldir.as_raw_fd()),
                    ln.as_slice(),
                    Some(pfd),
                    name,
                    AtFlags::empty(),
                )
                .map_err(|err| cx.io("linkat", err))?;
            }
            Kind::Symlink => {
                if e.link.is_empty() || e.link.contains(&0) {
                    return Err(cx.err("invalid symlink target"));
                }
                symlinkat(e.link.as_slice(), Some(pfd), name)
                    .map_err(|err| cx.io("symlinkat", err))?;
                self.meta_at(cx, &parent, name, e, true)?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (kind, dev) = match e.kind {
                    Kind::Char => (SFlag::S_IFCHR, makedev(cx, e.dev)?),
                    Kind::Block => (SFlag::S_IFBLK, makedev(cx, e.dev)?),
                    _ => (SFlag::S_IFIFO, 0),
                };
                mknodat(Some(pfd), name, kind, Mode::empty(), dev)
                    .map_err(|err| cx.io("mknodat", err))?;
                self.meta_at(cx, &parent, name, e, false)?;
            }
            Kind::Dir => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Copies the entry's data (sparse or not) into the new file `f`.
    fn write_data<R: Read>(
        &mut self,
        cx: &Ctx,
        f: &File,
        e: &Entry,
        reader: &mut TarReader<R>,
    ) -> Result<()> {
        let segments = match &e.sparse {
            Some(s) => {
                let segs = reader.sparse_map(s.realsize)?;
                self.stats.bytes += s.realsize;
                segs
            }
            None => {
                self.stats.bytes += e.size;
                vec![(0, e.size)]
            }
        };
        for (o, l) in segments {
            let mut done = 0u64;
            while done < l {
                let want = (l - done).min(self.buf.len() as u64) as usize;
                let n = reader.read_data(&mut self.buf[..want])?;
                f.write_all_at(&self.buf[..n], o + done)
                    .map_err(|err| cx.io("write", err))?;
                done += n as u64;
            }
        }
        if let Some(s) = &e.sparse {
            f.set_len(s.realsize)
                .map_err(|err| cx.io("ftruncate", err))?;
        }
        debug_assert_eq!(reader.remaining(), 0);
        Ok(())
    }

    /// Owner, mode, xattrs and (unless deferred) times through an fd.
    fn meta_fd(&self, cx: &Ctx, f: &File, e: &Entry, times: bool) -> Result<()> {
        let (uid, gid) = ids(cx, e)?;
        nix::unistd::fchown(f.as_raw_fd(), Some(uid), Some(gid))
            .map_err(|err| cx.io("fchown", err))?;
        nix::sys::stat::fchmod(
            f.as_raw_fd(),
            Mode::from_bits_truncate(e.mode as libc::mode_t),
        )
        .map_err(|err| cx.io("fchmod", err))?;
        for (k, v) in &e.xattrs {
            f.set_xattr(OsStr::from_bytes(k), v)
                .map_err(|err| cx.io("fsetxattr", err))?;
        }
        if times {
            futimens(f.as_raw_fd(), &ts(e.atime.unwrap_or(e.mtime)), &ts(e.mtime))
                .map_err(|err| cx.io("futimens", err))?;
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of a node that is never opened
    /// (symlink, device, fifo) through its parent's fd.
    fn meta_at(
        &self,
        cx: &Ctx,
        parent: &File,
        name: &[u8],
        e: &Entry,
        symlink: bool,
    ) -> Result<()> {
        let pfd = parent.as_raw_fd();
        let (uid, gid) = ids(cx, e)?;
        fchownat(
            Some(pfd),
            name,
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|err| cx.io("fchownat", err))?;
        if !symlink {
            // The node was just made by mknodat and is not a symlink.
            fchmodat(
                Some(pfd),
                name,
                Mode::from_bits_truncate(e.mode as libc::mode_t),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|err| cx.io("fchmodat", err))?;
        }
        if !e.xattrs.is_empty() {
            let mut p = OsString::from(format!("/proc/self/fd/{pfd}/")).into_vec();
            p.extend_from_slice(name);
            let p = PathBuf::from(OsString::from_vec(p));
            for (k, v) in &e.xattrs {
                // lsetxattr: the final component is not followed.
                xattr::set(&p, OsStr::from_bytes(k), v).map_err(|err| cx.io("lsetxattr", err))?;
            }
        }
        utimensat(
            Some(pfd),
            name,
            &ts(e.atime.unwrap_or(e.mtime)),
            &ts(e.mtime),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|err| cx.io("utimensat", err))?;
        Ok(())
    }

    /// A `.wh.<name>` entry.
    fn whiteout<R: Read>(
        &mut self,
        cx: &Ctx,
        comps: &[Vec<u8>],
        wpath: &[Vec<u8>],
        e: &Entry,
        reader: &mut TarReader<R>,
    ) -> Result<()> {
        let (parent_comps, victim) = wpath.split_at(wpath.len() - 1);
        let victim = victim[0].as_slice();
        match self.format {
            WhiteoutFormat::Aufs => self.real_entry(cx, comps, e, reader),
            WhiteoutFormat::Overlay => {
                let parent = self.open_dir(cx, parent_comps, true)?.expect("created");
                self.touch(wpath);
                self.remove(cx, &parent, victim)?;
                let pfd = parent.as_raw_fd();
                mknodat(Some(pfd), victim, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|err| cx.io("mknodat", err))?;
                fchownat(
                    Some(pfd),
                    victim,
                    Some(Uid::from_raw(0)),
                    Some(Gid::from_raw(0)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|err| cx.io("fchownat", err))?;
                Ok(())
            }
            WhiteoutFormat::Plain => {
                let Some(parent) = self.open_dir(cx, parent_comps, false)? else {
                    return Ok(());
                };
                let before =
                    nix::sys::stat::fstat(parent.as_raw_fd()).map_err(|err| cx.io("fstat", err))?;
                if self.remove(cx, &parent, victim)? {
                    let (at, mt) = stat_times(&before);
                    futimens(parent.as_raw_fd(), &ts(at), &ts(mt))
                        .map_err(|err| cx.io("futimens", err))?;
                }
                Ok(())
            }
        }
    }

    /// A `.wh..wh..opq` entry.
    fn opaque<R: Read>(
        &mut self,
        cx: &Ctx,
        comps: &[Vec<u8>],
        e: &Entry,
        reader: &mut TarReader<R>,
    ) -> Result<()> {
        let dir_comps = &comps[..comps.len() - 1];
        match self.format {
            WhiteoutFormat::Aufs => self.real_entry(cx, comps, e, reader),
            WhiteoutFormat::Overlay => {
                let dir = self.open_dir(cx, dir_comps, true)?.expect("created");
                dir.set_xattr("trusted.overlay.opaque", b"y")
                    .map_err(|err| cx.io("fsetxattr", err))?;
                Ok(())
            }
            WhiteoutFormat::Plain => {
                let Some(dir) = self.open_dir(cx, dir_comps, false)? else {
                    return Ok(());
                };
                let before =
                    nix::sys::stat::fstat(dir.as_raw_fd()).map_err(|err| cx.io("fstat", err))?;
                let prefix = dir_comps.join(&b'/');
                let mut removed = false;
                for child in list_dir(cx, &dir)? {
                    let mut p = prefix.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(&child);
                    if !self.touched.contains(&p) {
                        removed |= self.remove(cx, &dir, &child)?;
                    }
                }
                if removed {
                    let (at, mt) = stat_times(&before);
                    futimens(dir.as_raw_fd(), &ts(at), &ts(mt))
                        .map_err(|err| cx.io("futimens", err))?;
                }
                Ok(())
            }
        }
    }

    /// Sets directory times, deepest first, once every entry is in place.
    fn finish_dir_times(&mut self) -> Result<()> {
        let mut dirs: Vec<_> = self.dir_times.drain().collect();
        dirs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        self.cache = None;
        for (comps, (at, mt)) in dirs {
            let raw = comps.join(&b'/');
            let cx = Ctx { raw: &raw };
            // Dirs replaced or removed later in the tar are skipped; nothing
            // is followed.
            let Some(d) = self.try_open_dir(&comps) else {
                continue;
            };
            futimens(d.as_raw_fd(), &ts(at), &ts(mt)).map_err(|err| cx.io("futimens", err))?;
        }
        Ok(())
    }

    fn try_open_dir(&self, comps: &[Vec<u8>]) -> Option<File> {
        let mut cur = self.root.try_clone().ok()?;
        for c in comps {
            cur = sys::openat(
                &cur,
                c,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                0,
            )
            .ok()?;
        }
        Some(cur)
    }
}

fn ids(cx: &Ctx, e: &Entry) -> Result<(Uid, Gid)> {
    let uid = u32::try_from(e.uid).map_err(|_| cx.err("uid out of range"))?;
    let gid = u32::try_from(e.gid).map_err(|_| cx.err("gid out of range"))?;
    Ok((Uid::from_raw(uid), Gid::from_raw(gid)))
}

fn makedev(cx: &Ctx, (major, minor): (u64, u64)) -> Result<libc::dev_t> {
    let major = u32::try_from(major).map_err(|_| cx.err("device major out of range"))?;
    let minor = u32::try_from(minor).map_err(|_| cx.err("device minor out of range"))?;
    Ok(nix::sys::stat::makedev(u64::from(major), u64::from(minor)))
}

/// The names in a directory (without `.` and `..`).
fn list_dir(cx: &Ctx, dir: &File) -> Result<Vec<Vec<u8>>> {
    let mut d = nix::dir::Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| cx.io("opendir", err))?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(|err| cx.io("readdir", err))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// Removes `name` (stat `st`) in `dir`, recursively, never following symlinks.
fn remove_at(cx: &Ctx, dir: &File, name: &[u8], st: &FileStat, depth: usize) -> Result<()> {
    if !is_dir(st) {
        return unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
            .map_err(|err| cx.io("unlinkat", err));
    }
    if depth > MAX_DEPTH {
        return Err(cx.err("directory to remove is too deep"));
    }
    let sub = sys::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        0,
    )
    .map_err(|err| cx.io("openat", err))?;
    for child in list_dir(cx, &sub)? {
        match fstatat(
            Some(sub.as_raw_fd()),
            child.as_slice(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(cst) => remove_at(cx, &sub, &child, &cst, depth + 1)?,
            Err(Errno::ENOENT) => {}
            Err(err) => return Err(cx.io("fstatat", err)),
        }
    }
    unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
        .map_err(|err| cx.io("unlinkat", err))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn names() {
        assert_eq!(
            normalize(b"./a//b/"),
            Ok(Some(vec![b"a".to_vec(), b"b".to_vec()]))
        );
        assert_eq!(normalize(b"./"), Ok(None));
        assert_eq!(normalize(b"."), Ok(None));
        assert!(normalize(b"/x").is_err());
        assert!(normalize(b"a/../../x").is_err());
        assert!(normalize(b"a\0b").is_err());
        assert!(normalize(b"").is_err());
    }
}
