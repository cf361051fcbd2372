//! Kernel interfaces the overlay driver uses: the mount table, overlay
//! mounts through the new mount API or classic `mount(2)`, bind mounts,
//! detaching unmounts and filesystem type names.

use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
};
use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use strata_driver_api::{Error, IoContext, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem.
    pub dev: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,relatime`).
    pub mount_options: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source (a device, or the type for virtual filesystems).
    pub source: String,
    /// Per-superblock options (`rw,prjquota`).
    pub super_options: String,
}

fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < sep + 4 || sep < 6 {
            continue;
        }
        out.push(MountEntry {
            dev: f[2].to_string(),
            mount_point: PathBuf::from(OsStr::from_bytes(&unescape(f[4]))),
            mount_options: f[5].to_string(),
            fs_type: f[sep + 1].to_string(),
            source: String::from_utf8_lossy(&unescape(f[sep + 2])).into_owned(),
            super_options: f[sep + 3].to_string(),
        });
    }
    out
}

/// The mount table of this process's mount namespace.
pub fn mountinfo() -> Result<Vec<MountEntry>> {
    let p = "/proc/self/mountinfo";
    Ok(parse_mountinfo(&fs::read_to_string(p).ctx("read", p)?))
}

/// Whether something is mounted on `path` now.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(mountinfo()?.iter().any(|m| m.mount_point == path))
}

/// The mount entry of the filesystem holding `path` (matched by device
/// number, the last such mount wins).
pub fn mount_of(path: &Path) -> Result<Option<MountEntry>> {
    let st = nix::sys::stat::stat(path).ctx("stat", path)?;
    let dev = format!(
        "{}:{}",
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev)
    );
    let all = mountinfo()?;
    // Prefer the mount whose mount point is the longest prefix of `path`.
    let mut best: Option<MountEntry> = None;
    for m in all.into_iter().filter(|m| m.dev == dev) {
        if path.starts_with(&m.mount_point)
            && best
                .as_ref()
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    Ok(best)
}

/// Detaches whatever is mounted on `path` (`MNT_DETACH`), repeatedly while
/// mounts are stacked there. Idempotent: nothing mounted is success.
pub fn unmount_all(path: &Path) -> Result<()> {
    for _ in 0..64 {
        if !is_mount_point(path)? {
            return Ok(());
        }
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::nix("umount", path, e)),
        }
    }
    Err(Error::Driver {
        driver: "overlay".into(),
        msg: format!("{}: still mounted after 64 detaches", path.display()),
    })
}

/// Bind-mounts `src` on `target`, read-only when asked.
pub fn bind(src: &Path, target: &Path, read_only: bool) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx("mount --bind", target)?;
    if read_only {
        if let Err(e) = mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        ) {
            let _ = unmount_all(target);
            return Err(Error::nix("mount -o remount,bind,ro", target, e));
        }
    }
    Ok(())
}

/// Which kernel interface overlay mounts go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `fsopen`/`fsconfig` with one `lowerdir+` per lower (Linux 6.8+).
    New,
    /// `mount(2)` with one option string of at most a page.
    Classic,
}

/// An overlay mount to make.
#[derive(Clone, Debug)]
pub struct OverlayMount {
    /// Lower directories, nearest (topmost) first.
    pub lowers: Vec<PathBuf>,
    /// Upper and work directories, for a writable mount.
    pub upper: Option<(PathBuf, PathBuf)>,
    /// Further options (`index=off`, `volatile`, `key=value` or flags).
    pub options: Vec<String>,
    /// Mount read-only.
    pub read_only: bool,
    /// For classic mounts: a directory to pass paths relative to (the
    /// driver's home, so `l/<short>` lowers fit a page). The mount then runs
    /// in a thread with its own working directory (`unshare(CLONE_FS)`), so
    /// the process's working directory never changes.
    pub relative_to: Option<PathBuf>,
}

impl OverlayMount {
    /// The classic option string: `lowerdir=a:b,upperdir=..,workdir=..,opts`.
    /// Paths below [`OverlayMount::relative_to`] are given relative to it.
    pub fn data(&self) -> Vec<u8> {
        let rel = |p: &Path| -> Vec<u8> {
            match self.relative_to.as_deref().map(|b| p.strip_prefix(b)) {
                Some(Ok(r)) if !r.as_os_str().is_empty() => r.as_os_str().as_bytes().to_vec(),
                _ => p.as_os_str().as_bytes().to_vec(),
            }
        };
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut lower = b"lowerdir=".to_vec();
        for (i, l) in self.lowers.iter().enumerate() {
            if i > 0 {
                lower.push(b':');
            }
            lower.extend_from_slice(&rel(l));
        }
        parts.push(lower);
        if let Some((u, w)) = &self.upper {
            parts.push([&b"upperdir="[..], &rel(u)].concat());
            parts.push([&b"workdir="[..], &rel(w)].concat());
        }
        for o in &self.options {
            parts.push(o.as_bytes().to_vec());
        }
        parts.join(&b","[..])
    }

    /// Mounts on `target` with `api`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a classic option string does not fit
    /// one page or a path holds a character the classic syntax cannot carry;
    /// [`Error::Io`] naming the failed call (with the kernel's own message
    /// where the new API gave one).
    pub fn mount(&self, api: Api, target: &Path) -> Result<()> {
        match api {
            Api::New => self.mount_new(target),
            Api::Classic => self.mount_classic(target),
        }
    }

    fn mount_classic(&self, target: &Path) -> Result<()> {
        for p in self
            .lowers
            .iter()
            .chain(self.upper.iter().flat_map(|(u, w)| [u, w]))
        {
            let shown = match self.relative_to.as_deref().map(|b| p.strip_prefix(b)) {
                Some(Ok(r)) => r,
                _ => p.as_path(),
            };
            if shown
                .as_os_str()
                .as_bytes()
                .iter()
                .any(|c| b",:\\".contains(c))
            {
                return Err(Error::InvalidArgument {
                    what: format!("overlay path {}", p.display()),
                    why: "holds ',', ':' or '\\', which classic overlay mount options cannot carry"
                        .into(),
                });
            }
        }
        let data = self.data();
        let page = page_size();
        if data.len() >= page {
            return Err(Error::InvalidArgument {
                what: format!(
                    "overlay mount of {} lower layers on {}",
                    self.lowers.len(),
                    target.display()
                ),
                why: format!(
                    "the classic mount(2) option string is {} bytes, over the kernel's limit of \
                     one page ({page} bytes); this kernel has no `lowerdir+` (Linux 6.8+)",
                    data.len()
                ),
            });
        }
        let mut flags = nix::mount::MsFlags::empty();
        if self.read_only {
            flags |= nix::mount::MsFlags::MS_RDONLY;
        }
        let Some(dir) = self.relative_to.clone() else {
            return nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                flags,
                Some(OsStr::from_bytes(&data)),
            )
            .ctx("mount overlay", target);
        };
        let target = target.to_path_buf();
        std::thread::scope(|s| {
            s.spawn(|| {
                // This thread gets its own fs context: its chdir does not
                // move the process's working directory.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                    .ctx("unshare CLONE_FS", &dir)?;
                nix::unistd::chdir(&dir).ctx("chdir", &dir)?;
                nix::mount::mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    flags,
                    Some(OsStr::from_bytes(&data)),
                )
                .ctx("mount overlay", &target)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Driver {
                    driver: "overlay".into(),
                    msg: format!("mount {}: the mount thread panicked", target.display()),
                })
            })
        })
    }

    fn mount_new(&self, target: &Path) -> Result<()> {
        let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|e| Error::io("fsopen overlay", target, e.into()))?;
        let fail = |what: String, e: rustix::io::Errno| -> Error {
            let log = kernel_log(&fs);
            if !log.is_empty() {
                tracing::warn!(target = %target.display(), "overlay: {what}: {log}");
            }
            Error::Driver {
                driver: "overlay".into(),
                msg: format!(
                    "mount {}: {what}: {}{}",
                    target.display(),
                    std::io::Error::from(e),
                    if log.is_empty() {
                        String::new()
                    } else {
                        format!(" (kernel: {log})")
                    }
                ),
            }
        };
        fsconfig_set_string(&fs, "source", "overlay")
            .map_err(|e| fail("fsconfig source".into(), e))?;
        for l in &self.lowers {
            fsconfig_set_string(&fs, "lowerdir+", l.as_path())
                .map_err(|e| fail(format!("fsconfig lowerdir+={}", l.display()), e))?;
        }
        if let Some((u, w)) = &self.upper {
            fsconfig_set_string(&fs, "upperdir", u.as_path())
                .map_err(|e| fail(format!("fsconfig upperdir={}", u.display()), e))?;
            fsconfig_set_string(&fs, "workdir", w.as_path())
                .map_err(|e| fail(format!("fsconfig workdir={}", w.display()), e))?;
        }
        let mut attrs = MountAttrFlags::empty();
        if self.read_only {
            attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
        }
        for o in &self.options {
            let r = match o.split_once('=') {
                Some((k, v)) => fsconfig_set_string(&fs, k, v),
                None if o == "ro" => {
                    attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
                    Ok(())
                }
                None if o == "rw" => Ok(()),
                None => fsconfig_set_flag(&fs, o.as_str()),
            };
            r.map_err(|e| fail(format!("fsconfig {o}"), e))?;
        }
        fsconfig_create(&fs).map_err(|e| fail("fsconfig create".into(), e))?;
        let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
            .map_err(|e| fail("fsmount".into(), e))?;
        move_mount(
            mnt.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| Error::io("move_mount", target, e.into()))
    }
}

/// Messages the kernel left on an fs context (`e overlayfs: ...`).
fn kernel_log(fs: &OwnedFd) -> String {
    let mut msgs = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    msgs.join("; ")
}

/// Whether this kernel's overlay takes `lowerdir+` through `fsconfig`
/// (Linux 6.8+). `scratch` is an empty directory this probe may fill; a
/// superblock is built from two lowers (nothing is mounted).
///
/// Setting the key alone proves nothing: on kernels whose overlay still
/// parses options the legacy way (before 6.5), `fsconfig` accepts any key
/// and only the superblock creation refuses it.
pub fn probe_lowerdir_plus(scratch: &Path) -> bool {
    let (a, b) = (scratch.join("a"), scratch.join("b"));
    if fs::create_dir_all(&a).is_err() || fs::create_dir_all(&b).is_err() {
        return false;
    }
    let Ok(fs) = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
        return false;
    };
    fsconfig_set_string(&fs, "source", "overlay").is_ok()
        && fsconfig_set_string(&fs, "lowerdir+", a.as_path()).is_ok()
        && fsconfig_set_string(&fs, "lowerdir+", b.as_path()).is_ok()
        && fsconfig_create(&fs).is_ok()
}

/// The system page size.
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as usize)
        .unwrap_or(4096)
}

/// A readable name for a `statfs` filesystem magic number.
pub fn fs_name(magic: i64) -> String {
    let name = match magic {
        0xEF53 => "ext2/ext3/ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x794c_7630 => "overlay",
        0x6175_6673 => "aufs",
        0xf15f => "ecryptfs",
        0x2fc1_2fc1 => "zfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x4d44 => "vfat",
        0x0102_1997 => "9p",
        0xFF53_4D42 => "cifs",
        0x7366_7362 | 0x6265_6572 => "sysfs",
        0x9fa0 => "proc",
        0xf2f5_2010 => "f2fs",
        0x5346_414f => "afs",
        0x2011_BAB0 => "exfat",
        0x3153_464a => "jfs",
        0x5265_4973 => "reiserfs",
        _ => return format!("unknown filesystem (magic {magic:#x})"),
    };
    name.to_string()
}

/// Filesystem magic numbers an overlay upper dir cannot live on.
pub const REFUSED_MAGIC: [i64; 3] = [
    0x794c_7630, // overlay
    0x6175_6673, // aufs
    0xf15f,      // ecryptfs
];

/// `ramfs`: no xattrs at all, so no opaque directories.
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// `statfs` magic of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> Result<i64> {
    let st = nix::sys::statfs::statfs(path).ctx("statfs", path)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.filesystem_type().0 as i64)
}

/// `path`, or its nearest existing ancestor.
pub fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while fs::symlink_metadata(&p).is_err() {
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q.to_path_buf(),
            _ => return PathBuf::from("."),
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let t =
            "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 1 0:33 / /o rw - overlay overlay rw,lowerdir=/a:/b\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt x"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[0].super_options, "rw,errors=continue");
        assert_eq!(m[1].dev, "0:33");
        assert_eq!(m[1].fs_type, "overlay");
    }

    #[test]
    fn classic_data_joins_options() {
        let m = OverlayMount {
            lowers: vec!["/h/l/A".into(), "/h/l/B".into()],
            upper: Some(("/h/x/diff".into(), "/h/x/work".into())),
            options: vec!["index=off".into()],
            read_only: false,
            relative_to: None,
        };
        assert_eq!(
            m.data(),
            b"lowerdir=/h/l/A:/h/l/B,upperdir=/h/x/diff,workdir=/h/x/work,index=off".to_vec()
        );
        let m = OverlayMount {
            relative_to: Some("/h".into()),
            ..m
        };
        assert_eq!(
            m.data(),
            b"lowerdir=l/A:l/B,upperdir=x/diff,workdir=x/work,index=off".to_vec()
        );
    }
}
