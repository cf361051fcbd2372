//! Root tests of the overlay driver: layout, mounts, 500-layer chains, the
//! native diff and apply, removal, refused backing filesystems and XFS
//! quotas.
//!
//! Every test needs root (mounts). Without root a test prints why and is
//! skipped, except under `CI=true`, where a missing condition fails.
//! Every mount and loop device a test makes is released by a guard, also
//! when the test fails.

use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use strata_driver_api::archive::Item;
use strata_driver_api::{ChangeKind, CreateOpts, Driver, Error, LayerId, MountOpts};
use strata_drivers::overlay::{native, MountApiChoice, Overlay, OverlayOptions};
use strata_drivers::{mountinfo, mounts};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether a condition holds; when it does not, prints why (skip), or
/// panics under CI.
fn require(cond: bool, why: &str) -> bool {
    if !cond {
        if in_ci() {
            panic!("condition missing under CI=true: {why}");
        }
        {
            // Written past the test harness's capture, so the skip is seen.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
        }
    }
    cond
}

fn need_root() -> bool {
    require(nix::unistd::geteuid().is_root(), "needs root (mounts)")
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// Detaches every mount at or below `dir`, deepest first.
fn detach_below(dir: &Path) {
    let _ = mounts::unmount_under(dir);
}

fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    mountinfo::mount_points_under(dir).unwrap()
}

/// A temporary root; every mount below it is detached on drop.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        Root {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self) -> PathBuf {
        fs::canonicalize(self.dir.path()).unwrap()
    }
    async fn open(&self, opts: OverlayOptions) -> Result<Overlay> {
        Ok(Overlay::open(&self.path(), opts).await?)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        detach_below(self.dir.path());
        if let Ok(p) = fs::canonicalize(self.dir.path()) {
            detach_below(&p);
        }
    }
}

/// A command that must succeed.
fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_layout_after_create() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root.open(OverlayOptions::default()).await?;
    let home = d.home().to_path_buf();
    d.create(&id("base"), None, &CreateOpts::ro()).await?;
    d.create(&id("child"), Some(&id("base")), &CreateOpts::rw())
        .await?;
    d.create(&id("grand"), Some(&id("child")), &CreateOpts::rw())
        .await?;

    let link = fs::read_to_string(home.join("base/link"))?;
    ensure!(link.len() == 26, "short link {link:?}");
    ensure!(link
        .bytes()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
    let target = fs::read_link(home.join("l").join(&link))?;
    ensure!(
        target == Path::new("../base/diff"),
        "link target {target:?}"
    );
    ensure!(home.join("base/diff").is_dir());
    ensure!(!home.join("base/lower").exists(), "a base has no lower");
    let md = fs::metadata(home.join("base/diff"))?;
    ensure!(md.permissions().mode() & 0o7777 == 0o755 && md.uid() == 0 && md.gid() == 0);

    let clink = fs::read_to_string(home.join("child/link"))?;
    ensure!(fs::read_to_string(home.join("child/lower"))? == format!("l/{link}"));
    ensure!(
        fs::read_to_string(home.join("grand/lower"))? == format!("l/{clink}:l/{link}"),
        "nearest first"
    );
    let work = fs::metadata(home.join("child/work"))?;
    ensure!(work.permissions().mode() & 0o777 == 0o700, "work is 0700");
    ensure!(home.join("child/merged").is_dir());

    ensure!(d.list().await? == vec![id("base"), id("child"), id("grand")]);
    ensure!(d.parent(&id("grand")).await? == Some(id("child")));
    ensure!(d.parent(&id("base")).await?.is_none());
    ensure!(matches!(
        d.create(&id("base"), None, &CreateOpts::rw()).await,
        Err(Error::AlreadyExists { .. })
    ));
    ensure!(matches!(
        d.create(&id("x"), Some(&id("nope")), &CreateOpts::rw())
            .await,
        Err(Error::NotFound { .. })
    ));
    ensure!(matches!(
        d.create(&id("l"), None, &CreateOpts::rw()).await,
        Err(Error::InvalidId { .. })
    ));
    ensure!(matches!(
        d.remove(&id("base")).await,
        Err(Error::HasChildren { .. })
    ));
    // No staging left-overs beside the layers.
    let mut names: Vec<String> = fs::read_dir(&home)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    ensure!(
        names == ["base", "child", "grand", "l", "~busy.lock", "~views"],
        "{names:?}"
    );
    let st = d.status().await?;
    eprintln!("{st:#?}");
    Ok(())
}

