//! The naive differ against trees made with `copy_tree` and then changed.
//!
//! Run: `cargo test -p strata-driver-api --test naive_changes` (as root for
//! the owner, trusted xattr and btrfs cases; they skip with a reason
//! otherwise, and fail under `CI=true`).

mod copy_fixtures;

use copy_fixtures::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use strata_driver_api::copy::copy_tree;
use strata_driver_api::naive::{changes, changes_size, changes_with_stats};
use strata_driver_api::{Change, ChangeKind};

/// A parent tree built by `build`, and a layer that is its copy.
struct Pair {
    _dir: tempfile::TempDir,
    parent: PathBuf,
    layer: PathBuf,
}

fn pair(build: impl FnOnce(&Path)) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    build(&parent);
    let layer = dir.path().join("layer");
    copy_tree(&parent, &layer).unwrap();
    let p = Pair {
        _dir: dir,
        parent,
        layer,
    };
    assert_eq!(
        p.diff(),
        Vec::<String>::new(),
        "a fresh copy has no changes"
    );
    p
}

impl Pair {
    fn l(&self, rel: &str) -> PathBuf {
        self.layer.join(rel)
    }
    /// The changes as `docker diff` lines.
    fn diff(&self) -> Vec<String> {
        lines(&changes(&self.layer, Some(&self.parent)).unwrap())
    }
}

fn lines(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
        .collect()
}

fn basic(root: &Path) {
    write(&root.join("a"), b"aaaa");
    write(&root.join("b"), b"bbbb");
    write(&root.join("dir/c"), b"cccc");
    write(&root.join("dir/sub/d"), b"dddd");
    std::os::unix::fs::symlink("a", root.join("sym")).unwrap();
}

#[test]
fn each_change_kind() {
    let p = pair(basic);
    write(&p.l("new"), b"new");
    std::fs::remove_file(p.l("b")).unwrap();
    std::fs::write(p.l("a"), b"longer contents").unwrap();
    assert_eq!(p.diff(), ["C /a", "D /b", "A /new"]);
}

#[test]
fn empty_parent_adds_everything() {
    let p = pair(basic);
    let got = lines(&changes(&p.layer, None).unwrap());
    assert_eq!(
        got,
        [
            "A /a",
            "A /b",
            "A /dir",
            "A /dir/c",
            "A /dir/sub",
            "A /dir/sub/d",
            "A /sym"
        ]
    );
}

#[test]
fn added_directory_adds_every_descendant() {
    let p = pair(basic);
    write(&p.l("dir/new/x/y"), b"y");
    write(&p.l("dir/new/z"), b"z");
    assert_eq!(
        p.diff(),
        [
            "C /dir",
            "A /dir/new",
            "A /dir/new/x",
            "A /dir/new/x/y",
            "A /dir/new/z"
        ]
    );
}

#[test]
fn mtime_only_change_to_the_nanosecond() {
    let p = pair(|root| {
        write(&root.join("f"), b"same");
        set_mtime(&root.join("f"), 1_700_000_000, 100);
        std::fs::create_dir(root.join("d")).unwrap();
        set_mtime(&root.join("d"), 1_700_000_000, 100);
    });
    set_mtime(&p.l("f"), 1_700_000_000, 101);
    assert_eq!(p.diff(), ["C /f"]);
    set_mtime(&p.l("f"), 1_700_000_000, 100);
    set_mtime(&p.l("d"), 1_700_000_000, 999_999_999);
    assert_eq!(p.diff(), ["C /d"], "a directory's own mtime counts");
}

