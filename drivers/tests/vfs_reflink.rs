//! The vfs driver on a reflink-capable filesystem (a loop-mounted btrfs
//! image): `copy = "reflink"` opens, children are made by cloning, and the
//! status says so.
//!
//! Needs root, `mkfs.btrfs` and loop devices. Without them the test prints
//! why and is skipped; with `CI=true` it fails instead. A guard unmounts
//! everything and detaches the loop device even when the test fails.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use strata_driver_api::{CreateOpts, Driver, LayerId, MountOpts};
use strata_drivers::vfs::{CopyMode, Vfs, VfsOptions};
use strata_drivers::{fstype, mountinfo, mounts};

fn missing_condition() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (loop mounts)".into());
    }
    if Command::new("mkfs.btrfs")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("needs mkfs.btrfs (btrfs-progs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("needs loop devices (/dev/loop-control)".into());
    }
    None
}

fn can_run(test: &str) -> bool {
    match missing_condition() {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: {why}; CI=true, so this is a failure")
        }
        Some(why) => {
            {
                // Written past the test harness's capture, so the skip is seen.
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            }
            false
        }
    }
}

/// A btrfs image loop-mounted on a temporary directory; unmounted (which
/// frees the auto-cleared loop device) on drop.
struct Btrfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Btrfs {
    fn new() -> Result<Btrfs> {
        let dir = tempfile::tempdir()?;
        let base = std::fs::canonicalize(dir.path())?;
        let img = base.join("btrfs.img");
        std::fs::File::create(&img)?.set_len(256 << 20)?;
        let out = Command::new("mkfs.btrfs").arg("-q").arg(&img).output()?;
        anyhow::ensure!(out.status.success(), "mkfs.btrfs: {out:?}");
        let mnt = base.join("mnt");
        std::fs::create_dir(&mnt)?;
        let out = Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(&mnt)
            .output()
            .context("mount -o loop")?;
        anyhow::ensure!(out.status.success(), "mount -o loop: {out:?}");
        Ok(Btrfs { mnt, _dir: dir })
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = mounts::unmount_under(&self.mnt.join("root"));
        // A plain unmount, so the loop device is released at once.
        let _ = Command::new("umount").arg(&self.mnt).status();
        if mountinfo::is_mount_point(&self.mnt).unwrap_or(false) {
            let _ = mounts::unmount(&self.mnt);
        }
    }
}

#[tokio::test]
async fn reflink_children_on_btrfs() -> Result<()> {
    if !can_run("reflink_children_on_btrfs") {
        return Ok(());
    }
    let fs = Btrfs::new()?;
    let root = fs.mnt.join("root");
    assert_eq!(fstype::name(&fs.mnt)?, "btrfs");
    let d = Vfs::open(
        &root,
        VfsOptions {
            copy: CopyMode::Reflink,
        },
    )
    .await?;
    assert!(d.capabilities().reflink);
    let status = d.status().await?;
    assert!(
        status.contains(&("copy method".into(), "reflink".into())),
        "{status:?}"
    );
    assert!(
        status.contains(&("backing filesystem".into(), "btrfs".into())),
        "{status:?}"
    );
    let p = LayerId::new("p")?;
    let c = LayerId::new("c")?;
    d.create(&p, None, &CreateOpts::rw()).await?;
    let m = d.mount(&p, &MountOpts::default()).await?;
    std::fs::write(m.join("big"), vec![0x5au8; 8 << 20])?;
    d.unmount(&p).await?;
    d.create(&c, Some(&p), &CreateOpts::ro()).await?;
    let m = d.mount(&c, &MountOpts::default()).await?;
    assert_eq!(std::fs::read(m.join("big"))?, vec![0x5au8; 8 << 20]);
    d.unmount(&c).await?;
    d.remove(&c).await?;
    d.remove(&p).await?;
    d.cleanup().await?;
    Ok(())
}
