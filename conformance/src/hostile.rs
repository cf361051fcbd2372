//! The hostile-archive corpus: layer tars modelled on the history of
//! container archive bugs (path traversal, symlink and hard-link escapes, a
//! directory swapped for a symlink between check and use, devices and
//! setuid files, lying sizes, truncation, broken PAX records, whiteout
//! misuse, names too long or with NUL bytes, duplicate entries), each with
//! what a driver's `apply_diff` must do with it.
//!
//! The corpus is built for one canary directory: tars carry symlinks and
//! hard links aimed at it (absolute, and relative with enough `..` to reach
//! it from anywhere), and the base layer ([`base_ops`]) holds symlinks to
//! it, so a driver that follows one writes into the canary, which
//! [`snapshot`] then shows. The `hostile-archives` scenario runs the corpus
//! against every driver; `tests/hostile_corpus.rs` runs it against the
//! archive module alone, in every whiteout format.

use crate::ops::{self, Node, Op};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What applying a corpus tar must do.
#[derive(Clone, Copy)]
pub enum Expect {
    /// Fail with an error (the tar is malformed or hostile).
    Reject,
    /// Succeed; the check then holds on the layer's tree (its mounted view,
    /// or the target directory).
    Accept(fn(&Path) -> Result<()>),
    /// Either outcome is correct (drivers legitimately differ, for example
    /// overlay applies into its upper directory, where a lower layer's
    /// symlink is not seen); nothing may escape either way.
    NoEscape,
}

/// One corpus entry.
pub struct Case {
    /// A short kebab-case name, for reports.
    pub name: &'static str,
    /// The tar, plain or compressed.
    pub tar: Vec<u8>,
    /// What applying it must do.
    pub expect: Expect,
}

// ------------------------------------------------------------- raw builder

/// One raw ustar header, written as given (the checksum is computed).
#[derive(Clone)]
struct H {
    name: Vec<u8>,
    typeflag: u8,
    size: u64,
    size_field: Option<Vec<u8>>,
    link: Vec<u8>,
    mode: u32,
    dev: (u32, u32),
}

fn h(name: impl AsRef<[u8]>, typeflag: u8) -> H {
    H {
        name: name.as_ref().to_vec(),
        typeflag,
        size: 0,
        size_field: None,
        link: Vec::new(),
        mode: 0o644,
        dev: (0, 0),
    }
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{:0w$o}", v);
    field[..w].copy_from_slice(&s.as_bytes()[s.len() - w..]);
}

/// A tar built entry by entry; nothing is validated.
#[derive(Default)]
struct T {
    buf: Vec<u8>,
}

