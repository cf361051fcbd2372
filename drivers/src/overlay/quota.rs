//! XFS project quotas for `--size`: a project id on the layer's `diff` dir
//! (inherited by everything made in it) and a block limit for that project
//! on the backing device.
//!
//! Unsafe because the two kernel calls have no safe wrapper in `nix` or
//! `rustix`: the `FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR` ioctls and
//! `quotactl(Q_XSETQLIM)`. Each call passes a pointer to a `#[repr(C)]`
//! struct of exactly the kernel's layout that lives across the call.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use strata_driver_api::{Error, IoContext, Result};

/// `struct fsxattr` of `<linux/fs.h>` (28 bytes).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `FS_XFLAG_PROJINHERIT`: new entries take the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

nix::ioctl_read!(fs_ioc_fsgetxattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_ioc_fssetxattr, b'X', 32, FsXattr);

/// `struct fs_disk_quota` of `<linux/dqblk_xfs.h>` (112 bytes).
#[repr(C)]
#[derive(Default)]
struct FsDiskQuota {
    d_version: i8,
    d_flags: i8,
    d_fieldmask: u16,
    d_id: u32,
    d_blk_hardlimit: u64,
    d_blk_softlimit: u64,
    d_ino_hardlimit: u64,
    d_ino_softlimit: u64,
    d_bcount: u64,
    d_icount: u64,
    d_itimer: i32,
    d_btimer: i32,
    d_iwarns: u16,
    d_bwarns: u16,
    d_itimer_hi: i8,
    d_btimer_hi: i8,
    d_rtbtimer_hi: i8,
    d_padding2: i8,
    d_rtb_hardlimit: u64,
    d_rtb_softlimit: u64,
    d_rtbcount: u64,
    d_rtbtimer: i32,
    d_rtbwarns: u16,
    d_padding3: i16,
    d_padding4: [u8; 8],
}

const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_BSOFT: u16 = 1 << 2;
const FS_DQ_BHARD: u16 = 1 << 3;
const Q_XSETQLIM: i32 = (('X' as i32) << 8) + 4;
const PRJQUOTA: i32 = 2;

fn qcmd(cmd: i32, kind: i32) -> i32 {
    (cmd << 8) | (kind & 0xff)
}

/// The project id of `dir`.
pub fn project(dir: &Path) -> Result<u32> {
    let f = File::open(dir).ctx("open", dir)?;
    let mut x = FsXattr::default();
    // SAFETY: `x` is a valid, writable `struct fsxattr` for the whole call
    // and `f` an open descriptor.
    unsafe { fs_ioc_fsgetxattr(f.as_raw_fd(), &mut x) }.ctx("ioctl FS_IOC_FSGETXATTR", dir)?;
    Ok(x.projid)
}

/// Sets project `id` on `dir` with inheritance for entries made below.
pub fn set_project(dir: &Path, id: u32) -> Result<()> {
    let f = File::open(dir).ctx("open", dir)?;
    let mut x = FsXattr::default();
    // SAFETY: as in `project`.
    unsafe { fs_ioc_fsgetxattr(f.as_raw_fd(), &mut x) }.ctx("ioctl FS_IOC_FSGETXATTR", dir)?;
    x.projid = id;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: `x` is a valid `struct fsxattr` read for the whole call.
    unsafe { fs_ioc_fssetxattr(f.as_raw_fd(), &x) }.ctx("ioctl FS_IOC_FSSETXATTR", dir)?;
    Ok(())
}

/// Limits project `id` on block device `device` to `bytes` (0 removes the
/// limit).
pub fn set_limit(device: &Path, id: u32, bytes: u64) -> Result<()> {
    let dev = CString::new(device.as_os_str().as_bytes()).map_err(|_| Error::InvalidArgument {
        what: format!("device {}", device.display()),
        why: "holds a NUL byte".into(),
    })?;
    let blocks = bytes.div_ceil(512);
    let mut q = FsDiskQuota {
        d_version: FS_DQUOT_VERSION,
        d_flags: FS_PROJ_QUOTA,
        d_fieldmask: FS_DQ_BSOFT | FS_DQ_BHARD,
        d_id: id,
        d_blk_hardlimit: blocks,
        d_blk_softlimit: blocks,
        ..Default::default()
    };
    // SAFETY: `dev` is a NUL-terminated string and `q` a valid
    // `struct fs_disk_quota`, both alive for the whole call.
    let r = unsafe {
        libc::quotactl(
            qcmd(Q_XSETQLIM, PRJQUOTA),
            dev.as_ptr(),
            id as libc::c_int,
            (&mut q as *mut FsDiskQuota).cast(),
        )
    };
    if r != 0 {
        return Err(Error::io(
            "quotactl Q_XSETQLIM",
            device,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_sizes() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<FsDiskQuota>(), 112);
    }
}
