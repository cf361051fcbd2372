//! The userspace union filesystem of the aufs driver's FUSE mode.
//!
//! Branches are directories, index 0 on top; when the union is writable,
//! branch 0 is the writable one and every change lands there. The branch
//! format is AUFS's (and a layer tar's): `.wh.<name>` hides `<name>` in the
//! branches below, `.wh..wh..opq` in a directory hides everything below
//! that directory; other `.wh..wh.*` names are private and never shown.
//!
//! ```plain
//! lookup     top branch down; an entry wins over a whiteout in its own
//!            branch, a whiteout or a non-directory stops the search below,
//!            an opaque directory ends the list of merged directories
//! readdir    the union of the merged directories minus whited-out names
//!            and every .wh.* entry
//! write      copy-up first: parent dirs (owner, mode, xattrs, times), then
//!            the entry itself, atomically (a private temp name, renamed)
//! unlink     remove from branch 0, then a whiteout if a lower branch still
//! rmdir      shows the name
//! mkdir      over a name whited out in branch 0: the new dir is opaque
//! rename     the source is copied up whole (a dir with its merged
//!            contents), renamed in branch 0, the old name whited out
//! ```
//!
//! Inode numbers are stable while mounted: a directory keeps the number of
//! its path, a non-directory the number first given to its backing inode
//! (device, inode), also after copy-up (the copy is mapped to the same
//! number) and for every hard link.
//!
//! File data does not pass through the server where the kernel offers FUSE
//! passthrough (6.9+, negotiated at init; the server needs CAP_SYS_ADMIN):
//! an open registers the backing file (the lower branch's file for a
//! read-only open, the upper file, copied up first, for a write open or a
//! create) and the kernel reads and writes it directly. Where the kernel
//! refuses, the union falls back (saying so once on stderr) to fd I/O: each
//! read or write request goes to an fd of the backing file, never more
//! than one request's data in memory. How opens of one inode share a
//! backing file, and wait for readers of the lower file at copy-up, is
//! [`super::iomode`]'s part.
//!
//! Mutations of the tree are serialised by one lock; reads, lookups and
//! data I/O run concurrently on the server threads (`threads` of them,
//! each reading requests from the FUSE device).

use super::iomode::{Admit, IoModes, Key};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A union mounted by [`spawn`]: served until dropped or unmounted.
pub use fuser::BackgroundSession;

/// The name prefix of whiteouts.
pub const WH: &[u8] = b".wh.";
/// The opaque-directory marker.
pub const OPQ: &str = ".wh..wh..opq";
/// Prefix of private temporary names (copy-up staging): hidden, never
/// exported.
const TMP_PREFIX: &str = ".wh..wh.cu.";
/// How long the kernel may cache entries and attributes.
const TTL: Duration = Duration::from_secs(1);
/// How long an open may wait for the readers of a file's lower copy to
/// close (see [`super::iomode`]) before it fails with `EBUSY`.
const BACKING_WAIT: Duration = Duration::from_secs(5);

type R<T> = std::result::Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn nix_errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn lstat(p: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        // A whiteout of a name near NAME_MAX is too long to exist.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
                ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn lexists(p: &Path) -> io::Result<bool> {
    Ok(lstat(p)?.is_some())
}

fn wh_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(".wh.");
    s.push(name);
    s
}

fn is_wh(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH)
}

fn ts(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind_of(md: &Metadata) -> FileType {
    FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile)
}

