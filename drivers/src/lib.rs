//! The storage backends of strata, each behind a cargo feature, and the
//! [`registry`] that turns a configured name into a driver.
//!
//! Shared helpers for the backends:
//! - [`mountinfo`]: the mount table (`/proc/self/mountinfo`): is a path
//!   mounted, which mounts lie under a directory;
//! - [`mounts`]: bind mounts and detaching unmounts;
//! - [`fstype`]: the backing filesystem of a path, by `statfs` magic;
//! - [`fsutil`]: atomic file replacement, fsync/syncfs, no-replace rename,
//!   removal of layer trees.

#[cfg(feature = "aufs")]
pub mod aufs;
#[cfg(feature = "btrfs")]
pub mod btrfs;
#[cfg(feature = "devmapper")]
pub mod devmapper;
pub mod fstype;
pub mod fsutil;
pub mod mountinfo;
pub mod mounts;
#[cfg(feature = "overlay")]
pub mod overlay;
pub mod registry;
#[cfg(feature = "vfs")]
pub mod vfs;