async fn mount_base_child_chain(api: MountApiChoice) -> Result<()> {
    let root = Root::new();
    let d = root
        .open(OverlayOptions {
            mount_api: api,
            ..Default::default()
        })
        .await?;
    let rw = MountOpts::default();
    d.create(&id("base"), None, &CreateOpts::rw()).await?;
    let m = d.mount(&id("base"), &rw).await?;
    ensure!(d.mount(&id("base"), &rw).await? == m, "idempotent mount");
    fs::write(m.join("a"), b"base a")?;
    fs::create_dir(m.join("dir"))?;
    fs::write(m.join("dir/x"), b"x")?;
    ensure!(d.is_mounted(&id("base")).await?);
    ensure!(matches!(
        d.remove(&id("base")).await,
        Err(Error::Busy { .. })
    ));
    d.unmount(&id("base")).await?;
    d.unmount(&id("base")).await?;
    ensure!(!d.is_mounted(&id("base")).await?);

    d.create(&id("child"), Some(&id("base")), &CreateOpts::rw())
        .await?;
    let m = d.mount(&id("child"), &rw).await?;
    ensure!(fs::read(m.join("a"))? == b"base a");
    fs::remove_file(m.join("a"))?;
    fs::write(m.join("b"), b"child b")?;
    fs::write(m.join("dir/y"), b"y")?;
    d.unmount(&id("child")).await?;

    d.create(&id("top"), Some(&id("child")), &CreateOpts::ro())
        .await?;
    let m = d.mount(&id("top"), &rw).await?;
    ensure!(!m.join("a").exists(), "deleted in child stays deleted");
    ensure!(fs::read(m.join("b"))? == b"child b");
    ensure!(fs::read(m.join("dir/x"))? == b"x");
    ensure!(fs::read(m.join("dir/y"))? == b"y");
    let e = fs::write(m.join("c"), b"no").unwrap_err();
    ensure!(errno_of(&e) == libc::EROFS, "read-only layer: {e}");
    d.unmount(&id("top")).await?;

    // A read-write layer mounted read-only, and a read-only base.
    let m = d
        .mount(
            &id("child"),
            &MountOpts {
                read_only: true,
                ..Default::default()
            },
        )
        .await?;
    let e = fs::write(m.join("c"), b"no").unwrap_err();
    ensure!(errno_of(&e) == libc::EROFS, "{e}");
    d.unmount(&id("child")).await?;
    d.create(&id("robase"), None, &CreateOpts::ro()).await?;
    let m = d.mount(&id("robase"), &rw).await?;
    let e = fs::write(m.join("c"), b"no").unwrap_err();
    ensure!(errno_of(&e) == libc::EROFS, "{e}");

    // A view works while the layer is mounted or not.
    let v = d.view(&id("top"), false).await?;
    ensure!(fs::read(v.path().join("b"))? == b"child b");
    let vp = v.path().to_path_buf();
    drop(v);
    ensure!(!vp.exists(), "view released");

    // mount_spec: overlay for a child, bind for a base.
    let spec = d.mount_spec(&id("child"), &rw).await?;
    ensure!(
        spec.len() == 1 && spec[0].fs_type == "overlay" && spec[0].source == Path::new("overlay")
    );
    let opts = spec[0].options.join(",");
    ensure!(
        opts.contains("lowerdir=/") && opts.contains("upperdir=/") && opts.contains("index=off"),
        "{opts}"
    );
    let spec = d.mount_spec(&id("top"), &rw).await?;
    ensure!(spec[0].options[0] == "ro" && !spec[0].options.join(",").contains("upperdir"));
    let spec = d.mount_spec(&id("base"), &rw).await?;
    ensure!(spec[0].fs_type == "bind" && spec[0].source.ends_with("base/diff"));

    d.cleanup().await?;
    ensure!(mounts_below(d.home()).is_empty(), "cleanup unmounts all");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_mount_base_child_chain() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    mount_base_child_chain(MountApiChoice::Auto).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_mount_base_child_chain_classic() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    mount_base_child_chain(MountApiChoice::Classic).await
}

