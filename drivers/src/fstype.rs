//! Which filesystem a path lives on, from `statfs(2)`'s `f_type`.
//!
//! Drivers use it to decide what they can do (btrfs snapshots, reflinks on
//! xfs, overlay's refusal of some upper filesystems) and to report the
//! backing filesystem in their status.

use nix::sys::statfs::statfs;
use std::path::{Path, PathBuf};
use strata_driver_api::{IoContext, Result};

/// Magic numbers (`f_type`, see `linux/magic.h` and `statfs(2)`) and the
/// names strata reports for them.
///
/// ext2, ext3 and ext4 share one magic number and are all reported as
/// `ext4`.
pub const KNOWN: &[(u32, &str)] = &[
    (0x9123_683e, "btrfs"),
    (0x5846_5342, "xfs"),
    (0x0000_ef53, "ext4"),
    (0x0102_1994, "tmpfs"),
    (0x794c_7630, "overlay"),
    (0x6175_6673, "aufs"),
    (0x2fc1_2fc1, "zfs"),
    (0xca45_1a4e, "bcachefs"),
    (0xf2f5_2010, "f2fs"),
    (0xe0f5_e1e2, "erofs"),
    (0x7371_7368, "squashfs"),
    (0x6573_5546, "fuse"),
    (0x0000_6969, "nfs"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x0000_9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x8584_58f6, "ramfs"),
    (0x5265_4973, "reiserfs"),
    (0x0000_4d44, "vfat"),
    (0x5346_544e, "ntfs"),
    (0x0000_9660, "iso9660"),
    (0x0100_2f2f, "v9fs"),
    (0x00c3_6400, "ceph"),
    (0x0000_1373, "devfs"),
    (0x0000_f15f, "ecryptfs"),
];

/// The name of the filesystem with magic number `magic`, if strata knows
/// it.
pub fn name_of_magic(magic: u64) -> Option<&'static str> {
    // Magic numbers are 32-bit; `f_type` is signed on some platforms, so
    // only the low 32 bits are compared.
    let magic = (magic & 0xffff_ffff) as u32;
    KNOWN.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n)
}

/// The `f_type` magic number of the filesystem holding `path` (symlinks
/// followed).
///
/// # Errors
/// [`strata_driver_api::Error::Io`] from `statfs` (for example `ENOENT`).
pub fn magic(path: &Path) -> Result<u64> {
    let st = statfs(path).ctx("statfs", path)?;
    // `f_type`'s C type differs between platforms (signed or unsigned, 32
    // or 64 bits); the magic numbers all fit in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let raw = st.filesystem_type().0 as i64 as u64;
    Ok(raw & 0xffff_ffff)
}

/// The name of the filesystem holding `path`: a name from [`KNOWN`], or
/// `unknown (0x<magic>)`.
///
/// # Errors
/// As [`magic`].
pub fn name(path: &Path) -> Result<String> {
    let m = magic(path)?;
    Ok(match name_of_magic(m) {
        Some(n) => n.to_string(),
        None => format!("unknown ({m:#x})"),
    })
}

/// `path` if it exists, else its nearest existing ancestor (at worst `/`
/// or, for a relative path, `.`): where a path that is yet to be created
/// would live, for probing its filesystem.
pub fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if std::fs::symlink_metadata(p).is_ok() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => {
                return if path.is_absolute() {
                    PathBuf::from("/")
                } else {
                    PathBuf::from(".")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_magics() {
        assert_eq!(name_of_magic(0x9123_683e), Some("btrfs"));
        assert_eq!(name_of_magic(0xffff_ffff_9123_683e), Some("btrfs"));
        assert_eq!(name_of_magic(0xef53), Some("ext4"));
        assert_eq!(name_of_magic(0x1234), None);
    }

    #[test]
    fn names_proc() {
        assert_eq!(name(Path::new("/proc")).unwrap(), "proc");
        assert!(name(Path::new("/nonexistent/x/y")).is_err());
    }

    #[test]
    fn nearest_existing_walks_up() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("a/b/c");
        assert_eq!(nearest_existing(&missing), d.path());
        assert_eq!(nearest_existing(d.path()), d.path());
        assert_eq!(
            nearest_existing(Path::new("/no-such-dir-strata/x")),
            Path::new("/")
        );
    }
}
