//! The device-mapper and loop-device calls of the driver, over the
//! `devicemapper` crate's ioctl interface (`DM`), with no udev: device
//! nodes are the kernel's `devtmpfs` ones (`/dev/dm-<minor>`), or made here
//! with `mknod` when `/dev` has none.

use devicemapper::{DevId, Device, DmFlags, DmName, DmOptions, DM};
use nix::sys::stat::{major, minor, mknod, Mode, SFlag};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use strata_driver_api::{Error, Result};

use super::NAME;

/// A device-mapper error as the driver's error, naming the device.
pub fn dm_err(what: &str, dev: &str, e: impl std::fmt::Display) -> Error {
    Error::Driver {
        driver: NAME.into(),
        msg: format!("{what} {dev}: {e}"),
    }
}

fn name(n: &str) -> Result<&DmName> {
    DmName::new(n).map_err(|e| dm_err("device name", n, e))
}

/// Pool usage and state from the `thin-pool` status line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// The pool's transaction id.
    pub transaction: u64,
    /// Metadata blocks (4 KiB) used and total.
    pub meta_used: u64,
    /// Total metadata blocks.
    pub meta_total: u64,
    /// Data blocks used.
    pub data_used: u64,
    /// Total data blocks.
    pub data_total: u64,
    /// Bytes per data block.
    pub data_block_bytes: u64,
    /// The pool is read-only or out of space (`ro`, `out_of_data_space`,
    /// `fail`), as the kernel says; `None` when writable.
    pub mode: Option<&'static str>,
}

/// Bytes per metadata block of a thin pool.
pub const META_BLOCK_BYTES: u64 = 4096;

/// The process's handle on `/dev/mapper/control`.
pub struct Dm {
    dm: DM,
}

impl std::fmt::Debug for Dm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dm")
    }
}

fn opts() -> DmOptions {
    DmOptions::default()
}

impl Dm {
    /// Opens `/dev/mapper/control`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when it cannot be opened.
    pub fn open() -> Result<Dm> {
        DM::new()
            .map(|dm| Dm { dm })
            .map_err(|e| Error::Unsupported {
                driver: NAME.into(),
                why: format!("cannot open /dev/mapper/control: {e}"),
            })
    }

    /// The target types the kernel has loaded.
    pub fn targets(&self) -> Result<Vec<String>> {
        let v = self
            .dm
            .list_versions()
            .map_err(|e| dm_err("list targets", "", e))?;
        Ok(v.into_iter().map(|t| t.0).collect())
    }

    /// The device number and open count of `dev` if it is active.
    ///
    /// Mends what a process killed halfway through [`Dm::create`] or a
    /// suspend/resume pair left (every caller holds the driver's records
    /// lock, so no other strata process is inside such a window):
    /// - a device created with no live table (killed before its table was
    ///   loaded and resumed) reads as 0 bytes, and a mount of it fails with
    ///   EIO ("attempt to access beyond end of device ... limit=0"): it is
    ///   removed and reported as not active, so the caller makes it again;
    /// - a device left suspended (killed between the suspend and the resume
    ///   around a snapshot of an active origin) would hang all I/O: it is
    ///   resumed.
    pub fn active(&self, dev: &str) -> Result<Option<(Device, i32)>> {
        let id = DevId::Name(name(dev)?);
        let info = match self.dm.device_info(&id) {
            Ok(info) => info,
            Err(e) if is_enxio(&e) => return Ok(None),
            Err(e) => return Err(dm_err("device info", dev, e)),
        };
        let flags = info.flags();
        if !flags.contains(DmFlags::DM_ACTIVE_PRESENT) {
            if info.open_count() > 0 {
                return Err(dm_err(
                    "device",
                    dev,
                    "has no live table but is open; remove it by hand (dmsetup remove)",
                ));
            }
            tracing::info!(device = dev, "removing a device left without a table");
            self.remove(dev, false)?;
            return Ok(None);
        }
        if flags.contains(DmFlags::DM_SUSPEND) {
            tracing::info!(device = dev, "resuming a device left suspended");
            self.suspend(dev, false)?;
        }
        Ok(Some((info.device(), info.open_count())))
    }

    /// Creates device `dev` with one target line and activates it.
    /// Returns its device number. On failure nothing stays.
    pub fn create(&self, dev: &str, len: u64, target: &str, params: &str) -> Result<Device> {
        let n = name(dev)?;
        let info = self
            .dm
            .device_create(n, None, opts())
            .map_err(|e| dm_err("create device", dev, e))?;
        let table = [(0u64, len, target.to_string(), params.to_string())];
        let res = self
            .dm
            .table_load(&DevId::Name(n), &table, opts())
            .and_then(|_| self.dm.device_suspend(&DevId::Name(n), opts()));
        if let Err(e) = res {
            let _ = self.dm.device_remove(&DevId::Name(n), opts());
            return Err(dm_err(
                &format!("load table {target} {params} into"),
                dev,
                e,
            ));
        }
        Ok(info.device())
    }