fn attr_of(ino: u64, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: ts(md.atime(), md.atime_nsec()),
        mtime: ts(md.mtime(), md.mtime_nsec()),
        ctime: ts(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(md),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

/// Copies owner, mode, xattrs and times of `md` (the entry at `src`) onto
/// `dst`, without following symlinks.
fn copy_meta(src: &Path, dst: &Path, md: &Metadata) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use nix::unistd::{fchownat, Gid, Uid};
    fchownat(
        None,
        dst,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    if let Ok(names) = xattr::list(src) {
        for n in names {
            if let Some(v) = xattr::get(src, &n)? {
                xattr::set(dst, &n, &v)?;
            }
        }
    }
    utimensat(
        None,
        dst,
        &TimeSpec::new(md.atime(), md.atime_nsec()),
        &TimeSpec::new(md.mtime(), md.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// What a lookup found.
#[derive(Debug)]
struct Found {
    /// The top branch holding the entry.
    branch: usize,
    md: Metadata,
    /// For a directory: the branches whose directory is merged, top first.
    layers: Vec<usize>,
}

#[derive(Debug)]
struct Node {
    /// The path inside the union (relative; empty for the root).
    path: PathBuf,
    dir: bool,
    /// Merged branches of a directory (empty: unknown, resolve again).
    layers: Vec<usize>,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<u64, Node>,
    dirs: HashMap<PathBuf, u64>,
    files: HashMap<(u64, u64), u64>,
    next: u64,
}

struct DirEnt {
    name: OsString,
    kind: FileType,
    ino: u64,
}

/// An open file: its fd, and the inode it was opened as.
struct Handle {
    file: Arc<File>,
    ino: u64,
}

/// An open whose reply waits for the inode's backing file to be free.
struct Waiter {
    reply: ReplyOpen,
    file: File,
    key: Key,
    ino: u64,
}

type Modes = IoModes<BackingId, Waiter>;

/// Counts of the data requests (read, write) a union's server answered
/// itself: with passthrough, file data bypasses the server and both stay 0.
#[derive(Debug, Default)]
pub struct DataRequests {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl DataRequests {
    /// Read requests answered so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Write requests answered so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// The union filesystem over a list of branch directories.
pub struct Union {
    branches: Vec<PathBuf>,
    writable: bool,
    state: Mutex<State>,
    wlock: Mutex<()>,
    files: Mutex<HashMap<u64, Handle>>,
    io: Arc<Mutex<Modes>>,
    /// Whether opens try kernel passthrough: set when init negotiated it,
    /// cleared when the kernel refuses it for good.
    passthrough: AtomicBool,
    /// Whether the fallback to fd I/O was reported.
    told_fallback: AtomicBool,
    data: Arc<DataRequests>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEnt>>>>,
    next_fh: AtomicU64,
    tmp_seq: AtomicU64,
}

impl std::fmt::Debug for Union {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Union")
            .field("branches", &self.branches.len())
            .field("writable", &self.writable)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Union {
    /// A union of `branches` (top first; each an existing directory).
    /// When `writable`, branch 0 takes every change; otherwise every change
    /// fails with `EROFS`.
    pub fn new(branches: Vec<PathBuf>, writable: bool) -> Self {
        let mut st = State {
            next: 2,
            ..Default::default()
        };
        st.nodes.insert(
            1,
            Node {
                path: PathBuf::new(),
                dir: true,
                layers: Vec::new(),
            },
        );
        st.dirs.insert(PathBuf::new(), 1);
        Union {
            branches,
            writable,
            state: Mutex::new(st),
            wlock: Mutex::new(()),
            files: Mutex::new(HashMap::new()),
            io: Arc::new(Mutex::new(IoModes::default())),
            passthrough: AtomicBool::new(false),
            told_fallback: AtomicBool::new(false),
            data: Arc::default(),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tmp_seq: AtomicU64::new(0),
        }
    }

    fn bpath(&self, b: usize, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.branches[b].clone()
        } else {
            self.branches[b].join(rel)
        }
    }

    fn upper(&self, rel: &Path) -> PathBuf {
        self.bpath(0, rel)
    }

    fn is_opaque(&self, b: usize, rel: &Path) -> io::Result<bool> {
        lexists(&self.bpath(b, rel).join(OPQ))
    }

    fn root_layers(&self) -> io::Result<Vec<usize>> {
        let mut v = Vec::new();
        for b in 0..self.branches.len() {
            v.push(b);
            if self.is_opaque(b, Path::new(""))? {
                break;
            }
        }
        Ok(v)
    }

    /// Looks `name` up in the directory `prel` merged from `players`.
    fn find_child(
        &self,
        players: &[usize],
        prel: &Path,
        name: &OsStr,
    ) -> io::Result<Option<Found>> {
        if is_wh(name) {
            return Ok(None);
        }
        let rel = prel.join(name);
        let wh = wh_name(name);
        let mut found: Option<Found> = None;
        for &b in players {
            if let Some(md) = lstat(&self.bpath(b, &rel))? {
                match &mut found {
                    None => {
                        let dir = md.is_dir();
                        found = Some(Found {
                            branch: b,
                            md,
                            layers: if dir { vec![b] } else { Vec::new() },
                        });
                        if !dir || self.is_opaque(b, &rel)? {
                            return Ok(found);
                        }
                    }
                    Some(f) => {
                        if !md.is_dir() {
                            break;
                        }
                        f.layers.push(b);
                        if self.is_opaque(b, &rel)? {
                            break;
                        }
                    }
                }
            }
            if lexists(&self.bpath(b, prel).join(&wh))? {
                break;
            }
        }
        Ok(found)
    }

    /// Resolves a union path from the root.
    fn resolve(&self, rel: &Path) -> io::Result<Option<Found>> {
        let mut layers = self.root_layers()?;
        let mut cur = PathBuf::new();
        let mut comps = rel.components().peekable();
        if comps.peek().is_none() {
            let md = fs::symlink_metadata(&self.branches[layers[0]])?;
            return Ok(Some(Found {
                branch: layers[0],
                md,
                layers,
            }));
        }
        while let Some(c) = comps.next() {
            let name = c.as_os_str();
            let Some(f) = self.find_child(&layers, &cur, name)? else {
                return Ok(None);
            };
            cur.push(name);
            if comps.peek().is_none() {
                return Ok(Some(f));
            }
            if f.layers.is_empty() {
                return Ok(None);
            }
            layers = f.layers;
        }
        Ok(None)
    }

    fn node_path(&self, ino: u64) -> R<(PathBuf, bool, Vec<usize>)> {
        let st = lock(&self.state);
        let n = st.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        Ok((n.path.clone(), n.dir, n.layers.clone()))
    }

    /// The merged branches of directory node `ino`, and its path.
    fn dir_layers(&self, ino: u64) -> R<(PathBuf, Vec<usize>)> {
        let (path, dir, layers) = self.node_path(ino)?;
        if !dir {
            return Err(Errno::ENOTDIR);
        }
        if !layers.is_empty() {
            return Ok((path, layers));
        }
        let f = self.resolve(&path).map_err(errno)?.ok_or(Errno::ENOENT)?;
        if f.layers.is_empty() {
            return Err(Errno::ENOTDIR);
        }
        if let Some(n) = lock(&self.state).nodes.get_mut(&ino) {
            n.layers = f.layers.clone();
        }
        Ok((path, f.layers))
    }

    /// The inode number of an entry, made on first sight.
    fn ino_for(&self, rel: &Path, f: &Found) -> u64 {
        let mut st = lock(&self.state);
        if f.md.is_dir() {
            if let Some(&i) = st.dirs.get(rel) {
                if let Some(n) = st.nodes.get_mut(&i) {
                    n.layers = f.layers.clone();
                }
                return i;
            }
            let i = st.next;
            st.next += 1;
            st.dirs.insert(rel.to_path_buf(), i);
            st.nodes.insert(
                i,
                Node {
                    path: rel.to_path_buf(),
                    dir: true,
                    layers: f.layers.clone(),
                },
            );
            i
        } else {
            let key = (f.md.dev(), f.md.ino());
            if let Some(&i) = st.files.get(&key) {
                if let Some(n) = st.nodes.get_mut(&i) {
                    n.path = rel.to_path_buf();
                }
                return i;
            }
            let i = st.next;
            st.next += 1;
            st.files.insert(key, i);
            st.nodes.insert(
                i,
                Node {
                    path: rel.to_path_buf(),
                    dir: false,
                    layers: Vec::new(),
                },
            );
            i
        }
    }

    /// The current entry of node `ino`.
    fn stat_node(&self, ino: u64) -> R<(PathBuf, Found)> {
        let (path, _, _) = self.node_path(ino)?;
        let f = self.resolve(&path).map_err(errno)?.ok_or(Errno::ENOENT)?;
        Ok((path, f))
    }

    fn rw(&self) -> R<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }

    fn tmp_name(&self, dir: &Path) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{TMP_PREFIX}{}.{n}", std::process::id()))
    }

    /// Makes `rel` present in branch 0 (its parents first), keeping its
    /// metadata and its inode number. Caller holds the write lock.
    fn copy_up(&self, rel: &Path) -> io::Result<()> {
        let up = self.upper(rel);
        if lexists(&up)? {
            return Ok(());
        }
        if let Some(parent) = rel.parent() {
            self.copy_up(parent)?;
        }
        let f = self
            .resolve(rel)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let src = self.bpath(f.branch, rel);
        if f.md.is_dir() {
            // A copy-up is invisible: the parent's times stay as they were.
            let parent_up = up.parent().map(Path::to_path_buf).unwrap_or_default();
            let pmd = fs::symlink_metadata(&parent_up)?;
            fs::create_dir(&up)?;
            copy_meta(&src, &up, &f.md)?;
            restore_times(&parent_up, &pmd);
            // Directory times of the parent are kept as they were.
            let mut st = lock(&self.state);
            if let Some(&i) = st.dirs.get(rel) {
                if let Some(n) = st.nodes.get_mut(&i) {
                    if n.layers.first() != Some(&0) {
                        n.layers.clear();
                    }
                }
            }
        } else {
            let parent_up = up.parent().map(Path::to_path_buf).unwrap_or_default();
            let tmp = self.tmp_name(&parent_up);
            if let Err(e) = strata_driver_api::copy::copy_tree(&src, &tmp) {
                let _ = fs::remove_file(&tmp);
                return Err(io::Error::other(e.to_string()));
            }
            let pmd = fs::symlink_metadata(&parent_up)?;
            fs::rename(&tmp, &up)?;
            restore_times(&parent_up, &pmd);
            let nmd = fs::symlink_metadata(&up)?;
            {
                let mut st = lock(&self.state);
                if let Some(&i) = st.files.get(&(f.md.dev(), f.md.ino())) {
                    st.files.insert((nmd.dev(), nmd.ino()), i);
                    if let Some(n) = st.nodes.get_mut(&i) {
                        n.path = rel.to_path_buf();
                    }
                }
            }
            // A lower file with several names: its other names that the
            // union still shows are linked to the copy, so they stay one
            // file (what AUFS's pseudo-links do).
            if f.md.nlink() > 1 && !f.md.is_dir() {
                let mut others = Vec::new();
                let want = (f.md.nlink() - 1) as usize;
                find_links(
                    &self.branches[f.branch],
                    Path::new(""),
                    f.md.ino(),
                    rel,
                    want,
                    &mut others,
                )?;
                for o in others {
                    let shows_same = self
                        .resolve(&o)?
                        .is_some_and(|g| g.branch == f.branch && g.md.ino() == f.md.ino());
                    if !shows_same {
                        continue;
                    }
                    if let Some(p) = o.parent() {
                        self.copy_up(p)?;
                    }
                    let oup = self.upper(&o);
                    let pup = oup.parent().map(Path::to_path_buf).unwrap_or_default();
                    let pmd = fs::symlink_metadata(&pup)?;
                    fs::hard_link(&up, &oup)?;
                    restore_times(&pup, &pmd);
                }
            }
        }
        Ok(())
    }

    /// Copies up `rel` and, for a directory, its whole merged contents.
    fn copy_up_tree(&self, rel: &Path) -> io::Result<()> {
        self.copy_up(rel)?;
        if fs::symlink_metadata(self.upper(rel))?.is_dir() {
            let f = self
                .resolve(rel)?
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            for e in self.list(&f.layers, rel)? {
                self.copy_up_tree(&rel.join(&e.0))?;
            }
        }
        Ok(())
    }

    /// Names and types of the merged directory `rel`.
    fn list(
        &self,
        layers: &[usize],
        rel: &Path,
    ) -> io::Result<Vec<(OsString, fs::FileType, usize, u64)>> {
        let mut hidden: HashSet<OsString> = HashSet::new();
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut out = Vec::new();
        for &b in layers {
            let dir = self.bpath(b, rel);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut whs = Vec::new();
            for e in rd {
                let e = e?;
                let name = e.file_name();
                if is_wh(&name) {
                    let rest = &name.as_bytes()[WH.len()..];
                    if !rest.starts_with(b".wh.") {
                        whs.push(OsStr::from_bytes(rest).to_os_string());
                    }
                    continue;
                }
                if hidden.contains(&name) || !seen.insert(name.clone()) {
                    continue;
                }
                let ft = e.file_type()?;
                out.push((name, ft, b, std::os::unix::fs::DirEntryExt::ino(&e)));
            }
            hidden.extend(whs);
        }
        Ok(out)
    }

    fn is_empty_dir(&self, layers: &[usize], rel: &Path) -> io::Result<bool> {
        Ok(self.list(layers, rel)?.is_empty())
    }

    fn write_whiteout(&self, prel: &Path, name: &OsStr) -> io::Result<()> {
        let p = self.upper(prel).join(wh_name(name));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o444)
            .open(&p)?;
        Ok(())
    }

    fn remove_upper_whiteout(&self, prel: &Path, name: &OsStr) -> io::Result<bool> {
        let p = self.upper(prel).join(wh_name(name));
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENAMETOOLONG) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a branch below 0 still shows `name` in `prel`.
    fn lower_has(&self, players: &[usize], prel: &Path, name: &OsStr) -> io::Result<bool> {
        let lower: Vec<usize> = players.iter().copied().filter(|&b| b != 0).collect();
        Ok(self.find_child(&lower, prel, name)?.is_some())
    }

    fn forget_dirs_under(&self, rel: &Path) {
        let mut st = lock(&self.state);
        let keys: Vec<PathBuf> = st
            .dirs
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for k in keys {
            if let Some(i) = st.dirs.remove(&k) {
                if let Some(n) = st.nodes.get_mut(&i) {
                    n.layers.clear();
                }
            }
        }
    }

    fn entry_reply(&self, rel: &Path) -> R<FileAttr> {
        let f = self.resolve(rel).map_err(errno)?.ok_or(Errno::ENOENT)?;
        let ino = self.ino_for(rel, &f);
        Ok(attr_of(ino, &f.md))
    }

    /// Common start of a create-like operation: checks the name, that it
    /// does not exist, copies the parent up and drops a whiteout of the
    /// name in branch 0. Returns the parent path, whether a whiteout was
    /// dropped, and the new entry's path in branch 0.
    fn prepare_new(&self, parent: u64, name: &OsStr) -> R<(PathBuf, bool, PathBuf)> {
        self.rw()?;
        if is_wh(name) {
            return Err(Errno::EINVAL);
        }
        let (prel, players) = self.dir_layers(parent)?;
        if self
            .find_child(&players, &prel, name)
            .map_err(errno)?
            .is_some()
        {
            return Err(Errno::EEXIST);
        }
        self.copy_up(&prel).map_err(errno)?;
        let had_wh = self.remove_upper_whiteout(&prel, name).map_err(errno)?;
        if let Some(n) = lock(&self.state).nodes.get_mut(&parent) {
            n.layers.clear();
        }
        let up = self.upper(&prel.join(name));
        Ok((prel, had_wh, up))
    }

    fn chown_to(&self, p: &Path, req: &Request) -> R<()> {
        nix::unistd::fchownat(
            None,
            p,
            Some(nix::unistd::Uid::from_raw(req.uid())),
            Some(nix::unistd::Gid::from_raw(req.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(nix_errno)
    }

    fn new_fh(&self, f: File, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            fh,
            Handle {
                file: Arc::new(f),
                ino,
            },
        );
        fh
    }

    fn file(&self, fh: FileHandle) -> R<Arc<File>> {
        lock(&self.files)
            .get(&fh.0)
            .map(|h| h.file.clone())
            .ok_or(Errno::EBADF)
    }

    /// The counts of data requests this union's server answers (shared:
    /// take it before mounting, read it while mounted).
    pub fn data_requests(&self) -> Arc<DataRequests> {
        self.data.clone()
    }

    /// Whether this mount's opens pass through to their backing files (until
    /// the kernel refuses one for good).
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Says once, on stderr (the server's log), that data goes through the
    /// server instead of passthrough, and why.
    fn tell_fallback(&self, why: &str) {
        if !self.told_fallback.swap(true, Ordering::Relaxed) {
            eprintln!(
                "strata aufs union: no FUSE passthrough ({why}); file data goes through \
                 the server (fd I/O)"
            );
        }
    }

    /// Registers `file` as a backing file with `register` when passthrough
    /// is on; `None` (fd I/O) when off or refused. A refusal that holds for
    /// every file (no privilege, no kernel support) turns passthrough off.
    fn backing(
        &self,
        file: &File,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Option<BackingId> {
        if !self.passthrough() {
            return None;
        }
        match register(file) {
            Ok(b) => Some(b),
            Err(e) => {
                let for_good = matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::ENOTTY | libc::ENOSYS | libc::EINVAL)
                );
                if for_good {
                    self.passthrough.store(false, Ordering::Relaxed);
                }
                self.tell_fallback(&format!("registering a backing file: {e}"));
                None
            }
        }
    }

    /// Answers open `w` by the inode's I/O mode: passthrough to the inode's
    /// backing file, fd I/O, or (a different backing file is in use) parks
    /// it until the inode's files are closed; `parked` is its wait id when
    /// it was parked before. Caller holds `io`.
    fn serve_open(&self, io: &mut Modes, w: Waiter, parked: Option<u64>) {
        match io.admit(w.ino, w.key) {
            Admit::First => {
                let b = self.backing(&w.file, |f| w.reply.open_backing(f));
                let b = io.establish(w.ino, w.key, b);
                let fh = self.new_fh(w.file, w.ino);
                reply_open(w.reply, fh, b.as_deref());
            }
            Admit::Join(b) => {
                let fh = self.new_fh(w.file, w.ino);
                reply_open(w.reply, fh, b.as_deref());
            }
            Admit::Wait => {
                let id = match parked {
                    Some(id) => id,
                    None => {
                        let id = io.wait_id();
                        let (modes, ino) = (self.io.clone(), w.ino);
                        let timer = std::thread::Builder::new()
                            .name("aufs-open-wait".into())
                            .spawn(move || {
                                std::thread::sleep(BACKING_WAIT);
                                let w = lock(&modes).expire(ino, id);
                                if let Some(w) = w {
                                    w.reply.error(Errno::EBUSY);
                                }
                            });
                        if timer.is_err() {
                            w.reply.error(Errno::EBUSY);
                            return;
                        }
                        id
                    }
                };
                io.park(w.ino, id, w);
            }
        }
    }

    fn do_lookup(&self, parent: u64, name: &OsStr) -> R<FileAttr> {
        let (prel, players) = self.dir_layers(parent)?;
        let f = self
            .find_child(&players, &prel, name)
            .map_err(errno)?
            .ok_or(Errno::ENOENT)?;
        let rel = prel.join(name);
        let ino = self.ino_for(&rel, &f);
        Ok(attr_of(ino, &f.md))
    }

    fn do_unlink(&self, parent: u64, name: &OsStr, dir: bool) -> R<()> {
        self.rw()?;
        let _w = lock(&self.wlock);
        let (prel, players) = self.dir_layers(parent)?;
        let f = self
            .find_child(&players, &prel, name)
            .map_err(errno)?
            .ok_or(Errno::ENOENT)?;
        let rel = prel.join(name);
        if dir && !f.md.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !dir && f.md.is_dir() {
            return Err(Errno::EISDIR);
        }
        if dir && !self.is_empty_dir(&f.layers, &rel).map_err(errno)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.copy_up(&prel).map_err(errno)?;
        let pup = self.upper(&prel);
        let pmd = fs::symlink_metadata(&pup).map_err(errno)?;
        let up = self.upper(&rel);
        if lexists(&up).map_err(errno)? {
            if dir {
                fs::remove_dir_all(&up).map_err(errno)?;
            } else {
                fs::remove_file(&up).map_err(errno)?;
            }
        }
        let (_, players) = self.dir_layers(parent).unwrap_or((prel.clone(), players));
        if self.lower_has(&players, &prel, name).map_err(errno)? {
            self.write_whiteout(&prel, name).map_err(errno)?;
        }
        restore_mtime_now(&pup, &pmd);
        if dir {
            self.forget_dirs_under(&rel);
        }
        Ok(())
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> R<()> {
        self.rw()?;
        if flags & libc::RENAME_EXCHANGE != 0 || flags & libc::RENAME_WHITEOUT != 0 {
            return Err(Errno::EINVAL);
        }
        if is_wh(newname) {
            return Err(Errno::EINVAL);
        }
        let _w = lock(&self.wlock);
        let (prel, players) = self.dir_layers(parent)?;
        let (nprel, nplayers) = self.dir_layers(newparent)?;
        let src = self
            .find_child(&players, &prel, name)
            .map_err(errno)?
            .ok_or(Errno::ENOENT)?;
        let dst = self.find_child(&nplayers, &nprel, newname).map_err(errno)?;
        let srel = prel.join(name);
        let drel = nprel.join(newname);
        if srel == drel {
            return Ok(());
        }
        if src.md.is_dir() && drel.starts_with(&srel) {
            return Err(Errno::EINVAL);
        }
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            match (src.md.is_dir(), d.md.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.is_empty_dir(&d.layers, &drel).map_err(errno)? => {
                    return Err(Errno::ENOTEMPTY)
                }
                _ => {}
            }
        }
        let was_dir = src.md.is_dir();
        if was_dir {
            self.copy_up_tree(&srel).map_err(errno)?;
        } else {
            self.copy_up(&srel).map_err(errno)?;
        }
        self.copy_up(&nprel).map_err(errno)?;
        let pup = self.upper(&prel);
        let npup = self.upper(&nprel);
        let pmd = fs::symlink_metadata(&pup).map_err(errno)?;
        let npmd = fs::symlink_metadata(&npup).map_err(errno)?;
        let dup = self.upper(&drel);
        if let Some(md) = lstat(&dup).map_err(errno)? {
            if md.is_dir() {
                fs::remove_dir_all(&dup).map_err(errno)?;
            } else {
                fs::remove_file(&dup).map_err(errno)?;
            }
        }
        self.remove_upper_whiteout(&nprel, newname).map_err(errno)?;
        fs::rename(self.upper(&srel), &dup).map_err(errno)?;
        if was_dir {
            self.forget_dirs_under(&srel);
            self.forget_dirs_under(&drel);
        }
        for ino in [parent, newparent] {
            if let Some(n) = lock(&self.state).nodes.get_mut(&ino) {
                n.layers.clear();
            }
        }
        let (_, nplayers) = self.dir_layers(newparent)?;
        if was_dir
            && self.lower_has(&nplayers, &nprel, newname).map_err(errno)?
            && !lexists(&dup.join(OPQ)).map_err(errno)?
        {
            let dmd = fs::symlink_metadata(&dup).map_err(errno)?;
            File::create(dup.join(OPQ)).map_err(errno)?;
            restore_times(&dup, &dmd);
        }
        let (_, players) = self.dir_layers(parent)?;
        if self.lower_has(&players, &prel, name).map_err(errno)? {
            self.write_whiteout(&prel, name).map_err(errno)?;
        }
        restore_mtime_now(&pup, &pmd);
        restore_mtime_now(&npup, &npmd);
        // Renumber nothing: non-directories keep their inode; paths of
        // nodes under the old name move.
        let mut st = lock(&self.state);
        for n in st.nodes.values_mut() {
            if let Ok(rest) = n.path.strip_prefix(&srel) {
                n.path = if rest.as_os_str().is_empty() {
                    drel.clone()
                } else {
                    drel.join(rest)
                };
                n.layers.clear();
            }
        }
        if was_dir {
            // The directory keeps its number under its new name.
            let moved: Vec<(PathBuf, u64)> = st
                .nodes
                .iter()
                .filter(|(_, n)| n.dir && n.path.starts_with(&drel))
                .map(|(i, n)| (n.path.clone(), *i))
                .collect();
            for (p, i) in moved {
                st.dirs.insert(p, i);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> R<FileAttr> {
        let (rel, _f) = self.stat_node(ino)?;
        if mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
        {
            return self.getattr_of(ino);
        }
        self.rw()?;
        {
            let _w = lock(&self.wlock);
            self.copy_up(&rel).map_err(errno)?;
        }
        let up = self.upper(&rel);
        if uid.is_some() || gid.is_some() {
            nix::unistd::fchownat(
                None,
                &up,
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(nix_errno)?;
        }
        if let Some(m) = mode {
            fs::set_permissions(&up, fs::Permissions::from_mode(m & 0o7777)).map_err(errno)?;
        }
        if let Some(s) = size {
            match fh.and_then(|fh| lock(&self.files).get(&fh.0).map(|h| h.file.clone())) {
                Some(f) => f.set_len(s).map_err(errno)?,
                None => OpenOptions::new()
                    .write(true)
                    .open(&up)
                    .and_then(|f| f.set_len(s))
                    .map_err(errno)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            use nix::sys::stat::{utimensat, UtimensatFlags};
            use nix::sys::time::TimeSpec;
            let conv = |t: Option<TimeOrNow>| match t {
                None => TimeSpec::UTIME_OMIT,
                Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
                Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64),
                    Err(e) => {
                        let d = e.duration();
                        let mut s = -(d.as_secs() as i64);
                        let mut ns = d.subsec_nanos() as i64;
                        if ns > 0 {
                            s -= 1;
                            ns = 1_000_000_000 - ns;
                        }
                        TimeSpec::new(s, ns)
                    }
                },
            };
            utimensat(
                None,
                &up,
                &conv(atime),
                &conv(mtime),
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(nix_errno)?;
        }
        self.getattr_of(ino)
    }

    fn getattr_of(&self, ino: u64) -> R<FileAttr> {
        let (_, f) = self.stat_node(ino)?;
        Ok(attr_of(ino, &f.md))
    }
}

/// Collects (up to `want`) other paths of inode `ino` in a branch, whiteouts
/// and private entries skipped.
fn find_links(
    branch: &Path,
    rel: &Path,
    ino: u64,
    skip: &Path,
    want: usize,
    out: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let rd = match fs::read_dir(branch.join(rel)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        if out.len() >= want {
            return Ok(());
        }
        let e = e?;
        let name = e.file_name();
        if is_wh(&name) {
            continue;
        }
        let r = rel.join(&name);
        let ft = e.file_type()?;
        if ft.is_dir() {
            find_links(branch, &r, ino, skip, want, out)?;
        } else if std::os::unix::fs::DirEntryExt::ino(&e) == ino && r != skip {
            out.push(r);
        }
    }
    Ok(())
}

/// Puts back the times a directory had before one of our private steps
/// (temp file and rename) changed them.
fn restore_times(dir: &Path, md: &Metadata) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let _ = utimensat(
        None,
        dir,
        &TimeSpec::new(md.atime(), md.atime_nsec()),
        &TimeSpec::new(md.mtime(), md.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    );
}

/// After an unlink or rename the parent's mtime is "now" anyway; nothing to
/// restore, kept for symmetry with the copy-up steps.
fn restore_mtime_now(_dir: &Path, _md: &Metadata) {}

impl Filesystem for Union {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Passthrough: backing files may sit on a stacked filesystem
        // themselves (an overlay root in a container), so allow depth 2;
        // nothing stacks on a union mount.
        match config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH) {
            Ok(()) => match config.set_max_stack_depth(2) {
                Ok(_) => self.passthrough.store(true, Ordering::Relaxed),
                Err(_) => self.tell_fallback("the kernel's stacking depth"),
            },
            Err(_) => self.tell_fallback("the kernel does not offer it"),
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self
            .stat_node(ino.0)
            .and_then(|(rel, f)| fs::read_link(self.bpath(f.branch, &rel)).map_err(errno));
        match r {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let _w = lock(&self.wlock);
            let (prel, _, up) = self.prepare_new(parent.0, name)?;
            let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
            let perm = nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777 & !umask);
            nix::sys::stat::mknod(&up, kind, perm, rdev as u64).map_err(nix_errno)?;
            self.chown_to(&up, req)?;
            self.entry_reply(&prel.join(name))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let _w = lock(&self.wlock);
            let (prel, had_wh, up) = self.prepare_new(parent.0, name)?;
            fs::create_dir(&up).map_err(errno)?;
            fs::set_permissions(&up, fs::Permissions::from_mode(mode & 0o7777 & !umask))
                .map_err(errno)?;
            let (_, players) = self.dir_layers(parent.0)?;
            if had_wh || self.lower_has(&players, &prel, name).map_err(errno)? {
                let md = fs::symlink_metadata(&up).map_err(errno)?;
                File::create(up.join(OPQ)).map_err(errno)?;
                restore_times(&up, &md);
            }
            self.chown_to(&up, req)?;
            self.forget_dirs_under(&prel.join(name));
            self.entry_reply(&prel.join(name))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let _w = lock(&self.wlock);
            let (prel, _, up) = self.prepare_new(parent.0, link_name)?;
            std::os::unix::fs::symlink(target, &up).map_err(errno)?;
            self.chown_to(&up, req)?;
            self.entry_reply(&prel.join(link_name))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent.0, name, newparent.0, newname, flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let _w = lock(&self.wlock);
            let (rel, f) = self.stat_node(ino.0)?;
            if f.md.is_dir() {
                return Err(Errno::EPERM);
            }
            let (nprel, _, up) = self.prepare_new(newparent.0, newname)?;
            self.copy_up(&rel).map_err(errno)?;
            fs::hard_link(self.upper(&rel), &up).map_err(errno)?;
            self.entry_reply(&nprel.join(newname))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let write =
                !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) || flags.0 & libc::O_TRUNC != 0;
            let (rel, f) = self.stat_node(ino.0)?;
            let path = if write {
                self.rw()?;
                let _w = lock(&self.wlock);
                self.copy_up(&rel).map_err(errno)?;
                self.upper(&rel)
            } else {
                self.bpath(f.branch, &rel)
            };
            let mut o = OpenOptions::new();
            match flags.acc_mode() {
                OpenAccMode::O_RDONLY => o.read(true),
                OpenAccMode::O_WRONLY => o.write(true),
                _ => o.read(true).write(true),
            };
            // O_APPEND on the backing fd: pwrite then always appends, so an append
            // lands at the real end even when the kernel computed its offset
            // from a size it had cached before a concurrent copy-up.
            let keep =
                libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME | libc::O_APPEND;
            o.custom_flags((flags.0 & keep) | libc::O_NOFOLLOW);
            // The backing file is chosen here, after any copy-up above.
            let file = o.open(&path).map_err(errno)?;
            let md = file.metadata().map_err(errno)?;
            Ok((file, (md.dev(), md.ino())))
        })();
        match r {
            Ok((file, key)) => {
                let w = Waiter {
                    reply,
                    file,
                    key,
                    ino: ino.0,
                };
                self.serve_open(&mut lock(&self.io), w, None);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.data.reads.fetch_add(1, Ordering::Relaxed);
        let r = (|| {
            let f = self.file(fh)?;
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(n);
            Ok(buf)
        })();
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.data.writes.fetch_add(1, Ordering::Relaxed);
        let r = self
            .file(fh)
            .and_then(|f| f.write_all_at(data, offset).map_err(errno));
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = lock(&self.files).remove(&fh.0);
        if let Some(h) = h {
            // The kernel ended this file's I/O mode before sending the
            // release: the last release frees the inode for parked opens.
            let mut io = lock(&self.io);
            for (id, w) in io.release(h.ino) {
                self.serve_open(&mut io, w, Some(id));
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.file(fh).and_then(|f| {
            if datasync {
                f.sync_data().map_err(errno)
            } else {
                f.sync_all().map_err(errno)
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let (rel, layers) = self.dir_layers(ino.0)?;
            let parent_ino = {
                let st = lock(&self.state);
                rel.parent()
                    .and_then(|p| st.dirs.get(p).copied())
                    .unwrap_or(1)
            };
            let mut ents = vec![
                DirEnt {
                    name: ".".into(),
                    kind: FileType::Directory,
                    ino: ino.0,
                },
                DirEnt {
                    name: "..".into(),
                    kind: FileType::Directory,
                    ino: parent_ino,
                },
            ];
            let devs: Vec<u64> = self
                .branches
                .iter()
                .map(|b| fs::symlink_metadata(b).map(|m| m.dev()).unwrap_or(0))
                .collect();
            let list = self.list(&layers, &rel).map_err(errno)?;
            let mut st = lock(&self.state);
            for (name, ft, b, dino) in list {
                let kind = FileType::from_std(ft).unwrap_or(FileType::RegularFile);
                let crel = rel.join(&name);
                let ino = if ft.is_dir() {
                    match st.dirs.get(&crel) {
                        Some(&i) => i,
                        None => {
                            let i = st.next;
                            st.next += 1;
                            st.dirs.insert(crel.clone(), i);
                            st.nodes.insert(
                                i,
                                Node {
                                    path: crel,
                                    dir: true,
                                    layers: Vec::new(),
                                },
                            );
                            i
                        }
                    }
                } else {
                    let key = (devs[b], dino);
                    match st.files.get(&key) {
                        Some(&i) => i,
                        None => {
                            let i = st.next;
                            st.next += 1;
                            st.files.insert(key, i);
                            st.nodes.insert(
                                i,
                                Node {
                                    path: crel,
                                    dir: false,
                                    layers: Vec::new(),
                                },
                            );
                            i
                        }
                    }
                };
                ents.push(DirEnt { name, kind, ino });
            }
            drop(st);
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            lock(&self.dirs).insert(fh, Arc::new(ents));
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(ents) = lock(&self.dirs).get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, e) in ents.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self
            .node_path(ino.0)
            .and_then(|(rel, _, _)| match File::open(self.upper(&rel)) {
                Ok(f) => f.sync_all().map_err(errno),
                Err(_) => Ok(()),
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.branches[0]) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(nix_errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            self.rw()?;
            let (rel, _) = self.stat_node(ino.0)?;
            {
                let _w = lock(&self.wlock);
                self.copy_up(&rel).map_err(errno)?;
            }
            let up = self.upper(&rel);
            let exists = xattr::get(&up, name).map_err(errno)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(Errno::from_i32(libc::ENODATA));
            }
            xattr::set(&up, name, value).map_err(errno)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.stat_node(ino.0).and_then(|(rel, f)| {
            xattr::get(self.bpath(f.branch, &rel), name)
                .map_err(errno)?
                .ok_or(Errno::from_i32(libc::ENODATA))
        });
        xattr_reply(r, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self.stat_node(ino.0).and_then(|(rel, f)| {
            let mut out = Vec::new();
            for n in xattr::list(self.bpath(f.branch, &rel)).map_err(errno)? {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
            Ok(out)
        });
        xattr_reply(r, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            self.rw()?;
            let (rel, _) = self.stat_node(ino.0)?;
            {
                let _w = lock(&self.wlock);
                self.copy_up(&rel).map_err(errno)?;
            }
            xattr::remove(self.upper(&rel), name).map_err(errno)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let _w = lock(&self.wlock);
            let (prel, _, up) = self.prepare_new(parent.0, name)?;
            let mut o = OpenOptions::new();
            match flags & libc::O_ACCMODE {
                libc::O_RDONLY => o.read(true),
                libc::O_WRONLY => o.write(true),
                _ => o.read(true).write(true),
            };
            o.create_new(true).mode(mode & 0o7777 & !umask);
            let file = o.open(&up).map_err(errno)?;
            // The mode again: the server's umask must not narrow it.
            fs::set_permissions(&up, fs::Permissions::from_mode(mode & 0o7777 & !umask))
                .map_err(errno)?;
            self.chown_to(&up, req)?;
            let a = self.entry_reply(&prel.join(name))?;
            let md = file.metadata().map_err(errno)?;
            Ok((a, file, (md.dev(), md.ino())))
        })();
        let (a, file, key) = match r {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        // A new file: its inode has no other open file (a reused inode
        // number whose old file is still being released is refused).
        let ino = a.ino.0;
        let mut io = lock(&self.io);
        let b = match io.admit(ino, key) {
            Admit::First => {
                let b = self.backing(&file, |f| reply.open_backing(f));
                io.establish(ino, key, b)
            }
            Admit::Join(b) => b,
            Admit::Wait => return reply.error(Errno::EBUSY),
        };
        let fh = FileHandle(self.new_fh(file, ino));
        match b {
            Some(b) => {
                reply.created_passthrough(&TTL, &a, Generation(0), fh, FopenFlags::empty(), &b)
            }
            None => reply.created(&TTL, &a, Generation(0), fh, FopenFlags::empty()),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // SEEK_DATA / SEEK_HOLE on the backing file: holes stay visible.
        let r = self.file(fh).and_then(|f| {
            let w = match whence {
                libc::SEEK_DATA => nix::unistd::Whence::SeekData,
                libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
                libc::SEEK_END => nix::unistd::Whence::SeekEnd,
                libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
                _ => nix::unistd::Whence::SeekSet,
            };
            nix::unistd::lseek(std::os::fd::AsRawFd::as_raw_fd(&*f), offset, w).map_err(nix_errno)
        });
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.file(fh).and_then(|f| {
            nix::fcntl::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&*f),
                nix::fcntl::FallocateFlags::from_bits_truncate(mode),
                offset as i64,
                length as i64,
            )
            .map_err(nix_errno)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

fn reply_open(reply: ReplyOpen, fh: u64, backing: Option<&BackingId>) {
    match backing {
        Some(b) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), b),
        None => reply.opened(FileHandle(fh), FopenFlags::empty()),
    }
}

fn xattr_reply(r: R<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

/// Mount options of a union mount.
pub fn mount_config(read_only: bool, fsname: &str, threads: usize) -> fuser::Config {
    use fuser::MountOption;
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("strata-aufs".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        if read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    c.acl = fuser::SessionACL::All;
    c.n_threads = Some(threads.max(1));
    c
}

/// Mounts a union in this process on `mountpoint`, served by background
/// threads until the returned session is dropped (which unmounts).
///
/// # Errors
/// The mount's error (no `/dev/fuse`, no privilege, a bad mount point).
pub fn spawn(
    branches: Vec<PathBuf>,
    writable: bool,
    mountpoint: &Path,
    threads: usize,
) -> io::Result<fuser::BackgroundSession> {
    spawn_union(Union::new(branches, writable), mountpoint, threads)
}

/// Mounts `union` in this process on `mountpoint` (read-only when the union
/// is), as [`spawn`] does.
///
/// # Errors
/// As [`spawn`].
pub fn spawn_union(
    union: Union,
    mountpoint: &Path,
    threads: usize,
) -> io::Result<fuser::BackgroundSession> {
    let cfg = mount_config(!union.writable, "strata-aufs", threads);
    fuser::spawn_mount(union, mountpoint, &cfg)
}
