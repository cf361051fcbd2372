//! The canonical layer-tar writer.

use super::format::{off, pax_record, pax_time, put_octal, set_checksum, BLOCK};
use super::sys;
use super::{Item, OPAQUE, WH_PREFIX};
use crate::{Change, ChangeKind, Error, IoContext, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, SFlag};
use nix::unistd::{lseek, Whence};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use xattr::FileExt as _;

/// Size of the buffer file data is copied through.
const COPY_BUF: usize = 64 * 1024;
/// Most directories [`Dirs`] keeps open at once (the deepest ones).
const MAX_OPEN_DIRS: usize = 16;

/// What an item becomes in the tar.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entry,
    Whiteout,
    Opaque,
}

/// An item with its tar path as components, for canonical ordering.
struct Keyed {
    key: Vec<Vec<u8>>,
    kind: Kind,
    /// The item's own path (relative), for reading and errors.
    rel: Vec<u8>,
}

/// Splits a path into components, dropping `/`, empty and `.` parts.
fn components(p: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = p.as_os_str().as_bytes();
    let mut out = Vec::new();
    for c in bytes.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Error::archive(bytes, "path has a `..` component")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn keyed(item: Item) -> Result<Option<Keyed>> {
    let (path, kind) = match item {
        Item::Entry(p) => (p, Kind::Entry),
        Item::Whiteout(p) => (p, Kind::Whiteout),
        Item::Opaque(p) => (p, Kind::Opaque),
    };
    let comps = components(&path)?;
    let raw = path.as_os_str().as_bytes();
    if let Some(c) = comps.iter().find(|c| c.starts_with(WH_PREFIX)) {
        return Err(Error::archive(
            raw,
            format!(
                "name `{}` begins with `.wh.` and would read as a whiteout",
                String::from_utf8_lossy(c)
            ),
        ));
    }
    let rel = comps.join(&b'/');
    let mut key = comps;
    match kind {
        Kind::Entry => {
            if key.is_empty() {
                return Ok(None);
            }
        }
        Kind::Whiteout => {
            let Some(last) = key.pop() else {
                return Err(Error::archive(raw, "the root cannot be whited out"));
            };
            let mut n = WH_PREFIX.to_vec();
            n.extend_from_slice(&last);
            key.push(n);
        }
        Kind::Opaque => key.push(OPAQUE.to_vec()),
    }
    Ok(Some(Keyed { key, kind, rel }))
}

/// Writes a canonical tar of `items` (see [`super::write_items`]).
pub(super) fn write_items<W: Write>(root: &Path, items: Vec<Item>, out: W) -> Result<W> {
    let mut list = Vec::with_capacity(items.len());
    for item in items {
        if let Some(k) = keyed(item)? {
            list.push(k);
        }
    }
    list.sort_by(|a, b| a.key.cmp(&b.key));
    list.dedup_by(|a, b| a.key == b.key);

    let mut w = Writer {
        out: BufWriter::with_capacity(COPY_BUF, out),
        links: HashMap::new(),
        buf: vec![0u8; COPY_BUF],
        dirs: Dirs {
            root: root.to_path_buf(),
            root_fd: None,
            open: Vec::new(),
        },
    };
    for k in &list {
        let name = k.key.join(&b'/');
        match k.kind {
            Kind::Whiteout | Kind::Opaque => {
                let h = Header::marker(name);
                w.header(&h).ctx("write", tar_ctx(&h.name))?;
            }
            Kind::Entry => w.entry(&k.rel, name)?,
        }
    }
    w.out
        .write_all(&[0u8; 2 * BLOCK])
        .ctx("write", "end of archive")?;
    let mut out = w
        .out
        .into_inner()
        .map_err(|e| Error::io("write", "end of archive", e.into_error()))?;
    out.flush().ctx("flush", "end of archive")?;
    Ok(out)
}

/// Writes a canonical tar of `changes` (see [`super::write_changes`]).
pub(super) fn write_changes<W: Write>(root: &Path, changes: &[Change], out: W) -> Result<W> {
    // Change paths are absolute inside the layer; `components` drops the
    // leading `/`.
    let items = changes
        .iter()
        .map(|c| match c.kind {
            ChangeKind::Added | ChangeKind::Modified => Item::Entry(c.path.clone()),
            ChangeKind::Deleted => Item::Whiteout(c.path.clone()),
        })
        .collect();
    write_items(root, items, out)
}

fn tar_ctx(name: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(name))
}

