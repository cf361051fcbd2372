//! The one system call wrapper of the archive code that needs `unsafe`.
//!
//! `nix` 0.29's `openat` returns a bare `RawFd`; turning it into an owned
//! [`File`] (so it is closed on every path, including errors) needs
//! `OwnedFd::from_raw_fd`, which is `unsafe`. Everything else uses safe
//! wrappers.
#![allow(unsafe_code)]

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `openat(dir, name, flags | O_CLOEXEC, mode)` returning an owned file.
pub(super) fn openat(
    dir: &impl AsRawFd,
    name: &[u8],
    flags: OFlag,
    mode: u32,
) -> nix::Result<File> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    // SAFETY: `fd` was just returned by a successful openat, is open, and is
    // owned by nobody else; the OwnedFd takes sole ownership and closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}
