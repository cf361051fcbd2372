//! The vfs driver against a real kernel: bind mounts, the mount table,
//! removal, sweeping and tree copies.
//!
//! Needs root (bind mounts, chown, `trusted.*` xattrs). Without root each
//! test prints why and is skipped; with `CI=true` it fails instead.
//! Every test works in its own temporary root and a guard unmounts
//! everything under it (and kills helper processes) even when it fails.

use anyhow::{ensure, Context, Result};
use std::io::{Read, Seek};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use strata_driver_api::{CreateOpts, Driver, Error, LayerId, MountOpts};
use strata_drivers::vfs::{CopyMode, Vfs, VfsOptions};
use strata_drivers::{fstype, mountinfo, mounts};

/// Whether the test can run; prints the reason when it cannot, and panics
/// under `CI=true`.
fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = format!("{test}: needs root (bind mounts, chown, trusted xattrs)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true, so this is a failure");
    }
    {
        // Written past the test harness's capture, so the skip is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
    }
    false
}

/// A temporary driver root; on drop kills helper processes and unmounts
/// everything under the root before the directory is deleted.
struct Fixture {
    root: PathBuf,
    helpers: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        Fixture {
            root,
            helpers: Vec::new(),
            _dir: dir,
        }
    }

    async fn open(&self) -> Result<Arc<dyn Driver>> {
        Ok(strata_drivers::registry::open("vfs", &self.root, &Default::default()).await?)
    }

    fn home(&self) -> PathBuf {
        self.root.join("vfs")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.helpers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for _ in 0..8 {
            match mountinfo::mount_points_under(&self.root) {
                Ok(points) if points.is_empty() => break,
                _ => {
                    let _ = mounts::unmount_under(&self.root);
                }
            }
        }
    }
}

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

fn mount_count(path: &Path) -> usize {
    mountinfo::read()
        .unwrap()
        .iter()
        .filter(|m| m.mount_point == path)
        .count()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn create_exists_list_parent_and_errors() -> Result<()> {
    if !have_root("create_exists_list_parent_and_errors") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    assert_eq!(d.name(), "vfs");
    assert!(d.list().await?.is_empty());
    d.create(&id("base"), None, &CreateOpts::ro()).await?;
    d.create(&id("c.1"), Some(&id("base")), &CreateOpts::rw())
        .await?;
    assert!(d.exists(&id("base")).await?);
    assert!(!d.exists(&id("nope")).await?);
    assert_eq!(d.list().await?, vec![id("base"), id("c.1")]);
    assert_eq!(d.parent(&id("base")).await?, None);
    assert_eq!(d.parent(&id("c.1")).await?, Some(id("base")));
    assert!(matches!(
        d.parent(&id("nope")).await,
        Err(Error::NotFound { .. })
    ));

    let md = std::fs::metadata(fx.home().join("dir/base"))?;
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    assert_eq!((md.uid(), md.gid()), (0, 0));

    let e = d
        .create(&id("base"), None, &CreateOpts::rw())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    let e = d
        .create(&id("x"), Some(&id("missing")), &CreateOpts::rw())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { id } if id == "missing"),
        "{e}"
    );
    let sized = CreateOpts {
        size: Some(1 << 20),
        ..CreateOpts::rw()
    };
    let e = d.create(&id("q"), None, &sized).await.unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // Failed creates leave nothing behind.
    assert_eq!(d.list().await?, vec![id("base"), id("c.1")]);
    assert_eq!(names_in(&fx.home().join("dir")), ["base", "c.1"]);
    let tmp = names_in(&fx.home().join("tmp"));
    assert!(tmp.iter().all(|n| n.ends_with(".lock")), "{tmp:?}");

    let status = d.status().await?;
    let get = |k: &str| status.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("layers").as_deref(), Some("2"));
    assert_eq!(get("mounted").as_deref(), Some("0"));
    assert_eq!(get("backing filesystem"), Some(fstype::name(&fx.root)?));
    let caps = d.capabilities();
    assert!(!caps.native_diff && !caps.quota && caps.mount_spec && caps.read_only_mounts);
    assert_eq!(caps.max_depth, usize::MAX);
    Ok(())
}

