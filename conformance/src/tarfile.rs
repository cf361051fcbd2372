//! A minimal ustar writer for hand-made test tars (whiteouts, odd names,
//! hostile entries), independent of the archive module under test.
//!
//! Names and link targets must fit the ustar fields (100 bytes; no prefix
//! splitting) and are written exactly as given: nothing is cleaned, so
//! tests can write entries that a careful writer would refuse.

use std::io::{self, Write};

/// The type of a hand-made tar entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    /// A regular file (`'0'`).
    File,
    /// A hard link (`'1'`) to the entry named by the link field.
    HardLink,
    /// A symlink (`'2'`).
    Symlink,
    /// A character device (`'3'`).
    Char,
    /// A block device (`'4'`).
    Block,
    /// A directory (`'5'`).
    Dir,
    /// A fifo (`'6'`).
    Fifo,
}

impl EntryType {
    fn flag(self) -> u8 {
        match self {
            EntryType::File => b'0',
            EntryType::HardLink => b'1',
            EntryType::Symlink => b'2',
            EntryType::Char => b'3',
            EntryType::Block => b'4',
            EntryType::Dir => b'5',
            EntryType::Fifo => b'6',
        }
    }
}

/// One hand-made entry's header fields.
#[derive(Clone, Debug)]
pub struct Header {
    /// Entry name as written (a trailing `/` for directories is customary).
    pub name: Vec<u8>,
    /// Type.
    pub kind: EntryType,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, whole seconds.
    pub mtime: u64,
    /// Link target (symlinks and hard links).
    pub link: Vec<u8>,
    /// Device numbers (character and block devices).
    pub dev: (u32, u32),
}

impl Header {
    /// A header with mode 0644 (0755 for directories), root owner, and
    /// mtime 1,700,000,000.
    pub fn new(name: impl AsRef<[u8]>, kind: EntryType) -> Self {
        Header {
            name: name.as_ref().to_vec(),
            kind,
            mode: if kind == EntryType::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link: Vec::new(),
            dev: (0, 0),
        }
    }
}

fn octal(field: &mut [u8], value: u64) -> io::Result<()> {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    if s.len() > width {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("value {value} does not fit a {width}-digit tar field"),
        ));
    }
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
    Ok(())
}

fn text(field: &mut [u8], value: &[u8], what: &str) -> io::Result<()> {
    if value.len() > field.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what} of {} bytes does not fit {} bytes",
                value.len(),
                field.len()
            ),
        ));
    }
    field[..value.len()].copy_from_slice(value);
    Ok(())
}

/// Writes ustar entries to `W`.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    /// A writer to `out`.
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Writes one entry with `data` as its contents (for files; empty
    /// otherwise).
    ///
    /// # Errors
    /// A field that does not fit, or writing `out`.
    pub fn entry(&mut self, h: &Header, data: &[u8]) -> io::Result<()> {
        let mut b = [0u8; 512];
        text(&mut b[0..100], &h.name, "name")?;
        octal(&mut b[100..108], u64::from(h.mode))?;
        octal(&mut b[108..116], u64::from(h.uid))?;
        octal(&mut b[116..124], u64::from(h.gid))?;
        octal(&mut b[124..136], data.len() as u64)?;
        octal(&mut b[136..148], h.mtime)?;
        b[156] = h.kind.flag();
        text(&mut b[157..257], &h.link, "link target")?;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        octal(&mut b[329..337], u64::from(h.dev.0))?;
        octal(&mut b[337..345], u64::from(h.dev.1))?;
        b[148..156].copy_from_slice(b"        ");
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
        self.out.write_all(&b)?;
        self.out.write_all(data)?;
        let pad = (512 - data.len() % 512) % 512;
        self.out.write_all(&vec![0u8; pad])
    }

    /// A regular file with default metadata.
    ///
    /// # Errors
    /// As [`TarWriter::entry`].
    pub fn file(&mut self, name: impl AsRef<[u8]>, data: &[u8]) -> io::Result<()> {
        self.entry(&Header::new(name, EntryType::File), data)
    }

    /// A directory with default metadata.
    ///
    /// # Errors
    /// As [`TarWriter::entry`].
    pub fn dir(&mut self, name: impl AsRef<[u8]>) -> io::Result<()> {
        self.entry(&Header::new(name, EntryType::Dir), &[])
    }

    /// Ends the archive (two zero blocks) and returns the writer.
    ///
    /// # Errors
    /// Writing `out`.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn parse_octal(field: &[u8]) -> u64 {
    field
        .iter()
        .skip_while(|c| **c == b' ')
        .take_while(|c| (b'0'..=b'7').contains(c))
        .fold(0, |acc, c| acc * 8 + u64::from(c - b'0'))
}

