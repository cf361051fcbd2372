//! A strict streaming tar reader: ustar, GNU (`L`/`K` long names) and PAX
//! (`x` per-entry records, `g` global headers), with PAX sparse 1.0.

use super::format::{
    checksum_ok, cstr, off, parse_numeric, parse_pax, parse_pax_time, parse_pax_u64, BLOCK,
    MAX_EXT, MAX_SPARSE_MAP,
};
use crate::{Error, Result};
use std::io::{ErrorKind, Read};

/// The kind of a tar entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Regular,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

/// Sparse 1.0 information from the PAX records.
#[derive(Clone, Debug)]
pub(super) struct Sparse {
    pub realsize: u64,
}

/// One entry's header, with every extension applied.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// The name as it stands in the tar (after extensions).
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: (i64, u32),
    pub atime: Option<(i64, u32)>,
    pub dev: (u64, u64),
    /// Bytes of data following the header in the archive.
    pub size: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub sparse: Option<Sparse>,
}

/// Reads entries one by one; the data of the current entry is read through
/// [`TarReader::read_data`], and skipped if the caller does not read it.
pub(super) struct TarReader<R: Read> {
    r: R,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// The current entry's name, for errors.
    current: Vec<u8>,
    done: bool,
}

fn trunc(entry: &[u8]) -> Error {
    Error::archive(entry, "archive is truncated")
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            remaining: 0,
            padding: 0,
            current: b"<start of archive>".to_vec(),
            done: false,
        }
    }

    /// Fills `buf` completely; `Ok(false)` on a clean EOF before any byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => {
                    return if n == 0 {
                        Ok(false)
                    } else {
                        Err(trunc(&self.current))
                    }
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(true)
    }

    fn read_error(&self, e: std::io::Error) -> Error {
        if e.kind() == ErrorKind::UnexpectedEof {
            trunc(&self.current)
        } else {
            Error::archive(&self.current, format!("reading the archive: {e}"))
        }
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            if !self.fill(&mut buf[..k])? {
                return Err(trunc(&self.current));
            }
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes of the current entry's data; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let k = (self.remaining.min(buf.len() as u64)) as usize;
        loop {
            match self.r.read(&mut buf[..k]) {
                Ok(0) => return Err(trunc(&self.current)),
                Ok(n) => {
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    /// Reads exactly `buf.len()` bytes of the current entry's data.
    pub fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        if (buf.len() as u64) > self.remaining {
            return Err(Error::archive(
                &self.current,
                "entry data is shorter than expected",
            ));
        }
        let mut n = 0;
        while n < buf.len() {
            n += self.read_data(&mut buf[n..])?;
        }
        Ok(())
    }

    /// Data bytes of the current entry not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Reads a whole extension header's data (bounded).
    fn ext_data(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_EXT {
            return Err(Error::archive(
                &self.current,
                format!("{what} of {size} bytes is larger than the limit of {MAX_EXT}"),
            ));
        }
        let mut data = vec![0u8; size as usize];
        if !self.fill(&mut data)? && size > 0 {
            return Err(trunc(&self.current));
        }
        self.skip(pad(size))?;
        Ok(data)
    }

    /// The next entry, or `None` at the end-of-archive block.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;

        let mut pax: Option<Vec<(Vec<u8>, Vec<u8>)>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut h = [0u8; BLOCK];
            if !self.fill(&mut h)? {
                return Err(Error::archive(
                    &self.current,
                    "archive is truncated (no end-of-archive block)",
                ));
            }
            if h.iter().all(|&b| b == 0) {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(Error::archive(
                        &self.current,
                        "extension header not followed by an entry",
                    ));
                }
                self.done = true;
                return Ok(None);
            }
            let magic = &h[off::MAGIC];
            let ustar = magic == b"ustar\0";
            let mut name = Vec::new();
            if ustar {
                let prefix = cstr(&h[off::PREFIX]);
                if !prefix.is_empty() {
                    name.extend_from_slice(prefix);
                    name.push(b'/');
                }
            }
            name.extend_from_slice(cstr(&h[off::NAME]));
            self.current = long_name.clone().unwrap_or_else(|| name.clone());
            if !checksum_ok(&h) {
                return Err(Error::archive(&name, "header checksum mismatch"));
            }
            let num = |r: std::ops::Range<usize>, what: &str| {
                parse_numeric(&h[r])
                    .ok_or_else(|| Error::archive(&name, format!("invalid numeric field {what}")))
            };
            let size = num(off::SIZE, "size")?;
            let typeflag = h[off::TYPEFLAG];
            match typeflag {
                b'x' => {
                    if pax.is_some() {
                        return Err(Error::archive(&name, "two PAX headers for one entry"));
                    }
                    let data = self.ext_data(size, "PAX header")?;
                    let recs = parse_pax(&data).map_err(|why| Error::archive(&name, why))?;
                    pax = Some(recs);
                    continue;
                }
                b'g' => {
                    // Global records are validated and otherwise ignored.
                    let data = self.ext_data(size, "PAX global header")?;
                    parse_pax(&data).map_err(|why| Error::archive(&name, why))?;
                    continue;
                }
                b'L' | b'K' => {
                    let mut data = self.ext_data(size, "GNU long name")?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    if data.contains(&0) {
                        return Err(Error::archive(&data, "NUL byte in a GNU long name"));
                    }
                    let slot = if typeflag == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.is_some() {
                        return Err(Error::archive(&name, "two GNU long names for one entry"));
                    }
                    *slot = Some(data);
                    continue;
                }
                _ => {}
            }
            let kind = match typeflag {
                b'0' | 0 | b'7' => {
                    if name.ends_with(b"/") && typeflag != b'7' {
                        Kind::Dir
                    } else {
                        Kind::Regular
                    }
                }
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                t => {
                    return Err(Error::archive(
                        &self.current,
                        format!("unsupported entry type {:?}", t as char),
                    ))
                }
            };
            let mut e = Entry {
                name: long_name.take().unwrap_or(name.clone()),
                link: long_link
                    .take()
                    .unwrap_or_else(|| cstr(&h[off::LINKNAME]).to_vec()),
                kind,
                mode: (num(off::MODE, "mode")? & 0o7777) as u32,
                uid: num(off::UID, "uid")?,
                gid: num(off::GID, "gid")?,
                mtime: (
                    i64::try_from(num(off::MTIME, "mtime")?)
                        .map_err(|_| Error::archive(&name, "mtime out of range"))?,
                    0,
                ),
                atime: None,
                dev: (0, 0),
                size,
                xattrs: Vec::new(),
                sparse: None,
            };
            if matches!(kind, Kind::Char | Kind::Block) {
                e.dev = (
                    num(off::DEVMAJOR, "devmajor")?,
                    num(off::DEVMINOR, "devminor")?,
                );
            }
            let mut sparse_major = None;
            let mut sparse_minor = None;
            let mut sparse_name = None;
            let mut realsize = None;
            let mut old_sparse = false;
            for (k, v) in pax.take().unwrap_or_default() {
                let bad = |what: &str| Error::archive(&e.name, format!("invalid PAX {what} value"));
                match k.as_slice() {
                    b"path" => e.name = v,
                    b"linkpath" => e.link = v,
                    b"size" => e.size = parse_pax_u64(&v).ok_or_else(|| bad("size"))?,
                    b"uid" => e.uid = parse_pax_u64(&v).ok_or_else(|| bad("uid"))?,
                    b"gid" => e.gid = parse_pax_u64(&v).ok_or_else(|| bad("gid"))?,
                    b"mtime" => e.mtime = parse_pax_time(&v).ok_or_else(|| bad("mtime"))?,
                    b"atime" => e.atime = Some(parse_pax_time(&v).ok_or_else(|| bad("atime"))?),
                    b"SCHILY.devmajor" => {
                        e.dev.0 = parse_pax_u64(&v).ok_or_else(|| bad("devmajor"))?
                    }
                    b"SCHILY.devminor" => {
                        e.dev.1 = parse_pax_u64(&v).ok_or_else(|| bad("devminor"))?
                    }
                    b"GNU.sparse.major" => sparse_major = Some(v),
                    b"GNU.sparse.minor" => sparse_minor = Some(v),
                    b"GNU.sparse.name" => sparse_name = Some(v),
                    b"GNU.sparse.realsize" => {
                        realsize =
                            Some(parse_pax_u64(&v).ok_or_else(|| bad("GNU.sparse.realsize"))?)
                    }
                    b"GNU.sparse.size"
                    | b"GNU.sparse.numblocks"
                    | b"GNU.sparse.offset"
                    | b"GNU.sparse.numbytes"
                    | b"GNU.sparse.map" => old_sparse = true,
                    _ => {
                        if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                            if x.is_empty() || x.contains(&0) {
                                return Err(bad("xattr name"));
                            }
                            e.xattrs.retain(|(n, _)| n != x);
                            e.xattrs.push((x.to_vec(), v));
                        }
                        // Other keys (uname, gname, ctime, comment,
                        // hdrcharset, vendor records) carry nothing applied.
                    }
                }
            }
            if old_sparse {
                return Err(Error::archive(
                    &e.name,
                    "GNU sparse format 0.x is not supported (only 1.0)",
                ));
            }
            if sparse_major.is_some() || sparse_minor.is_some() {
                if sparse_major.as_deref() != Some(b"1") || sparse_minor.as_deref() != Some(b"0") {
                    return Err(Error::archive(&e.name, "unsupported GNU sparse version"));
                }
                let Some(real) = sparse_name else {
                    return Err(Error::archive(
                        &e.name,
                        "sparse entry without GNU.sparse.name",
                    ));
                };
                e.name = real;
                let Some(realsize) = realsize else {
                    return Err(Error::archive(
                        &e.name,
                        "sparse entry without GNU.sparse.realsize",
                    ));
                };
                if e.kind != Kind::Regular {
                    return Err(Error::archive(
                        &e.name,
                        "sparse entry that is not a regular file",
                    ));
                }
                e.sparse = Some(Sparse { realsize });
            }
            if matches!(
                e.kind,
                Kind::HardLink | Kind::Symlink | Kind::Char | Kind::Block | Kind::Dir | Kind::Fifo
            ) {
                // These carry no data; a size on them would desynchronise
                // the reader if trusted, and is refused.
                if e.size != 0 && e.kind != Kind::HardLink {
                    return Err(Error::archive(&e.name, "non-file entry with data"));
                }
            }
            self.current = e.name.clone();
            self.remaining = e.size;
            self.padding = pad(e.size);
            return Ok(Some(e));
        }
    }

    /// Reads the sparse 1.0 map at the start of the current entry's data:
    /// (offset, length) segments, validated against `realsize` and the data
    /// that follows.
    pub fn sparse_map(&mut self, realsize: u64) -> Result<Vec<(u64, u64)>> {
        let name = self.current.clone();
        let bad = |why: &str| Error::archive(&name, format!("invalid sparse map: {why}"));
        let mut nums: Vec<u64> = Vec::new();
        let mut want: Option<u64> = None;
        let mut text_len: u64 = 0;
        let mut cur: Option<u64> = None;
        loop {
            let mut block = [0u8; BLOCK];
            self.read_data_exact(&mut block)
                .map_err(|_| bad("truncated"))?;
            text_len += BLOCK as u64;
            if text_len > MAX_SPARSE_MAP {
                return Err(bad("larger than the limit"));
            }
            for &b in block.iter() {
                if want.is_some_and(|w| nums.len() as u64 == 1 + 2 * w) {
                    break;
                }
                match b {
                    b'0'..=b'9' => {
                        let c = cur.unwrap_or(0);
                        cur = Some(
                            c.checked_mul(10)
                                .and_then(|c| c.checked_add(u64::from(b - b'0')))
                                .ok_or_else(|| bad("number overflows"))?,
                        );
                    }
                    b'\n' => {
                        let v = cur.take().ok_or_else(|| bad("empty line"))?;
                        if want.is_none() {
                            if v > MAX_SPARSE_MAP / 4 {
                                return Err(bad("too many segments"));
                            }
                            want = Some(v);
                        }
                        nums.push(v);
                    }
                    _ => return Err(bad("unexpected byte")),
                }
            }
            if let Some(w) = want {
                if nums.len() as u64 == 1 + 2 * w {
                    break;
                }
            }
        }
        let mut segs = Vec::with_capacity(nums.len() / 2);
        let mut end = 0u64;
        let mut total = 0u64;
        for pair in nums[1..].chunks(2) {
            let (o, l) = (pair[0], pair[1]);
            let e = o.checked_add(l).ok_or_else(|| bad("segment overflows"))?;
            if o < end {
                return Err(bad("segments overlap or are out of order"));
            }
            if e > realsize {
                return Err(bad("segment beyond the real size"));
            }
            end = e;
            total += l;
            segs.push((o, l));
        }
        if total != self.remaining {
            return Err(bad("segment lengths do not match the entry's data size"));
        }
        Ok(segs)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}
