//! `copy_tree` and `probe_reflink`: every entry type and every piece of
//! metadata survives, hard links stay links, holes stay holes, and the data
//! method is the best the filesystem accepts.
//!
//! Run: `cargo test -p strata-driver-api --test copy_tree` (as root; the
//! privileged cases skip with a reason otherwise, and fail under `CI=true`).

mod copy_fixtures;

use copy_fixtures::*;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use strata_driver_api::copy::{copy_tree, copy_tree_with, probe_reflink, CopyChoice, CopyMethod};

const MIB: u64 = 1 << 20;
/// The two data regions of the sparse file: (offset, length).
const SPARSE_DATA: [(u64, usize); 2] = [(0, 4096), (40 * MIB, 8192)];

/// A `security.capability` value (VFS_CAP_REVISION_2, effective,
/// permitted = CAP_NET_BIND_SERVICE).
fn capability() -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Entries an unprivileged user can make: dirs, files, symlinks, a fifo,
/// user xattrs, hard links, a sparse file, a non-UTF-8 name.
fn build_plain(root: &Path) {
    write(&root.join("f1"), b"hard linked contents");
    xattr::set(root.join("f1"), "user.x", b"on a hard link").unwrap();
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::hard_link(root.join("f1"), root.join("d/f1b")).unwrap();
    std::fs::hard_link(root.join("f1"), root.join("hl3")).unwrap();
    write(&root.join("empty"), b"");
    write(&root.join(OsStr::from_bytes(b"n\xff")), b"non-utf8 name");
    write(&root.join("deep/a/b/c/file"), b"deep");
    std::os::unix::fs::symlink("d", root.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    mknod(
        &root.join("fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    xattr::set(root.join("d"), "user.dir", b"1").unwrap();

    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 * MIB).unwrap();
    for (i, (off, len)) in SPARSE_DATA.iter().enumerate() {
        let data: Vec<u8> = (0..*len).map(|n| (n * 7 + i) as u8).collect();
        sparse.write_all_at(&data, *off).unwrap();
    }
    sparse.sync_all().unwrap();
    drop(sparse);

    // A directory without write permission still gets its contents.
    write(&root.join("ro_dir/inside"), b"x");
    chmod(&root.join("ro_dir"), 0o555);
}

/// Adds what needs root: owners, setuid, sticky, devices, a socket node,
/// trusted.* and security.capability xattrs.
fn build_privileged(root: &Path) {
    let d = root.join("d");
    lchown(&d, 1, 2);
    chmod(&d, 0o1705);
    xattr::set(&d, "trusted.dir", b"2").unwrap();

    let suid = d.join("suid");
    write(&suid, b"#!/bin/sh\n");
    lchown(&suid, 3, 4);
    chmod(&suid, 0o4222);

    let cap = root.join("cap");
    write(&cap, b"\x7fELF");
    lchown(&cap, 5, 6);
    chmod(&cap, 0o755);
    xattr::set(&cap, "security.capability", &capability()).unwrap();

    let sym = root.join("sym");
    std::os::unix::fs::symlink("d/suid", &sym).unwrap();
    lchown(&sym, 9, 10);
    xattr::set(&sym, "trusted.s", b"on a symlink").unwrap();

    let node = |name: &str, kind: SFlag, mode: u32, dev: u64| {
        mknod(&root.join(name), kind, Mode::from_bits_truncate(mode), dev).unwrap();
    };
    node("chr", SFlag::S_IFCHR, 0o666, makedev(1, 3));
    node("blk", SFlag::S_IFBLK, 0o660, makedev(7, 200));
    node("sock", SFlag::S_IFSOCK, 0o600, 0);
    lchown(&root.join("blk"), 0, 6);
    xattr::set(root.join("chr"), "trusted.dev", b"c").unwrap();
}

/// The atimes the fixture gave, by path relative to the root.
type Atimes = HashMap<PathBuf, (i64, i64)>;

/// Gives every entry under `root` (and `root`) distinct recent
/// nanosecond times, contents before their directory; returns the atimes.
fn set_all_times(root: &Path) -> Atimes {
    fn walk(root: &Path, path: &Path, n: &mut i64, atimes: &mut Atimes) {
        let md = std::fs::symlink_metadata(path).unwrap();
        if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                walk(root, &path.join(name), n, atimes);
            }
        }
        *n += 1;
        let (atime, mtime) = recent_times(*n);
        set_times(path, atime, mtime);
        atimes.insert(path.strip_prefix(root).unwrap().to_path_buf(), atime);
    }
    let mut atimes = Atimes::new();
    walk(root, root, &mut 0, &mut atimes);
    // Hard links share one inode: what counts is the last time set on it.
    for (rel, atime) in atimes.iter_mut() {
        let md = std::fs::symlink_metadata(root.join(rel)).unwrap();
        *atime = (md.atime(), md.atime_nsec());
    }
    atimes
}

