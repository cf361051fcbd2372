//! The few mount-table facts the btrfs driver needs: which mounts sit under
//! a directory, which mount holds a path, bind and detach.
//!
//! `/proc/self/mountinfo` lines (see proc(5)):
//! ```plain
//! 36 35 0:31 /sub/vol /mnt/point rw,noatime shared:1 - btrfs /dev/loop0 rw,subvolid=256,subvol=/sub/vol
//! id par dev root     mount-pt   opts       optional -  type  source     super-options
//! ```
//! Paths escape space, tab, newline and backslash as `\ooo` octal.

use nix::mount::{MntFlags, MsFlags};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use strata_driver_api::{Error, IoContext, Result};

/// One mount of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The path inside the filesystem that is mounted (for btrfs: the
    /// subvolume's path from the top level, `/` for the top level).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (`btrfs`, `ext4`, ...).
    pub fs_type: String,
    /// The mount source (for btrfs: the device).
    pub source: String,
}

fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Parses mountinfo text.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 5 || r.len() < 2 {
                return None;
            }
            Some(MountEntry {
                root: unescape(l[3]),
                mount_point: unescape(l[4]),
                fs_type: r[0].to_string(),
                source: unescape(r[1]).to_string_lossy().into_owned(),
            })
        })
        .collect()
}

/// The mount table of this process, in mount order.
///
/// # Errors
/// [`Error::Io`] when `/proc/self/mountinfo` cannot be read.
pub fn table() -> Result<Vec<MountEntry>> {
    let p = "/proc/self/mountinfo";
    Ok(parse(&std::fs::read_to_string(p).ctx("read", p)?))
}

/// Whether something is mounted exactly at `path` (an absolute, canonical
/// path).
///
/// # Errors
/// As [`table`].
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(table()?.iter().any(|m| m.mount_point == path))
}

/// The mount that holds `path` (absolute, canonical): the last-mounted
/// entry with the longest mount point that is an ancestor of `path`.
///
/// # Errors
/// As [`table`]; [`Error::Driver`] when no mount holds it (cannot happen
/// for an absolute path on a sane system).
pub fn containing(path: &Path) -> Result<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for m in table()? {
        if path.starts_with(&m.mount_point)
            && best
                .as_ref()
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best.ok_or_else(|| Error::Driver {
        driver: "btrfs".into(),
        msg: format!("no mount holds {}", path.display()),
    })
}

/// Bind-mounts `source` at `target`, read-only when `read_only` (bind, then
/// a read-only remount of the bind).
///
/// # Errors
/// [`Error::Io`] from mount(2); a failed read-only remount detaches the
/// bind again before returning.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx("bind mount", target)?;
    if read_only {
        let r = nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .ctx("remount read-only", target);
        if let Err(e) = r {
            let _ = detach(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `target` with `MNT_DETACH`; succeeds when nothing is mounted
/// there (`EINVAL`, `ENOENT`).
///
/// # Errors
/// [`Error::Io`] from umount2(2).
pub fn detach(target: &Path) -> Result<()> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::nix("unmount", target, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_and_optional_fields() {
        let t = "36 35 0:31 /a\\040b /mnt/x\\134y rw shared:1 master:2 - btrfs /dev/loop0 rw,subvolid=256\n\
                 bad line\n";
        let v = parse(t);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].root, Path::new("/a b"));
        assert_eq!(v[0].mount_point, Path::new("/mnt/x\\y"));
        assert_eq!(v[0].fs_type, "btrfs");
        assert_eq!(v[0].source, "/dev/loop0");
    }
}
