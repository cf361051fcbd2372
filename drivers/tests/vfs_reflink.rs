//! The vfs driver on a reflink-capable filesystem (a loop-mounted btrfs
//! image): `copy = "reflink"` opens, children are made by cloning, and the
//! status says so; `copy = "copy"` and `"read-write"` make children whose
//! extents are not shared with the parent's (FIEMAP, through `filefrag`).
//!
//! Needs root, `mkfs.btrfs`, `filefrag` (e2fsprogs) and loop devices. Without them the test prints
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
    if Command::new("filefrag").arg("-V").output().is_err() {
        return Some("needs filefrag (e2fsprogs)".into());
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
        status.contains(&(
            "copy method".into(),
            "reflink (expected; no file copied yet)".into()
        )),
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
    let status = d.status().await?;
    assert!(
        status.contains(&("copy method".into(), "reflink".into())),
        "{status:?}"
    );
    d.remove(&c).await?;
    d.remove(&p).await?;
    d.cleanup().await?;
    Ok(())
}

/// One extent of a file as `filefrag -v` reports it (FIEMAP, after an
/// fsync of the file): physical block range and flags.
#[derive(Debug)]
struct Extent {
    physical: (u64, u64),
    shared: bool,
}

/// The extents of the file at `path`.
fn extents(path: &Path) -> Result<Vec<Extent>> {
    let out = Command::new("filefrag")
        .args(["-s", "-v"])
        .arg(path)
        .output()
        .context("filefrag")?;
    anyhow::ensure!(out.status.success(), "filefrag {}: {out:?}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        // "   0:        0..    2047:       3392..      5439:   2048:   last,shared,eof"
        let parts: Vec<&str> = line.split(':').collect();
        if parts.len() < 5 || parts[0].trim().parse::<u64>().is_err() {
            continue;
        }
        let (a, b) = parts[2]
            .split_once("..")
            .with_context(|| format!("filefrag line {line:?}"))?;
        found.push(Extent {
            physical: (a.trim().parse()?, b.trim().parse()?),
            shared: parts[parts.len() - 1]
                .split(',')
                .any(|f| f.trim() == "shared"),
        });
    }
    anyhow::ensure!(!found.is_empty(), "no extents in:\n{text}");
    Ok(found)
}

/// Makes a parent with an 8 MiB file and a child of it under `mode` on a
/// fresh btrfs; returns the extents of the parent's and the child's file
/// and the status' `copy method`.
async fn parent_and_child(mode: CopyMode) -> Result<(Vec<Extent>, Vec<Extent>, String)> {
    let fs = Btrfs::new()?;
    let d = Vfs::open(&fs.mnt.join("root"), VfsOptions { copy: mode }).await?;
    let p = LayerId::new("p")?;
    let c = LayerId::new("c")?;
    d.create(&p, None, &CreateOpts::rw()).await?;
    let m = d.mount(&p, &MountOpts::default()).await?;
    std::fs::write(m.join("big"), vec![0x5au8; 8 << 20])?;
    let parent = extents(&m.join("big"))?;
    d.unmount(&p).await?;
    d.create(&c, Some(&p), &CreateOpts::ro()).await?;
    let m = d.mount(&c, &MountOpts::default()).await?;
    assert_eq!(std::fs::read(m.join("big"))?, vec![0x5au8; 8 << 20]);
    let child = extents(&m.join("big"))?;
    d.unmount(&c).await?;
    let status = d.status().await?;
    let method = status
        .iter()
        .find(|(k, _)| k == "copy method")
        .map(|(_, v)| v.clone())
        .context("no copy method in the status")?;
    d.remove(&c).await?;
    d.remove(&p).await?;
    Ok((parent, child, method))
}

fn overlap(a: &[Extent], b: &[Extent]) -> bool {
    a.iter().any(|x| {
        b.iter()
            .any(|y| x.physical.0 <= y.physical.1 && y.physical.0 <= x.physical.1)
    })
}

#[tokio::test]
async fn copy_modes_share_or_not() -> Result<()> {
    if !can_run("copy_modes_share_or_not") {
        return Ok(());
    }
    // The control: auto clones, so the child's extents are the parent's.
    let (parent, child, method) = parent_and_child(CopyMode::Auto).await?;
    assert_eq!(method, "reflink");
    assert!(child.iter().all(|e| e.shared), "{child:?}");
    assert!(overlap(&parent, &child), "{parent:?} {child:?}");

    // "copy" and "read-write": new blocks, none shared.
    for mode in [CopyMode::Copy, CopyMode::ReadWrite] {
        let (parent, child, method) = parent_and_child(mode).await?;
        assert_eq!(method, "read-write", "{mode:?}");
        assert!(child.iter().all(|e| !e.shared), "{mode:?}: {child:?}");
        assert!(parent.iter().all(|e| !e.shared), "{mode:?}: {parent:?}");
        assert!(!overlap(&parent, &child), "{mode:?}: {parent:?} {child:?}");
    }

    // "copy_file_range" is reported as such (the kernel may clone with it).
    let (_, _, method) = parent_and_child(CopyMode::CopyFileRange).await?;
    assert_eq!(method, "copy_file_range");
    Ok(())
}
