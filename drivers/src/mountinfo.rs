//! The mount table of this process's mount namespace, read from
//! `/proc/self/mountinfo`.
//!
//! Every driver that mounts (vfs, overlay, aufs, btrfs, devmapper) asks the
//! kernel's table, not its own bookkeeping, whether something is mounted:
//! the table survives crashes of the process and is never out of date.
//!
//! One line of the table (see `proc_pid_mountinfo(5)`):
//!
//! ```plain
//! 36 35 98:0 /mnt1 /mnt/parent\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)  (4)   (5)               (6)       (7)      (8) (9)    (10)      (11)
//! ```
//!
//! Paths (fields 4, 5 and 10) escape space, tab, newline and backslash as
//! three-digit octal (`\040`, `\011`, `\012`, `\134`); [`parse`] undoes the
//! escapes, so the paths it returns compare equal to real paths. The table
//! shows mount points with symlinks resolved: compare it with canonical
//! paths (`std::fs::canonicalize`).
//!
//! Mounts held in other mount namespaces do not appear here.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use strata_driver_api::{Error, IoContext, Result};

/// Where the table of the calling process's mount namespace is read from.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mount of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's unique id (field 1).
    pub id: u32,
    /// The id of the mount it sits on (field 2).
    pub parent_id: u32,
    /// The device (`major`, `minor`) of the mounted filesystem (field 3).
    pub dev: (u32, u32),
    /// The directory of the filesystem that is mounted here (field 4): `/`
    /// for a whole filesystem, a subdirectory for a bind mount of it.
    pub root: PathBuf,
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: PathBuf,
    /// Per-mount options (field 6): `rw`/`ro`, `nosuid`, `relatime`, ...
    pub mount_options: Vec<String>,
    /// Optional fields (7): `shared:N`, `master:N`, `propagate_from:N`,
    /// `unbindable`; empty for a private mount.
    pub optional: Vec<String>,
    /// The filesystem type (field 9), with its subtype when there is one
    /// (`fuse.sshfs`).
    pub fs_type: String,
    /// The mount source (field 10), unescaped: a device, a directory, or a
    /// free-form name.
    pub source: OsString,
    /// Per-superblock options (field 11).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether the mount is read-only at the mount level (`ro` in field 6).
    pub fn is_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    /// Whether the mount is private (no `shared:` or `master:` tag).
    pub fn is_private(&self) -> bool {
        !self
            .optional
            .iter()
            .any(|o| o.starts_with("shared:") || o.starts_with("master:"))
    }
}

fn bad_line(line_no: usize, why: &str) -> Error {
    Error::io(
        "parse mountinfo",
        MOUNTINFO,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line {line_no}: {why}"),
        ),
    )
}

/// Undoes the octal escapes (`\ooo`) of a mountinfo field. A backslash not
/// followed by three octal digits is kept as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = (u32::from(digits[0] - b'0') << 6)
                    | (u32::from(digits[1] - b'0') << 3)
                    | u32::from(digits[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn path_field(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn list_field(field: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(field)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn number<T: std::str::FromStr>(field: &[u8], line_no: usize, what: &str) -> Result<T> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_line(line_no, &format!("bad {what}")))
}

/// Parses the text of a mountinfo file. Empty lines are skipped.
///
/// # Errors
/// [`Error::Io`] (`InvalidData`, naming the line) for a line with missing
/// fields or a malformed number.
pub fn parse(text: &[u8]) -> Result<Vec<MountEntry>> {
    let mut entries = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == b"-")
            .ok_or_else(|| bad_line(line_no, "no '-' separator"))?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(bad_line(line_no, "missing fields"));
        }
        let dev = std::str::from_utf8(fields[2])
            .ok()
            .and_then(|s| s.split_once(':'))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| bad_line(line_no, "bad major:minor"))?;
        entries.push(MountEntry {
            id: number(fields[0], line_no, "mount id")?,
            parent_id: number(fields[1], line_no, "parent id")?,
            dev,
            root: path_field(fields[3]),
            mount_point: path_field(fields[4]),
            mount_options: list_field(fields[5]),
            optional: fields[6..sep]
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect(),
            fs_type: String::from_utf8_lossy(fields[sep + 1]).into_owned(),
            source: OsString::from_vec(unescape(fields[sep + 2])),
            super_options: fields
                .get(sep + 3)
                .map(|f| list_field(f))
                .unwrap_or_default(),
        });
    }
    Ok(entries)
}