/// Everything a header says about one entry.
struct Header {
    name: Vec<u8>,
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: (i64, u32),
    link: Vec<u8>,
    dev: (u64, u64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sparse map (offset, length) and real size.
    sparse: Option<(Vec<(u64, u64)>, u64)>,
}

impl Header {
    /// A whiteout or opaque marker: an empty regular file, all metadata zero.
    fn marker(name: Vec<u8>) -> Self {
        Header {
            name,
            typeflag: b'0',
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (0, 0),
            link: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            sparse: None,
        }
    }
}

/// Splits `name` into ustar (prefix, name) if it fits.
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    if name.len() > 256 {
        return None;
    }
    // The shortest prefix that leaves a name of at most 100 bytes.
    let min_slash = name.len() - 101;
    let pos = name
        .iter()
        .enumerate()
        .skip(min_slash)
        .find(|&(_, &b)| b == b'/')
        .map(|(i, _)| i)?;
    let (p, n) = (&name[..pos], &name[pos + 1..]);
    if p.len() <= 155 && !n.is_empty() && n.len() <= 100 {
        Some((p, n))
    } else {
        None
    }
}

fn basename(name: &[u8]) -> &[u8] {
    let t = name.strip_suffix(b"/").unwrap_or(name);
    match t.iter().rposition(|&b| b == b'/') {
        Some(i) => &t[i + 1..],
        None => t,
    }
}

fn truncate(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

/// Open directories of the tree being written, so each entry is reached
/// with one `*at` call from its parent instead of a path walk from the
/// root: items come sorted, so consecutive entries share their parent and
/// a directory's own entry comes right before its contents.
///
/// `open` holds the deepest directories used lately, each an ancestor of
/// the next (relative paths, at most [`MAX_OPEN_DIRS`]); the root is opened
/// on first use (a tar of whiteouts only never opens it).
struct Dirs {
    root: PathBuf,
    root_fd: Option<File>,
    open: Vec<(Vec<u8>, File)>,
}

/// Whether relative path `dir` is `path` or one of its ancestors.
fn is_ancestor_or_same(dir: &[u8], path: &[u8]) -> bool {
    path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/')
}

impl Dirs {
    fn root_fd(&mut self) -> Result<&File> {
        if self.root_fd.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(&self.root)
                .ctx("open", &self.root)?;
            self.root_fd = Some(f);
        }
        Ok(self.root_fd.as_ref().expect("opened above"))
    }

    /// The open directory at relative path `dir` (empty: the root), opened
    /// from its deepest open ancestor when it is not open yet (following
    /// symlinks on the way, as a path lookup from the root would).
    fn get(&mut self, dir: &[u8]) -> Result<&File> {
        if dir.is_empty() {
            return self.root_fd();
        }
        while let Some((top, _)) = self.open.last() {
            if is_ancestor_or_same(top, dir) {
                break;
            }
            self.open.pop();
        }
        let depth = self.open.last().map(|(top, _)| top.len());
        if depth != Some(dir.len()) {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            let f = match depth {
                Some(n) => sys::openat(&self.open[self.open.len() - 1].1, &dir[n + 1..], flags, 0),
                None => sys::openat(self.root_fd()?, dir, flags, 0),
            }
            .map_err(|e| Error::nix("open", self.root.join(OsStr::from_bytes(dir)), e))?;
            self.push(dir.to_vec(), f);
        }
        Ok(&self.open.last().expect("open or pushed above").1)
    }

    /// Records `f` as the open directory at `dir`, a child of the deepest
    /// open one (or of the root).
    fn push(&mut self, dir: Vec<u8>, f: File) {
        if self.open.len() == MAX_OPEN_DIRS {
            self.open.remove(0);
        }
        self.open.push((dir, f));
    }
}

