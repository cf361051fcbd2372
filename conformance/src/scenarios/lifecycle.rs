//! Lifecycle and metadata: layers, ids, mounts, removal.

use super::{expect_err, scenario};
use crate::ctx::lid;
use crate::fixtures;
use crate::ops::{self, Op};
use crate::tree::{self, Kind};
use crate::{Ctx, Outcome, Scenario};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use strata_driver_api::{CreateOpts, Error, MountOpts};

pub(crate) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario!("empty-layer", "lifecycle", root: true, empty_layer,
            "an empty layer mounts as an empty root dir of mode 0755 owned by root"),
        scenario!("base-modes-owners", "lifecycle", root: true, base_modes_owners,
            "a child sees its base's files and dirs with special modes and owners intact"),
        scenario!("chain-views", "lifecycle", root: true, chain_views,
            "A <- B <- C: each view equals a flat directory built by the same operations"),
        scenario!("create-twice", "lifecycle", root: true, create_twice,
            "an id cannot be created twice; a missing parent is NotFound and leaves nothing"),
        scenario!("read-only-mount", "lifecycle", root: true, read_only_mount,
            "a read-only layer's mount (and a read-only mount) refuses writes with EROFS"),
        scenario!("remove-order", "lifecycle", root: true, remove_order,
            "removing a layer with children fails and changes nothing; top-down removal leaves nothing"),
        scenario!("recreate-removed", "lifecycle", root: true, recreate_removed,
            "a removed id can be created again, empty"),
        scenario!("mount-refcount", "lifecycle", root: true, mount_refcount,
            "mount twice / unmount twice, remove while mounted is Busy, cleanup twice unmounts all"),
        scenario!("exists-list", "lifecycle", root: true, exists_list,
            "exists, list and parent report exactly the created layers"),
    ]
}

