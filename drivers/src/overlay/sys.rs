//! Kernel interfaces the overlay driver uses: overlay mounts through the
//! new mount API or classic `mount(2)`, and the filesystems an upper dir
//! cannot live on. The mount table, bind mounts and unmounts are the
//! shared [`crate::mountinfo`] and [`crate::mounts`].

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

/// Filesystem magic numbers an overlay upper dir cannot live on (overlay,
/// aufs, ecryptfs).
pub const REFUSED_MAGIC: [u64; 3] = [0x794c_7630, 0x6175_6673, 0xf15f];

/// `ramfs`: no xattrs at all, so no opaque directories.
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;

#[cfg(test)]
mod tests {
    use super::*;

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
