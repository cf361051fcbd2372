//! Contents across layers: deletions, opaque directories, renames, links,
//! metadata churn, deep chains, changes(), diff and apply, many files.

use super::{rich_base, rich_child, scenario};
use crate::ctx::show_changes;
use crate::ops::{self, Op, DEFAULT_MTIME};
use crate::tree;
use crate::{Ctx, Outcome, Scenario};
use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Instant;
use strata_driver_api::{Change, ChangeKind};

pub(crate) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario!("delete-stays-deleted", "contents", root: true, delete_stays_deleted,
            "a file deleted in layer 2 stays deleted in layer 3"),
        scenario!("opaque-dir", "contents", root: true, opaque_dir,
            "a lower dir deleted and recreated shows none of its old entries"),
        scenario!("rename", "contents", root: true, rename,
            "rename over an existing file, of a lower file, of a lower directory"),
        scenario!("hardlink-move", "contents", root: true, hardlink_move,
            "move a file by hard link plus delete"),
        scenario!("update-five-times", "contents", root: true, update_five_times,
            "contents, mode and mtime-only updates across layers at second boundaries"),
        scenario!("chown-nested", "contents", root: true, chown_nested,
            "chown a nested chain of directories and a file to 1:1"),
        scenario!("permission-churn", "contents", root: true, permission_churn,
            "ownership and permission churn on directories across three layers"),
        scenario!("deep-chain-20", "contents", root: true, deep_chain_20,
            "20 layers with one file each, all read from the top"),
        scenario!("deep-chain-max", "contents", root: true, deep_chain_max,
            "a chain as deep as capabilities().max_depth (capped at 500), read from the top"),
        scenario!("changes-exact", "contents", root: true, changes_exact,
            "changes() lists adds, modifies and deletes exactly, with ancestors 10 deep"),
        scenario!("diff-apply", "contents", root: true, diff_apply,
            "diff then apply (plain, gzip, zstd) into a fresh layer: equal trees, size = diff_size"),
        scenario!("many-files-wide", "contents", root: true, many_files_wide,
            "10 dirs x 10,000 files (STRATA_MANY_FILES): diff and apply into a fresh layer"),
        scenario!("many-files-deep", "contents", root: true, many_files_deep,
            "10,000 dirs x 10 files (STRATA_MANY_FILES): diff and apply into a fresh layer"),
    ]
}

/// Builds a chain of layers `ids[i]` on `ids[i-1]` from `steps[i]` and
/// checks each view against the reference of all steps so far.
async fn chain(cx: &Ctx, ids: &[&str], steps: &[Vec<Op>]) -> Result<()> {
    let mut all = Vec::new();
    for (i, (id, ops)) in ids.iter().zip(steps).enumerate() {
        let parent = if i == 0 { None } else { Some(ids[i - 1]) };
        cx.build(id, parent, ops.clone()).await?;
        all.extend(ops.iter().cloned());
        cx.expect_view(id, &all).await?;
    }
    Ok(())
}

async fn delete_stays_deleted(cx: Ctx) -> Result<Outcome> {
    let steps = vec![
        vec![
            ops::write("keep", "k"),
            ops::write("gone", "g"),
            ops::mkdir("dir"),
            ops::write("dir/gone2", "g2"),
            ops::write("dir/stay", "s"),
        ],
        vec![ops::rm("gone"), ops::rm("dir/gone2")],
        vec![ops::write("other", "o")],
    ];
    chain(&cx, &["l1", "l2", "l3"], &steps).await?;
    cx.create("l4", Some("l3")).await?;
    let path = cx.mount("l4").await?;
    let gone = path.join("gone").symlink_metadata().is_ok() || path.join("dir/gone2").exists();
    cx.unmount("l4").await?;
    ensure!(!gone, "a deleted file shows again in a grandchild");
    Ok(Outcome::Pass)
}

async fn opaque_dir(cx: Ctx) -> Result<Outcome> {
    let steps = vec![
        vec![
            ops::dir("d", 0o750, 3, 3),
            ops::write("d/a", "a"),
            ops::write("d/b", "b"),
            ops::mkdir("d/sub"),
            ops::write("d/sub/c", "c"),
            ops::write("sibling", "s"),
        ],
        vec![
            ops::rm("d"),
            ops::dir("d", 0o711, 0, 0),
            ops::write("d/new", "new"),
            ops::mkdir("d/sub"),
        ],
        vec![ops::write("d/sub/later", "later")],
    ];
    chain(&cx, &["o1", "o2", "o3"], &steps).await?;
    Ok(Outcome::Pass)
}