async fn empty_layer(cx: Ctx) -> Result<Outcome> {
    cx.create("empty", None).await?;
    let m = cx.manifest("empty").await?;
    let root = &m.entries[0];
    ensure!(
        root.kind == Kind::Dir && root.mode == 0o755 && root.uid == 0 && root.gid == 0,
        "root of an empty layer: {} mode {:04o} owner {}:{} (want dir 0755 0:0)",
        root.kind,
        root.mode,
        root.uid,
        root.gid
    );
    ensure!(
        m.entries.len() == 1,
        "an empty layer holds entries: {}",
        m.entries[1..]
            .iter()
            .map(|e| e.display_path())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // A read-only empty layer too.
    cx.create_with("empty-ro", None, &CreateOpts::ro()).await?;
    let m = cx.manifest("empty-ro").await?;
    ensure!(
        m.entries.len() == 1,
        "an empty read-only layer holds entries"
    );
    ensure!(
        m.entries[0].mode == 0o755,
        "empty read-only layer root mode {:04o}",
        m.entries[0].mode
    );
    Ok(Outcome::Pass)
}

fn modes_base() -> Vec<Op> {
    vec![
        ops::mkdir("etc"),
        ops::file("etc/hosts", "127.0.0.1 localhost\n", 0o644, 0, 0),
        ops::dir("sticky", 0o1705, 1, 2),
        ops::file("sticky/inner", "inner", 0o600, 1, 2),
        ops::file("setuid", "x", 0o4222, 0, 0),
        ops::file("setgid", "y", 0o2750, 3, 4),
        ops::dir("empty", 0o700, 0, 0),
        ops::dir("setgid-dir", 0o2775, 5, 6),
        ops::symlink("etc/hosts", "hosts-link"),
    ]
}

async fn base_modes_owners(cx: Ctx) -> Result<Outcome> {
    let base = modes_base();
    cx.build("base", None, base.clone()).await?;
    cx.create("child", Some("base")).await?;
    cx.expect_view("base", &base).await?;
    let m = cx.expect_view("child", &base).await?;
    let s = m.get("/sticky").context("/sticky missing")?;
    ensure!(
        (s.mode, s.uid, s.gid) == (0o1705, 1, 2),
        "/sticky: mode {:04o} owner {}:{}, want 1705 1:2",
        s.mode,
        s.uid,
        s.gid
    );
    let f = m.get("/setuid").context("/setuid missing")?;
    ensure!(f.mode == 0o4222, "/setuid: mode {:04o}, want 4222", f.mode);
    Ok(Outcome::Pass)
}

async fn chain_views(cx: Ctx) -> Result<Outcome> {
    let a = vec![
        ops::mkdir("dir"),
        ops::write("dir/a", "a from A"),
        ops::write("keep", "keep"),
        ops::write("change-me", "v1"),
        ops::mkdir("gone-dir"),
        ops::write("gone-dir/x", "x"),
    ];
    let b = vec![
        ops::write("dir/b", "b from B"),
        ops::file("change-me", "v2 longer", 0o600, 7, 7),
        ops::rm("gone-dir"),
        ops::symlink("keep", "link"),
    ];
    let c = vec![
        ops::rm("dir/a"),
        ops::write("dir/c", "c from C"),
        ops::write_at("change-me", "v3", 0o640, 1_000_000_000),
        ops::mkdir("gone-dir"),
    ];
    cx.build("A", None, a.clone()).await?;
    cx.build("B", Some("A"), b.clone()).await?;
    cx.build("C", Some("B"), c.clone()).await?;
    let mut all = a.clone();
    cx.expect_view("A", &all).await?;
    all.extend(b);
    cx.expect_view("B", &all).await?;
    all.extend(c);
    cx.expect_view("C", &all).await?;
    Ok(Outcome::Pass)
}

async fn create_twice(cx: Ctx) -> Result<Outcome> {
    let ops = vec![ops::write("f", "content")];
    cx.build("a", None, ops.clone()).await?;
    cx.create("b", None).await?;
    let d = &cx.driver;
    expect_err(
        d.create(&lid("a")?, None, &CreateOpts::rw()).await,
        "create a again",
        "AlreadyExists",
        |e| matches!(e, Error::AlreadyExists { .. }),
    )?;
    expect_err(
        d.create(&lid("a")?, Some(&lid("b")?), &CreateOpts::ro())
            .await,
        "create a again on another parent",
        "AlreadyExists",
        |e| matches!(e, Error::AlreadyExists { .. }),
    )?;
    cx.expect_view("a", &ops).await?;
    expect_err(
        d.create(
            &lid("orphan")?,
            Some(&lid("no-such-parent")?),
            &CreateOpts::rw(),
        )
        .await,
        "create on a missing parent",
        "NotFound",
        |e| matches!(e, Error::NotFound { .. }),
    )?;
    ensure!(
        !d.exists(&lid("orphan")?).await?,
        "a create that failed (missing parent) left a layer behind"
    );
    let list = d.list().await?;
    ensure!(
        list == vec![lid("a")?, lid("b")?],
        "list after failed creates: {list:?}, want [a, b]"
    );
    Ok(Outcome::Pass)
}

async fn read_only_mount(cx: Ctx) -> Result<Outcome> {
    let caps = cx.driver.capabilities();
    if !caps.read_only_mounts {
        return Ok(Outcome::NotApplicable(
            "capabilities().read_only_mounts is false: this driver's mounts of read-only layers are writable"
                .into(),
        ));
    }
    cx.create_with("ro", None, &CreateOpts::ro()).await?;
    let path = cx.mount("ro").await?;
    let r = fs::write(path.join("x"), b"x");
    cx.unmount("ro").await?;
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => anyhow::bail!("writing into a read-only layer's mount: {other:?}, want EROFS"),
    }
    cx.build("rw", None, vec![ops::write("f", "f")]).await?;
    let path = cx
        .driver
        .mount(
            &lid("rw")?,
            &MountOpts {
                read_only: true,
                ..Default::default()
            },
        )
        .await?;
    let r = fs::write(path.join("f"), b"changed");
    cx.unmount("rw").await?;
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(Outcome::Pass),
        other => {
            anyhow::bail!("writing into a read-only mount of a rw layer: {other:?}, want EROFS")
        }
    }
}

/// Every non-directory path under `root` (relative), for leak checks.
fn files_under(root: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(out)
}