    /// Removes device `dev`; with `deferred`, asks the kernel to remove it
    /// when its last opener closes it instead of failing when busy. A
    /// missing device is success.
    pub fn remove(&self, dev: &str, deferred: bool) -> Result<()> {
        let o = if deferred {
            opts().set_flags(DmFlags::DM_DEFERRED_REMOVE)
        } else {
            opts()
        };
        match self.dm.device_remove(&DevId::Name(name(dev)?), o) {
            Ok(_) => Ok(()),
            Err(e) if is_enxio(&e) => Ok(()),
            Err(e) => Err(dm_err("remove device", dev, e)),
        }
    }

    /// Suspends (flushing and freezing a filesystem on it) or resumes `dev`.
    pub fn suspend(&self, dev: &str, suspend: bool) -> Result<()> {
        let o = if suspend {
            opts().set_flags(DmFlags::DM_SUSPEND)
        } else {
            opts()
        };
        self.dm
            .device_suspend(&DevId::Name(name(dev)?), o)
            .map(|_| ())
            .map_err(|e| dm_err(if suspend { "suspend" } else { "resume" }, dev, e))
    }

    /// Sends `msg` to the pool device `pool`.
    pub fn message(&self, pool: &str, msg: &str) -> Result<()> {
        self.dm
            .target_msg(&DevId::Name(name(pool)?), None, msg)
            .map(|_| ())
            .map_err(|e| dm_err(&format!("message {msg:?} to pool"), pool, e))
    }

    /// Deletes thin device `thin` from `pool`'s metadata. Returns false when
    /// the pool holds no such id (never made, or already deleted: what a
    /// rollback after a kill meets). Any other failure is an error: EBUSY
    /// (a device of that id is still active, perhaps under another name)
    /// or a pool in read-only mode would otherwise leak the id's blocks.
    pub fn delete_thin(&self, pool: &str, thin: u32) -> Result<bool> {
        let msg = format!("delete {thin}");
        match self.dm.target_msg(&DevId::Name(name(pool)?), None, &msg) {
            Ok(_) => Ok(true),
            Err(e) if errno(&e) == Some(nix::errno::Errno::ENODATA as i32) => Ok(false),
            Err(e) => Err(dm_err(
                &format!("delete thin device {thin} (message {msg:?}) in pool"),
                pool,
                match errno(&e) {
                    Some(n) => format!("{} ({e})", std::io::Error::from_raw_os_error(n)),
                    None => e.to_string(),
                },
            )),
        }
    }

    /// The target type and parameters of `dev`'s table, or of its status
    /// (`table == false`).
    pub fn table(&self, dev: &str, table: bool) -> Result<(String, String)> {
        let o = if table {
            opts().set_flags(DmFlags::DM_STATUS_TABLE)
        } else {
            opts()
        };
        let (_, lines) = self
            .dm
            .table_status(&DevId::Name(name(dev)?), o)
            .map_err(|e| dm_err("table status", dev, e))?;
        let l = lines
            .into_iter()
            .next()
            .ok_or_else(|| dm_err("table status", dev, "no table"))?;
        Ok((l.2, l.3))
    }

    /// The pool's status.
    pub fn pool_status(&self, pool: &str) -> Result<PoolStatus> {
        let (ttype, table) = self.table(pool, true)?;
        if ttype != "thin-pool" {
            return Err(dm_err(
                "pool",
                pool,
                format!("is a {ttype} device, not thin-pool"),
            ));
        }
        let block_sectors: u64 = table
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| dm_err("pool table", pool, table.clone()))?;
        let (_, status) = self.table(pool, false)?;
        parse_pool_status(&status, block_sectors * 512)
            .ok_or_else(|| dm_err("pool status", pool, format!("cannot parse {status:?}")))
    }

    /// The names of the active devices that start with `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let v = self
            .dm
            .list_devices()
            .map_err(|e| dm_err("list devices", "", e))?;
        Ok(v.into_iter()
            .map(|d| d.0.to_string())
            .filter(|n| n.starts_with(prefix))
            .collect())
    }
}

