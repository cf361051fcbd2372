//! What the established suites do not check: xattrs, sparse files, hard
//! links, sockets and fifos, devices, long and non-UTF-8 names, `.wh.`
//! look-alikes and tar whiteouts.

use super::contents::check_changes;
use super::scenario;
use crate::ops::{self, p, Node, Op, DEFAULT_MTIME};
use crate::tarfile::{EntryType, Header, TarWriter};
use crate::tree::{self, Kind, Manifest};
use crate::{Ctx, Outcome, Scenario};
use anyhow::{ensure, Context, Result};
use std::fs;
use strata_driver_api::{Change, ChangeKind};

pub(crate) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario!("xattrs", "beyond", root: true, xattrs,
            "user, trusted and security xattrs on files, dirs, symlinks and fifos survive children and diffs"),
        scenario!("sparse-files", "beyond", root: true, sparse_files,
            "holes are kept in children and through diff and apply"),
        scenario!("hardlinks", "beyond", root: true, hardlinks,
            "hard links inside one layer (files, symlinks, fifos) and across layers"),
        scenario!("sockets-fifos", "beyond", root: true, sockets_fifos,
            "sockets and fifos show in layers and children; a diff leaves sockets out"),
        scenario!("device-nodes", "beyond", root: true, device_nodes,
            "char and block devices keep type, numbers, mode and owner"),
        scenario!("long-names", "beyond", root: true, long_names,
            "names of 101 to 255 bytes, a 2 KiB path, a 1000-byte symlink target"),
        scenario!("non-utf8-names", "beyond", root: true, non_utf8_names,
            "names and link targets that are not UTF-8"),
        scenario!("wh-lookalikes", "beyond", root: true, wh_lookalikes,
            "names like .wh, .whx, a.wh.b are ordinary files, through diff and apply"),
        scenario!("tar-whiteouts", "beyond", root: true, tar_whiteouts,
            "a tar's .wh.<x> deletes x, .wh..wh..opq makes a dir opaque, a whiteout of nothing is fine"),
    ]
}