#[tokio::test]
async fn remove_refuses_children_and_mounted_layers() -> Result<()> {
    if !have_root("remove_refuses_children_and_mounted_layers") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("p"), None, &CreateOpts::ro()).await?;
    d.create(&id("c1"), Some(&id("p")), &CreateOpts::rw())
        .await?;
    d.create(&id("c2"), Some(&id("p")), &CreateOpts::rw())
        .await?;
    let e = d.remove(&id("p")).await.unwrap_err();
    match &e {
        Error::HasChildren { id, children } => {
            assert_eq!(id, "p");
            assert_eq!(children, "c1, c2");
        }
        other => panic!("expected HasChildren, got {other}"),
    }
    assert_eq!(d.list().await?, vec![id("c1"), id("c2"), id("p")]);
    assert!(fx.home().join("dir/p").is_dir());
    assert!(fx.home().join("meta/p").is_file());

    d.mount(&id("c1"), &MountOpts::default()).await?;
    let e = d.remove(&id("c1")).await.unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    assert!(d.exists(&id("c1")).await?);
    assert!(d.is_mounted(&id("c1")).await?);
    d.unmount(&id("c1")).await?;
    d.remove(&id("c1")).await?;
    d.remove(&id("c2")).await?;
    d.remove(&id("p")).await?;
    assert!(d.list().await?.is_empty());
    for sub in ["dir", "meta", "mnt"] {
        assert!(names_in(&fx.home().join(sub)).is_empty(), "{sub}");
    }
    let tmp = names_in(&fx.home().join("tmp"));
    assert!(tmp.iter().all(|n| n.ends_with(".lock")), "{tmp:?}");
    let e = d.remove(&id("p")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    Ok(())
}