async fn remove_order(cx: Ctx) -> Result<Outcome> {
    let before = files_under(&cx.root)?;
    let loops_before = fixtures::loops_under(&cx.root)?;
    let a = vec![ops::mkdir("d"), ops::write("d/a", "A")];
    let b = vec![ops::write("d/b", "B"), ops::rm("d/a")];
    let c = vec![ops::write("c", "C")];
    cx.build("layer-a", None, a.clone()).await?;
    cx.build("layer-b", Some("layer-a"), b.clone()).await?;
    cx.build("layer-c", Some("layer-b"), c.clone()).await?;
    let views = [
        ("layer-a", cx.manifest("layer-a").await?),
        ("layer-b", cx.manifest("layer-b").await?),
        ("layer-c", cx.manifest("layer-c").await?),
    ];
    let d = &cx.driver;
    for id in ["layer-a", "layer-b"] {
        expect_err(
            d.remove(&lid(id)?).await,
            &format!("remove {id} (has a child)"),
            "HasChildren",
            |e| matches!(e, Error::HasChildren { .. }),
        )?;
    }
    for (id, m) in &views {
        ensure!(
            d.exists(&lid(id)?).await?,
            "{id} vanished after a refused remove"
        );
        let now = cx.manifest(id).await?;
        tree::assert_equal_as(m, &now, "before", "after refused removes")
            .with_context(|| format!("layer {id}"))?;
    }
    for id in ["layer-c", "layer-b", "layer-a"] {
        d.remove(&lid(id)?)
            .await
            .with_context(|| format!("remove {id}"))?;
        ensure!(
            !d.exists(&lid(id)?).await?,
            "{id} still exists after remove"
        );
    }
    ensure!(
        d.list().await?.is_empty(),
        "list not empty after removing all layers"
    );
    expect_err(
        d.remove(&lid("layer-a")?).await,
        "remove a removed layer",
        "NotFound",
        |e| matches!(e, Error::NotFound { .. }),
    )?;
    let mounts = fixtures::mounts_under(&cx.root)?;
    ensure!(
        mounts.is_empty(),
        "mounts left after removing all layers: {mounts:?}"
    );
    let loops = fixtures::loops_under(&cx.root)?;
    ensure!(
        loops.len() <= loops_before.len(),
        "loop devices left after removing all layers: {loops:?} (before: {loops_before:?})"
    );
    let after = files_under(&cx.root)?;
    let mut leaked = Vec::new();
    for p in after.difference(&before) {
        let abs = cx.root.join(p);
        let is_dir = fs::symlink_metadata(&abs)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let names_layer = p
            .components()
            .any(|c| c.as_os_str().as_bytes().starts_with(b"layer-"));
        // New bookkeeping directories are fine; files, or anything named
        // after a removed layer, are leftovers.
        if !is_dir || names_layer {
            leaked.push(p.display().to_string());
        }
    }
    ensure!(
        leaked.is_empty(),
        "left under the root after removing every layer: {}",
        leaked.join(", ")
    );
    Ok(Outcome::Pass)
}

async fn recreate_removed(cx: Ctx) -> Result<Outcome> {
    cx.build("x", None, vec![ops::write("old", "old content")])
        .await?;
    cx.driver.remove(&lid("x")?).await?;
    cx.create("x", None).await?;
    let m = cx.manifest("x").await?;
    ensure!(
        m.entries.len() == 1,
        "the recreated layer shows old entries: {:?}",
        m.entries
            .iter()
            .map(|e| e.display_path())
            .collect::<Vec<_>>()
    );
    // And recreated on a parent, as a different kind of layer.
    cx.build("p", None, vec![ops::write("from-parent", "p")])
        .await?;
    cx.driver.remove(&lid("x")?).await?;
    cx.create_with("x", Some("p"), &CreateOpts::ro()).await?;
    cx.expect_view("x", &[ops::write("from-parent", "p")])
        .await?;
    ensure!(
        cx.driver.parent(&lid("x")?).await? == Some(lid("p")?),
        "parent of the recreated layer is not p"
    );
    Ok(Outcome::Pass)
}

