//! The btrfs ioctls libbtrfsutil (and so the `btrfsutil` crate) does not
//! wrap: quota control, qgroup limits and destruction, waiting for a quota
//! rescan, and the filesystem's UUID.
//!
//! Unsafe is allowed here, and only here, because an ioctl is an FFI call
//! into the kernel with a pointer to a `#[repr(C)]` argument structure: no
//! safe wrapper for these requests exists in `nix` or `btrfsutil`. Each
//! structure below mirrors `<linux/btrfs.h>` field for field (kernel ABI,
//! stable), and each call passes a pointer to a live, fully initialised
//! value of the exact type the request number encodes.
//!
//! ```plain
//! BTRFS_IOC_FS_INFO            _IOR (0x94, 31, btrfs_ioctl_fs_info_args)    1024 bytes
//! BTRFS_IOC_QUOTA_CTL          _IOWR(0x94, 40, btrfs_ioctl_quota_ctl_args)  {cmd, status}
//! BTRFS_IOC_QGROUP_CREATE      _IOW (0x94, 42, btrfs_ioctl_qgroup_create_args) {create, qgroupid}
//! BTRFS_IOC_QGROUP_LIMIT       _IOR (0x94, 43, btrfs_ioctl_qgroup_limit_args)  {qgroupid, lim}
//! BTRFS_IOC_QUOTA_RESCAN_WAIT  _IO  (0x94, 46)
//! ```
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use strata_driver_api::{Error, IoContext, Result};

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
/// `btrfs_qgroup_limit.flags`: limit the referenced bytes.
pub const QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
/// `btrfs_qgroup_limit.flags`: limit the exclusive bytes.
pub const QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;
/// The value that, with its flag set, clears a limit (the kernel's
/// `CLEAR_VALUE`).
const CLEAR_VALUE: u64 = u64::MAX;

#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}
const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

nix::ioctl_read!(ioc_fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);
nix::ioctl_readwrite!(ioc_quota_ctl, BTRFS_IOCTL_MAGIC, 40, QuotaCtlArgs);
nix::ioctl_write_ptr!(ioc_qgroup_create, BTRFS_IOCTL_MAGIC, 42, QgroupCreateArgs);
nix::ioctl_read!(ioc_qgroup_limit, BTRFS_IOCTL_MAGIC, 43, QgroupLimitArgs);
nix::ioctl_none!(ioc_quota_rescan_wait, BTRFS_IOCTL_MAGIC, 46);

fn open_dir(path: &Path) -> Result<File> {
    File::open(path).ctx("open", path)
}

/// The filesystem UUID (`fsid`) of the btrfs filesystem holding `path`, in
/// the hyphenated lower-case form `/sys/fs/btrfs/<fsid>` uses.
///
/// # Errors
/// [`Error::Io`] when `path` cannot be opened or is not on btrfs (`ENOTTY`).
pub fn fsid(path: &Path) -> Result<String> {
    let f = open_dir(path)?;
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        nodesize: 0,
        sectorsize: 0,
        clone_alignment: 0,
        csum_type: 0,
        csum_size: 0,
        flags: 0,
        generation: 0,
        metadata_uuid: [0; 16],
        reserved: [0; 944],
    };
    // SAFETY: `f` is an open fd; `args` is a live, initialised FsInfoArgs,
    // the type BTRFS_IOC_FS_INFO's number encodes, written by the kernel.
    unsafe { ioc_fs_info(f.as_raw_fd(), &mut args) }.ctx("BTRFS_IOC_FS_INFO", path)?;
    let h: String = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Enables quotas (qgroups) on the filesystem holding `path`. Enabling
/// quotas that are already on is accepted by the kernel (no-op).
///
/// # Errors
/// [`Error::Io`] from the ioctl (`EPERM` without CAP_SYS_ADMIN).
pub fn quota_enable(path: &Path) -> Result<()> {
    let f = open_dir(path)?;
    let mut args = QuotaCtlArgs {
        cmd: BTRFS_QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: `f` is an open fd; `args` is a live QuotaCtlArgs, the type the
    // request encodes.
    unsafe { ioc_quota_ctl(f.as_raw_fd(), &mut args) }.ctx("BTRFS_IOC_QUOTA_CTL enable", path)?;
    Ok(())
}

/// Waits until a running quota rescan of the filesystem holding `path` has
/// finished (returns at once when none runs).
///
/// # Errors
/// [`Error::Io`] from the ioctl.
pub fn quota_rescan_wait(path: &Path) -> Result<()> {
    let f = open_dir(path)?;
    // SAFETY: `f` is an open fd; the request takes no argument.
    unsafe { ioc_quota_rescan_wait(f.as_raw_fd()) }.ctx("BTRFS_IOC_QUOTA_RESCAN_WAIT", path)?;
    Ok(())
}

/// Sets the limits of qgroup `qgroupid` on the filesystem holding `path`:
/// `Some(bytes)` limits, `None` clears, for the referenced and the exclusive
/// bytes separately.
///
/// # Errors
/// [`Error::Io`]: `ENOTCONN` when quotas are off, `ENOENT` for a qgroup that
/// does not exist.
pub fn qgroup_limit(
    path: &Path,
    qgroupid: u64,
    max_rfer: Option<u64>,
    max_excl: Option<u64>,
) -> Result<()> {
    let f = open_dir(path)?;
    let mut args = QgroupLimitArgs {
        qgroupid,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER | QGROUP_LIMIT_MAX_EXCL,
            max_rfer: max_rfer.unwrap_or(CLEAR_VALUE),
            max_excl: max_excl.unwrap_or(CLEAR_VALUE),
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: `f` is an open fd; `args` is a live QgroupLimitArgs, the type
    // the request encodes.
    unsafe { ioc_qgroup_limit(f.as_raw_fd(), &mut args) }.ctx("BTRFS_IOC_QGROUP_LIMIT", path)?;
    Ok(())
}

/// Destroys qgroup `qgroupid` on the filesystem holding `path`.
///
/// # Errors
/// [`Error::Io`]: `ENOENT` (no such qgroup), `EBUSY` (the kernel still
/// accounts a subvolume to it: newer kernels refuse until the cleaner has
/// dropped a deleted subvolume, then remove the qgroup themselves),
/// `ENOTCONN` (quotas off).
pub fn qgroup_destroy(path: &Path, qgroupid: u64) -> Result<()> {
    let f = open_dir(path)?;
    let args = QgroupCreateArgs {
        create: 0,
        qgroupid,
    };
    // SAFETY: `f` is an open fd; `args` is a live QgroupCreateArgs, the type
    // the request encodes, only read by the kernel.
    unsafe { ioc_qgroup_create(f.as_raw_fd(), &args) }
        .ctx("BTRFS_IOC_QGROUP_CREATE destroy", path)?;
    Ok(())
}

/// Whether an error from this module is the given errno.
pub fn is_errno(e: &Error, errno: nix::errno::Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}
