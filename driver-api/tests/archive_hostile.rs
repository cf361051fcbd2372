//! `apply` against crafted hostile and malformed archives.
//!
//! Each test builds its archive with the raw tar builder below (so invalid
//! things can be made), applies it to `sandbox/target`, and checks that
//! nothing outside the target changed (`sandbox/outside` holds sentinels)
//! and that rejected archives fail with an error naming the entry.
//!
//! Needs root (mknod, chown, trusted.* xattrs): without it each test prints
//! why and skips, except under `CI=true`, where it fails.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_driver_api::archive::{self, WhiteoutFormat};
use strata_driver_api::Error;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("archive_hostile needs root under CI=true");
    }
    {
        // Written past the test harness's capture, so the skip is seen.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: archive_hostile needs root (mknod, chown, trusted.* xattrs)"
        );
    }
    false
}

// ---------------------------------------------------------------- raw tar

/// One raw ustar header; fields are written as given (checksum computed
/// unless `bad_checksum`).
#[derive(Clone)]
struct H {
    name: Vec<u8>,
    typeflag: u8,
    size: u64,
    link: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    dev: (u32, u32),
    size_field: Option<Vec<u8>>,
    bad_checksum: bool,
}

fn h(name: impl AsRef<[u8]>, typeflag: u8) -> H {
    H {
        name: name.as_ref().to_vec(),
        typeflag,
        size: 0,
        link: Vec::new(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        dev: (0, 0),
        size_field: None,
        bad_checksum: false,
    }
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{:0w$o}", v);
    field[..w].copy_from_slice(s.as_bytes());
}

#[derive(Default)]
struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    fn header(&mut self, h: &H) -> &mut Self {
        let mut b = [0u8; 512];
        b[..h.name.len().min(100)].copy_from_slice(&h.name[..h.name.len().min(100)]);
        octal(&mut b[100..108], u64::from(h.mode));
        octal(&mut b[108..116], u64::from(h.uid));
        octal(&mut b[116..124], u64::from(h.gid));
        match &h.size_field {
            Some(f) => b[124..124 + f.len()].copy_from_slice(f),
            None => octal(&mut b[124..136], h.size),
        }
        octal(&mut b[136..148], 1_700_000_000);
        b[156] = h.typeflag;
        b[157..157 + h.link.len()].copy_from_slice(&h.link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        octal(&mut b[329..337], u64::from(h.dev.0));
        octal(&mut b[337..345], u64::from(h.dev.1));
        b[148..156].fill(b' ');
        let mut sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        if h.bad_checksum {
            sum += 1;
        }
        let s = format!("{:06o}\0 ", sum);
        b[148..156].copy_from_slice(s.as_bytes());
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
    fn dir(&mut self, name: impl AsRef<[u8]>) -> &mut Self {
        let mut hd = h(name, b'5');
        hd.mode = 0o755;
        self.header(&hd)
    }
    fn link(
        &mut self,
        typeflag: u8,
        name: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> &mut Self {
        let mut hd = h(name, typeflag);
        hd.link = target.as_ref().to_vec();
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

// ---------------------------------------------------------------- sandbox

struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    target: PathBuf,
    outside: PathBuf,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let target = root.join("target");
    let outside = root.join("outside");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("sentinel"), b"sentinel").unwrap();
    std::fs::write(outside.join("dir/inner"), b"inner").unwrap();
    std::fs::write(root.join("x"), b"sandbox x").unwrap();
    Sandbox {
        _tmp: tmp,
        root,
        target,
        outside,
    }
}

impl Sandbox {
    /// Everything under the sandbox except the target, with metadata and a
    /// content hash.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn rec(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path == skip {
                    continue;
                }
                let md = std::fs::symlink_metadata(&path).unwrap();
                let mut desc = format!(
                    "{:o} {}:{} {} {}.{} n{}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.size(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.nlink()
                );
                if md.is_file() {
                    desc += &format!(" {:x}", Sha256::digest(std::fs::read(&path).unwrap()));
                }
                if md.file_type().is_symlink() {
                    desc += &format!(" -> {:?}", std::fs::read_link(&path).unwrap());
                }
                for x in xattr::list(&path).unwrap() {
                    desc += &format!(" {x:?}={:?}", xattr::get(&path, &x).unwrap());
                }
                out.insert(path.clone(), desc);
                if md.is_dir() {
                    rec(&path, skip, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        let md = std::fs::metadata(&self.root).unwrap();
        out.insert(
            self.root.clone(),
            format!("{}.{}", md.mtime(), md.mtime_nsec()),
        );
        rec(&self.root, &self.target, &mut out);
        out
    }

    fn t(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }
}

/// Applies `tar` (after `setup` of the target) and checks nothing outside
/// the target changed. Returns the sandbox and the result.
fn run(
    tar: &[u8],
    format: WhiteoutFormat,
    setup: impl FnOnce(&Sandbox),
) -> (Sandbox, Result<archive::ApplyStats, Error>) {
    let sb = sandbox();
    setup(&sb);
    let before = sb.snapshot();
    let res = archive::apply(tar, &sb.target, format);
    let after = sb.snapshot();
    assert_eq!(
        before, after,
        "something outside the target changed ({res:?})"
    );
    (sb, res)
}

/// Like [`run`], and the archive must be rejected naming `entry`.
fn rejected(
    tar: &[u8],
    format: WhiteoutFormat,
    setup: impl FnOnce(&Sandbox),
    entry: &str,
) -> Sandbox {
    let (sb, res) = run(tar, format, setup);
    let err = res.expect_err("the archive was accepted");
    let named = match &err {
        Error::Archive { entry: e, .. } => e.contains(entry),
        Error::Io { path, .. } => path
            .as_os_str()
            .as_bytes()
            .windows(entry.len())
            .any(|w| w == entry.as_bytes()),
        _ => false,
    };
    assert!(named, "error does not name {entry:?}: {err}");
    eprintln!("rejected as expected: {err}");
    sb
}

fn none(_: &Sandbox) {}

fn outside_symlink(sb: &Sandbox, name: &str) {
    std::os::unix::fs::symlink(&sb.outside, sb.t(name)).unwrap();
}

use WhiteoutFormat::{Aufs, Overlay, Plain};

// ---------------------------------------------------------------- names

#[test]
fn dotdot_name() {
    if !is_root() {
        return;
    }
    rejected(
        &Tar::default().file("../x", b"evil").end(),
        Plain,
        none,
        "../x",
    );
}

#[test]
fn dotdot_in_the_middle() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().dir("a/").file("a/../../x", b"evil").end();
    rejected(&tar, Plain, none, "a/../../x");
}

#[test]
fn absolute_name() {
    if !is_root() {
        return;
    }
    // The absolute name points into the sandbox, so the snapshot would see
    // a write if the name were used as it is.
    let sb = sandbox();
    let abs = format!("{}/abs", sb.outside.display());
    drop(sb);
    rejected(
        &Tar::default().file(&abs, b"evil").end(),
        Plain,
        none,
        "/abs",
    );
}

#[test]
fn nul_in_pax_path() {
    if !is_root() {
        return;
    }
    let tar = Tar::default()
        .pax(&[(b"path", b"a\0b")])
        .file("ab", b"x")
        .end();
    rejected(&tar, Plain, none, "a\0b");
}

#[test]
fn pax_path_with_dotdot() {
    if !is_root() {
        return;
    }
    let tar = Tar::default()
        .pax(&[(b"path", b"ok/../../../outside/sentinel")])
        .file("harmless", b"evil")
        .end();
    rejected(&tar, Plain, none, "../outside/sentinel");
}

#[test]
fn gnu_long_name_with_dotdot() {
    if !is_root() {
        return;
    }
    let long = format!("{}/../../../outside/sentinel", "d".repeat(120));
    let tar = Tar::default()
        .gnu_long(long.as_bytes())
        .file("harmless", b"evil")
        .end();
    rejected(&tar, Plain, none, "outside/sentinel");
}

// ---------------------------------------------------------------- symlinks

#[test]
fn file_through_symlinked_dir() {
    if !is_root() {
        return;
    }
    let sb = sandbox();
    let out = sb.outside.to_str().unwrap().to_owned();
    drop(sb);
    let tar = Tar::default()
        .link(b'2', "ln", &out)
        .file("ln/evil", b"evil")
        .end();
    rejected(&tar, Plain, none, "ln/evil");
    // Also when the symlink was already in the target.
    let tar = Tar::default().file("ln/evil", b"evil").end();
    rejected(&tar, Plain, |sb| outside_symlink(sb, "ln"), "ln/evil");
}

#[test]
fn regular_file_replaces_symlink() {
    if !is_root() {
        return;
    }
    let sb = sandbox();
    let sentinel = sb.outside.join("sentinel");
    drop(sb);
    let tar = Tar::default()
        .link(b'2', "s", sentinel.to_str().unwrap())
        .file("s", b"replacement")
        .end();
    let (sb, res) = run(&tar, Plain, none);
    res.unwrap();
    let md = std::fs::symlink_metadata(sb.t("s")).unwrap();
    assert!(md.is_file());
    assert_eq!(std::fs::read(sb.t("s")).unwrap(), b"replacement");
    // Same with the link pointing at a sentinel that run() would notice.
    let tar = Tar::default().file("s", b"replacement").end();
    let (sb, res) = run(&tar, Plain, |sb| {
        std::os::unix::fs::symlink(sb.outside.join("sentinel"), sb.t("s")).unwrap()
    });
    res.unwrap();
    assert!(std::fs::symlink_metadata(sb.t("s")).unwrap().is_file());
}

#[test]
fn dir_replaced_by_symlink_then_entry_into_it() {
    if !is_root() {
        return;
    }
    let sb = sandbox();
    let out = sb.outside.to_str().unwrap().to_owned();
    drop(sb);
    let tar = Tar::default()
        .dir("d/")
        .file("d/first", b"fine")
        .link(b'2', "d", &out)
        .file("d/second", b"evil")
        .end();
    rejected(&tar, Plain, none, "d/second");
}

#[test]
fn dir_entry_replaces_symlink_to_outside() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().dir("ln/").file("ln/inner", b"inside").end();
    let (sb, res) = run(&tar, Plain, |sb| outside_symlink(sb, "ln"));
    res.unwrap();
    assert!(std::fs::symlink_metadata(sb.t("ln")).unwrap().is_dir());
    assert_eq!(std::fs::read(sb.t("ln/inner")).unwrap(), b"inside");
}

// ---------------------------------------------------------------- hard links

#[test]
fn hardlink_to_dotdot() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().link(b'1', "h", "../outside/sentinel").end();
    rejected(&tar, Plain, none, "h");
}

