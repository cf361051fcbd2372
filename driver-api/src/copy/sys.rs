//! The one system call of tree copy that no safe wrapper offers: the
//! `FICLONE` ioctl (neither `std` nor `nix` wraps it).
//!
//! Reason for `unsafe`: `ioctl(2)` is variadic and untyped; this module is
//! the only place that calls it, with a request whose argument is a plain
//! integer (a file descriptor), so no memory of ours is handed to the kernel.
#![allow(unsafe_code)]

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Makes `dst` share all of `src`'s data blocks (`ioctl(dst, FICLONE,
/// src)`): after success `dst` has `src`'s contents and size.
///
/// Precondition: `dst` is open for writing, `src` for reading, both regular
/// files.
///
/// # Errors
/// The errno: `EOPNOTSUPP` (the filesystem cannot reflink), `EXDEV` (not
/// the same filesystem), `EINVAL` (this pair of files cannot be cloned),
/// others from the filesystem (`ENOSPC`, `EIO`, ...).
pub(crate) fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: FICLONE takes its argument by value (the source descriptor);
    // the kernel reads no user memory for it. Both descriptors are borrowed,
    // so they stay open for the duration of the call.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    Errno::result(ret).map(drop)
}