async fn rename(cx: Ctx) -> Result<Outcome> {
    let steps = vec![
        vec![
            ops::write("a", "content A"),
            ops::write("b", "content B, longer"),
            ops::mkdir("dir"),
            ops::write("dir/x", "x"),
            ops::mkdir("dir/sub"),
            ops::write("dir/sub/y", "y"),
            ops::file("lower-file", "lower", 0o600, 2, 2),
        ],
        vec![
            ops::rename("a", "b"),
            ops::rename("lower-file", "moved-file"),
            ops::rename("dir", "dir2"),
            ops::write("n", "n"),
            ops::rename("n", "n2"),
            ops::write("dir2/sub/z", "z"),
        ],
        vec![
            ops::rename("dir2/sub", "sub-top"),
            ops::rename("moved-file", "dir2/x"),
        ],
    ];
    chain(&cx, &["r1", "r2", "r3"], &steps).await?;
    Ok(Outcome::Pass)
}

async fn hardlink_move(cx: Ctx) -> Result<Outcome> {
    let steps = vec![
        vec![ops::mkdir("src"), ops::file("src/f", "moving", 0o640, 5, 5)],
        vec![
            ops::mkdir("dst"),
            ops::link("src/f", "dst/g"),
            ops::rm("src/f"),
        ],
        vec![ops::write("after", "a")],
    ];
    chain(&cx, &["h1", "h2", "h3"], &steps).await?;
    Ok(Outcome::Pass)
}

const T0: i128 = 1_500_000_000 * 1_000_000_000;

async fn update_five_times(cx: Ctx) -> Result<Outcome> {
    let mut ids: Vec<String> = vec!["u0".into()];
    let mut steps = vec![vec![ops::write_at("f", "version-0", 0o644, T0)]];
    let modes = [0o600, 0o755, 0o640, 0o700, 0o444];
    for i in 1..=5i128 {
        // Same length contents, a new mode, the next second boundary.
        ids.push(format!("u{i}"));
        steps.push(vec![ops::write_at(
            "f",
            format!("version-{i}"),
            modes[(i - 1) as usize],
            T0 + i * 2 * 1_000_000_000,
        )]);
        // Then an mtime-only change, one second later.
        ids.push(format!("u{i}m"));
        steps.push(vec![ops::mtime("f", T0 + (i * 2 + 1) * 1_000_000_000)]);
    }
    let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
    chain(&cx, &idr, &steps).await?;
    for w in idr.windows(2) {
        let c = cx.changes(w[1], Some(w[0])).await?;
        let want = vec![Change {
            path: PathBuf::from("/f"),
            kind: ChangeKind::Modified,
        }];
        ensure!(
            c == want,
            "changes({}, {}):\n{}\nwant:\nC /f",
            w[1],
            w[0],
            show_changes(&c)
        );
    }
    Ok(Outcome::Pass)
}

async fn chown_nested(cx: Ctx) -> Result<Outcome> {
    let steps = vec![
        vec![
            ops::mkdir("a"),
            ops::mkdir("a/b"),
            ops::mkdir("a/b/c"),
            ops::mkdir("a/b/c/d"),
            ops::write("a/b/c/d/file", "f"),
        ],
        vec![
            ops::chown("a", 1, 1),
            ops::chown("a/b", 1, 1),
            ops::chown("a/b/c", 1, 1),
            ops::chown("a/b/c/d", 1, 1),
            ops::chown("a/b/c/d/file", 1, 1),
        ],
        vec![],
    ];
    chain(&cx, &["c1", "c2", "c3"], &steps).await?;
    let c = cx.changes("c2", Some("c1")).await?;
    let want = expect(&[
        ('C', "/a"),
        ('C', "/a/b"),
        ('C', "/a/b/c"),
        ('C', "/a/b/c/d"),
        ('C', "/a/b/c/d/file"),
    ]);
    check_changes(&c, &want, "changes(c2, c1)")?;
    Ok(Outcome::Pass)
}