#[test]
fn hardlink_to_absolute_path() {
    if !is_root() {
        return;
    }
    let sb = sandbox();
    let abs = sb.outside.join("sentinel");
    drop(sb);
    let tar = Tar::default().link(b'1', "h", abs.to_str().unwrap()).end();
    rejected(&tar, Plain, none, "h");
}

#[test]
fn hardlink_through_symlinked_dir() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().link(b'1', "h", "ln/sentinel").end();
    rejected(&tar, Plain, |sb| outside_symlink(sb, "ln"), "h");
}

#[test]
fn hardlink_to_missing_target() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().link(b'1', "h", "missing").end();
    rejected(&tar, Plain, none, "h");
}

#[test]
fn hardlink_inside_works_and_counts_once() {
    if !is_root() {
        return;
    }
    let tar = Tar::default()
        .file("a", b"12345")
        .link(b'1', "b", "./a")
        .end();
    let (sb, res) = run(&tar, Plain, none);
    let stats = res.unwrap();
    assert_eq!((stats.bytes, stats.entries), (5, 2));
    let a = std::fs::symlink_metadata(sb.t("a")).unwrap();
    assert_eq!(std::fs::symlink_metadata(sb.t("b")).unwrap().ino(), a.ino());
}

// ---------------------------------------------------------------- whiteouts