#[tokio::test]
async fn read_only_mounts_refuse_writes_and_rw_mounts_write() -> Result<()> {
    if !have_root("read_only_mounts_refuse_writes_and_rw_mounts_write") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("ro"), None, &CreateOpts::ro()).await?;
    d.create(&id("rw"), Some(&id("ro")), &CreateOpts::rw())
        .await?;

    let m = d.mount(&id("ro"), &MountOpts::default()).await?;
    let e = std::fs::write(m.join("f"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    d.unmount(&id("ro")).await?;

    let m = d.mount(&id("rw"), &MountOpts::default()).await?;
    std::fs::write(m.join("f"), b"hello")?;
    assert_eq!(std::fs::read(fx.home().join("dir/rw/f"))?, b"hello");
    d.unmount(&id("rw")).await?;

    let ro = MountOpts {
        read_only: true,
        ..Default::default()
    };
    let m = d.mount(&id("rw"), &ro).await?;
    let e = std::fs::write(m.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    d.unmount(&id("rw")).await?;

    let opts = MountOpts {
        options: vec!["nosuid".into(), "nodev".into()],
        ..Default::default()
    };
    let m = d.mount(&id("rw"), &opts).await?;
    let entry = mountinfo::read()?
        .into_iter()
        .rfind(|e| e.mount_point == m)
        .context("mount in table")?;
    assert!(
        entry.mount_options.iter().any(|o| o == "nosuid"),
        "{entry:?}"
    );
    assert!(entry.is_private(), "{entry:?}");
    d.unmount(&id("rw")).await?;

    let bad = MountOpts {
        options: vec!["context=system_u:object_r:foo_t".into()],
        ..Default::default()
    };
    let e = d.mount(&id("rw"), &bad).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(!d.is_mounted(&id("rw")).await?);

    let spec = d.mount_spec(&id("ro"), &MountOpts::default()).await?;
    assert_eq!(spec.len(), 1);
    assert_eq!(spec[0].fs_type, "bind");
    assert_eq!(spec[0].source, fx.home().join("dir/ro"));
    assert_eq!(spec[0].options, ["rbind", "ro"]);
    let spec = d.mount_spec(&id("rw"), &MountOpts::default()).await?;
    assert_eq!(spec[0].options, ["rbind", "rw"]);
    Ok(())
}

#[tokio::test]
async fn mount_and_unmount_are_idempotent() -> Result<()> {
    if !have_root("mount_and_unmount_are_idempotent") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("l"), None, &CreateOpts::rw()).await?;
    assert!(!d.is_mounted(&id("l")).await?);
    let a = d.mount(&id("l"), &MountOpts::default()).await?;
    let b = d.mount(&id("l"), &MountOpts::default()).await?;
    assert_eq!(a, b);
    assert_eq!(a, fx.home().join("mnt/l"));
    assert_eq!(mount_count(&a), 1);
    assert!(d.is_mounted(&id("l")).await?);
    d.unmount(&id("l")).await?;
    d.unmount(&id("l")).await?;
    assert_eq!(mount_count(&a), 0);
    assert!(!a.exists(), "mount point removed");
    assert!(!d.is_mounted(&id("l")).await?);
    let e = d
        .mount(&id("nope"), &MountOpts::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let e = d.unmount(&id("nope")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    Ok(())
}

#[tokio::test]
async fn cleanup_unmounts_everything_and_is_idempotent() -> Result<()> {
    if !have_root("cleanup_unmounts_everything_and_is_idempotent") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    for name in ["a", "b", "c"] {
        d.create(&id(name), None, &CreateOpts::rw()).await?;
        d.mount(&id(name), &MountOpts::default()).await?;
    }
    let status = d.status().await?;
    assert!(
        status.contains(&("mounted".to_string(), "3".to_string())),
        "{status:?}"
    );
    d.cleanup().await?;
    assert!(mountinfo::mount_points_under(&fx.root)?.is_empty());
    assert!(names_in(&fx.home().join("mnt")).is_empty());
    d.cleanup().await?;
    // The layers are still there for a new instance.
    drop(d);
    let d = fx.open().await?;
    assert_eq!(d.list().await?, vec![id("a"), id("b"), id("c")]);
    assert!(!d.is_mounted(&id("a")).await?);
    Ok(())
}

#[tokio::test]
async fn removed_id_can_be_created_again() -> Result<()> {
    if !have_root("removed_id_can_be_created_again") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("p"), None, &CreateOpts::rw()).await?;
    let m = d.mount(&id("p"), &MountOpts::default()).await?;
    std::fs::write(m.join("old"), b"x")?;
    d.unmount(&id("p")).await?;
    d.remove(&id("p")).await?;
    assert!(!d.exists(&id("p")).await?);
    d.create(&id("p"), None, &CreateOpts::ro()).await?;
    assert!(d.exists(&id("p")).await?);
    assert!(names_in(&fx.home().join("dir/p")).is_empty());
    Ok(())
}

#[tokio::test]
async fn open_sweeps_interrupted_creates_and_removes() -> Result<()> {
    if !have_root("open_sweeps_interrupted_creates_and_removes") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("keep"), None, &CreateOpts::rw()).await?;
    drop(d);

    let home = fx.home();
    let tmp = home.join("tmp");
    // A dead instance: its lock file is not locked by anyone.
    std::fs::write(tmp.join("dead0.lock"), b"")?;
    let removing = tmp.join("dead0-1-removing-gone.1");
    std::fs::create_dir_all(removing.join("a/b"))?;
    std::fs::write(removing.join("a/b/f"), b"data")?;
    std::fs::set_permissions(removing.join("a"), std::fs::Permissions::from_mode(0o500))?;
    std::fs::create_dir_all(tmp.join("dead0-2-create-half"))?;
    std::fs::write(
        tmp.join("dead0-3-meta-gone.1"),
        b"parent=\nread_only=false\n",
    )?;
    std::fs::write(tmp.join("dead0-4-creating-orphan"), b"")?;
    // An instance that died without even its lock file.
    std::fs::create_dir(tmp.join("beef-9-removing-x"))?;
    // A tree without a record: an interrupted create or remove.
    std::fs::create_dir_all(home.join("dir/orphan/sub"))?;
    // Not written by the driver: left alone.
    std::fs::write(tmp.join("README"), b"x")?;
    std::fs::write(tmp.join(".probe"), b"x")?;

    // A second, live instance's work survives the sweep of a third.
    let live = fx.open().await?;
    let locks: Vec<String> = names_in(&tmp)
        .into_iter()
        .filter(|n| n.ends_with(".lock"))
        .collect();
    assert_eq!(locks.len(), 1, "{locks:?}");
    let live_token = locks[0].trim_end_matches(".lock").to_string();
    let live_stage = tmp.join(format!("{live_token}-7-create-busy"));
    std::fs::create_dir(&live_stage)?;
    std::fs::write(tmp.join(format!("{live_token}-8-creating-inflight")), b"")?;
    std::fs::create_dir(home.join("dir/inflight"))?;

    let d = fx.open().await?;
    let left: Vec<String> = names_in(&tmp)
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    let mut want = vec![
        ".probe".to_string(),
        "README".to_string(),
        format!("{live_token}-7-create-busy"),
        format!("{live_token}-8-creating-inflight"),
    ];
    want.sort();
    assert_eq!(left, want);
    assert!(!tmp.join("dead0.lock").exists());
    assert!(!home.join("dir/orphan").exists());
    assert!(
        home.join("dir/inflight").exists(),
        "a live create's tree is kept"
    );
    assert_eq!(d.list().await?, vec![id("keep")]);

    // Once the live instance is gone, its leftovers go at the next sweep.
    drop(live);
    d.cleanup().await?;
    assert!(!live_stage.exists());
    assert!(!home.join("dir/inflight").exists());
    assert_eq!(d.list().await?, vec![id("keep")]);
    assert_eq!(names_in(&home.join("dir")), ["keep"]);
    Ok(())
}

/// Spawns a process holding a private copy of this mount namespace, and
/// waits until it holds one with `must_see` mounted.
fn spawn_namespace_holder(fx: &mut Fixture, must_see: &Path) -> Result<u32> {
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "30"])
        .spawn()
        .context("spawn unshare (util-linux)")?;
    let pid = child.id();
    fx.helpers.push(child);
    let own = std::fs::read_link("/proc/self/ns/mnt")?;
    for _ in 0..500 {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if theirs.is_some_and(|t| t != own) {
            let table = mountinfo::parse(&std::fs::read(format!("/proc/{pid}/mountinfo"))?)?;
            ensure!(
                table.iter().any(|m| m.mount_point == must_see),
                "the new namespace does not hold {}",
                must_see.display()
            );
            return Ok(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    anyhow::bail!("unshare did not enter a new mount namespace")
}

#[tokio::test]
async fn mounts_held_in_other_namespaces_do_not_block() -> Result<()> {
    if !have_root("mounts_held_in_other_namespaces_do_not_block") {
        return Ok(());
    }
    let mut fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("l"), None, &CreateOpts::rw()).await?;
    let m = d.mount(&id("l"), &MountOpts::default()).await?;
    std::fs::write(m.join("f"), b"x")?;
    let pid = spawn_namespace_holder(&mut fx, &m)?;

    d.unmount(&id("l")).await?;
    assert!(!d.is_mounted(&id("l")).await?);
    assert!(!m.exists());
    let theirs = mountinfo::parse(&std::fs::read(format!("/proc/{pid}/mountinfo"))?)?;
    assert!(
        !theirs.iter().any(|e| e.mount_point == m),
        "removing the mount point drops the other namespace's copy"
    );
    d.remove(&id("l")).await?;
    assert!(!fx.home().join("dir/l").exists());

    // Read-only layer, holder spawned while mounted, then unmount+remove.
    d.create(&id("l2"), None, &CreateOpts::ro()).await?;
    let m2 = d.mount(&id("l2"), &MountOpts::default()).await?;
    spawn_namespace_holder(&mut fx, &m2)?;
    d.unmount(&id("l2")).await?;
    d.remove(&id("l2")).await?;
    assert!(d.list().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn child_sees_parent_files_with_metadata() -> Result<()> {
    if !have_root("child_sees_parent_files_with_metadata") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("p"), None, &CreateOpts::rw()).await?;
    let p = d.view(&id("p"), true).await?;
    let root = p.path();
    std::fs::create_dir(root.join("etc"))?;
    std::fs::write(root.join("etc/secret"), b"s3cret")?;
    std::os::unix::fs::chown(root.join("etc/secret"), Some(1234), Some(5678))?;
    std::fs::set_permissions(
        root.join("etc/secret"),
        std::fs::Permissions::from_mode(0o640),
    )?;
    std::fs::write(root.join("suid"), b"#!/bin/sh\n")?;
    std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o4755))?;
    std::os::unix::fs::symlink("etc/secret", root.join("link"))?;
    std::fs::hard_link(root.join("etc/secret"), root.join("hard"))?;
    xattr::set(root.join("etc/secret"), "user.note", b"hello")?;
    xattr::set(root.join("etc/secret"), "trusted.t", b"kept")?;
    std::fs::set_permissions(root.join("etc"), std::fs::Permissions::from_mode(0o1750))?;
    drop(p);

    d.create(&id("c"), Some(&id("p")), &CreateOpts::rw())
        .await?;
    let c = d.view(&id("c"), false).await?;
    let root = c.path();
    assert_eq!(std::fs::read(root.join("etc/secret"))?, b"s3cret");
    let md = std::fs::symlink_metadata(root.join("etc/secret"))?;
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
    assert_eq!(md.nlink(), 2);
    assert_eq!(
        md.ino(),
        std::fs::symlink_metadata(root.join("hard"))?.ino()
    );
    assert_eq!(
        std::fs::symlink_metadata(root.join("suid"))?.mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::symlink_metadata(root.join("etc"))?.mode() & 0o7777,
        0o1750
    );
    assert_eq!(
        std::fs::read_link(root.join("link"))?,
        Path::new("etc/secret")
    );
    assert_eq!(
        xattr::get(root.join("etc/secret"), "user.note")?.as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        xattr::get(root.join("etc/secret"), "trusted.t")?.as_deref(),
        Some(&b"kept"[..])
    );
    // A copy, not the same files.
    std::fs::write(fx.home().join("dir/c/etc/secret"), b"changed")?;
    assert_eq!(
        std::fs::read(fx.home().join("dir/p/etc/secret"))?,
        b"s3cret"
    );
    let changes = d.changes(&id("c"), Some(&id("p"))).await?;
    assert!(
        changes.iter().any(|ch| ch.path == Path::new("/etc/secret")),
        "{changes:?}"
    );
    Ok(())
}