/// Asserts that `dst` is an exact copy of `src`: types, modes, owners,
/// device numbers, sizes, mtimes to the ns, xattrs, symlink targets, file
/// contents, link counts and hard-link groups; and that every atime of
/// `dst` is the one the fixture gave the source (`atimes`): reading a
/// symlink moves its atime, so the source's atime after the copy is not the
/// reference.
fn assert_same_tree(src: &Path, dst: &Path, atimes: &Atimes) {
    // Before anything reads the copy's directories (lstat only).
    let mut checked = 0;
    for (rel, atime) in atimes {
        let d = std::fs::symlink_metadata(dst.join(rel)).unwrap();
        assert_eq!(
            (d.atime(), d.atime_nsec()),
            *atime,
            "atime of the copy of {}",
            rel.display()
        );
        checked += 1;
    }
    assert!(checked > 10);
    let mut groups = HashMap::new();
    compare(src, dst, &mut groups);
}

fn xattr_list(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all: Vec<_> = xattr::list(path)
        .unwrap()
        .map(|n| {
            let v = xattr::get(path, &n).unwrap().unwrap_or_default();
            (n.as_bytes().to_vec(), v)
        })
        .collect();
    all.sort();
    all
}

fn compare(src: &Path, dst: &Path, groups: &mut HashMap<(u64, u64), (u64, u64)>) {
    let s = std::fs::symlink_metadata(src).unwrap();
    let d = std::fs::symlink_metadata(dst)
        .unwrap_or_else(|e| panic!("{}: missing in the copy: {e}", dst.display()));
    let what = src.display();
    assert_eq!(
        format!("{:o}", s.mode()),
        format!("{:o}", d.mode()),
        "mode of {what}"
    );
    assert_eq!((s.uid(), s.gid()), (d.uid(), d.gid()), "owner of {what}");
    assert_eq!(s.rdev(), d.rdev(), "rdev of {what}");
    assert_eq!(
        (s.mtime(), s.mtime_nsec()),
        (d.mtime(), d.mtime_nsec()),
        "mtime of {what}"
    );
    assert_eq!(xattr_list(src), xattr_list(dst), "xattrs of {what}");
    let ft = s.file_type();
    if ft.is_symlink() {
        assert_eq!(
            std::fs::read_link(src).unwrap(),
            std::fs::read_link(dst).unwrap(),
            "target of {what}"
        );
    }
    if ft.is_file() {
        assert_eq!(s.size(), d.size(), "size of {what}");
        assert_eq!(s.nlink(), d.nlink(), "link count of {what}");
        let mapped = *groups
            .entry((s.dev(), s.ino()))
            .or_insert((d.dev(), d.ino()));
        assert_eq!(mapped, (d.dev(), d.ino()), "hard-link group of {what}");
        assert_same_contents(src, dst);
    }
    if ft.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let (sn, dn) = (names(src), names(dst));
        assert_eq!(sn, dn, "entries of {what}");
        for name in sn {
            compare(&src.join(&name), &dst.join(&name), groups);
        }
    }
}

fn assert_same_contents(a: &Path, b: &Path) {
    // O_NOATIME (as owner or root): reading must not move the atime of a
    // hard link's other names, which are compared after this.
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(p)
            .unwrap()
    };
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            assert!(n > 0, "{} is shorter", b.display());
            nb += n;
        }
        assert_eq!(ba[..na], bb[..na], "contents of {}", a.display());
        if na == 0 {
            assert_eq!(fb.read(&mut bb).unwrap(), 0, "{} is longer", b.display());
            return;
        }
    }
}