#[test]
fn whiteout_through_symlinked_parent() {
    if !is_root() {
        return;
    }
    for format in [Plain, Overlay] {
        let tar = Tar::default().file("ln/.wh.sentinel", b"").end();
        rejected(
            &tar,
            format,
            |sb| outside_symlink(sb, "ln"),
            "ln/.wh.sentinel",
        );
    }
}

#[test]
fn whiteout_of_a_symlink_removes_the_link_only() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().file(".wh.ln", b"").end();
    let (sb, res) = run(&tar, Plain, |sb| outside_symlink(sb, "ln"));
    res.unwrap();
    assert!(std::fs::symlink_metadata(sb.t("ln")).is_err());
}

#[test]
fn opaque_marker_in_symlinked_dir() {
    if !is_root() {
        return;
    }
    for format in [Plain, Overlay] {
        let tar = Tar::default().file("ln/.wh..wh..opq", b"").end();
        rejected(
            &tar,
            format,
            |sb| outside_symlink(sb, "ln"),
            "ln/.wh..wh..opq",
        );
    }
}

#[test]
fn whiteouts_of_dot_and_dotdot() {
    if !is_root() {
        return;
    }
    for name in ["a/.wh..", "a/.wh...", ".wh.."] {
        let tar = Tar::default().dir("a/").file(name, b"").end();
        for format in [Plain, Overlay, Aufs] {
            rejected(&tar, format, none, name);
        }
    }
}