/// Builds a chain of `n` layers (`c0` .. `c{n-1}`), `c0` holding `bottom`;
/// the last is read-write, the others read-only.
async fn chain(d: &Overlay, n: usize) -> Result<LayerId> {
    d.create(&id("c0"), None, &CreateOpts::ro()).await?;
    fs::write(d.home().join("c0/diff/bottom"), b"from the bottom")?;
    let mut prev = id("c0");
    for i in 1..n {
        let l = id(&format!("c{i}"));
        let o = if i + 1 == n {
            CreateOpts::rw()
        } else {
            CreateOpts::ro()
        };
        d.create(&l, Some(&prev), &o).await?;
        prev = l;
    }
    Ok(prev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_chain_500_new_mount_api() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root.open(OverlayOptions::default()).await?;
    if !require(
        d.uses_new_mount_api(),
        "the kernel's overlay has no lowerdir+ (Linux 6.8+)",
    ) {
        return Ok(());
    }
    ensure!(d.capabilities().max_depth == 500);
    let top = chain(&d, 500).await?;
    let m = d.mount(&top, &MountOpts::default()).await?;
    ensure!(fs::read(m.join("bottom"))? == b"from the bottom");
    fs::write(m.join("new"), b"top")?;
    // The read-only view stacks all 500 diffs as lowers.
    let v = d.view(&top, false).await?;
    ensure!(fs::read(v.path().join("bottom"))? == b"from the bottom");
    ensure!(fs::read(v.path().join("new"))? == b"top");
    drop(v);
    // Read-only mount of the 500th: 500 lowers, no upper.
    d.unmount(&top).await?;
    let m = d
        .mount(
            &top,
            &MountOpts {
                read_only: true,
                ..Default::default()
            },
        )
        .await?;
    ensure!(fs::read(m.join("bottom"))? == b"from the bottom");
    d.unmount(&top).await?;

    let e = d
        .create(&id("c500"), Some(&top), &CreateOpts::rw())
        .await
        .unwrap_err();
    let msg = e.to_string();
    ensure!(
        matches!(e, Error::InvalidArgument { .. }) && msg.contains("501") && msg.contains("500"),
        "{msg}"
    );
    ensure!(!d.exists(&id("c500")).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_chain_128_classic_mount() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root
        .open(OverlayOptions {
            mount_api: MountApiChoice::Classic,
            ..Default::default()
        })
        .await?;
    ensure!(d.capabilities().max_depth == 128);
    let top = chain(&d, 128).await?;
    let m = d.mount(&top, &MountOpts::default()).await?;
    ensure!(fs::read(m.join("bottom"))? == b"from the bottom");
    d.unmount(&top).await?;
    let v = d.view(&top, false).await?;
    ensure!(fs::read(v.path().join("bottom"))? == b"from the bottom");
    drop(v);
    let e = d
        .create(&id("c128"), Some(&top), &CreateOpts::rw())
        .await
        .unwrap_err();
    ensure!(e.to_string().contains("129"), "{e}");
    Ok(())
}

/// Base: `a/f`, `a/g`, `d/x`, `d/sub/y`, `keep`. Child (through its mount):
/// removes `a/f` and `keep`, replaces `d` by a new dir holding `new`.
async fn deletions_and_opaque(d: &Overlay) -> Result<()> {
    d.create(&id("base"), None, &CreateOpts::ro()).await?;
    let b = d.home().join("base/diff");
    fs::create_dir_all(b.join("a"))?;
    fs::write(b.join("a/f"), b"f")?;
    fs::write(b.join("a/g"), b"g")?;
    fs::create_dir_all(b.join("d/sub"))?;
    fs::write(b.join("d/x"), b"x")?;
    fs::write(b.join("d/sub/y"), b"y")?;
    fs::write(b.join("keep"), b"k")?;
    d.create(&id("child"), Some(&id("base")), &CreateOpts::rw())
        .await?;
    let m = d.mount(&id("child"), &MountOpts::default()).await?;
    fs::remove_file(m.join("a/f"))?;
    fs::remove_file(m.join("keep"))?;
    fs::remove_dir_all(m.join("d"))?;
    fs::create_dir(m.join("d"))?;
    fs::write(m.join("d/new"), b"new!")?;
    d.unmount(&id("child")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_native_diff_whiteouts_and_opaque() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root.open(OverlayOptions::default()).await?;
    let (native, why) = d.native_diff();
    eprintln!("native diff: {native}: {why}");
    deletions_and_opaque(&d).await?;
    let up = d.home().join("child/diff");

    // The upper holds kernel whiteouts; they may share one inode.
    let wh = fs::symlink_metadata(up.join("a/f"))?;
    ensure!(wh.file_type().is_char_device() && wh.rdev() == 0);

    let mut items = native::upper_items(&up)?;
    items.sort();
    let want = vec![
        Item::Entry("a".into()),
        Item::Entry("d".into()),
        Item::Entry("d/new".into()),
        Item::Whiteout("a/f".into()),
        Item::Whiteout("keep".into()),
        Item::Opaque("d".into()),
    ];
    ensure!(items == want, "{items:?}");
    ensure!(native::upper_size(&up)? == 4);

    if !require(native, &format!("native diff is off here: {why}")) {
        return Ok(());
    }
    let changes: Vec<(String, ChangeKind)> = d
        .changes(&id("child"), Some(&id("base")))
        .await?
        .into_iter()
        .map(|c| (c.path.to_string_lossy().into_owned(), c.kind))
        .collect();
    let want: Vec<(String, ChangeKind)> = [
        ("/a", ChangeKind::Modified),
        ("/a/f", ChangeKind::Deleted),
        ("/d", ChangeKind::Modified),
        ("/d/new", ChangeKind::Added),
        ("/d/sub", ChangeKind::Deleted),
        ("/d/x", ChangeKind::Deleted),
        ("/keep", ChangeKind::Deleted),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), k))
    .collect();
    ensure!(changes == want, "{changes:?}");
    ensure!(d.diff_size(&id("child"), Some(&id("base"))).await? == 4);

    // The tar: whiteouts as .wh. names, the opaque dir as whiteouts of the
    // parent's names in it (the canonical form vfs's naive differ writes),
    // no hard links between whiteouts.
    let tarfile = root.path().join("child.tar");
    let out = Box::new(fs::File::create(&tarfile)?);
    drop(d.diff(&id("child"), Some(&id("base")), out).await?);
    if fs::metadata(&tarfile)?.len() == 0 {
        if in_ci() {
            bail!("diff wrote an empty tar (the archive writer is still a placeholder)");
        }
        {
            // Written past the test harness's capture, so the skip is seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED tar check: the archive writer is still a placeholder"
            );
        }
        return Ok(());
    }
    if !require(tool("tar"), "needs the tar command") {
        return Ok(());
    }
    let list = run("tar", &["-tvf", tarfile.to_str().unwrap()])?;
    let names = run("tar", &["-tf", tarfile.to_str().unwrap()])?;
    let mut names: Vec<&str> = names
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .filter(|l| !l.is_empty() && *l != ".")
        .collect();
    names.sort();
    ensure!(
        names
            == [
                "a",
                "a/.wh.f",
                "d",
                "d/.wh.sub",
                "d/.wh.x",
                "d/new",
                ".wh.keep"
            ]
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "{names:?}"
    );
    ensure!(
        !list.contains(" link to "),
        "whiteouts must not be hard links: {list}"
    );
    let raw = fs::read(&tarfile)?;
    ensure!(
        !raw.windows(16).any(|w| w == b"trusted.overlay."),
        "the tar carries overlay's own trusted.overlay.* xattrs"
    );
    // And it applies into a fresh layer on the same base (the archive's
    // apply refuses trusted.overlay.* xattrs).
    d.create(&id("again"), Some(&id("base")), &CreateOpts::ro())
        .await?;
    let n = d
        .apply_diff(
            &id("again"),
            Some(&id("base")),
            Box::new(fs::File::open(&tarfile)?),
        )
        .await?;
    ensure!(n == 4, "applied {n}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_native_apply_makes_overlay_whiteouts() -> Result<()> {
    if !need_root() || !require(tool("tar"), "needs the tar command") {
        return Ok(());
    }
    let root = Root::new();
    let d = root.open(OverlayOptions::default()).await?;
    d.create(&id("base"), None, &CreateOpts::ro()).await?;
    let b = d.home().join("base/diff");
    fs::create_dir_all(b.join("a"))?;
    fs::write(b.join("a/f"), b"f")?;
    fs::create_dir_all(b.join("d"))?;
    fs::write(b.join("d/old"), b"old")?;
    d.create(&id("child"), Some(&id("base")), &CreateOpts::ro())
        .await?;

    // The tar, made with the tar command from a staging tree.
    let src = root.path().join("src");
    fs::create_dir_all(src.join("a"))?;
    fs::write(src.join("a/.wh.f"), b"")?;
    fs::create_dir_all(src.join("d"))?;
    fs::write(src.join("d/.wh..wh..opq"), b"")?;
    fs::write(src.join("d/n"), b"new")?;
    let tarfile = root.path().join("in.tar");
    run(
        "tar",
        &[
            "-cf",
            tarfile.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            "a",
            "d",
        ],
    )?;
    let bytes = d
        .apply_diff(
            &id("child"),
            Some(&id("base")),
            Box::new(fs::File::open(&tarfile)?),
        )
        .await?;
    let up = d.home().join("child/diff");
    if bytes == 0 && !up.join("d").exists() {
        if in_ci() {
            bail!("apply wrote nothing (the archive reader is still a placeholder)");
        }
        {
            // Written past the test harness's capture, so the skip is seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the archive reader is still a placeholder"
            );
        }
        return Ok(());
    }
    ensure!(bytes == 3, "applied {bytes} bytes");
    let wh = fs::symlink_metadata(up.join("a/f"))?;
    ensure!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "a/f: {wh:?}"
    );
    ensure!(!up.join("a/.wh.f").exists());
    ensure!(xattr::get(up.join("d"), native::OPAQUE_XATTR)?.as_deref() == Some(&b"y"[..]));
    ensure!(!up.join("d/.wh..wh..opq").exists());
    let m = d.mount(&id("child"), &MountOpts::default()).await?;
    ensure!(!m.join("a/f").exists() && !m.join("d/old").exists());
    ensure!(fs::read(m.join("d/n"))? == b"new");
    d.unmount(&id("child")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_removal_leaves_nothing() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root.open(OverlayOptions::default()).await?;
    deletions_and_opaque(&d).await?;
    d.create(&id("top"), Some(&id("child")), &CreateOpts::rw())
        .await?;
    d.mount(&id("top"), &MountOpts::default()).await?;
    let v = d.view(&id("child"), false).await?;
    ensure!(matches!(
        d.remove(&id("top")).await,
        Err(Error::Busy { .. })
    ));
    drop(v);
    d.unmount(&id("top")).await?;
    d.remove(&id("top")).await?;
    ensure!(matches!(
        d.remove(&id("top")).await,
        Err(Error::NotFound { .. })
    ));
    d.remove(&id("child")).await?;
    d.remove(&id("base")).await?;
    ensure!(d.list().await?.is_empty());
    let home = d.home().to_path_buf();
    let mut names: Vec<String> = fs::read_dir(&home)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    ensure!(names == ["l", "~busy.lock", "~views"], "{names:?}");
    ensure!(fs::read_dir(home.join("l"))?.next().is_none(), "links left");
    ensure!(
        fs::read_dir(home.join("~views"))?.next().is_none(),
        "views left"
    );
    ensure!(mounts_below(&home).is_empty());
    // A removed id can be created again.
    d.create(&id("base"), None, &CreateOpts::rw()).await?;
    ensure!(d.exists(&id("base")).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_open_sweeps_interrupted_work() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root.open(OverlayOptions::default()).await?;
    d.create(&id("base"), None, &CreateOpts::rw()).await?;
    let home = d.home().to_path_buf();
    // What a killed process leaves: a staging dir, a half-removed layer,
    // a dangling link, a view still mounted.
    fs::create_dir_all(home.join("~staging-XYZ/diff"))?;
    fs::create_dir_all(home.join("gone~removing/diff"))?;
    std::os::unix::fs::symlink("../gone/diff", home.join("l/ABCDEFGHIJKLMNOPQRSTUVWXYZ"))?;
    // The view mount a killed process leaves (its busy lock died with it;
    // forgetting a live View would keep this process's lock held).
    let stale = home.join("~views/stale");
    fs::create_dir(&stale)?;
    nix::mount::mount(
        Some(&home.join("base/diff")),
        &stale,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )?;
    drop(d);
    let d = root.open(OverlayOptions::default()).await?;
    let mut names: Vec<String> = fs::read_dir(&home)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    ensure!(names == ["base", "l", "~busy.lock", "~views"], "{names:?}");
    ensure!(fs::read_dir(home.join("l"))?.count() == 1);
    ensure!(mounts_below(&home).is_empty(), "stale view detached");
    ensure!(d.list().await? == vec![id("base")]);
    Ok(())
}

/// A mount made by the test, detached on drop.
struct MountGuard(PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        detach_below(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_refuses_overlay_and_xattrless_backing() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let t = Root::new();
    let base = t.path();

    // ramfs: a tmpfs-like filesystem with no xattrs.
    let rf = base.join("ramfs");
    fs::create_dir(&rf)?;
    run("mount", &["-t", "ramfs", "ramfs", rf.to_str().unwrap()])?;
    let _g1 = MountGuard(rf.clone());
    let e = Overlay::probe(&rf.join("root")).unwrap_err();
    ensure!(
        matches!(e, Error::Unsupported { .. }) && e.to_string().contains("ramfs"),
        "{e}"
    );
    let e = Overlay::open(&rf.join("root"), OverlayOptions::default())
        .await
        .unwrap_err();
    let msg = e.to_string();
    ensure!(
        matches!(e, Error::Unsupported { .. }) && msg.contains("ramfs") && msg.contains("xattr"),
        "{msg}"
    );

    // An overlay mount as backing filesystem.
    let (lo, up, wk, mg) = (
        base.join("lo"),
        base.join("up"),
        base.join("wk"),
        base.join("mg"),
    );
    for p in [&lo, &up, &wk, &mg] {
        fs::create_dir(p)?;
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lo.display(),
        up.display(),
        wk.display()
    );
    run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &data,
            mg.to_str().unwrap(),
        ],
    )?;
    let _g2 = MountGuard(mg.clone());
    let e = Overlay::probe(&mg.join("root")).unwrap_err();
    ensure!(e.to_string().contains("overlay"), "{e}");
    let e = Overlay::open(&mg.join("root"), OverlayOptions::default())
        .await
        .unwrap_err();
    ensure!(
        matches!(e, Error::Unsupported { .. })
            && e.to_string().contains("is on overlay, which cannot hold"),
        "{e}"
    );
    ensure!(strata_drivers::registry::probe("overlay", &mg).is_err());
    ensure!(strata_drivers::registry::probe("overlay", &base).is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_size_without_xfs_quota_is_unsupported() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root.open(OverlayOptions::default()).await?;
    if d.capabilities().quota {
        eprintln!("the test root has quotas: nothing to check");
        return Ok(());
    }
    let e = d
        .create(
            &id("q"),
            None,
            &CreateOpts {
                size: Some(1 << 20),
                ..CreateOpts::rw()
            },
        )
        .await
        .unwrap_err();
    ensure!(
        matches!(e, Error::Unsupported { .. }) && e.to_string().contains("prjquota"),
        "{e}"
    );
    ensure!(!d.exists(&id("q")).await?);
    Ok(())
}

/// A loop-mounted XFS with project quotas; unmounted and detached on drop.
struct LoopXfs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
    /// Mounted with `prjquota` (false: the kernel's XFS has no quota
    /// support, so it is mounted without).
    prjquota: bool,
}

