//! Bind mounts and unmounts, shared by the drivers.
//!
//! ```plain
//! bind(src, target, &BindOptions)   mount --bind src target
//!                                   mount --make-private target
//!                                   mount -o remount,bind,ro,... target   (when asked)
//! unmount(target)                   umount -l target, repeated while something is mounted there
//! unmount_under(dir)                the same for every mount at or below dir, deepest first
//! ```
//!
//! Unmounts detach (`MNT_DETACH`): a mount point that a process still uses
//! is detached at once and released when it lets go, and a mount held in
//! another mount namespace does not make the unmount fail. Callers that
//! then remove the mount-point directory make newer kernels drop the copies
//! of the mount held in other namespaces too.

use crate::mountinfo;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use std::path::Path;
use strata_driver_api::{Error, IoContext, Result};

/// Checks mount options that a caller ([`strata_driver_api::MountOpts`])
/// or the configuration adds to a driver's own kernel mount: each must be
/// one option (no `,` and no NUL byte, which would smuggle in more) and
/// must not set one of `reserved`, the keys with which the driver names
/// what the mount is made of (`lowerdir`, `upperdir`, `subvol`, `br`...).
/// A key is what comes before `=` or `:`, without a trailing `+`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the driver and the option.
pub fn check_extra_options<S: AsRef<str>>(
    driver: &str,
    options: &[S],
    reserved: &[&str],
) -> Result<()> {
    for o in options {
        let o = o.as_ref();
        let key = o
            .split(['=', ':'])
            .next()
            .unwrap_or("")
            .trim_end_matches('+');
        let why = if o.contains(',') || o.contains('\0') {
            "holds ',' or a NUL byte: give each option on its own"
        } else if reserved.contains(&key) {
            "sets what the mount is made of, which only the driver decides"
        } else {
            continue;
        };
        return Err(Error::InvalidArgument {
            what: format!("{driver} mount option {o:?}"),
            why: why.into(),
        });
    }
    Ok(())
}

/// The per-mount flags of a bind mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Bind the sub-mounts of `src` too (`rbind`).
    pub recursive: bool,
    /// Refuse writes (`EROFS`).
    pub read_only: bool,
    /// Ignore setuid/setgid bits and file capabilities.
    pub nosuid: bool,
    /// Refuse to open device nodes.
    pub nodev: bool,
    /// Refuse to execute files.
    pub noexec: bool,
}

impl BindOptions {
    /// Parses mount options as `mount -o` takes them for a bind mount:
    /// `ro`, `rw`, `nosuid`, `suid`, `nodev`, `dev`, `noexec`, `exec`,
    /// `bind`, `rbind` (later options win). Starts from `self`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming an option a bind mount cannot take
    /// (filesystem options such as `context=` or `size=`).
    pub fn with_options<S: AsRef<str>>(mut self, options: &[S]) -> Result<Self> {
        for o in options {
            match o.as_ref() {
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "nosuid" => self.nosuid = true,
                "suid" => self.nosuid = false,
                "nodev" => self.nodev = true,
                "dev" => self.nodev = false,
                "noexec" => self.noexec = true,
                "exec" => self.noexec = false,
                "bind" => self.recursive = false,
                "rbind" => self.recursive = true,
                other => {
                    return Err(Error::InvalidArgument {
                        what: format!("mount option {other:?}"),
                        why: "a bind mount takes only ro, rw, nosuid, suid, nodev, dev, \
                              noexec, exec, bind and rbind"
                            .into(),
                    })
                }
            }
        }
        Ok(self)
    }

    /// The options as `mount -o` writes them, `rbind`/`bind` first, then
    /// `ro`/`rw`, then the restrictions that are set.
    pub fn to_options(&self) -> Vec<String> {
        let mut out = vec![
            if self.recursive { "rbind" } else { "bind" }.to_string(),
            if self.read_only { "ro" } else { "rw" }.to_string(),
        ];
        for (set, name) in [
            (self.nosuid, "nosuid"),
            (self.nodev, "nodev"),
            (self.noexec, "noexec"),
        ] {
            if set {
                out.push(name.to_string());
            }
        }
        out
    }

    fn restricts(&self) -> bool {
        self.read_only || self.nosuid || self.nodev || self.noexec
    }
}