#[test]
fn whiteout_and_entry_of_the_same_name() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().file("a", b"x").file(".wh.a", b"").end();
    rejected(&tar, Plain, none, ".wh.a");
    let tar = Tar::default().file("d/.wh.a", b"").file("d/a", b"x").end();
    rejected(&tar, Aufs, none, "d/a");
}

#[test]
fn whiteout_that_is_not_a_regular_file() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().dir(".wh.a/").end();
    rejected(&tar, Plain, none, ".wh.a");
    let tar = Tar::default().link(b'2', ".wh.a", "x").end();
    rejected(&tar, Overlay, none, ".wh.a");
}

#[test]
fn names_that_look_like_whiteouts_are_files() {
    if !is_root() {
        return;
    }
    let names = [".wh", ".whx", "a.wh.b", "wh.x", "..wh.x"];
    let mut t = Tar::default();
    for n in names {
        t.file(n, n.as_bytes());
    }
    let tar = t.end();
    for format in [Plain, Overlay] {
        let (sb, res) = run(&tar, format, |sb| {
            std::fs::write(sb.t("x"), b"must stay").unwrap();
            std::fs::write(sb.t("b"), b"must stay").unwrap();
        });
        assert_eq!(res.unwrap().entries, names.len() as u64);
        for n in names {
            assert_eq!(std::fs::read(sb.t(n)).unwrap(), n.as_bytes());
        }
        assert_eq!(std::fs::read(sb.t("x")).unwrap(), b"must stay");
    }
}

#[test]
fn aufs_metadata_is_skipped() {
    if !is_root() {
        return;
    }
    let tar = Tar::default()
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/1234.5678", b"x")
        .file(".wh..wh.aufs", b"")
        .file("real", b"r")
        .end();
    let (sb, res) = run(&tar, Aufs, none);
    assert_eq!(res.unwrap().entries, 1);
    assert!(!sb.t(".wh..wh.plnk").exists() && !sb.t(".wh..wh.aufs").exists());
}