impl LoopXfs {
    fn new() -> Result<LoopXfs> {
        let dir = tempfile::tempdir()?;
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt)?;
        let f = fs::File::create(&img)?;
        f.set_len(512 << 20)?;
        drop(f);
        let mut g = LoopXfs {
            dir,
            mnt,
            dev: None,
            mounted: false,
            prjquota: true,
        };
        run("mkfs.xfs", &["-q", img.to_str().unwrap()])?;
        // A freshly booted kernel (the VM) may not have loaded the loop
        // driver yet; where it is built in or loaded this does nothing.
        if !Path::new("/dev/loop-control").exists() {
            let _ = Command::new("modprobe").arg("loop").status();
        }
        let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()])?
            .trim()
            .to_string();
        g.dev = Some(dev.clone());
        let mnt = g.mnt.to_str().unwrap().to_string();
        if run("mount", &["-t", "xfs", "-o", "prjquota", &dev, &mnt]).is_err() {
            run("mount", &["-t", "xfs", &dev, &mnt])?;
            g.prjquota = false;
        }
        g.mounted = true;
        Ok(g)
    }
}

impl Drop for LoopXfs {
    fn drop(&mut self) {
        detach_below(&self.mnt);
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .stderr(std::process::Stdio::null())
                .status();
        }
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = &self.dir;
    }
}