/// Parses `<transaction> <used meta>/<total meta> <used data>/<total data>
/// <held root> ro|rw|out_of_data_space ...` (or `Fail`).
pub fn parse_pool_status(s: &str, data_block_bytes: u64) -> Option<PoolStatus> {
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.first() == Some(&"Fail") {
        return Some(PoolStatus {
            mode: Some("fail"),
            data_block_bytes,
            ..Default::default()
        });
    }
    let pair = |s: &str| -> Option<(u64, u64)> {
        let (a, b) = s.split_once('/')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (meta_used, meta_total) = pair(f.get(1)?)?;
    let (data_used, data_total) = pair(f.get(2)?)?;
    let mode = match f.get(4).copied() {
        Some("ro") => Some("ro"),
        Some("out_of_data_space") => Some("out_of_data_space"),
        _ => None,
    };
    Some(PoolStatus {
        transaction: f.first()?.parse().ok()?,
        meta_used,
        meta_total,
        data_used,
        data_total,
        data_block_bytes,
        mode,
    })
}

/// The errno a failed device-mapper ioctl returned, if `e` is one.
fn errno(e: &devicemapper::DmError) -> Option<i32> {
    match e {
        devicemapper::DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, err)) => {
            Some(**err as i32)
        }
        _ => None,
    }
}

fn is_enxio(e: &devicemapper::DmError) -> bool {
    errno(e) == Some(nix::errno::Errno::ENXIO as i32)
}

/// A block device node for `dev`: `/dev/dm-<minor>` when devtmpfs made it,
/// else one made with `mknod` in `nodes`.
pub fn node(dev: Device, nodes: &Path, dm_name: &str) -> Result<PathBuf> {
    let want = nix::sys::stat::makedev(dev.major.into(), dev.minor.into());
    let matches = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.file_type().is_block_device() && m.rdev() == want)
            .unwrap_or(false)
    };
    let devtmpfs = PathBuf::from(format!("/dev/dm-{}", dev.minor));
    if matches(&devtmpfs) {
        return Ok(devtmpfs);
    }
    let p = nodes.join(dm_name);
    if matches(&p) {
        return Ok(p);
    }
    let _ = std::fs::remove_file(&p);
    mknod(&p, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), want)
        .map_err(|e| Error::nix("mknod", &p, e))?;
    Ok(p)
}

/// `major:minor` of a block device node.
pub fn devno(path: &Path) -> Result<String> {
    let md = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok(format!("{}:{}", major(md.rdev()), minor(md.rdev())))
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::io("run", PathBuf::from(what), e))?;
    if !out.status.success() {
        return Err(Error::Driver {
            driver: NAME.into(),
            msg: format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Attaches `file` to a loop device (or finds the one it is attached to)
/// and returns the device's path.
pub fn loop_attach(file: &Path) -> Result<PathBuf> {
    let out = run(
        Command::new("losetup")
            .args(["--find", "--show", "--nooverlap"])
            .arg(file),
        &format!("losetup --find {}", file.display()),
    )?;
    Ok(PathBuf::from(out))
}

/// The loop devices `file` is attached to.
pub fn loops_of(file: &Path) -> Result<Vec<PathBuf>> {
    let out = run(
        Command::new("losetup").arg("-j").arg(file),
        &format!("losetup -j {}", file.display()),
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect())
}

/// Detaches loop device `dev`.
pub fn loop_detach(dev: &Path) -> Result<()> {
    run(
        Command::new("losetup").arg("-d").arg(dev),
        &format!("losetup -d {}", dev.display()),
    )
    .map(|_| ())
}

/// Makes a filesystem of type `fs` on `dev`.
pub fn mkfs(fs: &str, dev: &Path) -> Result<()> {
    let mut cmd = match fs {
        "xfs" => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f", "-K"]);
            c
        }
        _ => {
            // Lazy inode table and journal init: a thin device reads zeros
            // where nothing was written (and the pool zeroes new blocks),
            // so there is nothing to zero; it saves writing the whole
            // journal under emulated CPUs.
            let mut c = Command::new("mkfs.ext4");
            c.args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            ]);
            c
        }
    };
    run(cmd.arg(dev), &format!("mkfs.{fs} {}", dev.display())).map(|_| ())
}

/// Loads a kernel module with `modprobe` (quietly; failure is fine).
pub fn modprobe(module: &str) {
    let _ = Command::new("modprobe")
        .arg(module)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_status_lines() {
        let s = parse_pool_status(
            "3 14/4096 100/2048 - rw discard_passdown queue_if_no_space - 1024",
            65536,
        )
        .unwrap();
        assert_eq!(s.transaction, 3);
        assert_eq!((s.meta_used, s.meta_total), (14, 4096));
        assert_eq!((s.data_used, s.data_total), (100, 2048));
        assert_eq!(s.mode, None);
        let s = parse_pool_status("3 14/4096 2048/2048 - out_of_data_space", 65536).unwrap();
        assert_eq!(s.mode, Some("out_of_data_space"));
        assert_eq!(parse_pool_status("Fail", 1).unwrap().mode, Some("fail"));
        assert!(parse_pool_status("x", 1).is_none());
    }
}