/// Bind-mounts `src` on `target` (both existing directories), makes the new
/// mount private (so later mounts under it, and its unmount, do not
/// propagate), then remounts it with the restrictions of `opts`. Flags the
/// new mount inherited from the mount of `src` (`nosuid`, `nodev`,
/// `noexec`, atime modes) are kept.
///
/// Not idempotent: a second call stacks a second mount (callers check
/// [`mountinfo::is_mount_point`] first). On failure nothing stays mounted.
///
/// # Errors
/// [`Error::Io`] naming the step (`bind mount`, `make private`,
/// `remount`) and the path.
pub fn bind(src: &Path, target: &Path, opts: &BindOptions) -> Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if opts.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(src), target, None::<&str>, flags, None::<&str>).ctx("bind mount", target)?;
    let rest = (|| {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .ctx("make private", target)?;
        if opts.restricts() {
            remount(target, opts)?;
        }
        Ok(())
    })();
    if let Err(e) = rest {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(e);
    }
    tracing::debug!(src = %src.display(), target = %target.display(), ?opts, "bind mounted");
    Ok(())
}

/// Remounts the bind mount at `target` with the restrictions of `opts`,
/// keeping the per-mount flags it has (a remount resets the flags it is
/// not given, and the kernel refuses to clear locked ones).
///
/// # Errors
/// [`Error::Io`] from `statvfs` or the remount.
pub fn remount(target: &Path, opts: &BindOptions) -> Result<()> {
    let have = statvfs(target).ctx("statvfs", target)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    for (has, flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(has) {
            flags |= flag;
        }
    }
    for (want, flag) in [
        (opts.read_only, MsFlags::MS_RDONLY),
        (opts.nosuid, MsFlags::MS_NOSUID),
        (opts.nodev, MsFlags::MS_NODEV),
        (opts.noexec, MsFlags::MS_NOEXEC),
    ] {
        if want {
            flags |= flag;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).ctx("remount", target)
}

/// Detaches one mount from `target`. Returns whether something was
/// unmounted: `false` when nothing is mounted there (`EINVAL`) or `target`
/// does not exist.
///
/// # Errors
/// [`Error::Io`] for any other failure (`EPERM`, ...).
pub fn detach(target: &Path) -> Result<bool> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) => {
            tracing::debug!(target = %target.display(), "unmounted");
            Ok(true)
        }
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::nix("unmount", target, e)),
    }
}

/// The most mounts [`unmount`] removes from one mount point.
pub const MAX_STACKED: usize = 64;

/// Unmounts everything mounted on `target` (a canonical path), stacked
/// mounts included, as the mount table shows them. Idempotent: succeeds
/// when nothing is mounted there.
///
/// # Errors
/// [`Error::Io`] from the mount table or an unmount; `EBUSY` when more
/// than [`MAX_STACKED`] mounts would not go away.
pub fn unmount(target: &Path) -> Result<()> {
    for _ in 0..MAX_STACKED {
        if !mountinfo::is_mount_point(target)? {
            return Ok(());
        }
        if !detach(target)? {
            // The table says mounted but the kernel says not: a race with
            // another unmount. Look again.
            continue;
        }
    }
    if mountinfo::is_mount_point(target)? {
        return Err(Error::nix("unmount", target, Errno::EBUSY));
    }
    Ok(())
}

/// Unmounts every mount at or below `dir` (a canonical path), deepest
/// first. All are tried; returns how many were unmounted, or the first
/// error. Idempotent.
///
/// # Errors
/// [`Error::Io`] from the mount table or the first failed unmount.
pub fn unmount_under(dir: &Path) -> Result<usize> {
    let mut count = 0;
    let mut first_err = None;
    for point in mountinfo::mount_points_under(dir)? {
        match detach(&point) {
            Ok(true) => count += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "unmount failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bind_options() {
        let o = BindOptions::default()
            .with_options(&["ro", "nosuid", "rbind", "nodev", "dev"])
            .unwrap();
        assert_eq!(
            o,
            BindOptions {
                recursive: true,
                read_only: true,
                nosuid: true,
                nodev: false,
                noexec: false
            }
        );
        assert_eq!(o.to_options(), ["rbind", "ro", "nosuid"]);
        let e = BindOptions::default()
            .with_options(&["context=foo"])
            .unwrap_err();
        assert!(e.to_string().contains("context=foo"), "{e}");
    }

    #[test]
    fn extra_options_cannot_change_what_is_mounted() {
        let reserved = ["lowerdir", "upperdir", "workdir", "datadir"];
        for ok in [
            "metacopy=off",
            "redirect_dir=off",
            "context=\"x\"",
            "index=on",
        ] {
            check_extra_options("overlay", &[ok], &reserved).unwrap();
        }
        for bad in [
            "lowerdir=/etc",
            "lowerdir+=/",
            "upperdir=/etc",
            "workdir=/tmp",
            "datadir+=/",
            "metacopy=off,upperdir=/etc",
            "index=off\0upperdir=/",
        ] {
            let e = check_extra_options("overlay", &[bad], &reserved).unwrap_err();
            assert!(e.to_string().contains("overlay mount option"), "{bad}: {e}");
        }
    }
}