async fn mount_refcount(cx: Ctx) -> Result<Outcome> {
    let d = cx.driver.clone();
    let m = lid("m")?;
    cx.build("m", None, vec![ops::write("f", "mounted")])
        .await?;
    ensure!(
        !d.is_mounted(&m).await?,
        "is_mounted is true before any mount"
    );
    let p1 = d.mount(&m, &MountOpts::default()).await?;
    let n1 = fixtures::mount_count_at(&p1)?;
    let p2 = d.mount(&m, &MountOpts::default()).await?;
    ensure!(
        p1 == p2,
        "second mount returned {} (first {})",
        p2.display(),
        p1.display()
    );
    let n2 = fixtures::mount_count_at(&p2)?;
    ensure!(
        n1 == n2,
        "second mount stacked another mount on {} ({n1} -> {n2})",
        p1.display()
    );
    ensure!(d.is_mounted(&m).await?, "is_mounted is false while mounted");
    ensure!(
        fs::read(p2.join("f"))? == b"mounted",
        "mounted contents wrong"
    );
    expect_err(d.remove(&m).await, "remove while mounted", "Busy", |e| {
        matches!(e, Error::Busy { .. })
    })?;
    ensure!(
        d.exists(&m).await?,
        "a refused remove (mounted) removed the layer"
    );
    ensure!(
        fs::read(p2.join("f"))? == b"mounted",
        "a refused remove changed the mounted tree"
    );
    d.unmount(&m).await.context("first unmount")?;
    d.unmount(&m)
        .await
        .context("second unmount (must be idempotent)")?;
    ensure!(!d.is_mounted(&m).await?, "is_mounted is true after unmount");
    ensure!(
        fixtures::mount_count_at(&p1)? == 0 || n1 == 0,
        "a mount is still on {} after unmount",
        p1.display()
    );
    expect_err(
        d.mount(&lid("nope")?, &MountOpts::default()).await,
        "mount a missing layer",
        "NotFound",
        |e| matches!(e, Error::NotFound { .. }),
    )?;
    // Cleanup unmounts everything, twice is fine.
    cx.build("n", Some("m"), vec![ops::write("g", "g")]).await?;
    d.mount(&m, &MountOpts::default()).await?;
    d.mount(&lid("n")?, &MountOpts::default()).await?;
    d.cleanup().await.context("first cleanup")?;
    d.cleanup()
        .await
        .context("second cleanup (must be idempotent)")?;
    let left = fixtures::mounts_under(&cx.root)?;
    ensure!(left.is_empty(), "mounts left after cleanup(): {left:?}");
    Ok(Outcome::Pass)
}

async fn exists_list(cx: Ctx) -> Result<Outcome> {
    let d = cx.driver.clone();
    ensure!(d.list().await?.is_empty(), "a fresh root lists layers");
    cx.create("l-a", None).await?;
    cx.create("l-b", Some("l-a")).await?;
    cx.create_with("l-c", None, &CreateOpts::ro()).await?;
    cx.create("l-0", Some("l-b")).await?;
    let want = vec![lid("l-0")?, lid("l-a")?, lid("l-b")?, lid("l-c")?];
    let got = d.list().await?;
    ensure!(got == want, "list: {got:?}, want {want:?}");
    for id in &want {
        ensure!(d.exists(id).await?, "exists({id}) is false");
    }
    ensure!(
        !d.exists(&lid("l-d")?).await?,
        "exists of a never-created id is true"
    );
    ensure!(
        d.parent(&lid("l-b")?).await? == Some(lid("l-a")?),
        "parent(l-b) is not l-a"
    );
    ensure!(
        d.parent(&lid("l-a")?).await?.is_none(),
        "parent(l-a) is not None"
    );
    expect_err(
        d.parent(&lid("l-d")?).await,
        "parent of a missing layer",
        "NotFound",
        |e| matches!(e, Error::NotFound { .. }),
    )?;
    d.remove(&lid("l-c")?).await?;
    let got = d.list().await?;
    let want = vec![lid("l-0")?, lid("l-a")?, lid("l-b")?];
    ensure!(
        got == want,
        "list after removing l-c: {got:?}, want {want:?}"
    );
    ensure!(!d.exists(&lid("l-c")?).await?, "exists(l-c) after remove");
    Ok(Outcome::Pass)
}