/// The allocated bytes of a file.
fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().blocks() * 512
}

fn assert_sparse_copy(src: &Path, dst: &Path) {
    let (s, d) = (allocated(src), allocated(dst));
    eprintln!(
        "sparse file: {} bytes logical, {s} allocated in the source, {d} in the copy",
        64 * MIB
    );
    assert!(d <= MIB, "the copy of the sparse file allocates {d} bytes");
}

/// A scratch directory holding `src` (built, timed) and where `dst` goes.
fn built_tree(base: &Path, privileged: bool) -> (PathBuf, PathBuf, Atimes) {
    let src = base.join("src");
    std::fs::create_dir(&src).unwrap();
    build_plain(&src);
    if privileged {
        build_privileged(&src);
    }
    chmod(&src, 0o751);
    let atimes = set_all_times(&src);
    (src, base.join("dst"), atimes)
}

#[test]
fn copies_every_entry_type_and_all_metadata() {
    if !require_root("copies_every_entry_type_and_all_metadata") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, atimes) = built_tree(dir.path(), true);
    let stats = copy_tree(&src, &dst).unwrap();
    eprintln!("copy within the temp dir: {stats:?}");
    assert_same_tree(&src, &dst, &atimes);
    assert_sparse_copy(&src.join("sparse"), &dst.join("sparse"));
    // Every name counts (root included); data bytes once per inode.
    let names = count_entries(&src);
    assert_eq!(stats.entries, names);
    assert!(stats.method.is_some());
    // setuid survived the chown and capability survived it too.
    assert_eq!(
        std::fs::symlink_metadata(dst.join("d/suid"))
            .unwrap()
            .mode()
            & 0o7777,
        0o4222
    );
    assert_eq!(
        xattr::get(dst.join("cap"), "security.capability").unwrap(),
        Some(capability())
    );
}

fn count_entries(path: &Path) -> u64 {
    let md = std::fs::symlink_metadata(path).unwrap();
    let mut n = 1;
    if md.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            n += count_entries(&e.unwrap().path());
        }
    }
    n
}

#[test]
fn copies_an_unprivileged_tree() {
    // Everything here works for any user: it runs without root too.
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, atimes) = built_tree(dir.path(), false);
    let stats = copy_tree(&src, &dst).unwrap();
    assert_same_tree(&src, &dst, &atimes);
    assert_sparse_copy(&src.join("sparse"), &dst.join("sparse"));
    let data: u64 = ["f1", "empty", "deep/a/b/c/file", "sparse", "ro_dir/inside"]
        .iter()
        .map(|f| std::fs::metadata(src.join(f)).unwrap().len())
        .sum::<u64>()
        + b"non-utf8 name".len() as u64;
    assert_eq!(stats.bytes, data, "hard-linked data counted once");
}

#[test]
fn refuses_an_existing_destination() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    write(&src.join("f"), b"x");
    std::fs::create_dir(&dst).unwrap();
    let err = copy_tree(&src, &dst).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    assert!(err.to_string().contains(&*dst.to_string_lossy()), "{err}");
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
}

#[test]
fn missing_source_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("nope");
    let err = copy_tree(&src, &dir.path().join("dst")).unwrap_err();
    assert!(err.to_string().contains(&*src.to_string_lossy()), "{err}");
}

#[test]
fn a_symlink_root_is_copied_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("real/f"), b"x");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("real", &link).unwrap();
    let dst = dir.path().join("dst");
    let stats = copy_tree(&link, &dst).unwrap();
    assert_eq!(stats.entries, 1);
    assert_eq!(std::fs::read_link(&dst).unwrap(), Path::new("real"));
}

