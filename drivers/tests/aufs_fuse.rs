//! Union semantics of the aufs driver's FUSE filesystem beyond the
//! conformance suite: copy-up keeps metadata, delete then recreate, opaque
//! dirs, rename of a lower dir, hard links, concurrent readers and writers.
//! Each test mounts a union in-process over hand-made branches; a guard
//! unmounts it (also when the test fails).
//!
//! Run: `cargo test -p strata-drivers --test aufs_fuse`. Needs root and
//! /dev/fuse; without them the tests print why and skip (a failure when
//! `CI=true`).
#![cfg(feature = "aufs")]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use strata_drivers::aufs::union;

fn ready() -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("needs /dev/fuse")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) => {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI: {w}");
            eprintln!("skip: {w}");
            false
        }
    }
}

/// Two branches (upper, lower) and a mount of their union; unmounts on drop.
struct Mounted {
    session: Option<union::BackgroundSession>,
    tmp: tempfile::TempDir,
    mnt: PathBuf,
}

impl Mounted {
    fn new(lower: impl FnOnce(&Path)) -> Mounted {
        Self::with(lower, |b| union::Union::new(b, true))
    }

    /// Mounts the union `make` builds over the branches (upper, lower).
    fn with(lower: impl FnOnce(&Path), make: impl FnOnce(Vec<PathBuf>) -> union::Union) -> Mounted {
        let tmp = tempfile::tempdir().unwrap();
        let (up, low, mnt) = (
            tmp.path().join("up"),
            tmp.path().join("low"),
            tmp.path().join("mnt"),
        );
        for d in [&up, &low, &mnt] {
            fs::create_dir(d).unwrap();
        }
        lower(&low);
        let session = union::spawn_union(make(vec![up, low]), &mnt, 4).expect("mount union");
        Mounted {
            session: Some(session),
            tmp,
            mnt,
        }
    }
    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
    fn up(&self, rel: &str) -> PathBuf {
        self.tmp.path().join("up").join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn copy_up_keeps_metadata() {
    if !ready() {
        return;
    }
    let m = Mounted::new(|low| {
        fs::create_dir_all(low.join("d/e")).unwrap();
        fs::write(low.join("d/e/f"), b"lower data").unwrap();
        fs::set_permissions(low.join("d/e/f"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(low.join("d/e"), fs::Permissions::from_mode(0o710)).unwrap();
        nix::unistd::chown(&low.join("d/e/f"), Some(1234.into()), Some(4321.into())).unwrap();
        nix::unistd::chown(&low.join("d/e"), Some(99.into()), Some(98.into())).unwrap();
        xattr::set(low.join("d/e/f"), "user.k", b"v").unwrap();
        let t = nix::sys::time::TimeSpec::new(1_000_000, 5);
        nix::sys::stat::utimensat(
            None,
            &low.join("d/e/f"),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    });
    let before = fs::symlink_metadata(m.m("d/e/f")).unwrap();
    // Append: a write copies the file (and d, d/e) up.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.m("d/e/f"))
        .unwrap();
    f.write_all(b" + upper").unwrap();
    drop(f);
    let up = fs::symlink_metadata(m.up("d/e/f")).unwrap();
    assert_eq!(fs::read(m.up("d/e/f")).unwrap(), b"lower data + upper");
    assert_eq!(
        (up.uid(), up.gid(), up.mode() & 0o7777),
        (1234, 4321, 0o640)
    );
    assert_eq!(
        xattr::get(m.up("d/e/f"), "user.k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    let dir = fs::symlink_metadata(m.up("d/e")).unwrap();
    assert_eq!((dir.uid(), dir.gid(), dir.mode() & 0o7777), (99, 98, 0o710));
    // The inode number stays the same through the copy-up.
    let after = fs::symlink_metadata(m.m("d/e/f")).unwrap();
    assert_eq!(before.ino(), after.ino());
    // chmod alone copies up too and keeps the data.
    fs::set_permissions(m.m("d/e"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        fs::symlink_metadata(m.m("d/e")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn delete_then_recreate() {
    if !ready() {
        return;
    }
    let m = Mounted::new(|low| {
        fs::write(low.join("f"), b"old").unwrap();
        fs::create_dir_all(low.join("d/sub")).unwrap();
        fs::write(low.join("d/sub/x"), b"x").unwrap();
    });
    fs::remove_file(m.m("f")).unwrap();
    assert!(fs::symlink_metadata(m.m("f")).is_err());
    assert!(m.up(".wh.f").exists(), "whiteout of f");
    assert!(!names(&m.mnt).contains(&"f".to_string()));
    fs::write(m.m("f"), b"new").unwrap();
    assert_eq!(fs::read(m.m("f")).unwrap(), b"new");
    assert!(!m.up(".wh.f").exists(), "whiteout dropped on recreate");
    fs::remove_dir_all(m.m("d")).unwrap();
    assert!(fs::symlink_metadata(m.m("d")).is_err());
    fs::create_dir(m.m("d")).unwrap();
    assert!(names(&m.m("d")).is_empty(), "recreated dir is empty");
    assert!(m.up("d/.wh..wh..opq").exists(), "recreated dir is opaque");
    // Whiteout names cannot be made by users.
    let e = fs::write(m.m(".wh.x"), b"").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn opaque_dirs() {
    if !ready() {
        return;
    }
    let m = Mounted::new(|low| {
        fs::create_dir(low.join("d")).unwrap();
        fs::write(low.join("d/hidden"), b"").unwrap();
    });
    // rmdir of the lower dir, then mkdir: an opaque dir in the upper.
    fs::remove_file(m.m("d/hidden")).unwrap();
    fs::remove_dir(m.m("d")).unwrap();
    fs::create_dir(m.m("d")).unwrap();
    fs::write(m.m("d/seen"), b"").unwrap();
    assert_eq!(names(&m.m("d")), vec!["seen"]);
    assert!(m.up("d/.wh..wh..opq").exists());
    // An opaque dir made in the branch before mounting hides its lower dir.
    let tmp = tempfile::tempdir().unwrap();
    let (up, low, mnt) = (
        tmp.path().join("u"),
        tmp.path().join("l"),
        tmp.path().join("m"),
    );
    for d in [&up, &low, &mnt] {
        fs::create_dir(d).unwrap();
    }
    fs::create_dir(low.join("o")).unwrap();
    fs::write(low.join("o/hidden"), b"").unwrap();
    fs::write(low.join("o2"), b"").unwrap();
    fs::create_dir(up.join("o")).unwrap();
    fs::write(up.join("o/.wh..wh..opq"), b"").unwrap();
    fs::write(up.join("o/mine"), b"").unwrap();
    fs::write(up.join(".wh.o2"), b"").unwrap();
    let s = union::spawn(vec![up, low], true, &mnt, 2).unwrap();
    let got = (names(&mnt.join("o")), names(&mnt));
    let _ = s.umount_and_join();
    assert_eq!(got.0, vec!["mine"]);
    assert_eq!(got.1, vec!["o"]);
}

#[test]
fn rename_of_a_lower_dir() {
    if !ready() {
        return;
    }
    let m = Mounted::new(|low| {
        fs::create_dir_all(low.join("a/b")).unwrap();
        fs::write(low.join("a/b/f"), b"f").unwrap();
        fs::write(low.join("a/g"), b"g").unwrap();
        fs::create_dir(low.join("t")).unwrap();
        fs::write(low.join("t/old"), b"old").unwrap();
    });
    fs::rename(m.m("a"), m.m("z")).unwrap();
    assert!(fs::symlink_metadata(m.m("a")).is_err());
    assert_eq!(fs::read(m.m("z/b/f")).unwrap(), b"f");
    assert_eq!(names(&m.m("z")), vec!["b", "g"]);
    assert!(m.up(".wh.a").exists());
    // Over an empty lower dir: replaced, and opaque to the old contents.
    fs::remove_file(m.m("t/old")).unwrap();
    fs::rename(m.m("z"), m.m("t")).unwrap();
    assert_eq!(names(&m.m("t")), vec!["b", "g"]);
    // A file rename.
    fs::rename(m.m("t/g"), m.m("g2")).unwrap();
    assert_eq!(fs::read(m.m("g2")).unwrap(), b"g");
    assert_eq!(names(&m.m("t")), vec!["b"]);
}

#[test]
fn hard_links() {
    if !ready() {
        return;
    }
    let m = Mounted::new(|low| fs::write(low.join("f"), b"data").unwrap());
    fs::hard_link(m.m("f"), m.m("g")).unwrap();
    let (a, b) = (
        fs::symlink_metadata(m.m("f")).unwrap(),
        fs::symlink_metadata(m.m("g")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(b.nlink(), 2);
    let (ua, ub) = (
        fs::symlink_metadata(m.up("f")).unwrap(),
        fs::symlink_metadata(m.up("g")).unwrap(),
    );
    assert_eq!(ua.ino(), ub.ino(), "linked in the writable branch");
    fs::write(m.m("g"), b"changed").unwrap();
    assert_eq!(fs::read(m.m("f")).unwrap(), b"changed");
}

#[test]
fn concurrent_readers_and_writers() {
    if !ready() {
        return;
    }
    let m = Mounted::new(|low| {
        for i in 0..8 {
            fs::write(low.join(format!("r{i}")), vec![i as u8; 256 * 1024]).unwrap();
        }
    });
    let mnt = m.mnt.clone();
    std::thread::scope(|s| {
        for t in 0..4 {
            let mnt = mnt.clone();
            s.spawn(move || {
                for round in 0..20 {
                    let i = (t + round) % 8;
                    let d = fs::read(mnt.join(format!("r{i}"))).unwrap();
                    assert!(d.len() >= 256 * 1024, "r{i}: {} bytes", d.len());
                    assert!(
                        d[..256 * 1024].iter().all(|&b| b == i as u8),
                        "r{i} content"
                    );
                }
            });
        }
        for t in 0..4 {
            let mnt = mnt.clone();
            s.spawn(move || {
                for round in 0..20 {
                    let p = mnt.join(format!("w{t}-{round}"));
                    fs::write(&p, format!("{t}/{round}")).unwrap();
                    assert_eq!(fs::read_to_string(&p).unwrap(), format!("{t}/{round}"));
                    // Copy-up of lower files by several writers at once.
                    let mut f = fs::OpenOptions::new()
                        .append(true)
                        .open(mnt.join(format!("r{}", t * 2)))
                        .unwrap();
                    f.write_all(b"x").unwrap();
                }
            });
        }
    });
    assert_eq!(names(&mnt).len(), 8 + 80);
    for t in 0..4 {
        let len = fs::metadata(mnt.join(format!("r{}", t * 2))).unwrap().len();
        assert_eq!(len, 256 * 1024 + 20);
    }
}

#[test]
fn read_only_union_refuses_writes() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (b, mnt) = (tmp.path().join("b"), tmp.path().join("mnt"));
    fs::create_dir(&b).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(b.join("f"), b"x").unwrap();
    let s = union::spawn(vec![b], false, &mnt, 2).unwrap();
    let r = fs::write(mnt.join("g"), b"");
    let r2 = fs::OpenOptions::new().write(true).open(mnt.join("f"));
    let _ = s.umount_and_join();
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(r2.unwrap_err().raw_os_error(), Some(libc::EROFS));
}

/// Whether the running kernel is 6.9 or later (FUSE passthrough). Prints
/// why not; a failure when `CI=true`.
fn kernel_has_passthrough() -> bool {
    let rel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rel = rel.trim();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let v: (u32, u32) = (
        it.next().and_then(|x| x.parse().ok()).unwrap_or(0),
        it.next().and_then(|x| x.parse().ok()).unwrap_or(0),
    );
    if v >= (6, 9) {
        return true;
    }
    let why = format!("needs kernel 6.9+ for FUSE passthrough, have {rel:?}");
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI: {why}");
    eprintln!("skip: {why}");
    false
}

#[test]
fn passthrough_keeps_data_out_of_the_server() {
    if !ready() || !kernel_has_passthrough() {
        return;
    }
    let mut data = None;
    let m = Mounted::with(
        |low| fs::write(low.join("f"), vec![7u8; 1 << 20]).unwrap(),
        |b| {
            let u = union::Union::new(b, true);
            data = Some(u.data_requests());
            u
        },
    );
    let data = data.unwrap();
    // A read of the lower file, an append (copy-up first), a new file.
    assert_eq!(fs::read(m.m("f")).unwrap(), vec![7u8; 1 << 20]);
    fs::OpenOptions::new()
        .append(true)
        .open(m.m("f"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    fs::write(m.m("new"), b"new file").unwrap();
    assert_eq!(fs::read(m.m("new")).unwrap(), b"new file");
    let f = fs::read(m.m("f")).unwrap();
    assert_eq!((f.len(), &f[f.len() - 4..]), ((1 << 20) + 4, &b"tail"[..]));
    assert_eq!(fs::read(m.up("f")).unwrap(), f);
    assert_eq!(
        (data.reads(), data.writes()),
        (0, 0),
        "data requests reached the server: no passthrough"
    );
}

#[test]
fn copy_up_waits_for_readers_of_the_lower_file() {
    if !ready() {
        return;
    }
    let m = Mounted::new(|low| fs::write(low.join("f"), b"lower").unwrap());
    // A reader holds the lower file open; a writer copies it up meanwhile.
    let reader = fs::File::open(m.m("f")).unwrap();
    let mnt = m.mnt.clone();
    let t0 = std::time::Instant::now();
    let writer = std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("f"))
            .unwrap();
        f.write_all(b"+upper").unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &reader, &mut s).unwrap();
    assert_eq!(s, "lower");
    drop(reader);
    writer.join().unwrap();
    assert!(t0.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(fs::read(m.m("f")).unwrap(), b"lower+upper");
    assert_eq!(fs::read(m.up("f")).unwrap(), b"lower+upper");
}

/// `remove` scans every layer for children; a layer that another process
/// removes during the scan (listed by readdir, gone when its layers file is
/// read) is no child, and its NotFound must not become the removal's
/// result: the store takes a NotFound from `remove` for "already gone"
/// and would drop the record of a layer whose data stays (found by the
/// reliability suite's concurrent_aufs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_while_another_layer_vanishes() {
    use strata_driver_api::{CreateOpts, Driver, Error, LayerId};
    use strata_drivers::aufs::{Aufs, AufsMode, AufsOptions};
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = AufsOptions {
        mode: AufsMode::Fuse,
        ..Default::default()
    };
    let d = Aufs::open(tmp.path(), opts).await.unwrap();
    let a = LayerId::new("a").unwrap();
    d.create(&a, None, &CreateOpts::rw()).await.unwrap();
    // Listed, but its layers file is gone by the time it is read.
    std::os::unix::fs::symlink("gone", tmp.path().join("aufs/layers/vanished")).unwrap();
    d.remove(&a).await.unwrap();
    assert!(!d.exists(&a).await.unwrap());
    let e = d.remove(&a).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound { id } if id == "a"), "{e}");
}