#[test]
fn overlay_opaque_xattr_in_tar() {
    if !is_root() {
        return;
    }
    for key in [
        &b"SCHILY.xattr.trusted.overlay.opaque"[..],
        b"SCHILY.xattr.user.overlay.whiteout",
    ] {
        let tar = Tar::default().pax(&[(key, b"y")]).dir("d/").end();
        rejected(&tar, Plain, none, "d/");
    }
}

// ---------------------------------------------------------------- malformed

#[test]
fn truncated_archive() {
    if !is_root() {
        return;
    }
    let full = Tar::default().file("a", &[7u8; 2000]).end();
    // Cut inside the data, inside a header, and before the end blocks.
    rejected(&full[..1024], Plain, none, "a");
    rejected(&full[..300], Plain, none, "start of archive");
    let t = Tar::default().file("a", b"x").unterminated();
    rejected(&t, Plain, none, "a");
    rejected(b"", Plain, none, "start of archive");
}

#[test]
fn size_larger_than_the_data() {
    if !is_root() {
        return;
    }
    let mut hd = h("big", b'0');
    hd.size = 100_000;
    let mut t = Tar::default();
    t.header(&hd).data(b"only a little");
    rejected(&t.unterminated(), Plain, none, "big");
}

#[test]
fn bad_checksum() {
    if !is_root() {
        return;
    }
    let mut hd = h("a", b'0');
    hd.bad_checksum = true;
    rejected(&Tar::default().header(&hd).end(), Plain, none, "a");
}

#[test]
fn bad_numeric_field() {
    if !is_root() {
        return;
    }
    let mut hd = h("a", b'0');
    hd.size_field = Some(b"12x45\0".to_vec());
    rejected(&Tar::default().header(&hd).end(), Plain, none, "a");
    // A negative base-256 size.
    hd.size_field = Some(vec![0xff; 12]);
    rejected(&Tar::default().header(&hd).end(), Plain, none, "a");
}

#[test]
fn base256_size_is_read() {
    if !is_root() {
        return;
    }
    let mut hd = h("a", b'0');
    let mut f = vec![0x80u8; 1];
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    hd.size_field = Some(f);
    let tar = Tar::default().header(&hd).data(b"hello").end();
    let (sb, res) = run(&tar, Plain, none);
    assert_eq!(res.unwrap().bytes, 5);
    assert_eq!(std::fs::read(sb.t("a")).unwrap(), b"hello");
}

#[test]
fn invalid_pax_records() {
    if !is_root() {
        return;
    }
    for raw in [
        &b"99 path=x\n"[..],
        b"8 path=x\n",
        b"0 path=x\n",
        b"9 path=x\nxx",
        b"x path=x\n",
        b"7 =abc\n",
        b"10 pathxxx\n",
    ] {
        let tar = Tar::default().pax_raw(raw).file("a", b"x").end();
        rejected(&tar, Plain, none, "PaxHeaders/x");
    }
}

#[test]
fn oversize_pax_header() {
    if !is_root() {
        return;
    }
    let mut hd = h("PaxHeaders/huge", b'x');
    hd.size = 2 << 20;
    let mut t = Tar::default();
    t.header(&hd);
    rejected(&t.end(), Plain, none, "PaxHeaders/huge");
    let mut hd = h("././@LongLink", b'L');
    hd.size = 2 << 20;
    let mut t = Tar::default();
    t.header(&hd);
    rejected(&t.end(), Plain, none, "@LongLink");
}

#[test]
fn pax_header_without_entry_and_unknown_type() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().pax(&[(b"path", b"x")]).end();
    rejected(&tar, Plain, none, "PaxHeaders/x");
    let tar = Tar::default().header(&h("vol", b'V')).end();
    rejected(&tar, Plain, none, "vol");
}

#[test]
fn global_pax_header_is_ignored() {
    if !is_root() {
        return;
    }
    let mut hd = h("global", b'g');
    let d = b"24 path=../outside/evil\n";
    hd.size = d.len() as u64;
    let tar = Tar::default().header(&hd).data(d).file("a", b"x").end();
    let (sb, res) = run(&tar, Plain, none);
    res.unwrap();
    assert!(sb.t("a").is_file());
}