/// Splits a relative path into its parent's path and its last component.
fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// The file type bits of a stat.
fn ftype(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

struct Writer<W: Write> {
    out: BufWriter<W>,
    /// (dev, ino) of multiply linked files already written -> their tar name.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    dirs: Dirs,
}

impl<W: Write> Writer<W> {
    /// Writes the PAX header (when needed) and the ustar header of `h`.
    fn header(&mut self, h: &Header) -> std::io::Result<()> {
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut block = [0u8; BLOCK];
        let mut binary = false;

        // Name (for sparse files, the GNUSparseFile.0 name; the real one is
        // in GNU.sparse.name).
        let ustar_name = if let Some((_, realsize)) = &h.sparse {
            let base = basename(&h.name);
            let dir = &h.name[..h.name.len() - base.len()];
            let mut n = dir.to_vec();
            n.extend_from_slice(b"GNUSparseFile.0/");
            n.extend_from_slice(base);
            pax.push((b"GNU.sparse.major".to_vec(), b"1".to_vec()));
            pax.push((b"GNU.sparse.minor".to_vec(), b"0".to_vec()));
            pax.push((b"GNU.sparse.name".to_vec(), h.name.clone()));
            pax.push((
                b"GNU.sparse.realsize".to_vec(),
                realsize.to_string().into_bytes(),
            ));
            binary |= std::str::from_utf8(&h.name).is_err();
            n
        } else {
            h.name.clone()
        };
        match ustar_split(&ustar_name) {
            Some((p, n)) => {
                block[off::PREFIX][..p.len()].copy_from_slice(p);
                block[off::NAME][..n.len()].copy_from_slice(n);
            }
            None => {
                let t = truncate(&ustar_name, 100);
                block[off::NAME][..t.len()].copy_from_slice(t);
                if h.sparse.is_none() {
                    pax.push((b"path".to_vec(), h.name.clone()));
                    binary |= std::str::from_utf8(&h.name).is_err();
                }
            }
        }
        if h.link.len() > 100 {
            pax.push((b"linkpath".to_vec(), h.link.clone()));
            binary |= std::str::from_utf8(&h.link).is_err();
        } else {
            block[off::LINKNAME][..h.link.len()].copy_from_slice(&h.link);
        }
        put_octal(&mut block[off::MODE], u64::from(h.mode & 0o7777));
        if !put_octal(&mut block[off::UID], h.uid) {
            put_octal(&mut block[off::UID], 0);
            pax.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
        }
        if !put_octal(&mut block[off::GID], h.gid) {
            put_octal(&mut block[off::GID], 0);
            pax.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
        }
        if !put_octal(&mut block[off::SIZE], h.size) {
            put_octal(&mut block[off::SIZE], 0);
            pax.push((b"size".to_vec(), h.size.to_string().into_bytes()));
        }
        let (sec, nsec) = h.mtime;
        let sec_fits = sec >= 0 && put_octal(&mut block[off::MTIME], sec as u64);
        if !sec_fits {
            put_octal(&mut block[off::MTIME], 0);
        }
        if !sec_fits || nsec != 0 {
            pax.push((b"mtime".to_vec(), pax_time(sec, nsec).into_bytes()));
        }
        if !put_octal(&mut block[off::DEVMAJOR], h.dev.0) {
            put_octal(&mut block[off::DEVMAJOR], 0);
            pax.push((
                b"SCHILY.devmajor".to_vec(),
                h.dev.0.to_string().into_bytes(),
            ));
        }
        if !put_octal(&mut block[off::DEVMINOR], h.dev.1) {
            put_octal(&mut block[off::DEVMINOR], 0);
            pax.push((
                b"SCHILY.devminor".to_vec(),
                h.dev.1.to_string().into_bytes(),
            ));
        }
        for (k, v) in &h.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.push((key, v.clone()));
        }
        if binary {
            pax.push((b"hdrcharset".to_vec(), b"BINARY".to_vec()));
        }
        block[off::TYPEFLAG] = h.typeflag;
        block[off::MAGIC].copy_from_slice(b"ustar\0");
        block[off::VERSION].copy_from_slice(b"00");
        set_checksum(&mut block);

        if !pax.is_empty() {
            pax.sort();
            let data: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut ph = [0u8; BLOCK];
            let mut pname = b"PaxHeaders.0/".to_vec();
            pname.extend_from_slice(basename(&h.name));
            let pname = truncate(&pname, 100);
            ph[off::NAME][..pname.len()].copy_from_slice(pname);
            put_octal(&mut ph[off::MODE], 0o644);
            put_octal(&mut ph[off::UID], 0);
            put_octal(&mut ph[off::GID], 0);
            put_octal(&mut ph[off::SIZE], data.len() as u64);
            put_octal(&mut ph[off::MTIME], 0);
            ph[off::TYPEFLAG] = b'x';
            ph[off::MAGIC].copy_from_slice(b"ustar\0");
            ph[off::VERSION].copy_from_slice(b"00");
            put_octal(&mut ph[off::DEVMAJOR], 0);
            put_octal(&mut ph[off::DEVMINOR], 0);
            set_checksum(&mut ph);
            self.out.write_all(&ph)?;
            self.out.write_all(&data)?;
            self.pad(data.len() as u64)?;
        }
        self.out.write_all(&block)
    }

    fn pad(&mut self, len: u64) -> std::io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes the on-disk entry `rel` (relative to the root) as tar name
    /// `name`.
    fn entry(&mut self, rel: &[u8], mut name: Vec<u8>) -> Result<()> {
        let path = self.dirs.root.join(OsStr::from_bytes(rel));
        let (dir, base) = split_parent(rel);
        // The fd stays open in `dirs` until a later `get` or `push`.
        let pfd = self.dirs.get(dir)?.as_raw_fd();
        let st = nix::sys::stat::fstatat(Some(pfd), base, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Error::nix("lstat", &path, e))?;
        let ft = ftype(&st);
        let mut h = Header {
            name: Vec::new(),
            typeflag: b'0',
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            size: 0,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            link: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            sparse: None,
        };
        if ft == SFlag::S_IFDIR {
            // Opened (never through a symlink) for its xattrs, and kept
            // open: its contents come next.
            let f = sys::openat(
                &pfd,
                base,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                0,
            )
            .map_err(|e| Error::nix("open", &path, e))?;
            h.xattrs = fd_xattrs(&f, &path)?;
            self.dirs.push(rel.to_vec(), f);
            name.push(b'/');
            h.name = name;
            h.typeflag = b'5';
            return self.header(&h).ctx("write", &path);
        }
        h.name = name;
        // Hard links of any non-directory (files, symlinks, fifos, devices):
        // the first name in canonical order carries the entry, later names
        // are link entries to it, without xattrs. Sockets are never written
        // at all.
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 && ft != SFlag::S_IFSOCK {
            if let Some(first) = self.links.get(&key) {
                h.typeflag = b'1';
                h.link = first.clone();
                return self.header(&h).ctx("write", &path);
            }
            self.links.insert(key, h.name.clone());
        }
        if ft != SFlag::S_IFREG {
            // Never opened (devices, fifos): xattrs by path.
            h.xattrs = path_xattrs(&path)?;
            match ft {
                SFlag::S_IFLNK => {
                    h.typeflag = b'2';
                    h.link = nix::fcntl::readlinkat(Some(pfd), base)
                        .map_err(|e| Error::nix("readlink", &path, e))?
                        .into_vec();
                }
                SFlag::S_IFCHR | SFlag::S_IFBLK => {
                    h.typeflag = if ft == SFlag::S_IFCHR { b'3' } else { b'4' };
                    let rdev = st.st_rdev;
                    h.dev = (
                        u64::from(nix::sys::stat::major(rdev) as u32),
                        u64::from(nix::sys::stat::minor(rdev) as u32),
                    );
                }
                SFlag::S_IFIFO => h.typeflag = b'6',
                _ => {
                    tracing::warn!(path = %path.display(), "skipping a socket: sockets cannot be stored in a tar");
                    return Ok(());
                }
            }
            return self.header(&h).ctx("write", &path);
        }
        // A regular file.
        let file = sys::openat(
            &pfd,
            base,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
            0,
        )
        .map_err(|e| Error::nix("open", &path, e))?;
        let fst =
            nix::sys::stat::fstat(file.as_raw_fd()).map_err(|e| Error::nix("fstat", &path, e))?;
        if fst.st_ino != st.st_ino || fst.st_dev != st.st_dev || ftype(&fst) != SFlag::S_IFREG {
            return Err(Error::archive(
                rel,
                "file changed while the tar was written",
            ));
        }
        h.xattrs = fd_xattrs(&file, &path)?;
        let size = fst.st_size as u64;
        h.size = size;
        let segments = sparse_segments(&file, size, fst.st_blocks as u64).ctx("seek", &path)?;
        match segments {
            None => {
                self.header(&h).ctx("write", &path)?;
                self.copy(&file, 0, size, rel, &path)?;
                self.pad(size).ctx("write", &path)?;
            }
            Some(segs) => {
                let mut map = format!("{}\n", segs.len());
                for (o, l) in &segs {
                    map.push_str(&format!("{o}\n{l}\n"));
                }
                let mut map = map.into_bytes();
                let padded = map.len().div_ceil(BLOCK) * BLOCK;
                map.resize(padded, 0);
                let data: u64 = segs.iter().map(|s| s.1).sum();
                h.size = map.len() as u64 + data;
                h.sparse = Some((segs.clone(), size));
                self.header(&h).ctx("write", &path)?;
                self.out.write_all(&map).ctx("write", &path)?;
                for (o, l) in &segs {
                    self.copy(&file, *o, *l, rel, &path)?;
                }
                self.pad(data).ctx("write", &path)?;
            }
        }
        Ok(())
    }

    /// Copies exactly `len` bytes of `file` from `offset`.
    fn copy(&mut self, file: &File, offset: u64, len: u64, rel: &[u8], path: &Path) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(self.buf.len() as u64) as usize;
            let n = match file.read_at(&mut self.buf[..want], offset + done) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", path, e)),
            };
            if n == 0 {
                return Err(Error::archive(rel, "file shrank while the tar was written"));
            }
            self.out.write_all(&self.buf[..n]).ctx("write", path)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// The data segments of a sparse file, or `None` if it is not sparse.