async fn permission_churn(cx: Ctx) -> Result<Outcome> {
    let steps = vec![
        vec![
            ops::mkdir("x"),
            ops::dir("x/y", 0o700, 1, 1),
            ops::dir("z", 0o1777, 0, 0),
            ops::write("x/y/f", "f"),
        ],
        vec![
            ops::chmod("x", 0o700),
            ops::chown("x/y", 2, 2),
            ops::chown("z", 3, 4),
            ops::chmod("z", 0o755),
        ],
        vec![
            ops::chown("x", 5, 5),
            ops::chmod("x", 0o2755),
            ops::chmod("x/y", 0o1750),
            ops::chown("z", 0, 0),
            ops::chmod("z", 0o3777),
        ],
    ];
    chain(&cx, &["p1", "p2", "p3"], &steps).await?;
    Ok(Outcome::Pass)
}

async fn deep_chain(cx: &Ctx, depth: usize) -> Result<()> {
    let mut all = Vec::with_capacity(depth);
    for i in 0..depth {
        let id = format!("deep{i}");
        let parent = (i > 0).then(|| format!("deep{}", i - 1));
        let op = ops::write(format!("f{i:03}"), format!("layer {i}"));
        all.push(op.clone());
        cx.build(&id, parent.as_deref(), vec![op]).await?;
    }
    cx.expect_view(&format!("deep{}", depth - 1), &all).await?;
    Ok(())
}

async fn deep_chain_20(cx: Ctx) -> Result<Outcome> {
    let max = cx.driver.capabilities().max_depth;
    if max < 20 {
        return Ok(Outcome::NotApplicable(format!(
            "capabilities().max_depth is {max} (< 20)"
        )));
    }
    deep_chain(&cx, 20).await?;
    Ok(Outcome::Pass)
}

/// The deepest chain tested, whatever the driver allows.
pub const DEEP_CAP: usize = 500;

/// The chain length cap of `deep-chain-max`: [`DEEP_CAP`], or
/// `STRATA_DEEP_CAP` (at least 20). The devmapper VM suite sets a lower
/// one: its layers are flat thin snapshots (no chain to resolve at mount
/// time), and each layer's mount costs seconds under QEMU's emulation.
///
/// # Errors
/// `STRATA_DEEP_CAP` that is not a number of at least 20.
fn deep_cap(cx: &Ctx) -> Result<usize> {
    let Some(v) = std::env::var_os("STRATA_DEEP_CAP") else {
        return Ok(DEEP_CAP);
    };
    let n: usize = v
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n >= 20)
        .with_context(|| format!("STRATA_DEEP_CAP={v:?}: want a number of layers, at least 20"))?;
    if n != DEEP_CAP {
        cx.note(format!(
            "chain cap set by STRATA_DEEP_CAP to {n} (full: {DEEP_CAP})"
        ));
    }
    Ok(n)
}

async fn deep_chain_max(cx: Ctx) -> Result<Outcome> {
    let max = cx.driver.capabilities().max_depth;
    let cap = deep_cap(&cx)?;
    let depth = max.min(cap);
    if depth < 2 {
        return Ok(Outcome::NotApplicable(format!(
            "capabilities().max_depth is {max}"
        )));
    }
    let start = Instant::now();
    deep_chain(&cx, depth).await?;
    let note = if max > cap {
        format!(
            "max_depth {max}: tested {depth} layers ({:.0} s)",
            start.elapsed().as_secs_f64()
        )
    } else {
        format!("tested the driver's max_depth, {depth} layers")
    };
    cx.note(note);
    Ok(Outcome::Pass)
}