/// Reads and parses the mount table of this process's mount namespace, in
/// the kernel's order (a mount after the mount it sits on).
///
/// # Errors
/// [`Error::Io`] when the table cannot be read or parsed.
pub fn read() -> Result<Vec<MountEntry>> {
    let text = std::fs::read(MOUNTINFO).ctx("read", MOUNTINFO)?;
    parse(&text)
}

/// Whether something is mounted exactly on `path` (a canonical path).
///
/// # Errors
/// As [`read`].
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(read()?.iter().any(|m| m.mount_point == path))
}

/// The mounts whose mount point is `dir` itself or lies below it, from
/// `table`, in the order to unmount them: deepest first, and, on one mount
/// point, the most recent (topmost) mount first. A mount stacked several
/// times on one point appears once per mount.
pub fn mounts_under<'a>(table: &'a [MountEntry], dir: &Path) -> Vec<&'a MountEntry> {
    let mut found: Vec<&MountEntry> = table
        .iter()
        .rev()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    // Stable: the reversed kernel order (topmost first) is kept among
    // mounts of equal depth.
    found.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    found
}

/// The mount points at or below `dir` (a canonical path) in this mount
/// namespace, in unmount order (see [`mounts_under`]).
///
/// # Errors
/// As [`read`].
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let table = read()?;
    Ok(mounts_under(&table, dir)
        .into_iter()
        .map(|m| m.mount_point.clone())
        .collect())
}

/// The mount that holds `path` (a canonical path): the last mount in the
/// table whose mount point is `path` or one of its ancestors.
///
/// # Errors
/// As [`read`].
pub fn mount_of(path: &Path) -> Result<Option<MountEntry>> {
    let table = read()?;
    Ok(table
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
36 27 98:0 /mnt1 /mnt/parent\\040dir ro,noatime master:1 propagate_from:2 - ext3 /dev/root rw,errors=continue
37 36 0:40 /a\\134b /mnt/parent\\040dir/x\\011y rw - fuse.sshfs host:/path\\040x rw
38 36 0:41 / /mnt/parent\\040dir rw - tmpfs tmpfs
";

    #[test]
    fn parses_fields_and_escapes() {
        let t = parse(SAMPLE).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[0].mount_point, Path::new("/proc"));
        assert!(t[0].is_private());
        assert!(!t[1].is_private());
        let m = &t[2];
        assert_eq!((m.id, m.parent_id, m.dev), (36, 27, (98, 0)));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.mount_point, Path::new("/mnt/parent dir"));
        assert_eq!(m.mount_options, ["ro", "noatime"]);
        assert!(m.is_read_only());
        assert_eq!(m.optional, ["master:1", "propagate_from:2"]);
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, ["rw", "errors=continue"]);
        let f = &t[3];
        assert_eq!(f.root, Path::new("/a\\b"));
        assert_eq!(f.mount_point, Path::new("/mnt/parent dir/x\ty"));
        assert_eq!(f.fs_type, "fuse.sshfs");
        assert_eq!(f.source, "host:/path x");
    }

    #[test]
    fn unescape_keeps_lone_backslashes() {
        assert_eq!(unescape(b"a\\040b"), b"a b");
        assert_eq!(unescape(b"a\\04"), b"a\\04");
        assert_eq!(unescape(b"a\\"), b"a\\");
        assert_eq!(unescape(b"\\9aa"), b"\\9aa");
        assert_eq!(unescape(b"\\777"), b"\\777");
        assert_eq!(unescape(b"\\134\\134"), b"\\\\");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse(b"1 2 0:1 / /x rw proc proc rw\n").is_err());
        assert!(parse(b"x 2 0:1 / /x rw - proc proc rw\n").is_err());
        assert!(parse(b"1 2 01 / /x rw - proc proc rw\n").is_err());
        assert!(parse(b"1 2 0:1 / - proc\n").is_err());
    }

    #[test]
    fn mounts_under_orders_deepest_and_topmost_first() {
        let t = parse(SAMPLE).unwrap();
        let under = mounts_under(&t, Path::new("/mnt/parent dir"));
        let ids: Vec<u32> = under.iter().map(|m| m.id).collect();
        assert_eq!(ids, [37, 38, 36]);
        assert!(mounts_under(&t, Path::new("/mnt/parent")).is_empty());
    }

    #[test]
    fn reads_own_table() {
        let t = read().unwrap();
        assert!(t.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