/// One entry found by [`list`]: its name (from a PAX `path` record when
/// there is one), type flag and the offset of its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The entry's name bytes.
    pub name: Vec<u8>,
    /// The ustar type flag (`'0'`, `'5'`...).
    pub flag: u8,
    /// Byte offset of its header in the archive.
    pub offset: usize,
}

/// Lists the entries of an uncompressed tar held in memory (for
/// diagnostics of small test tars): names, type flags and header offsets.
/// PAX extended headers are folded into the entry they describe; GNU
/// long-name entries are shown as their own entries. Stops at the end
/// marker or at a truncated header.
pub fn list(tar: &[u8]) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut pax_path: Option<Vec<u8>> = None;
    while off + 512 <= tar.len() {
        let h = &tar[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size = parse_octal(&h[124..136]) as usize;
        let flag = h[156];
        let data_start = off + 512;
        let data_end = (data_start + size).min(tar.len());
        if flag == b'x' {
            let mut rec = &tar[data_start..data_end];
            while !rec.is_empty() {
                let Some(sp) = rec.iter().position(|&b| b == b' ') else {
                    break;
                };
                let len: usize = std::str::from_utf8(&rec[..sp])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if len == 0 || len > rec.len() {
                    break;
                }
                let kv = &rec[sp + 1..len - 1];
                if let Some(v) = kv.strip_prefix(b"path=") {
                    pax_path = Some(v.to_vec());
                }
                rec = &rec[len..];
            }
        } else {
            let name = pax_path.take().unwrap_or_else(|| {
                let field = |r: std::ops::Range<usize>| {
                    let f = &h[r];
                    f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec()
                };
                let (n, pre) = (field(0..100), field(345..500));
                if pre.is_empty() {
                    n
                } else {
                    [pre, b"/".to_vec(), n].concat()
                }
            });
            out.push(Listed {
                name,
                flag,
                offset: off,
            });
        }
        off = data_start + size.div_ceil(512) * 512;
    }
    out
}

/// Describes where two tars first differ: the byte offset and the entries
/// around it, for messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<String> {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))?;
    let entry_at = |t: &[u8]| {
        list(t)
            .into_iter()
            .take_while(|e| e.offset <= at)
            .last()
            .map(|e| format!("{} (type {})", crate::tree::show(&e.name), e.flag as char))
            .unwrap_or_else(|| "(before the first entry)".into())
    };
    Some(format!(
        "first difference at byte {at} (sizes {} and {}), in entry {} / {}",
        a.len(),
        b.len(),
        entry_at(a),
        entry_at(b)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut w = TarWriter::new(Vec::new());
        w.file("a/.wh.b", b"xyz").unwrap();
        let v = w.finish().unwrap();
        assert_eq!(v.len(), 512 + 512 + 1024);
        assert_eq!(&v[0..7], b"a/.wh.b");
        assert_eq!(&v[124..136], b"00000000003\0");
        assert_eq!(v[156], b'0');
        assert_eq!(&v[512..515], b"xyz");
        let sum: u64 = v[..512]
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(x)
                }
            })
            .sum();
        let field = std::str::from_utf8(&v[148..154]).unwrap();
        assert_eq!(u64::from_str_radix(field, 8).unwrap(), sum);
        let l = list(&v);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, b"a/.wh.b");
        assert!(first_difference(&v, &v).is_none());
        let mut w = v.clone();
        w[513] = b'Q';
        assert!(first_difference(&v, &w).unwrap().contains("a/.wh.b"));
    }
}