#[tokio::test]
async fn diff_and_apply_round_trip() -> Result<()> {
    if !have_root("diff_and_apply_round_trip") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("src"), None, &CreateOpts::rw()).await?;
    let m = d.mount(&id("src"), &MountOpts::default()).await?;
    std::fs::create_dir(m.join("d"))?;
    std::fs::write(m.join("d/f"), vec![7u8; 100_000])?;
    std::fs::write(m.join("g"), b"g")?;
    d.unmount(&id("src")).await?;

    let tar_path = fx.root.join("layer.tar");
    let sink = std::fs::File::create(&tar_path)?;
    d.diff(&id("src"), None, Box::new(sink)).await?;
    let size = d.diff_size(&id("src"), None).await?;
    assert_eq!(size, 100_001);

    d.create(&id("dst"), None, &CreateOpts::ro()).await?;
    let mut f = std::fs::File::open(&tar_path)?;
    let applied = d
        .apply_diff(&id("dst"), None, Box::new(f.try_clone()?))
        .await?;
    assert_eq!(applied, size);
    assert_eq!(
        std::fs::read(fx.home().join("dir/dst/d/f"))?,
        vec![7u8; 100_000]
    );
    assert_eq!(
        d.changes(&id("dst"), None).await?,
        d.changes(&id("src"), None).await?
    );
    // The same tree gives the same tar.
    let again = fx.root.join("again.tar");
    d.diff(&id("dst"), None, Box::new(std::fs::File::create(&again)?))
        .await?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    f.rewind()?;
    f.read_to_end(&mut a)?;
    std::fs::File::open(&again)?.read_to_end(&mut b)?;
    assert!(a == b, "diff(apply(T)) == T");
    let e = d
        .apply_diff(&id("nope"), None, Box::new(std::io::empty()))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    Ok(())
}