#[test]
fn btrfs_reflinks() {
    if !require_root("btrfs_reflinks")
        || !require(have_tool("mkfs.btrfs"), "mkfs.btrfs is not installed")
        || !require(have_tool("losetup"), "losetup is not installed")
    {
        return;
    }
    let fs = ScratchFs::btrfs();
    assert!(probe_reflink(&fs.mnt), "FICLONE works on btrfs");
    assert_eq!(
        std::fs::read_dir(&fs.mnt).unwrap().count(),
        0,
        "the probe cleans up"
    );
    let (src, dst, atimes) = built_tree(&fs.mnt, true);
    let stats = copy_tree(&src, &dst).unwrap();
    eprintln!("copy on btrfs: {stats:?}");
    assert_eq!(stats.method, Some(CopyMethod::Reflink));
    assert_same_tree(&src, &dst, &atimes);
    assert_sparse_copy(&src.join("sparse"), &dst.join("sparse"));
    drop(fs);
}

#[test]
fn tmpfs_falls_back_and_keeps_holes() {
    if !require_root("tmpfs_falls_back_and_keeps_holes") {
        return;
    }
    let fs = ScratchFs::tmpfs();
    assert!(!probe_reflink(&fs.mnt), "tmpfs cannot reflink");
    assert_eq!(
        std::fs::read_dir(&fs.mnt).unwrap().count(),
        0,
        "the probe cleans up"
    );
    let (src, dst, atimes) = built_tree(&fs.mnt, true);
    let stats = copy_tree(&src, &dst).unwrap();
    eprintln!("copy within tmpfs: {stats:?}");
    assert_eq!(stats.method, Some(CopyMethod::CopyFileRange));
    assert_same_tree(&src, &dst, &atimes);
    assert_sparse_copy(&src.join("sparse"), &dst.join("sparse"));

    // Across filesystems of different types (the temp dir to tmpfs) the
    // kernel refuses copy_file_range (EXDEV since Linux 5.19): read/write,
    // holes still kept.
    let other = tempfile::tempdir().unwrap();
    let (src2, _, atimes2) = built_tree(other.path(), true);
    let dst2 = fs.mnt.join("from_elsewhere");
    let stats = copy_tree(&src2, &dst2).unwrap();
    eprintln!("copy from the temp dir to tmpfs: {stats:?}");
    assert_eq!(stats.method, Some(CopyMethod::ReadWrite));
    assert_same_tree(&src2, &dst2, &atimes2);
    assert_sparse_copy(&src2.join("sparse"), &dst2.join("sparse"));
    drop(fs);
}

#[test]
fn one_method_only() {
    if !require_root("one_method_only") {
        return;
    }
    let fs = ScratchFs::tmpfs();
    let (src, _, _) = built_tree(&fs.mnt, true);
    // Reflink only, where the filesystem cannot: the first file fails it.
    let err = copy_tree_with(
        &src,
        &fs.mnt.join("r"),
        CopyChoice::Only(CopyMethod::Reflink),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ficlone"), "{err}");
    // Each copying method alone, every file with it, holes kept (a fresh
    // source each time: a copy moves the source's atimes).
    for (name, method) in [
        ("c", CopyMethod::CopyFileRange),
        ("w", CopyMethod::ReadWrite),
    ] {
        let base = fs.mnt.join(name);
        std::fs::create_dir(&base).unwrap();
        let (src, dst, atimes) = built_tree(&base, true);
        let stats = copy_tree_with(&src, &dst, CopyChoice::Only(method)).unwrap();
        assert_eq!(stats.method, Some(method), "{stats:?}");
        assert_eq!(stats.worst, Some(method), "{stats:?}");
        assert_same_tree(&src, &dst, &atimes);
        assert_sparse_copy(&src.join("sparse"), &dst.join("sparse"));
    }
    // copy_file_range only, across filesystems the kernel refuses it for
    // (EXDEV since Linux 5.19): an error, not a silent read/write.
    let other = tempfile::tempdir().unwrap();
    let (src2, _, _) = built_tree(other.path(), true);
    match copy_tree_with(
        &src2,
        &fs.mnt.join("x"),
        CopyChoice::Only(CopyMethod::CopyFileRange),
    ) {
        Err(e) => assert!(e.to_string().contains("copy_file_range"), "{e}"),
        // Older kernels copy across filesystems.
        Ok(stats) => assert_eq!(stats.worst, Some(CopyMethod::CopyFileRange)),
    }
    drop(fs);
}

#[test]
fn probe_of_a_missing_directory_is_false() {
    assert!(!probe_reflink(Path::new("/nonexistent-strata-dir")));
}