// ---------------------------------------------------------------- special files

#[test]
fn devices_fifos_and_setuid_files() {
    if !is_root() {
        return;
    }
    let mut c = h("dev/null2", b'3');
    c.dev = (1, 3);
    c.mode = 0o666;
    let mut b = h("dev/loop9", b'4');
    b.dev = (7, 9);
    b.mode = 0o4660;
    let mut f = h("fifo", b'6');
    f.mode = 0o600;
    let mut s = h("bin/su", b'0');
    s.mode = 0o4755;
    s.uid = 1000;
    s.gid = 1000;
    s.size = 4;
    let tar = Tar::default()
        .header(&c)
        .header(&b)
        .header(&f)
        .header(&s)
        .data(b"\x7fELF")
        // A file over a fifo already in the target: replaced, never opened
        // (opening it for writing would block).
        .file("pipe", b"data")
        .end();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = run(&tar, Plain, |sb| {
            nix::unistd::mkfifo(
                &sb.t("pipe"),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .unwrap()
        });
        let _ = tx.send(r);
    });
    let (sb, res) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("apply blocked: did it open a fifo?");
    res.unwrap();
    let md = std::fs::symlink_metadata(sb.t("dev/null2")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(
        (md.rdev(), md.mode() & 0o7777),
        (nix::sys::stat::makedev(1, 3), 0o666)
    );
    let md = std::fs::symlink_metadata(sb.t("dev/loop9")).unwrap();
    assert!(md.file_type().is_block_device());
    assert_eq!(
        (md.rdev(), md.mode() & 0o7777),
        (nix::sys::stat::makedev(7, 9), 0o4660)
    );
    assert!(std::fs::symlink_metadata(sb.t("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let md = std::fs::symlink_metadata(sb.t("bin/su")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o4755, 1000, 1000)
    );
    // Implicit parents are 0755 root.
    let md = std::fs::symlink_metadata(sb.t("bin")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o755, 0));
    let md = std::fs::symlink_metadata(sb.t("pipe")).unwrap();
    assert!(md.is_file());
    assert_eq!(std::fs::read(sb.t("pipe")).unwrap(), b"data");
}

#[test]
fn root_entry_is_ignored_and_dot_slash_stripped() {
    if !is_root() {
        return;
    }
    let mut root = h("./", b'5');
    root.mode = 0o700;
    let tar = Tar::default()
        .header(&root)
        .dir("./a/")
        .file("./a//b", b"b")
        .end();
    let (sb, res) = run(&tar, Plain, none);
    assert_eq!(res.unwrap().entries, 2);
    assert_eq!(std::fs::read(sb.t("a/b")).unwrap(), b"b");
    let md = std::fs::symlink_metadata(&sb.target).unwrap();
    assert_ne!(md.mode() & 0o7777, 0o700);
}

#[test]
fn file_in_place_of_a_parent() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().file("f", b"x").file("f/g", b"y").end();
    rejected(&tar, Plain, none, "f/g");
}

#[test]
fn name_of_the_archive_entry_for_io_errors() {
    if !is_root() {
        return;
    }
    // A component longer than NAME_MAX is refused by name.
    let name = format!("{}/x", "n".repeat(300));
    let tar = Tar::default()
        .pax(&[(b"path", name.as_bytes())])
        .file("a", b"x")
        .end();
    rejected(&tar, Plain, none, "nnnn");
}

#[test]
fn zstd_with_a_huge_window_is_refused() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().file("a", &vec![1u8; 1 << 20]).end();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.window_log(27).unwrap();
    std::io::Write::write_all(&mut enc, &tar).unwrap();
    let data = enc.finish().unwrap();
    let (_, res) = run(&data, Plain, none);
    let err = res.expect_err("a 128 MiB zstd window was accepted");
    eprintln!("refused: {err}");
}