impl T {
    fn header(&mut self, h: &H) -> &mut Self {
        let mut b = [0u8; 512];
        let n = h.name.len().min(100);
        b[..n].copy_from_slice(&h.name[..n]);
        octal(&mut b[100..108], u64::from(h.mode));
        octal(&mut b[108..116], 0);
        octal(&mut b[116..124], 0);
        match &h.size_field {
            Some(f) => b[124..124 + f.len()].copy_from_slice(f),
            None => octal(&mut b[124..136], h.size),
        }
        octal(&mut b[136..148], 1_700_000_000);
        b[156] = h.typeflag;
        let l = h.link.len().min(100);
        b[157..157 + l].copy_from_slice(&h.link[..l]);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        octal(&mut b[329..337], u64::from(h.dev.0));
        octal(&mut b[337..345], u64::from(h.dev.1));
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        b[148..156].copy_from_slice(format!("{:06o}\0 ", sum).as_bytes());
        self.buf.extend_from_slice(&b);
        self
    }
    fn data(&mut self, d: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(d);
        let pad = (512 - d.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(&mut self, name: impl AsRef<[u8]>, d: &[u8]) -> &mut Self {
        let mut hd = h(name, b'0');
        hd.size = d.len() as u64;
        self.header(&hd).data(d)
    }
    fn file_mode(&mut self, name: impl AsRef<[u8]>, d: &[u8], mode: u32) -> &mut Self {
        let mut hd = h(name, b'0');
        hd.size = d.len() as u64;
        hd.mode = mode;
        self.header(&hd).data(d)
    }
    fn dir(&mut self, name: impl AsRef<[u8]>) -> &mut Self {
        let mut hd = h(name, b'5');
        hd.mode = 0o755;
        self.header(&hd)
    }
    fn sym(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let target = target.as_ref();
        if target.len() > 100 {
            self.pax(&[(b"linkpath", target)]);
        }
        let mut hd = h(name, b'2');
        hd.link = target.to_vec();
        self.header(&hd)
    }
    fn hard(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let target = target.as_ref();
        if target.len() > 100 {
            self.pax(&[(b"linkpath", target)]);
        }
        let mut hd = h(name, b'1');
        hd.link = target.to_vec();
        self.header(&hd)
    }
    fn node(&mut self, name: &str, typeflag: u8, dev: (u32, u32), mode: u32) -> &mut Self {
        let mut hd = h(name, typeflag);
        hd.dev = dev;
        hd.mode = mode;
        self.header(&hd)
    }
    fn pax_raw(&mut self, data: &[u8]) -> &mut Self {
        let mut hd = h("PaxHeaders/x", b'x');
        hd.size = data.len() as u64;
        self.header(&hd).data(data)
    }
    fn pax(&mut self, recs: &[(&[u8], &[u8])]) -> &mut Self {
        let mut d = Vec::new();
        for (k, v) in recs {
            let body = k.len() + v.len() + 3;
            let mut len = body + 1;
            while body + len.to_string().len() != len {
                len = body + len.to_string().len();
            }
            d.extend_from_slice(format!("{len} ").as_bytes());
            d.extend_from_slice(k);
            d.push(b'=');
            d.extend_from_slice(v);
            d.push(b'\n');
        }
        self.pax_raw(&d)
    }
    fn gnu_long(&mut self, name: &[u8]) -> &mut Self {
        let mut hd = h("././@LongLink", b'L');
        let mut d = name.to_vec();
        d.push(0);
        hd.size = d.len() as u64;
        self.header(&hd).data(&d)
    }
    fn end(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.buf);
        b.extend_from_slice(&[0u8; 1024]);
        b
    }
    fn unterminated(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

fn t() -> T {
    T::default()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

// ---------------------------------------------------------------- checks

fn lstat(p: &Path) -> Result<fs::Metadata> {
    fs::symlink_metadata(p).with_context(|| format!("lstat {}", p.display()))
}

fn want_file(p: &Path, data: &[u8]) -> Result<()> {
    let m = lstat(p)?;
    if !m.is_file() {
        bail!(
            "{} is not a regular file ({:?})",
            p.display(),
            m.file_type()
        );
    }
    let got = fs::read(p).with_context(|| format!("read {}", p.display()))?;
    if got != data {
        bail!(
            "{} holds {:?}, expected {:?}",
            p.display(),
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(data)
        );
    }
    Ok(())
}

fn want_dir(p: &Path) -> Result<()> {
    if !lstat(p)?.is_dir() {
        bail!("{} is not a directory", p.display());
    }
    Ok(())
}

fn want_absent(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("lstat {}: {e}", p.display()),
        Ok(m) => bail!(
            "{} exists ({:?}), expected none",
            p.display(),
            m.file_type()
        ),
    }
}

fn want_symlink(p: &Path) -> Result<()> {
    if !lstat(p)?.file_type().is_symlink() {
        bail!("{} is not a symlink", p.display());
    }
    Ok(())
}

// ---------------------------------------------------------------- canary

/// Makes the canary tree in `dir` (created): a file, a directory with a
/// file, a mode and a time that a write through a followed link changes.
///
/// # Errors
/// Creating it failing.
pub fn make_canary(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("dir")).with_context(|| format!("mkdir {}", dir.display()))?;
    fs::write(dir.join("sentinel"), b"sentinel")?;
    fs::write(dir.join("dir/inner"), b"inner")?;
    Ok(())
}

/// Everything under `dir` (symlinks not followed), one line per entry with
/// type, mode, owner, size, mtime and, for files, their data: equal
/// snapshots mean nothing was written, created, removed or changed there.
///
/// # Errors
/// Reading the tree failing.
pub fn snapshot(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let top = lstat(dir)?;
    out.push(format!(
        ". mode={:o} uid={} gid={} mtime={}.{}",
        top.mode(),
        top.uid(),
        top.gid(),
        top.mtime(),
        top.mtime_nsec()
    ));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<PathBuf> = fs::read_dir(&d)
            .with_context(|| format!("read_dir {}", d.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for p in names {
            let m = lstat(&p)?;
            let mut line = format!(
                "{} mode={:o} uid={} gid={} size={} mtime={}.{}",
                p.strip_prefix(dir).unwrap_or(&p).display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            );
            if m.file_type().is_symlink() {
                line.push_str(&format!(" -> {}", fs::read_link(&p)?.display()));
            } else if m.is_file() {
                line.push_str(&format!(" data={:?}", fs::read(&p)?));
            } else if m.is_dir() {
                stack.push(p);
            }
            out.push(line);
        }
    }
    Ok(out)
}

/// A relative symlink target that reaches `abs` from any directory less
/// than 40 levels deep: `../` to the root, then `abs` without its `/`.
fn climbing(abs: &Path) -> Vec<u8> {
    let mut t = b"../".repeat(40);
    t.extend_from_slice(abs.as_os_str().as_bytes().strip_prefix(b"/").unwrap_or(b""));
    t
}

/// The base layer the corpus is applied on: directories `d`, `d/e`, `o`,
/// files `d/f`, `o/old`, `etc/passwd`, and symlinks out of the layer:
/// `abs` (to the canary, absolute), `deep` (to the canary through `../`),
/// `up` (`..`), `d/s` (to the canary's sentinel).
pub fn base_ops(canary: &Path) -> Vec<Op> {
    vec![
        ops::mkdir("d"),
        ops::mkdir("d/e"),
        ops::write("d/f", "f"),
        ops::mkdir("o"),
        ops::write("o/old", "old"),
        ops::mkdir("etc"),
        ops::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0),
        ops::symlink(canary.as_os_str().as_bytes(), "abs"),
        ops::symlink(climbing(canary), "deep"),
        ops::symlink("..", "up"),
        ops::symlink(canary.join("sentinel").as_os_str().as_bytes(), "d/s"),
        ops::mknod("d/fifo", Node::Fifo, 0o644),
    ]
}

// ---------------------------------------------------------------- corpus

/// The corpus for the canary directory `canary` (absolute).
pub fn corpus(canary: &Path) -> Vec<Case> {
    use Expect::{Accept, NoEscape, Reject};
    let cab = canary.as_os_str().as_bytes().to_vec();
    let sentinel = [cab.as_slice(), b"/sentinel"].concat();
    let climb = climbing(canary);
    let long_name: Vec<u8> = (0..25)
        .map(|i| format!("{i:02}{}", "n".repeat(198)))
        .collect::<Vec<_>>()
        .join("/")
        .into_bytes();
    let too_deep = b"a/".repeat(5000);
    let mut v = Vec::new();
    let mut add =
        |name: &'static str, tar: Vec<u8>, expect: Expect| v.push(Case { name, tar, expect });

    // --- path traversal and absolute names
    add("dotdot-name", t().file("../escape", b"x").end(), Reject);
    add(
        "dotdot-deep",
        t().file("../../../../../../../../tmp/escape", b"x").end(),
        Reject,
    );
    add(
        "dotdot-middle",
        t().file("d/../../escape", b"x").end(),
        Reject,
    );
    add("dotdot-dir", t().dir("../escape-dir/").end(), Reject);
    add(
        "absolute-name",
        t().file([cab.as_slice(), b"/pwned"].concat(), b"x").end(),
        Reject,
    );
    add(
        "absolute-root-slash",
        t().file("/escape", b"x").end(),
        Reject,
    );
    add(
        "pax-path-dotdot",
        t().pax(&[(b"path", b"../escape")])
            .file("innocent", b"x")
            .end(),
        Reject,
    );
    add(
        "pax-path-absolute",
        t().pax(&[(b"path", &[cab.as_slice(), b"/pwned"].concat())])
            .file("innocent", b"x")
            .end(),
        Reject,
    );
    add(
        "gnu-longname-dotdot",
        t().gnu_long(
            &[
                b"a/".repeat(60).as_slice(),
                b"../../".repeat(70).as_slice(),
                b"escape",
            ]
            .concat(),
        )
        .file("innocent", b"x")
        .end(),
        Reject,
    );
    // --- writes through symlinks of the base layer
    add(
        "through-base-abs-symlink",
        t().file("abs/pwned", b"x").end(),
        NoEscape,
    );
    add(
        "through-base-climbing-symlink",
        t().file("deep/pwned", b"x").end(),
        NoEscape,
    );
    add(
        "through-base-up-symlink",
        t().file("up/pwned", b"x").end(),
        NoEscape,
    );
    add(
        "over-base-file-symlink",
        t().file("d/s", b"overwritten").end(),
        Accept(|r| want_file(&r.join("d/s"), b"overwritten")),
    );
    add(
        "dir-over-base-symlink",
        t().dir("abs/").file("abs/new", b"n").end(),
        Accept(|r| {
            want_dir(&r.join("abs"))?;
            want_file(&r.join("abs/new"), b"n")
        }),
    );
    // --- symlinks made by the tar, then used
    add(
        "symlink-then-write-through",
        t().sym("esc", &cab).file("esc/pwned", b"x").end(),
        Reject,
    );
    add(
        "climbing-symlink-then-write-through",
        t().sym("esc", &climb).file("esc/pwned", b"x").end(),
        Reject,
    );
    add(
        "symlink-then-dir-through",
        t().sym("esc", &cab).dir("esc/sub/").end(),
        Reject,
    );
    add(
        "symlink-chain-then-write",
        t().sym("a", "b").sym("b", &cab).file("a/pwned", b"x").end(),
        Reject,
    );
    add(
        "dir-swapped-for-symlink",
        t().dir("swap/")
            .file("swap/ok", b"ok")
            .sym("swap", &cab)
            .file("swap/pwned", b"x")
            .end(),
        Reject,
    );
    add(
        "base-dir-swapped-for-symlink",
        t().sym("d", &cab).file("d/pwned", b"x").end(),
        Reject,
    );
    add(
        "symlink-to-file-then-overwritten",
        t().sym("f", &sentinel).file("f", b"replaced").end(),
        Accept(|r| want_file(&r.join("f"), b"replaced")),
    );
    add(
        "symlink-to-file-then-hardlinked",
        t().sym("f", &sentinel).hard("g", "f").end(),
        Accept(|r| {
            want_symlink(&r.join("f"))?;
            want_symlink(&r.join("g"))
        }),
    );
    add(
        "whiteout-through-tar-symlink",
        t().sym("esc", &cab).file("esc/.wh.sentinel", b"").end(),
        Reject,
    );
    add(
        "opaque-through-tar-symlink",
        t().sym("esc", &cab).file("esc/.wh..wh..opq", b"").end(),
        Reject,
    );
    add(
        "whiteout-through-base-symlink",
        t().file("abs/.wh.sentinel", b"").end(),
        NoEscape,
    );
    add(
        "opaque-through-base-symlink",
        t().file("abs/.wh..wh..opq", b"").end(),
        NoEscape,
    );
    add(
        "whiteout-of-base-symlink",
        t().file(".wh.abs", b"").end(),
        Accept(|r| want_absent(&r.join("abs"))),
    );
    // --- hard links
    add(
        "hardlink-dotdot",
        t().hard("l", "../canary/sentinel").end(),
        Reject,
    );
    add("hardlink-absolute", t().hard("l", &sentinel).end(), Reject);
    add(
        "hardlink-through-base-symlink",
        t().hard("l", "abs/sentinel").end(),
        NoEscape,
    );
    add(
        "hardlink-through-tar-symlink",
        t().sym("esc", &cab).hard("l", "esc/sentinel").end(),
        Reject,
    );
    add(
        "hardlink-missing",
        t().hard("l", "nothing-here").end(),
        Reject,
    );
    add("hardlink-to-itself", t().hard("l", "l").end(), Reject);
    add(
        "hardlink-to-dir",
        t().dir("hd/").hard("l", "hd").end(),
        Reject,
    );
    add(
        "hardlink-then-written",
        t().file("a", b"a").hard("b", "a").file("a", b"new a").end(),
        Accept(|r| {
            want_file(&r.join("a"), b"new a")?;
            want_file(&r.join("b"), b"a")
        }),
    );
    // --- special files: kept as data, never opened
    add(
        "devices-setuid-fifo",
        t().node("null", b'3', (1, 3), 0o666)
            .node("sda", b'4', (8, 0), 0o660)
            .node("kmsg", b'3', (1, 11), 0o644)
            .node("fifo", b'6', (0, 0), 0o644)
            .file_mode("suid", b"\x7fELF", 0o4755)
            .file_mode("sgid", b"", 0o2755)
            .end(),
        Accept(|r| {
            let ft = lstat(&r.join("null"))?.file_type();
            if !ft.is_char_device() || !lstat(&r.join("sda"))?.file_type().is_block_device() {
                bail!("device nodes not kept as devices");
            }
            if !lstat(&r.join("fifo"))?.file_type().is_fifo() {
                bail!("fifo not kept");
            }
            let m = lstat(&r.join("suid"))?.mode() & 0o7777;
            if m != 0o4755 {
                bail!("setuid file has mode {m:o}");
            }
            want_file(&r.join("suid"), b"\x7fELF")
        }),
    );
    add(
        "file-over-base-fifo",
        t().file("d/fifo", b"not a fifo").end(),
        Accept(|r| want_file(&r.join("d/fifo"), b"not a fifo")),
    );
    add(
        "device-with-huge-numbers",
        t().pax(&[(b"SCHILY.devmajor", b"99999999999")])
            .node("dev", b'3', (1, 1), 0o600)
            .end(),
        Reject,
    );
    // --- sizes and truncation
    add(
        "huge-size-field",
        {
            let mut hd = h("huge", b'0');
            hd.size = (8 << 30) - 1;
            t().header(&hd).data(b"only a little").end()
        },
        Reject,
    );
    add(
        "base256-size-beyond-data",
        {
            let mut hd = h("huge", b'0');
            let mut f = vec![0x80u8];
            f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
            hd.size_field = Some(f);
            t().header(&hd).data(b"x").end()
        },
        Reject,
    );
    add(
        "negative-base256-size",
        {
            let mut hd = h("neg", b'0');
            hd.size_field = Some(vec![0xff; 12]);
            t().header(&hd).end()
        },
        Reject,
    );
    add(
        "size-larger-than-data",
        {
            let mut hd = h("short", b'0');
            hd.size = 1000;
            let mut b = t().header(&hd).unterminated();
            b.extend_from_slice(b"ten bytes!");
            b
        },
        Reject,
    );
    add(
        "truncated-header",
        {
            let mut b = t().file("a", b"a").unterminated();
            b.extend_from_slice(&t().file("b", b"b").unterminated()[..300]);
            b
        },
        Reject,
    );
    add("no-end-marker", t().file("a", b"a").unterminated(), Reject);
    add("empty-input", Vec::new(), Reject);
    add(
        "truncated-gzip",
        {
            let g = gzip(&t().file("a", &[7u8; 100_000]).end());
            g[..g.len() / 2].to_vec()
        },
        Reject,
    );
    add(
        "bad-checksum",
        {
            let mut b = t().file("a", b"a").end();
            b[148] = b'7';
            b
        },
        Reject,
    );
    add(
        "non-file-with-data",
        {
            let mut hd = h("s", b'2');
            hd.link = b"target".to_vec();
            hd.size = 5;
            t().header(&hd).data(b"hello").end()
        },
        Reject,
    );
    add(
        "unsupported-types",
        t().node("v", b'V', (0, 0), 0o644).end(),
        Reject,
    );
    add(
        "old-gnu-sparse",
        t().node("s", b'S', (0, 0), 0o644).end(),
        Reject,
    );
    add(
        "pax-sparse-0x",
        t().pax(&[(b"GNU.sparse.offset", b"0"), (b"GNU.sparse.numbytes", b"1")])
            .file("s", b"x")
            .end(),
        Reject,
    );
    add(
        "sparse-map-beyond-realsize",
        {
            let map = b"1\n0\n10\n";
            let mut data = map.to_vec();
            data.resize(512, 0);
            data.extend_from_slice(b"0123456789");
            t().pax(&[
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", b"sp"),
                (b"GNU.sparse.realsize", b"5"),
            ])
            .file("GNUSparseFile.0/sp", &data)
            .end()
        },
        Reject,
    );
    // --- invalid PAX
    add(
        "pax-bad-length",
        t().pax_raw(b"99 path=x\n").file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-length-overflow",
        t().pax_raw(b"99999999999999999999999 path=x\n")
            .file("a", b"a")
            .end(),
        Reject,
    );
    add(
        "pax-length-too-small",
        t().pax_raw(b"3 p\n").file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-negative-length",
        t().pax_raw(b"-9 path=x\n").file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-no-equals",
        t().pax_raw(b"8 pathx\n").file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-empty-key",
        t().pax_raw(b"7 =abc\n").file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-no-newline",
        t().pax_raw(b"12 path=abcd").file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-size-not-a-number",
        t().pax(&[(b"size", b"12x")]).file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-uid-overflow",
        t().pax(&[(b"uid", b"99999999999999999999999")])
            .file("a", b"a")
            .end(),
        Reject,
    );
    add(
        "pax-uid-beyond-32-bits",
        t().pax(&[(b"uid", b"4294967296")]).file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-mtime-garbage",
        t().pax(&[(b"mtime", b"12.3.4")]).file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-size-lies-larger",
        t().pax(&[(b"size", b"100000")]).file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-header-oversized",
        {
            let mut hd = h("PaxHeaders/big", b'x');
            hd.size = 2 << 20;
            t().header(&hd).data(&vec![b'1'; 2 << 20]).end()
        },
        Reject,
    );
    add(
        "pax-without-entry",
        t().pax(&[(b"path", b"x")]).end(),
        Reject,
    );
    add(
        "two-pax-headers",
        t().pax(&[(b"path", b"x")])
            .pax(&[(b"path", b"y")])
            .file("a", b"a")
            .end(),
        Reject,
    );
    add(
        "pax-non-utf8-path",
        t().pax(&[(b"hdrcharset", b"BINARY"), (b"path", b"caf\xe9\xff")])
            .file("a", b"latin1")
            .end(),
        Accept(|r| {
            want_file(
                &r.join(std::ffi::OsStr::from_bytes(b"caf\xe9\xff")),
                b"latin1",
            )
        }),
    );
    add(
        "pax-overlay-xattr",
        t().pax(&[(b"SCHILY.xattr.trusted.overlay.opaque", b"y")])
            .dir("od/")
            .end(),
        Reject,
    );
    add(
        "pax-overlay-redirect",
        t().pax(&[(b"SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
            .dir("od/")
            .end(),
        Reject,
    );
    add(
        "pax-user-overlay-xattr",
        t().pax(&[(b"SCHILY.xattr.user.overlay.origin", b"x")])
            .file("a", b"a")
            .end(),
        Reject,
    );
    // --- NUL bytes
    add(
        "pax-nul-in-path",
        t().pax(&[(b"path", b"a\0b")]).file("a", b"a").end(),
        Reject,
    );
    add(
        "gnu-nul-in-name",
        t().gnu_long(b"a\0/../../escape").file("a", b"a").end(),
        Reject,
    );
    add(
        "pax-nul-in-linkpath",
        t().pax(&[(b"linkpath", b"a\0b")]).sym("s", "x").end(),
        Reject,
    );
    add(
        "pax-nul-in-xattr-name",
        t().pax(&[(b"SCHILY.xattr.user.a\0b", b"v")])
            .file("a", b"a")
            .end(),
        Reject,
    );
    // --- whiteouts
    add(
        "whiteout-and-entry-same-name",
        t().file("x", b"x").file(".wh.x", b"").end(),
        Reject,
    );
    add(
        "entry-after-its-whiteout",
        t().file(".wh.x", b"").file("x", b"x").end(),
        Reject,
    );
    add("whiteout-of-dot", t().file("d/.wh..", b"").end(), Reject);
    add(
        "whiteout-of-dotdot",
        t().file("d/.wh...", b"").end(),
        Reject,
    );
    add(
        "whiteout-of-nothing-named",
        t().file(".wh.", b"").end(),
        Reject,
    );
    add("whiteout-as-directory", t().dir(".wh.d/").end(), Reject);
    add("whiteout-as-symlink", t().sym(".wh.d", "x").end(), Reject);
    add("whiteout-as-parent", t().file(".wh.d/x", b"").end(), Reject);
    add(
        "opaque-as-directory",
        t().dir("o/.wh..wh..opq/").end(),
        Reject,
    );
    add(
        "opaque-as-symlink",
        t().sym("o/.wh..wh..opq", &cab).end(),
        Reject,
    );
    add(
        "opaque-as-parent-is-skipped",
        t().file("o/.wh..wh..opq/x", b"x").end(),
        Accept(|r| want_file(&r.join("o/old"), b"old")),
    );
    add(
        "opaque-at-root",
        t().file(".wh..wh..opq", b"").file("kept", b"k").end(),
        NoEscape,
    );
    add(
        "opaque-twice",
        t().file("o/.wh..wh..opq", b"")
            .file("o/.wh..wh..opq", b"")
            .file("o/n", b"n")
            .end(),
        NoEscape,
    );
    add(
        "opaque-with-data",
        t().file("o/.wh..wh..opq", b"data in a marker").end(),
        NoEscape,
    );
    add(
        "aufs-metadata-skipped",
        t().file(".wh..wh.plnk/123.456", b"x")
            .file(".wh..wh.aufs", b"")
            .end(),
        Accept(|r| {
            want_absent(&r.join(".wh..wh.plnk"))?;
            want_absent(&r.join(".wh..wh.aufs"))
        }),
    );
    add(
        "whiteout-of-base-dir",
        t().file(".wh.d", b"").end(),
        Accept(|r| want_absent(&r.join("d"))),
    );
    // --- names
    add(
        "long-path-beyond-path-max",
        t().pax(&[(b"path", &long_name)])
            .file("innocent", b"long")
            .end(),
        NoEscape,
    );
    add(
        "component-longer-than-255",
        t().pax(&[(b"path", &vec![b'n'; 300])])
            .file("innocent", b"x")
            .end(),
        Reject,
    );
    add(
        "path-too-deep",
        t().pax(&[(b"path", &too_deep)])
            .file("innocent", b"x")
            .end(),
        Reject,
    );
    add(
        "symlink-target-long",
        t().sym("longlink", vec![b'x'; 3000]).end(),
        NoEscape,
    );
    add("empty-name", t().file("", b"x").end(), Reject);
    add(
        "dot-slash-and-double-slash",
        t().file("./dd//x", b"x").end(),
        Accept(|r| want_file(&r.join("dd/x"), b"x")),
    );
    // --- duplicates
    add(
        "duplicate-file-last-wins",
        t().file("dup", b"first").file("dup", b"second").end(),
        Accept(|r| want_file(&r.join("dup"), b"second")),
    );
    add(
        "dir-then-file-same-name",
        t().dir("x/").file("x/in", b"in").file("x", b"file").end(),
        Accept(|r| want_file(&r.join("x"), b"file")),
    );
    add(
        "file-then-dir-same-name",
        t().file("x", b"file").dir("x/").file("x/in", b"in").end(),
        Accept(|r| want_file(&r.join("x/in"), b"in")),
    );
    add(
        "base-dir-replaced-by-file",
        t().file("d", b"not a dir").end(),
        Accept(|r| want_file(&r.join("d"), b"not a dir")),
    );
    add(
        "file-as-parent",
        t().file("pf", b"x").file("pf/child", b"y").end(),
        Reject,
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let c = corpus(Path::new("/canary"));
        let mut names: Vec<_> = c.iter().map(|c| c.name).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate case names");
        assert!(n >= 80, "the corpus shrank to {n} cases");
    }
}