#[test]
fn mode_only_changes() {
    let p = pair(|root| {
        write(&root.join("f"), b"x");
        write(&root.join("s"), b"x");
        std::fs::create_dir(root.join("d")).unwrap();
    });
    let keep = |path: &Path, mode: u32| {
        let md = std::fs::symlink_metadata(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(path, md.mtime(), md.mtime_nsec());
    };
    keep(&p.l("f"), 0o600);
    keep(&p.l("s"), 0o4644); // setuid only
    keep(&p.l("d"), 0o1755); // sticky only
    assert_eq!(p.diff(), ["C /d", "C /f", "C /s"]);
}

#[test]
fn owner_only_changes() {
    if !require_root("owner_only_changes") {
        return;
    }
    let p = pair(|root| {
        write(&root.join("u"), b"x");
        write(&root.join("g"), b"x");
        std::os::unix::fs::symlink("u", root.join("l")).unwrap();
    });
    std::os::unix::fs::lchown(p.l("u"), Some(1000), None).unwrap();
    std::os::unix::fs::lchown(p.l("g"), None, Some(1000)).unwrap();
    std::os::unix::fs::lchown(p.l("l"), Some(7), Some(7)).unwrap();
    assert_eq!(p.diff(), ["C /g", "C /l", "C /u"]);
}

#[test]
fn xattr_only_changes() {
    let p = pair(|root| {
        write(&root.join("add"), b"x");
        write(&root.join("change"), b"x");
        write(&root.join("remove"), b"x");
        write(&root.join("overlay"), b"x");
        xattr::set(root.join("change"), "user.k", b"v1").unwrap();
        xattr::set(root.join("remove"), "user.k", b"v1").unwrap();
    });
    xattr::set(p.l("add"), "user.k", b"v").unwrap();
    xattr::set(p.l("change"), "user.k", b"v2").unwrap();
    xattr::remove(p.l("remove"), "user.k").unwrap();
    // overlayfs's own bookkeeping is not a change of the file.
    xattr::set(p.l("overlay"), "user.overlay.origin", b"x").unwrap();
    assert_eq!(p.diff(), ["C /add", "C /change", "C /remove"]);
}

#[test]
fn trusted_xattr_changes() {
    if !require_root("trusted_xattr_changes") {
        return;
    }
    let p = pair(|root| {
        write(&root.join("t"), b"x");
        write(&root.join("o"), b"x");
        std::os::unix::fs::symlink("t", root.join("sym")).unwrap();
    });
    xattr::set(p.l("t"), "trusted.k", b"v").unwrap();
    xattr::set(p.l("sym"), "trusted.k", b"v").unwrap();
    xattr::set(p.l("o"), "trusted.overlay.opaque", b"y").unwrap();
    assert_eq!(p.diff(), ["C /sym", "C /t"]);
}

#[test]
fn symlink_target_only_change() {
    let p = pair(|root| {
        std::os::unix::fs::symlink("aaaa", root.join("l")).unwrap();
    });
    let md = std::fs::symlink_metadata(p.l("l")).unwrap();
    std::fs::remove_file(p.l("l")).unwrap();
    std::os::unix::fs::symlink("bbbb", p.l("l")).unwrap();
    set_times(
        &p.l("l"),
        (md.atime(), md.atime_nsec()),
        (md.mtime(), md.mtime_nsec()),
    );
    let dir = std::fs::symlink_metadata(&p.parent).unwrap();
    set_mtime(&p.layer, dir.mtime(), dir.mtime_nsec());
    assert_eq!(p.diff(), ["C /l"]);
}

#[test]
fn type_changes_both_ways() {
    let p = pair(|root| {
        write(&root.join("was_file"), b"x");
        write(&root.join("was_dir/inner/deep"), b"x");
        write(&root.join("was_dir/other"), b"x");
    });
    std::fs::remove_file(p.l("was_file")).unwrap();
    write(&p.l("was_file/x/y"), b"y");
    std::fs::remove_dir_all(p.l("was_dir")).unwrap();
    write(&p.l("was_dir"), b"now a file");
    assert_eq!(
        p.diff(),
        [
            "C /was_dir",
            "C /was_file",
            "A /was_file/x",
            "A /was_file/x/y"
        ]
    );
}

#[test]
fn deleted_directory_reports_only_its_top() {
    let p = pair(|root| {
        write(&root.join("d/e/f"), b"x");
        write(&root.join("d/g"), b"x");
        write(&root.join("keep"), b"x");
    });
    std::fs::remove_dir_all(p.l("d")).unwrap();
    assert_eq!(p.diff(), ["D /d"]);
}

#[test]
fn ancestors_of_a_change_are_modified() {
    let deep = "a/b/c/d/e/f/g/h/i/j";
    let p = pair(|root| {
        write(&root.join(deep).join("k"), b"x");
        write(&root.join("a/side"), b"x");
    });
    // Delete the leaf, then give every directory back its old mtime, so no
    // ancestor differs by itself: they are reported only by the rule.
    std::fs::remove_file(p.l(deep).join("k")).unwrap();
    let mut rel = PathBuf::from(deep);
    loop {
        let md = std::fs::symlink_metadata(p.parent.join(&rel)).unwrap();
        set_mtime(&p.l(rel.to_str().unwrap()), md.mtime(), md.mtime_nsec());
        if !rel.pop() || rel.as_os_str().is_empty() {
            break;
        }
    }
    let (got, stats) = changes_with_stats(&p.layer, Some(&p.parent)).unwrap();
    let mut want: Vec<String> = Vec::new();
    let mut path = String::new();
    for part in deep.split('/') {
        path.push('/');
        path.push_str(part);
        want.push(format!("C {path}"));
    }
    want.push(format!("D /{deep}/k"));
    assert_eq!(lines(&got), want);
    assert_eq!(stats.shortcut, 0, "copies never share inodes");
    assert_eq!(stats.deleted, 1);
}

#[test]
fn non_utf8_names() {
    let bad = OsStr::from_bytes(b"caf\xe9");
    let bad_dir = OsStr::from_bytes(b"d\xff");
    let p = pair(|root| {
        write(&root.join(bad_dir).join("x"), b"x");
    });
    write(&p.layer.join(bad), b"new");
    std::fs::write(p.layer.join(bad_dir).join("x"), b"changed").unwrap();
    let got = changes(&p.layer, Some(&p.parent)).unwrap();
    let want = [
        (&b"/caf\xe9"[..], ChangeKind::Added),
        (&b"/d\xff"[..], ChangeKind::Modified),
        (&b"/d\xff/x"[..], ChangeKind::Modified),
    ];
    let got: Vec<(&[u8], ChangeKind)> = got
        .iter()
        .map(|c| (c.path.as_os_str().as_bytes(), c.kind))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn sorted_component_wise_with_ancestors_first() {
    let p = pair(|root| {
        write(&root.join("a/b"), b"x");
        write(&root.join("a/c"), b"x");
    });
    for name in ["a.c", "a-b", "a0", "B", "a/a", "a/b.x"] {
        write(&p.l(name), b"n");
    }
    std::fs::write(p.l("a/c"), b"modified").unwrap();
    assert_eq!(
        p.diff(),
        ["A /B", "C /a", "A /a/a", "A /a/b.x", "C /a/c", "A /a-b", "A /a.c", "A /a0"]
    );
}

#[test]
fn size_counts_hard_links_once_and_ignores_symlinks() {
    let p = pair(|root| {
        write(&root.join("mod"), b"x");
        write(&root.join("gone"), &[0; 4000]);
    });
    write(&p.l("dir/big"), &[1; 1000]);
    std::fs::hard_link(p.l("dir/big"), p.l("dir/big2")).unwrap();
    std::fs::hard_link(p.l("dir/big"), p.l("big3")).unwrap();
    std::os::unix::fs::symlink("a-long-symlink-target", p.l("sym")).unwrap();
    std::fs::write(p.l("mod"), [2; 500]).unwrap();
    std::fs::remove_file(p.l("gone")).unwrap();
    let got = changes(&p.layer, Some(&p.parent)).unwrap();
    assert_eq!(
        lines(&got),
        [
            "A /big3",
            "A /dir",
            "A /dir/big",
            "A /dir/big2",
            "D /gone",
            "C /mod",
            "A /sym"
        ]
    );
    assert_eq!(changes_size(&p.layer, &got).unwrap(), 1500);
}

#[test]
fn missing_parent_directory_is_an_error_naming_it() {
    let p = pair(basic);
    let missing = p.parent.join("nope");
    let err = changes(&p.layer, Some(&missing)).unwrap_err();
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "{err}"
    );
}

/// The inode shortcut on btrfs: a snapshot keeps inode numbers and ctimes,
/// so unchanged entries are judged without comparing them.
#[test]
fn btrfs_snapshot_uses_inode_shortcut() {
    if !require_root("btrfs_snapshot_uses_inode_shortcut")
        || !require(have_tool("mkfs.btrfs"), "mkfs.btrfs is not installed")
        || !require(have_tool("btrfs"), "btrfs (btrfs-progs) is not installed")
        || !require(have_tool("losetup"), "losetup is not installed")
    {
        return;
    }
    let fs = ScratchFs::btrfs();
    let base = fs.mnt.join("base");
    let snap = fs.mnt.join("snap");
    run("btrfs", &["subvolume", "create", base.to_str().unwrap()]);
    write(&base.join("etc/passwd"), b"root:x:0:0");
    write(&base.join("etc/group"), b"root:x:0:");
    write(&base.join("etc/hosts"), b"127.0.0.1 localhost\n");
    std::os::unix::fs::symlink("passwd", base.join("etc/link")).unwrap();
    for i in 1..=20 {
        write(
            &base.join(format!("usr/bin/tool{i}")),
            format!("#{i}").as_bytes(),
        );
    }
    xattr::set(base.join("usr/bin/tool1"), "user.k", b"v").unwrap();
    write(&base.join("var/log/a.log"), b"log");
    run(
        "btrfs",
        &[
            "subvolume",
            "snapshot",
            base.to_str().unwrap(),
            snap.to_str().unwrap(),
        ],
    );
    let (got, stats) = changes_with_stats(&snap, Some(&base)).unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(stats.compared, 0);
    assert_eq!(stats.shortcut, 30);

    // Change a few entries in the snapshot.
    let hosts = snap.join("etc/hosts");
    let mut text = std::fs::read(&hosts).unwrap();
    text.extend_from_slice(b"10.0.0.1 db\n");
    std::fs::write(&hosts, text).unwrap();
    std::fs::set_permissions(
        snap.join("usr/bin/tool3"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    xattr::set(snap.join("usr/bin/tool5"), "user.k", b"new").unwrap();
    std::fs::remove_file(snap.join("var/log/a.log")).unwrap();
    let (got, stats) = changes_with_stats(&snap, Some(&base)).unwrap();
    assert_eq!(
        lines(&got),
        [
            "C /etc",
            "C /etc/hosts",
            "C /usr",
            "C /usr/bin",
            "C /usr/bin/tool3",
            "C /usr/bin/tool5",
            "C /var",
            "C /var/log",
            "D /var/log/a.log"
        ]
    );
    // Entries in both trees: 29 (30 minus the deleted log). Compared in full:
    // those whose ctime changed: hosts, tool3, tool5 and var/log (its entry
    // was removed). The rest by the shortcut, the directories still walked.
    eprintln!("btrfs snapshot diff stats: {stats:?}");
    assert_eq!(stats.compared, 4, "{stats:?}");
    assert_eq!(stats.shortcut, 25, "{stats:?}");
    assert_eq!(stats.deleted, 1);
    assert_eq!(stats.added, 0);
    assert_eq!(changes_size(&snap, &got).unwrap(), 32 + 2 + 2);
    drop(fs);
}