fn sparse_segments(
    file: &File,
    size: u64,
    blocks: u64,
) -> std::io::Result<Option<Vec<(u64, u64)>>> {
    if size == 0 {
        return Ok(None);
    }
    let fd = file.as_raw_fd();
    let first_hole = lseek(fd, 0, Whence::SeekHole).map_err(std::io::Error::from)? as u64;
    if blocks * 512 >= size && first_hole >= size {
        return Ok(None);
    }
    let mut segs = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let data = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = (lseek(fd, data as i64, Whence::SeekHole).map_err(std::io::Error::from)? as u64)
            .min(size);
        segs.push((data, hole - data));
        pos = hole;
    }
    if segs.len() == 1 && segs[0] == (0, size) {
        return Ok(None);
    }
    if segs.last().is_none_or(|&(o, l)| o + l < size) {
        segs.push((size, 0));
    }
    Ok(Some(segs))
}

/// Whether an xattr is one a layer tar carries: overlay's own bookkeeping
/// (opaque flags, redirects, metacopy, origin) belongs to the upper dir it
/// lives in, never to a layer.
fn carried(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !(b.starts_with(b"trusted.overlay.") || b.starts_with(b"user.overlay."))
}

/// Every carried extended attribute of the open `file` (at `path`), sorted.
fn fd_xattrs(file: &File, path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match file.list_xattr() {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("flistxattr", path, e)),
    };
    let mut out = Vec::new();
    for n in names.filter(|n| carried(n)) {
        if let Some(v) = file.get_xattr(&n).ctx("fgetxattr", path)? {
            out.push((n.into_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Every carried extended attribute of `path` (not following a symlink),
/// sorted.
fn path_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("llistxattr", path, e)),
    };
    let mut out = Vec::new();
    for n in names.filter(|n| carried(n)) {
        if let Some(v) = xattr::get(path, &n).ctx("lgetxattr", path)? {
            out.push((n.into_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}