/// Needs XFS project quotas, which the build hosts' kernel lacks
/// (CONFIG_XFS_QUOTA: "quota support not available in this kernel"), so it
/// is ignored here rather than counted as passed; Debian's kernel has them:
/// run it in the VM with `--ignored` (conformance/vm/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CONFIG_XFS_QUOTA (not in the build hosts' kernel): run in the VM with --ignored"]
async fn overlay_xfs_project_quota() -> Result<()> {
    if !need_root()
        || !require(
            tool("mkfs.xfs") && tool("losetup"),
            "needs mkfs.xfs (xfsprogs) and losetup",
        )
    {
        return Ok(());
    }
    let x = LoopXfs::new()?;
    let d = Overlay::open(&x.mnt, OverlayOptions::default()).await?;
    let limit = 16u64 << 20;
    let sized = CreateOpts {
        size: Some(limit),
        ..CreateOpts::rw()
    };
    if !x.prjquota {
        // XFS without prjquota: sizes are refused, naming why.
        ensure!(!d.capabilities().quota);
        let e = d.create(&id("base"), None, &sized).await.unwrap_err();
        ensure!(
            matches!(e, Error::Unsupported { .. }) && e.to_string().contains("prjquota"),
            "{e}"
        );
        drop(d);
        // The refusal above is what this kernel can show. The limit itself
        // needs an XFS with quota support (CONFIG_XFS_QUOTA; without it the
        // kernel logs "quota support not available in this kernel" for
        // any prjquota/pquota mount, whatever the image size or mkfs
        // options). Debian's kernels have it: run this test under
        // conformance/vm/run. A missing condition, so it fails under CI.
        require(
            false,
            "the limit half: this kernel's XFS has no quota support (CONFIG_XFS_QUOTA \
             unset: mount -o prjquota fails); run under conformance/vm/run",
        );
        return Ok(());
    }
    ensure!(d.capabilities().quota, "{:?}", d.status().await?);
    d.create(&id("base"), None, &sized).await?;
    d.create(&id("child"), Some(&id("base")), &sized).await?;
    for l in ["base", "child"] {
        let m = d.mount(&id(l), &MountOpts::default()).await?;
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0u64;
        let err = {
            use std::io::Write;
            let mut f = fs::File::create(m.join("big"))?;
            loop {
                match f.write_all(&chunk).and_then(|()| f.sync_all()) {
                    Ok(()) => written += chunk.len() as u64,
                    Err(e) => break e,
                }
                if written > 4 * limit {
                    bail!("{l}: wrote {written} bytes past a {limit}-byte limit");
                }
            }
        };
        ensure!(
            matches!(errno_of(&err), libc::EDQUOT | libc::ENOSPC),
            "{l}: {err}"
        );
        ensure!(written <= limit, "{l}: {written} bytes written");
        d.unmount(&id(l)).await?;
    }
    d.remove(&id("child")).await?;
    d.remove(&id("base")).await?;
    d.cleanup().await?;
    drop(d);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_configured_mount_options() -> Result<()> {
    if !need_root() {
        return Ok(());
    }
    let root = Root::new();
    let d = root
        .open(OverlayOptions {
            mount_options: vec!["redirect_dir=off".into()],
            volatile: true,
            ..Default::default()
        })
        .await?;
    d.create(&id("base"), None, &CreateOpts::ro()).await?;
    d.create(&id("rw"), Some(&id("base")), &CreateOpts::rw())
        .await?;
    d.create(&id("ro"), Some(&id("base")), &CreateOpts::ro())
        .await?;
    let rw = d.mount_spec(&id("rw"), &MountOpts::default()).await?[0]
        .options
        .join(",");
    ensure!(
        rw.contains("index=off") && rw.contains("redirect_dir=off") && rw.contains("volatile"),
        "{rw}"
    );
    let ro = d.mount_spec(&id("ro"), &MountOpts::default()).await?[0]
        .options
        .join(",");
    ensure!(!ro.contains("volatile"), "{ro}");
    let m = d.mount(&id("rw"), &MountOpts::default()).await?;
    let entry = mountinfo::read()?
        .into_iter()
        .find(|e| e.mount_point == m)
        .context("rw layer not in the mount table")?;
    ensure!(
        entry.fs_type == "overlay"
            && entry
                .super_options
                .iter()
                .any(|o| o == "volatile" || o == "fsync=volatile"),
        "{entry:?}"
    );
    d.unmount(&id("rw")).await?;
    drop(d);

    // index=on shares copied-up hard links through the index dir, so the
    // upper dir is no longer the whole diff: the naive differ is used.
    let d = root
        .open(OverlayOptions {
            mount_options: vec!["index=on".into()],
            ..Default::default()
        })
        .await?;
    let (native, why) = d.native_diff();
    ensure!(!native && why.contains("index=on"), "{why}");
    ensure!(!d.capabilities().native_diff);
    Ok(())
}