#[tokio::test]
async fn reflink_option_is_refused_where_files_cannot_be_cloned() -> Result<()> {
    if !have_root("reflink_option_is_refused_where_files_cannot_be_cloned") {
        return Ok(());
    }
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.home())?;
    let fs = fstype::name(&fx.root)?;
    let clones = strata_driver_api::copy::probe_reflink(&fx.home());
    let opts = VfsOptions {
        copy: CopyMode::Reflink,
    };
    match Vfs::open(&fx.root, opts).await {
        Ok(v) => {
            assert!(
                clones,
                "opened with copy = reflink on {fs}, which cannot clone"
            );
            assert!(v.capabilities().reflink);
        }
        Err(e) => {
            assert!(!clones, "refused on {fs}, which clones: {e}");
            assert!(matches!(e, Error::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains(&fs), "names the filesystem: {e}");
        }
    }
    Ok(())
}

#[test]
fn options_parse_and_refuse_unknown_keys() {
    let o: VfsOptions = serde_json::from_str(r#"{"copy":"reflink"}"#).unwrap();
    assert_eq!(o.copy, CopyMode::Reflink);
    let o: VfsOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(o.copy, CopyMode::Auto);
    assert!(serde_json::from_str::<VfsOptions>(r#"{"copy":"fast"}"#).is_err());
    let e = serde_json::from_str::<VfsOptions>(r#"{"reflink":true}"#).unwrap_err();
    assert!(e.to_string().contains("reflink"), "{e}");
}

#[tokio::test]
async fn concurrent_creates_of_one_id_give_one_layer() -> Result<()> {
    if !have_root("concurrent_creates_of_one_id_give_one_layer") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("p"), None, &CreateOpts::rw()).await?;
    let m = d.mount(&id("p"), &MountOpts::default()).await?;
    for i in 0..200 {
        std::fs::write(m.join(format!("f{i}")), vec![1u8; 4096])?;
    }
    d.unmount(&id("p")).await?;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            d.create(&id("c"), Some(&id("p")), &CreateOpts::rw()).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await? {
            Ok(()) => ok += 1,
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(d.list().await?, vec![id("c"), id("p")]);
    assert_eq!(names_in(&fx.home().join("dir/c")).len(), 200);
    let tmp = names_in(&fx.home().join("tmp"));
    assert!(tmp.iter().all(|n| n.ends_with(".lock")), "{tmp:?}");
    Ok(())
}

#[tokio::test]
async fn remove_refuses_a_layer_with_a_mount_inside() -> Result<()> {
    if !have_root("remove_refuses_a_layer_with_a_mount_inside") {
        return Ok(());
    }
    let fx = Fixture::new();
    let d = fx.open().await?;
    d.create(&id("l"), None, &CreateOpts::rw()).await?;
    let inside = fx.home().join("dir/l/sub");
    std::fs::create_dir(&inside)?;
    let other = fx.root.join("other");
    std::fs::create_dir(&other)?;
    std::fs::write(other.join("precious"), b"x")?;
    mounts::bind(&other, &inside, &Default::default())?;
    let e = d.remove(&id("l")).await.unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    assert!(d.exists(&id("l")).await?);
    mounts::unmount(&inside)?;
    d.remove(&id("l")).await?;
    assert!(other.join("precious").exists());
    Ok(())
}