fn expect(list: &[(char, &str)]) -> Vec<Change> {
    let mut v: Vec<Change> = list
        .iter()
        .map(|(k, p)| Change {
            path: PathBuf::from(p),
            kind: match k {
                'A' => ChangeKind::Added,
                'C' => ChangeKind::Modified,
                'D' => ChangeKind::Deleted,
                _ => unreachable!("change letter {k}"),
            },
        })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

/// Compares a change list with the expected one (order included), listing
/// what is missing and what is extra.
pub(crate) fn check_changes(got: &[Change], want: &[Change], what: &str) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let missing: Vec<&Change> = want.iter().filter(|c| !got.contains(c)).collect();
    let extra: Vec<&Change> = got.iter().filter(|c| !want.contains(c)).collect();
    let show = |v: &[&Change]| {
        v.iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c.kind.letter(),
                    tree::show(c.path.as_os_str().as_bytes())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if missing.is_empty() && extra.is_empty() {
        bail!(
            "{what}: right changes in the wrong order (want sorted by path):\n{}",
            show_changes(got)
        );
    }
    bail!(
        "{what}: missing [{}]; unexpected [{}]",
        show(&missing),
        show(&extra)
    )
}

async fn changes_exact(cx: Ctx) -> Result<Outcome> {
    let mut deep = String::new();
    let mut base = vec![
        ops::write("keep", "keep"),
        ops::write("modme", "before"),
        ops::write("chmodme", "c"),
        ops::write("gone", "gone"),
        ops::mkdir("gdir"),
        ops::write("gdir/a", "a"),
        ops::mkdir("gdir/sub"),
        ops::write("gdir/sub/b", "b"),
        ops::write("typechange", "file"),
        ops::mkdir("typechange2"),
        ops::write("typechange2/x", "x"),
        ops::mkdir("keepdir"),
        ops::write("keepdir/old", "old"),
        ops::mkdir("untouched"),
        ops::write("untouched/u", "u"),
    ];
    for i in 1..=10 {
        deep.push_str(&format!("l{i}"));
        base.push(ops::mkdir(&deep));
        base.push(ops::write(format!("{deep}/sib"), "sibling"));
        deep.push('/');
    }
    let leaf = format!("{deep}leaf");
    base.push(ops::write(&leaf, "leaf"));
    let child = vec![
        ops::write_at("modme", "after!", 0o644, DEFAULT_MTIME + 1_000_000_000),
        ops::chmod("chmodme", 0o600),
        ops::rm("gone"),
        ops::rm("gdir"),
        ops::rm("typechange"),
        ops::mkdir("typechange"),
        ops::write("typechange/in", "in"),
        ops::rm("typechange2"),
        ops::write("typechange2", "now a file"),
        ops::mkdir("newdir"),
        ops::mkdir("newdir/sub"),
        ops::write("newdir/sub/f", "f"),
        ops::write("newdir/g", "g"),
        ops::write("added", "added"),
        ops::write("keepdir/new", "new"),
        ops::rm(&leaf),
    ];
    cx.build("base", None, base.clone()).await?;
    cx.build("child", Some("base"), child).await?;

    let mut want: Vec<(char, String)> = vec![
        ('C', "/modme".into()),
        ('C', "/chmodme".into()),
        ('D', "/gone".into()),
        ('D', "/gdir".into()),
        ('C', "/typechange".into()),
        ('A', "/typechange/in".into()),
        ('C', "/typechange2".into()),
        ('A', "/newdir".into()),
        ('A', "/newdir/sub".into()),
        ('A', "/newdir/sub/f".into()),
        ('A', "/newdir/g".into()),
        ('A', "/added".into()),
        ('A', "/keepdir/new".into()),
        ('C', "/keepdir".into()),
        ('D', format!("/{leaf}")),
    ];
    let mut anc = String::new();
    for i in 1..=10 {
        anc.push_str(&format!("/l{i}"));
        want.push(('C', anc.clone()));
    }
    let want_ref: Vec<(char, &str)> = want.iter().map(|(k, p)| (*k, p.as_str())).collect();
    let c = cx.changes("child", Some("base")).await?;
    check_changes(&c, &expect(&want_ref), "changes(child, base)")?;

    // Against the empty tree everything is Added (the root never appears).
    let c = cx.changes("base", None).await?;
    let m = cx.reference(&base).await?;
    let all: Vec<(char, String)> = m.entries[1..]
        .iter()
        .map(|e| ('A', e.display_path()))
        .collect();
    let all_ref: Vec<(char, &str)> = all.iter().map(|(k, p)| (*k, p.as_str())).collect();
    check_changes(&c, &expect(&all_ref), "changes(base, None)")?;

    // A layer without changes has none.
    cx.create("same", Some("child")).await?;
    let c = cx.changes("same", Some("child")).await?;
    ensure!(
        c.is_empty(),
        "changes of an unchanged child:\n{}",
        show_changes(&c)
    );
    Ok(Outcome::Pass)
}

fn compress(src: &std::path::Path, dst: &std::path::Path, zstd_not_gzip: bool) -> Result<()> {
    let mut input = std::fs::File::open(src)?;
    let out = std::fs::File::create(dst)?;
    if zstd_not_gzip {
        let mut enc = zstd::stream::Encoder::new(out, 3)?;
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.flush()?;
    } else {
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.flush()?;
    }
    Ok(())
}

async fn diff_apply(cx: Ctx) -> Result<Outcome> {
    cx.build("base", None, rich_base()).await?;
    cx.build("child", Some("base"), rich_child()).await?;
    // A child diff applied on the same parent.
    cx.roundtrip("child", Some("base"), "copy", true).await?;
    // The full tree against the empty tree, applied on nothing.
    cx.roundtrip("child", None, "flat", true).await?;
    // Diffs are deterministic.
    let t1 = std::fs::read(cx.diff_to_file("child", Some("base")).await?)?;
    let t2 = std::fs::read(cx.diff_to_file("child", Some("base")).await?)?;
    ensure!(t1 == t2, "two diffs of the same layer differ");
    ensure!(!t1.is_empty(), "the diff is empty");
    // Compressed tars apply the same.
    let plain = cx.diff_to_file("child", Some("base")).await?;
    let want = cx.manifest("child").await?;
    let size = cx.diff_size("child", Some("base")).await?;
    for (name, zstd) in [("gzip", false), ("zstd", true)] {
        let z = cx.scratch_path(name);
        compress(&plain, &z, zstd)?;
        let id = format!("copy-{name}");
        cx.create(&id, Some("base")).await?;
        let n = cx.apply_file(&id, Some("base"), &z).await?;
        ensure!(n == size, "{name}: apply returned {n}, diff_size is {size}");
        let got = cx.manifest(&id).await?;
        tree::assert_equal_as(&want, &got, "layer child", &format!("{name} applied"))?;
    }
    Ok(Outcome::Pass)
}

async fn many_files(cx: &Ctx, dirs: usize, files: usize) -> Result<()> {
    let base = vec![ops::write("base-file", "base"), ops::mkdir("d00000")];
    cx.build("base", None, base).await?;
    let mut v = Vec::with_capacity(dirs * (files + 1));
    for d in 0..dirs {
        let dn = format!("d{d:05}");
        if d > 0 {
            v.push(ops::mkdir(&dn));
        }
        for f in 0..files {
            v.push(ops::write(format!("{dn}/f{f:05}"), format!("{d}/{f}")));
        }
    }
    let t = Instant::now();
    cx.build("many", Some("base"), v).await?;
    let built = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (_, _, steps) = cx
        .roundtrip_timed("many", Some("base"), "applied", true)
        .await?;
    cx.note(format!(
        "{} files: written in {built:.1} s; diff, apply and compare in {:.1} s ({steps})",
        dirs * files,
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The file count of the many-files scenarios: 100,000, or
/// `STRATA_MANY_FILES` (at least 100). The VM suites set 10,000: under
/// QEMU's emulation 100,000 files take 15-30 minutes per scenario, and the
/// kernel code paths are the same at either count; every driver the host
/// runs takes the full count.
///
/// # Errors
/// `STRATA_MANY_FILES` that is not a number of at least 100.
fn many_files_count(cx: &Ctx) -> Result<usize> {
    const FULL: usize = 100_000;
    let Some(v) = std::env::var_os("STRATA_MANY_FILES") else {
        return Ok(FULL);
    };
    let n: usize = v
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n >= 100)
        .with_context(|| {
            format!("STRATA_MANY_FILES={v:?}: want a number of files, at least 100")
        })?;
    if n != FULL {
        cx.note(format!(
            "scaled by STRATA_MANY_FILES to {n} files (full: {FULL})"
        ));
    }
    Ok(n)
}

async fn many_files_wide(cx: Ctx) -> Result<Outcome> {
    let n = many_files_count(&cx)?;
    many_files(&cx, 10, n / 10).await?;
    Ok(Outcome::Pass)
}

async fn many_files_deep(cx: Ctx) -> Result<Outcome> {
    let n = many_files_count(&cx)?;
    many_files(&cx, n / 10, 10).await?;
    Ok(Outcome::Pass)
}
