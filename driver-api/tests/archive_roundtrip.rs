//! Round trips of the layer-tar writer and `apply`, checked against GNU tar
//! and Python's `tarfile`.
//!
//! Needs root (chown, mknod, trusted.* xattrs), GNU tar and python3: without
//! them each test prints why and skips, except under `CI=true`, where it
//! fails.

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use strata_driver_api::archive::{self, ApplyStats, Item, WhiteoutFormat};
use strata_driver_api::{Change, ChangeKind, Error};

const MIB: u64 = 1 << 20;
const SPARSE_SIZE: u64 = 64 * MIB;
const SPARSE_DATA: [u64; 2] = [16 * 4096, 32 * MIB];

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether the test can run; under CI a missing condition fails.
fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("required for this test under CI=true: {what}");
    }
    {
        // Written past the test harness's capture, so the skip is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIP: this test needs {what}");
    }
    false
}

fn is_root() -> bool {
    require(
        "root (chown, mknod, trusted.* xattrs)",
        nix::unistd::geteuid().is_root(),
    )
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    require(tool, ok)
}

fn p(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = TimeSpec::new(sec, nsec);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

fn long_component(c: u8, n: usize) -> String {
    String::from_utf8(vec![c; n]).unwrap()
}

/// Builds the tree with every kind of entry under `root`.
fn build_tree(root: &Path) {
    let j = |s: &str| root.join(s);
    std::fs::create_dir(j("d1")).unwrap();
    write_file(&j("d1/setuid"), b"setuid payload");
    std::fs::set_permissions(j("d1/setuid"), std::fs::Permissions::from_mode(0o4222)).unwrap();
    write_file(&j("empty"), b"");
    let big: Vec<u8> = (0..3 * MIB + 123).map(|i| (i * 31 % 251) as u8).collect();
    write_file(&j("big"), &big);
    {
        let f = std::fs::File::create(j("sparse")).unwrap();
        f.set_len(SPARSE_SIZE).unwrap();
        use std::os::unix::fs::FileExt;
        for (i, o) in SPARSE_DATA.iter().enumerate() {
            f.write_all_at(&vec![b'a' + i as u8; 4096], *o).unwrap();
        }
    }
    // Only a hole: a sparse map with one empty segment at the end.
    std::fs::File::create(j("allhole"))
        .unwrap()
        .set_len(MIB)
        .unwrap();
    write_file(&j("hl1"), b"hard linked content");
    std::fs::hard_link(j("hl1"), j("d1/hl2")).unwrap();
    std::fs::hard_link(j("hl1"), j("hl3")).unwrap();
    std::os::unix::fs::symlink("d1/setuid", j("sym_rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", j("sym_abs")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", j("sym_dangling")).unwrap();
    mknod(
        &j("chr"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o620),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    mknod(
        &j("blk"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        nix::sys::stat::makedev(7, 200),
    )
    .unwrap();
    mknod(
        &j("fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o644),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(j("sock")).unwrap());
    write_file(&j(&long_component(b'n', 255)), b"255");
    write_file(&j(&long_component(b'm', 150)), b"150");
    let deep = j(&format!(
        "deep/{}/{}/{}",
        long_component(b'a', 90),
        long_component(b'b', 90),
        long_component(b'c', 90)
    ));
    std::fs::create_dir_all(&deep).unwrap();
    write_file(&deep.join(long_component(b'f', 60)), b"deep file");
    let sym_long_target = format!("{}/x", long_component(b'l', 150));
    std::os::unix::fs::symlink(sym_long_target, j("sym_long")).unwrap();
    write_file(&root.join(p(b"caf\xe9")), b"latin1 name");
    // Too long for ustar and not UTF-8: a PAX path with hdrcharset=BINARY.
    write_file(&root.join(p(&[0xe9; 120])), b"long latin1 name");
    std::fs::create_dir(root.join(p(b"\xff\xfe"))).unwrap();
    write_file(&root.join(p(b"\xff\xfe/\x80x")), b"non-utf8 child");
    xattr::set(j("big"), "user.test", b"hello").unwrap();
    xattr::set(j("big"), "user.bin", b"a\0b\xffc").unwrap();
    xattr::set(j("d1"), "trusted.test", b"trusted value").unwrap();
    xattr::set(j("chr"), "trusted.dev", b"on a device").unwrap();
    xattr::set(j("sym_rel"), "trusted.link", b"on a symlink").unwrap();
    std::fs::create_dir(j("opqdir")).unwrap();
    write_file(&j("opqdir/kept"), b"kept");
    // Owners and modes.
    std::os::unix::fs::lchown(j("d1"), Some(1), Some(2)).unwrap();
    std::os::unix::fs::lchown(j("sym_abs"), Some(5), Some(6)).unwrap();
    std::os::unix::fs::lchown(j("big"), Some(3_000_000), Some(4_000_000)).unwrap();
    std::fs::set_permissions(j("d1"), std::fs::Permissions::from_mode(0o1705)).unwrap();
    // Times last, children before parents; a few without nanoseconds.
    let mut all = walk(root);
    all.sort_by_key(|b| std::cmp::Reverse(b.iter().filter(|&&c| c == b'/').count()));
    for (i, rel) in all.iter().enumerate() {
        let nsec = if i % 3 == 0 {
            0
        } else {
            123_456_789 + i as i64
        };
        set_mtime(&root.join(p(rel)), 1_600_000_000 + i as i64, nsec);
    }
}

/// Every path under `root`, relative, not following symlinks.
fn walk(root: &Path) -> Vec<Vec<u8>> {
    fn rec(root: &Path, rel: &[u8], out: &mut Vec<Vec<u8>>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(p(rel))
        };
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let mut r = rel.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(e.file_name().as_bytes());
            out.push(r.clone());
            if e.file_type().unwrap().is_dir() {
                rec(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, b"", &mut out);
    out.sort();
    out
}

/// Items for a tree in AUFS format: `.wh.` files become whiteouts.
fn items_of(root: &Path) -> Vec<Item> {
    walk(root)
        .into_iter()
        .map(|rel| {
            let (dir, base) = match rel.iter().rposition(|&c| c == b'/') {
                Some(i) => (rel[..i].to_vec(), rel[i + 1..].to_vec()),
                None => (Vec::new(), rel.clone()),
            };
            if base == b".wh..wh..opq" {
                Item::Opaque(p(&dir))
            } else if let Some(n) = base.strip_prefix(b".wh.") {
                let mut w = dir.clone();
                if !w.is_empty() {
                    w.push(b'/');
                }
                w.extend_from_slice(n);
                Item::Whiteout(p(&w))
            } else {
                Item::Entry(p(&rel))
            }
        })
        .collect()
}

fn source_items(root: &Path) -> Vec<Item> {
    let mut items = items_of(root);
    items.push(Item::Whiteout("gone".into()));
    items.push(Item::Whiteout("d1/old".into()));
    items.push(Item::Opaque("opqdir".into()));
    items
}

fn write(root: &Path, items: Vec<Item>) -> Vec<u8> {
    archive::write_items(root, items, Vec::new()).unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    src: PathBuf,
    tar: Vec<u8>,
    tar_path: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let src = base.join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let tar = write(&src, source_items(&src));
    let tar_path = base.join("layer.tar");
    // For inspection by hand: ARCHIVE_DEBUG_DUMP=<file> keeps a copy.
    if let Ok(d) = std::env::var("ARCHIVE_DEBUG_DUMP") {
        std::fs::write(d, &tar).unwrap();
    }
    std::fs::write(&tar_path, &tar).unwrap();
    Fixture {
        _tmp: tmp,
        base,
        src,
        tar,
        tar_path,
    }
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir(&d).unwrap();
    d
}

/// Expected `ApplyStats.bytes`: regular files (not whiteouts), each inode once.
fn content_bytes(root: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    walk(root)
        .iter()
        .filter(|r| {
            !r.rsplit(|&c| c == b'/')
                .next()
                .unwrap()
                .starts_with(b".wh.")
        })
        .map(|r| std::fs::symlink_metadata(root.join(p(r))).unwrap())
        .filter(|m| m.is_file() && seen.insert((m.dev(), m.ino())))
        .map(|m| m.size())
        .sum()
}

#[test]
fn roundtrip_aufs_gives_identical_bytes() {
    if !is_root() {
        return;
    }
    let f = fixture();
    let out = fresh(&f.base, "applied");
    let stats = archive::apply(&f.tar[..], &out, WhiteoutFormat::Aufs).unwrap();
    let again = write(&out, items_of(&out));
    assert!(again == f.tar, "re-written tar differs from the original");

    // The socket was skipped; everything else is there.
    assert!(!out.join("sock").exists());
    let names = walk(&f.src).len() - 1 /* sock */ + 3 /* whiteouts */;
    assert_eq!(stats.entries as usize, names);
    assert_eq!(stats.bytes, content_bytes(&f.src));

    // Spot checks of metadata.
    let md = std::fs::symlink_metadata(out.join("d1")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o1705, 1, 2));
    let md = std::fs::symlink_metadata(out.join("d1/setuid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4222);
    let md = std::fs::symlink_metadata(out.join("big")).unwrap();
    assert_eq!((md.uid(), md.gid()), (3_000_000, 4_000_000));
    assert_eq!(
        xattr::get(out.join("big"), "user.bin").unwrap().unwrap(),
        b"a\0b\xffc"
    );
    assert_eq!(
        xattr::get(out.join("d1"), "trusted.test").unwrap().unwrap(),
        b"trusted value"
    );
    let md = std::fs::symlink_metadata(out.join("sparse")).unwrap();
    assert_eq!(md.size(), SPARSE_SIZE);
    assert!(
        md.blocks() * 512 < 1024 * 1024,
        "holes not kept: {} blocks",
        md.blocks()
    );
    let ino = std::fs::symlink_metadata(out.join("hl1")).unwrap().ino();
    assert_eq!(
        std::fs::symlink_metadata(out.join("hl3")).unwrap().ino(),
        ino
    );
    assert_eq!(
        std::fs::symlink_metadata(out.join("d1/hl2"))
            .unwrap()
            .nlink(),
        3
    );
    let md = std::fs::symlink_metadata(out.join("blk")).unwrap();
    assert!(md.file_type().is_block_device());
    assert_eq!(md.rdev(), nix::sys::stat::makedev(7, 200));
    assert_eq!(
        std::fs::read_link(out.join("sym_abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(std::fs::read(out.join(".wh.gone")).unwrap(), b"");
    assert!(out.join("opqdir/.wh..wh..opq").exists());
}

#[test]
fn writing_twice_is_deterministic() {
    if !is_root() {
        return;
    }
    let f = fixture();
    assert!(write(&f.src, source_items(&f.src)) == f.tar);
    // Order and duplicates of the items do not matter.
    let mut items = source_items(&f.src);
    items.reverse();
    items.extend(source_items(&f.src));
    assert!(write(&f.src, items) == f.tar);
    // A change list gives the same tar.
    let changes: Vec<Change> = source_items(&f.src)
        .into_iter()
        .map(|i| match i {
            Item::Entry(r) => Change {
                path: Path::new("/").join(r),
                kind: ChangeKind::Added,
            },
            Item::Whiteout(r) => Change {
                path: Path::new("/").join(r),
                kind: ChangeKind::Deleted,
            },
            Item::Opaque(_) => Change {
                path: "/".into(),
                kind: ChangeKind::Modified,
            },
        })
        .collect();
    let from_changes = archive::write_changes(&f.src, &changes, Vec::new()).unwrap();
    let mut items = source_items(&f.src);
    items.retain(|i| !matches!(i, Item::Opaque(_)));
    assert!(from_changes == write(&f.src, items));
}

#[test]
fn compressed_input_gives_the_same_tree() {
    if !is_root() {
        return;
    }
    let f = fixture();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&f.tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::stream::encode_all(&f.tar[..], 3).unwrap();
    for (name, data) in [("gz", gz), ("zst", zst)] {
        let out = fresh(&f.base, name);
        archive::apply(&data[..], &out, WhiteoutFormat::Aufs).unwrap();
        assert!(write(&out, items_of(&out)) == f.tar, "{name} input differs");
    }
}

#[test]
fn gnu_tar_reads_the_tar() {
    if !is_root() || !have("tar") {
        return;
    }
    let f = fixture();
    let list = Command::new("tar")
        .arg("-tvf")
        .arg(&f.tar_path)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "tar -tvf: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    // GNU tar 1.34 does not know the POSIX `hdrcharset` keyword (it reads
    // the raw bytes, which is what BINARY means) and says so; any other
    // message is a failure.
    let stderr = String::from_utf8_lossy(&list.stderr);
    let other: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("unknown extended header keyword 'hdrcharset'"))
        .collect();
    assert!(other.is_empty(), "tar -tvf warned: {stderr}");
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        !listing.contains("GNUSparseFile"),
        "sparse name not restored:\n{listing}"
    );
    assert!(!listing.contains("PaxHeaders"));

    let out = fresh(&f.base, "gnu");
    let x = Command::new("tar")
        .args([
            "--sparse",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
        ])
        .arg(&f.tar_path)
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        x.status.success(),
        "tar -x: {}",
        String::from_utf8_lossy(&x.stderr)
    );
    let md = std::fs::symlink_metadata(out.join("sparse")).unwrap();
    assert_eq!(md.size(), SPARSE_SIZE);
    assert!(
        md.blocks() * 512 < 1024 * 1024,
        "GNU tar did not keep holes"
    );
    let data = std::fs::read(out.join("sparse")).unwrap();
    for (i, o) in SPARSE_DATA.iter().enumerate() {
        let o = *o as usize;
        assert!(data[o..o + 4096].iter().all(|&b| b == b'a' + i as u8));
        assert_eq!(data[o - 1], 0);
    }
    assert_eq!(
        std::fs::read(out.join("d1/hl2")).unwrap(),
        std::fs::read(f.src.join("hl1")).unwrap()
    );
    // What GNU tar extracted is the same tree: it writes the same tar.
    let again = write(&out, items_of(&out));
    assert!(
        again == f.tar,
        "the tree GNU tar extracted writes a different tar"
    );
}

#[test]
fn python_tarfile_reads_the_tar() {
    if !is_root() || !have("python3") {
        return;
    }
    let f = fixture();
    let script = r#"
import sys, tarfile
t = tarfile.open(sys.argv[1], "r:")
n = 0
for m in t:
    n += 1
    if m.name == "sparse":
        assert m.isreg() and m.size == int(sys.argv[2]), (m.size, m.sparse)
        assert m.sparse, "no sparse map"
        data = t.extractfile(m).read()
        assert len(data) == m.size
        assert data[16*4096:17*4096] == b"a" * 4096
        assert data[32<<20:(32<<20)+4096] == b"b" * 4096
    if m.name == "big":
        assert m.uid == 3000000 and m.pax_headers["SCHILY.xattr.user.test"] == "hello"
    if m.name == "d1/hl2":
        assert m.isreg()
    if m.name in ("hl1", "hl3"):
        assert m.islnk() and m.linkname == "d1/hl2", m.linkname
    if m.name == "blk":
        assert m.isblk() and (m.devmajor, m.devminor) == (7, 200)
print(n)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&f.tar_path)
        .arg(SPARSE_SIZE.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(n, walk(&f.src).len() - 1 + 3);
}

/// A base tree and a layer on it with whiteouts, an opaque dir and new
/// entries.
fn layered(base: &Path) -> (PathBuf, Vec<u8>) {
    let lower = fresh(base, "lower");
    std::fs::create_dir_all(lower.join("d/sub")).unwrap();
    write_file(&lower.join("d/f"), b"to delete");
    write_file(&lower.join("d/sub/g"), b"deleted with its dir");
    write_file(&lower.join("d/stay"), b"stays");
    std::fs::create_dir(lower.join("o")).unwrap();
    write_file(&lower.join("o/old1"), b"hidden");
    std::fs::create_dir(lower.join("o/olddir")).unwrap();
    write_file(&lower.join("o/olddir/x"), b"hidden");
    for r in walk(&lower).iter().rev() {
        set_mtime(&lower.join(p(r)), 1_500_000_000, 5);
    }
    let upper = fresh(base, "upper");
    std::fs::create_dir(upper.join("o")).unwrap();
    write_file(&upper.join("o/+early"), b"sorts before the marker");
    write_file(&upper.join("o/new"), b"new");
    write_file(&upper.join("n"), b"added");
    let tar = write(
        &upper,
        vec![
            Item::Entry("o".into()),
            Item::Entry("o/+early".into()),
            Item::Entry("o/new".into()),
            Item::Opaque("o".into()),
            Item::Whiteout("d/f".into()),
            Item::Whiteout("d/sub".into()),
            Item::Entry("n".into()),
        ],
    );
    (lower, tar)
}

#[test]
fn plain_format_carries_out_deletions() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (lower, tar) = layered(tmp.path());
    let d_before = std::fs::symlink_metadata(lower.join("d")).unwrap();
    let stats = archive::apply(&tar[..], &lower, WhiteoutFormat::Plain).unwrap();
    assert_eq!(
        stats,
        ApplyStats {
            bytes: 23 + 3 + 5,
            entries: 7
        }
    );
    assert!(!lower.join("d/f").exists());
    assert!(!lower.join("d/sub").exists());
    assert!(lower.join("d/stay").exists());
    let mut o: Vec<_> = std::fs::read_dir(lower.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    o.sort();
    assert_eq!(o, vec![OsString::from("+early"), OsString::from("new")]);
    assert!(lower.join("n").exists());
    // `d` is not in the tar: its times are as before the deletions.
    let d_after = std::fs::symlink_metadata(lower.join("d")).unwrap();
    assert_eq!(
        (d_after.mtime(), d_after.mtime_nsec()),
        (d_before.mtime(), d_before.mtime_nsec())
    );
}

#[test]
fn overlay_format_makes_whiteout_devices_and_opaque_xattrs() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, tar) = layered(tmp.path());
    let out = fresh(tmp.path(), "ovl");
    archive::apply(&tar[..], &out, WhiteoutFormat::Overlay).unwrap();
    for w in ["d/f", "d/sub"] {
        let md = std::fs::symlink_metadata(out.join(w)).unwrap();
        assert!(md.file_type().is_char_device(), "{w}");
        assert_eq!(md.rdev(), 0);
    }
    assert_eq!(
        xattr::get(out.join("o"), "trusted.overlay.opaque")
            .unwrap()
            .unwrap(),
        b"y"
    );
    assert!(out.join("o/+early").exists() && out.join("o/new").exists());
    assert!(!out.join("o/.wh..wh..opq").exists());
    assert!(!out.join("d/.wh.f").exists());
}

#[test]
fn writer_refuses_names_that_read_as_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    write_file(&tmp.path().join(".wh.x"), b"");
    let err = archive::write_items(tmp.path(), vec![Item::Entry(".wh.x".into())], Vec::new())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Archive { entry, .. } if entry.contains(".wh.x")),
        "{err}"
    );
    let err = archive::write_items(tmp.path(), vec![Item::Entry("a/../b".into())], Vec::new())
        .unwrap_err();
    assert!(matches!(err, Error::Archive { .. }));
}

#[test]
fn empty_item_list_is_just_the_end_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = write(
        tmp.path(),
        vec![Item::Entry("".into()), Item::Entry("/".into())],
    );
    assert_eq!(tar, vec![0u8; 1024]);
    let out = fresh(tmp.path(), "out");
    let stats = archive::apply(&tar[..], &out, WhiteoutFormat::Plain).unwrap();
    assert_eq!(stats, ApplyStats::default());
}

#[test]
fn canonical_order_is_component_wise() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("a")).unwrap();
    write_file(&tmp.path().join("a/b"), b"");
    write_file(&tmp.path().join("a.c"), b"");
    let tar = write(
        tmp.path(),
        vec![
            Item::Entry("a.c".into()),
            Item::Entry("a/b".into()),
            Item::Entry("a".into()),
            Item::Whiteout("a/z".into()),
            Item::Opaque("a".into()),
        ],
    );
    let names: Vec<String> = tar
        .chunks(512)
        .filter(|b| b[257..263] == *b"ustar\0" && b[156] != b'x')
        .map(|b| {
            let n = &b[..100];
            String::from_utf8_lossy(&n[..n.iter().position(|&c| c == 0).unwrap_or(100)])
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["a/", "a/.wh..wh..opq", "a/.wh.z", "a/b", "a.c"]);
}

/// GNU tar's own archives of the tree (PAX with sparse 1.0, and the GNU
/// format with `L`/`K` long names) apply to the same tree.
#[test]
fn gnu_tar_archives_apply() {
    if !is_root() || !have("tar") {
        return;
    }
    let f = fixture();
    let expected = write(&f.src, items_of(&f.src));
    for (format, extra) in [
        (
            "posix",
            &[
                "--sparse",
                "--sparse-version=1.0",
                "--xattrs",
                "--xattrs-include=*",
            ][..],
        ),
        ("gnu", &[][..]),
    ] {
        let tar = f.base.join(format!("{format}.tar"));
        let c = Command::new("tar")
            .arg(format!("--format={format}"))
            .args(extra)
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&f.src)
            .arg(".")
            .output()
            .unwrap();
        // GNU tar warns about the socket it skips (exit status 0 or 1 only
        // for "file changed"); the archive must exist.
        assert!(
            c.status.code() == Some(0),
            "tar -c: {}",
            String::from_utf8_lossy(&c.stderr)
        );
        let out = fresh(&f.base, &format!("from-{format}"));
        let data = std::fs::read(&tar).unwrap();
        archive::apply(&data[..], &out, WhiteoutFormat::Plain).unwrap();
        if format == "posix" {
            assert!(
                write(&out, items_of(&out)) == expected,
                "posix tar applies to a different tree"
            );
        } else {
            assert_eq!(
                walk(&out),
                walk(&f.src)
                    .into_iter()
                    .filter(|r| r != b"sock")
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                std::fs::read(out.join("big")).unwrap(),
                std::fs::read(f.src.join("big")).unwrap()
            );
        }
    }
}