fn changes_of(list: &[(ChangeKind, &[u8])]) -> Vec<Change> {
    let mut v: Vec<Change> = list
        .iter()
        .map(|(k, b)| Change {
            path: p(b),
            kind: *k,
        })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

/// Base and child built from ops, both views checked against references,
/// then both diffs (child on base, child on nothing) applied and compared
/// strictly.
async fn layered_roundtrip(cx: &Ctx, base: &[Op], child: &[Op]) -> Result<(Manifest, Manifest)> {
    cx.build("base", None, base.to_vec()).await?;
    cx.build("child", Some("base"), child.to_vec()).await?;
    let bm = cx.expect_view("base", base).await?;
    let all: Vec<Op> = base.iter().chain(child).cloned().collect();
    let cm = cx.expect_view("child", &all).await?;
    cx.roundtrip("child", Some("base"), "applied-on-base", true)
        .await?;
    cx.roundtrip("child", None, "applied-flat", true).await?;
    Ok((bm, cm))
}

async fn xattrs(cx: Ctx) -> Result<Outcome> {
    let big: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let base = vec![
        ops::write("f", "with xattrs"),
        ops::setxattr("f", "user.a", "1"),
        ops::setxattr("f", "user.empty", ""),
        ops::setxattr("f", "user.bin", [0u8, 255, 1, 0]),
        ops::setxattr("f", "user.big", &big),
        ops::setxattr("f", "trusted.t", "trusted value"),
        ops::setxattr("f", "security.strata-test", "s"),
        ops::mkdir("d"),
        ops::setxattr("d", "user.d", "dir"),
        ops::setxattr("d", "trusted.dt", "x"),
        ops::symlink("f", "s"),
        ops::setxattr("s", "trusted.sym", "on the link"),
        ops::mknod("fifo", Node::Fifo, 0o600),
        ops::setxattr("fifo", "trusted.fifo", "y"),
        ops::write("plain", "no xattrs"),
    ];
    let child = vec![
        ops::setxattr("f", "user.a", "2"),
        ops::rmxattr("f", "user.bin"),
        ops::setxattr("d", "user.new", "n"),
        ops::setxattr("plain", "trusted.added", "z"),
        ops::write("g", "g"),
        ops::setxattr("g", "user.g", "g"),
    ];
    layered_roundtrip(&cx, &base, &child).await?;
    let c = cx.changes("child", Some("base")).await?;
    let want = changes_of(&[
        (ChangeKind::Modified, b"/d"),
        (ChangeKind::Modified, b"/f"),
        (ChangeKind::Modified, b"/plain"),
        (ChangeKind::Added, b"/g"),
    ]);
    check_changes(&c, &want, "changes(child, base) for xattr-only changes")?;
    Ok(Outcome::Pass)
}

const MIB: u64 = 1 << 20;
/// Allocated bytes a 64 MiB sparse file with 12 KiB of data may have.
const SPARSE_LIMIT: u64 = 4 * MIB;

fn check_sparse(m: &Manifest, what: &str) -> Result<()> {
    for path in ["/sparse", "/hole-only"] {
        let e = m
            .get(path)
            .with_context(|| format!("{what}: {path} missing"))?;
        let alloc = e.blocks * 512;
        ensure!(
            alloc <= SPARSE_LIMIT,
            "{what}: {path} ({} bytes) has {alloc} bytes allocated: holes were filled",
            e.size
        );
    }
    Ok(())
}

async fn sparse_files(cx: Ctx) -> Result<Outcome> {
    let size = 64 * MIB;
    let ops = vec![
        ops::sparse(
            "sparse",
            size,
            vec![
                (0, vec![b'h'; 4096]),
                (32 * MIB, vec![b'm'; 4096]),
                (size - 4096, vec![b't'; 4096]),
            ],
        ),
        ops::sparse("hole-only", 16 * MIB, vec![]),
    ];
    cx.build("base", None, ops.clone()).await?;
    let m = cx.expect_view("base", &ops).await?;
    check_sparse(&m, "layer written directly").context("the backing fs does not keep holes?")?;
    cx.create("child", Some("base")).await?;
    let m = cx.expect_view("child", &ops).await?;
    check_sparse(&m, "child layer")?;
    let (_, applied) = cx.roundtrip("child", None, "applied", true).await?;
    check_sparse(&applied, "layer applied from a diff")?;
    Ok(Outcome::Pass)
}

async fn hardlinks(cx: Ctx) -> Result<Outcome> {
    let base = vec![
        ops::mkdir("a"),
        ops::mkdir("b"),
        ops::file("a/f1", "shared", 0o640, 7, 7),
        ops::link("a/f1", "a/f2"),
        ops::link("a/f1", "b/f3"),
        ops::write("pair1", "pair"),
        ops::link("pair1", "pair2"),
        ops::symlink("a/f1", "sym"),
        ops::link("sym", "sym-hard"),
        ops::mknod("fifo", Node::Fifo, 0o600),
        ops::link("fifo", "fifo-hard"),
    ];
    let child = vec![
        ops::mkdir("c"),
        ops::link("a/f1", "c/f4"),
        ops::write_at("pair1", "pair, rewritten", 0o644, DEFAULT_MTIME + 7),
    ];
    cx.build("base", None, base.clone()).await?;
    cx.build("child", Some("base"), child.clone()).await?;
    let bm = cx.expect_view("base", &base).await?;
    let peers = bm.link_peers("/a/f1");
    ensure!(
        peers.len() == 3,
        "a/f1 has {} names in the base, want 3",
        peers.len()
    );
    if cx.driver.capabilities().copy_up_keeps_links {
        let all: Vec<Op> = base.iter().chain(&child).cloned().collect();
        let cm = cx.expect_view("child", &all).await?;
        ensure!(
            cm.link_peers("/a/f1").len() == 4,
            "a/f1 linked across layers has {} names, want 4",
            cm.link_peers("/a/f1").len()
        );
    } else {
        // Copy-up takes the name written to (or linked again) out of its
        // link group: the child is checked against that, exactly.
        let broken = vec![
            ops::mkdir("c"),
            ops::rm("a/f1"),
            ops::file("a/f1", "shared", 0o640, 7, 7),
            ops::link("a/f1", "c/f4"),
            ops::rm("pair1"),
            ops::write_at("pair1", "pair, rewritten", 0o644, DEFAULT_MTIME + 7),
        ];
        let all: Vec<Op> = base.iter().chain(&broken).cloned().collect();
        let cm = cx
            .expect_view("child", &all)
            .await
            .context("copy-up separating the changed name from its links")?;
        ensure!(
            cm.link_peers("/a/f1").len() == 2 && cm.link_peers("/a/f2").len() == 2,
            "after copy-up a/f1 has {} names and a/f2 {}, want 2 and 2",
            cm.link_peers("/a/f1").len(),
            cm.link_peers("/a/f2").len()
        );
        cx.note(
            "n/a: links across copy-up (capabilities().copy_up_keeps_links is false: \
             a lower file's other names keep the old file when one is written or linked \
             in a child); checked instead that the child shows exactly that",
        );
    }
    cx.roundtrip("base", None, "base-flat", true).await?;
    cx.roundtrip("child", None, "child-flat", true).await?;
    // The child's diff against base: c/f4 links to a file the diff may not
    // carry (a/f1 is unchanged), so it may come back as a copy; everything
    // else must be exact.
    let (want, got) = cx
        .roundtrip("child", Some("base"), "child-applied", false)
        .await?;
    if tree::assert_equal_as(&want, &got, "layer child", "applied on base").is_err() {
        let drop = |e: &tree::Entry| e.path == b"/c/f4";
        tree::assert_equal_as(
            &want.without(drop),
            &got.without(drop),
            "layer child",
            "applied on base",
        )
        .context("besides /c/f4")?;
        let (w, g) = (want.get("/c/f4"), got.get("/c/f4"));
        ensure!(
            w.map(|e| (&e.sha256, e.mode, e.uid, e.gid, e.mtime_ns))
                == g.map(|e| (&e.sha256, e.mode, e.uid, e.gid, e.mtime_ns)),
            "/c/f4 differs after diff/apply"
        );
        cx.note("a cross-layer hard link (/c/f4 -> /a/f1) comes back as a separate file after diff/apply: the diff does not carry the unchanged /a/f1");
    }
    Ok(Outcome::Pass)
}

async fn sockets_fifos(cx: Ctx) -> Result<Outcome> {
    let ops = vec![
        ops::mkdir("run"),
        ops::socket("run/sock"),
        Op::Mknod {
            path: p("run/fifo"),
            node: Node::Fifo,
            mode: 0o620,
            uid: 1,
            gid: 2,
            mtime: DEFAULT_MTIME,
        },
        ops::socket("top-sock"),
        ops::mknod("top-fifo", Node::Fifo, 0o644),
    ];
    cx.build("base", None, ops.clone()).await?;
    let m = cx.expect_view("base", &ops).await?;
    ensure!(
        m.get("/run/sock").map(|e| e.kind) == Some(Kind::Socket),
        "run/sock is not a socket"
    );
    cx.create("child", Some("base")).await?;
    cx.expect_view("child", &ops).await?;
    let (_, applied) = cx.roundtrip("child", None, "applied", false).await?;
    let want = m.without(|e| e.kind == Kind::Socket);
    tree::assert_equal_as(&want, &applied, "layer without its sockets", "applied")?;
    cx.note("sockets are kept in layers and children; a diff leaves them out (a tar cannot carry a socket)");
    Ok(Outcome::Pass)
}

fn node(path: &str, n: Node, mode: u32, uid: u32, gid: u32) -> Op {
    Op::Mknod {
        path: p(path),
        node: n,
        mode,
        uid,
        gid,
        mtime: DEFAULT_MTIME,
    }
}

async fn device_nodes(cx: Ctx) -> Result<Outcome> {
    let base = vec![
        ops::mkdir("dev"),
        node("dev/null", Node::Char(1, 3), 0o666, 0, 0),
        node("dev/sda", Node::Block(8, 0), 0o660, 0, 6),
        node("dev/big", Node::Char(4095, 1_048_575), 0o600, 3, 3),
        node("dev/nvme", Node::Block(259, 100_000), 0o640, 0, 6),
    ];
    let child = vec![
        ops::rm("dev/null"),
        node("dev/null", Node::Char(1, 5), 0o666, 0, 0),
        ops::chmod("dev/sda", 0o600),
    ];
    layered_roundtrip(&cx, &base, &child).await?;
    let c = cx.changes("child", Some("base")).await?;
    let want = changes_of(&[
        (ChangeKind::Modified, b"/dev"),
        (ChangeKind::Modified, b"/dev/null"),
        (ChangeKind::Modified, b"/dev/sda"),
    ]);
    check_changes(&c, &want, "changes(child, base)")?;
    Ok(Outcome::Pass)
}

async fn long_names(cx: Ctx) -> Result<Outcome> {
    let n = |c: char, len: usize| c.to_string().repeat(len);
    let mut base = vec![
        ops::write(n('a', 101), "101"),
        ops::write(n('b', 200), "200"),
        ops::write(n('c', 255), "255"),
        ops::mkdir(n('D', 255)),
        ops::write(format!("{}/{}", n('D', 255), n('e', 255)), "both 255"),
        ops::link(n('c', 255), format!("{}/{}", n('D', 255), n('H', 255))),
        ops::symlink(n('c', 255), n('s', 150)),
    ];
    let mut deep = String::new();
    for i in 0..9 {
        if !deep.is_empty() {
            deep.push('/');
        }
        deep.push_str(&format!("{i}{}", n('p', 199)));
        base.push(ops::mkdir(&deep));
    }
    let deep_file = format!("{deep}/{}", n('f', 255));
    base.push(ops::write(&deep_file, "deep"));
    let target: String = (0..100).map(|i| format!("seg{i:05}/")).collect::<String>() + "end";
    base.push(ops::symlink(&target, "long-target"));
    let child = vec![
        ops::write(format!("{deep}/{}", n('g', 254)), "added deep"),
        ops::rm(n('b', 200)),
        ops::write_at(n('a', 101), "changed", 0o600, DEFAULT_MTIME + 5),
    ];
    let (bm, _) = layered_roundtrip(&cx, &base, &child).await?;
    ensure!(
        deep_file.len() > 2000,
        "the deep path is only {} bytes",
        deep_file.len()
    );
    let c = cx.changes("base", None).await?;
    let want: Vec<Change> = bm.entries[1..]
        .iter()
        .map(|e| Change {
            path: p(&e.path),
            kind: ChangeKind::Added,
        })
        .collect();
    let mut want = want;
    want.sort_by(|a, b| a.path.cmp(&b.path));
    check_changes(&c, &want, "changes(base, None)")?;
    Ok(Outcome::Pass)
}

async fn non_utf8_names(cx: Ctx) -> Result<Outcome> {
    let base = vec![
        ops::write(b"caf\xe9", "latin-1 name"),
        ops::write(b"\xff\xfe", "not utf-8 at all"),
        ops::mkdir(b"d\x80ir"),
        ops::write(b"d\x80ir/f\xc3\x28", "bad continuation"),
        ops::symlink(b"\xff/target", b"link\xfe"),
        ops::link(b"caf\xe9", b"hard\xe9"),
        ops::setxattr(b"caf\xe9", "user.k", b"\xff value"),
    ];
    let child = vec![
        ops::rm(b"\xff\xfe"),
        ops::write(b"new\xa0", "new"),
        ops::write(b"d\x80ir/f\xc3\x28", "changed"),
    ];
    layered_roundtrip(&cx, &base, &child).await?;
    let c = cx.changes("child", Some("base")).await?;
    let want = changes_of(&[
        (ChangeKind::Deleted, b"/\xff\xfe"),
        (ChangeKind::Added, b"/new\xa0"),
        (ChangeKind::Modified, b"/d\x80ir"),
        (ChangeKind::Modified, b"/d\x80ir/f\xc3\x28"),
    ]);
    check_changes(&c, &want, "changes(child, base)")?;
    Ok(Outcome::Pass)
}

async fn wh_lookalikes(cx: Ctx) -> Result<Outcome> {
    let base = vec![
        ops::write(".wh", "not a whiteout"),
        ops::write(".whx", "not a whiteout"),
        ops::write("a.wh.b", "not a whiteout"),
        ops::write("..wh", "not a whiteout"),
        ops::write("wh.", "not a whiteout"),
        ops::write("x.wh.", "not a whiteout"),
        ops::mkdir(".whdir"),
        ops::write(".whdir/.wh", "inside"),
        ops::write(".whdir/.whwh", "inside"),
        ops::write("target", "t"),
    ];
    let child = [ops::write(".wh.target-like", "x"), ops::rm(".whx")];
    // `.wh.target-like` begins with `.wh.`: a tar can only carry it as a
    // whiteout, so it is checked separately below, not through the diff.
    let child_ok: Vec<Op> = child[1..].to_vec();
    layered_roundtrip(&cx, &base, &child_ok).await?;
    let c = cx.changes("base", None).await?;
    let m = cx.reference(&base).await?;
    let mut want: Vec<Change> = m.entries[1..]
        .iter()
        .map(|e| Change {
            path: p(&e.path),
            kind: ChangeKind::Added,
        })
        .collect();
    want.sort_by(|a, b| a.path.cmp(&b.path));
    check_changes(&c, &want, "changes(base, None)")?;
    // A real file named `.wh.<x>` in a layer: visible in the layer itself,
    // or refused with EPERM/EINVAL by drivers whose storage uses such names.
    cx.create("odd", Some("base")).await?;
    match cx.write("odd", vec![child[0].clone()]).await {
        Ok(()) => {
            let mut all = base.clone();
            all.push(child[0].clone());
            cx.expect_view("odd", &all).await?;
        }
        Err(e) => {
            let errno = e
                .chain()
                .find_map(|c| c.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            if errno == Some(libc::EPERM) || errno == Some(libc::EINVAL) {
                cx.note(
                    "the driver refuses to create a name beginning with .wh. in a mounted layer",
                );
            } else {
                return Err(e.context("creating a file named .wh.target-like"));
            }
        }
    }
    Ok(Outcome::Pass)
}

async fn tar_whiteouts(cx: Ctx) -> Result<Outcome> {
    let base = vec![
        ops::write("x", "deleted by .wh.x"),
        ops::write("keep", "keep"),
        ops::mkdir("d"),
        ops::write("d/old1", "old"),
        ops::mkdir("d/old2"),
        ops::write("d/old2/sub", "old"),
        ops::mkdir("dir2"),
        ops::write("dir2/z", "z"),
        ops::mkdir("d3"),
        ops::write("d3/y", "y"),
        ops::write("d3/keep", "keep"),
    ];
    cx.build("base", None, base.clone()).await?;
    let tar = cx.scratch_path("whiteouts.tar");
    {
        let f = fs::File::create(&tar)?;
        let mut w = TarWriter::new(std::io::BufWriter::new(f));
        w.file(".wh.x", b"")?;
        w.file(".wh.dir2", b"")?;
        w.dir("d/")?;
        w.file("d/.wh..wh..opq", b"")?;
        let mut h = Header::new("d/new", EntryType::File);
        h.mtime = 1_700_000_000;
        w.entry(&h, b"new")?;
        w.file("d3/.wh.y", b"")?;
        w.file(".wh.not-there", b"")?;
        w.finish()?;
    }
    cx.create("child", Some("base")).await?;
    let n = cx.apply_file("child", Some("base"), &tar).await?;
    ensure!(
        n == 3,
        "apply returned {n} bytes, the tar holds 3 bytes of content"
    );
    let mut want = base.clone();
    want.extend([
        ops::rm("x"),
        ops::rm("dir2"),
        ops::rm("d"),
        ops::mkdir("d"),
        ops::write_at("d/new", "new", 0o644, 1_700_000_000 * 1_000_000_000),
        ops::rm("d3/y"),
    ]);
    cx.expect_view("child", &want).await?;
    Ok(Outcome::Pass)
}
