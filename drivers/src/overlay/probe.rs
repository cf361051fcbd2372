//! Probes: is overlayfs there, can the backing filesystem hold an upper
//! dir, and is the native diff safe on this kernel.

use super::layout::{Layout, PROBE_PREFIX};
use super::native::OPAQUE_XATTR;
use super::sys::{self, Api, OverlayMount};
use crate::{fstype, mounts};
use std::fs;
use std::path::Path;
use std::sync::Once;
use strata_driver_api::{Error, IoContext, Result};

fn unsupported(why: impl Into<String>) -> Error {
    Error::Unsupported {
        driver: "overlay".into(),
        why: why.into(),
    }
}

fn has_overlay() -> bool {
    fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

/// Whether the kernel has overlayfs (`modprobe overlay` is tried once per
/// process when `/proc/filesystems` lacks it).
pub fn kernel_has_overlay() -> Result<()> {
    static MODPROBE: Once = Once::new();
    if has_overlay() {
        return Ok(());
    }
    MODPROBE.call_once(|| {
        let _ = std::process::Command::new("modprobe")
            .arg("overlay")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    });
    if has_overlay() {
        Ok(())
    } else {
        Err(unsupported(
            "the kernel has no overlay filesystem (not in /proc/filesystems, `modprobe overlay` failed)",
        ))
    }
}

/// The cheap, read-only part of the probe: overlayfs in the kernel and a
/// backing filesystem type that can hold an upper dir.
pub fn probe_static(root: &Path) -> Result<()> {
    kernel_has_overlay()?;
    let at = fstype::nearest_existing(root);
    let magic = fstype::magic(&at)?;
    if sys::REFUSED_MAGIC.contains(&magic) {
        return Err(unsupported(format!(
            "{} is on {}, which cannot hold an overlay upper directory",
            at.display(),
            fstype::name(&at)?
        )));
    }
    if magic == sys::RAMFS_MAGIC {
        return Err(unsupported(format!(
            "{} is on ramfs, which has no trusted.* xattr support (overlay needs it for opaque \
             directories)",
            at.display()
        )));
    }
    Ok(())
}

/// The functional check in a scratch directory under `home`: a
/// `trusted.*` xattr can be set, a 0/0 whiteout device can be made, and
/// `readdir` reports file types (`d_type`; missing on xfs made with
/// `ftype=0`).
pub fn probe_backing(home: &Path) -> Result<()> {
    let magic = fstype::magic(home)?;
    let fsname = fstype::name(home)?;
    if sys::REFUSED_MAGIC.contains(&magic) {
        return Err(unsupported(format!(
            "{} is on {fsname}, which cannot hold an overlay upper directory",
            home.display()
        )));
    }
    let scratch = home.join(Layout::scratch_name(PROBE_PREFIX));
    fs::create_dir(&scratch).ctx("mkdir", &scratch)?;
    let r = (|| {
        let f = scratch.join("f");
        fs::write(&f, b"").ctx("write", &f)?;
        if let Err(e) = xattr::set(&f, "trusted.overlay.strata-probe", b"y") {
            return Err(unsupported(format!(
                "{} is on {fsname} without trusted.* xattr support ({e}), which overlay needs \
                 for opaque directories",
                home.display()
            )));
        }
        let w = scratch.join("w");
        if let Err(e) = nix::sys::stat::mknod(
            &w,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        ) {
            return Err(unsupported(format!(
                "{} is on {fsname}, where a 0/0 whiteout device cannot be made ({e})",
                home.display()
            )));
        }
        let d = nix::dir::Dir::open(
            &scratch,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .ctx("opendir", &scratch)?;
        let mut dir = d;
        for e in dir.iter() {
            let e = e.ctx("readdir", &scratch)?;
            if e.file_name().to_bytes() == b"f" && e.file_type().is_none() {
                return Err(unsupported(format!(
                    "{} is on {fsname} without d_type support (xfs needs ftype=1), \
                     which overlay needs",
                    home.display()
                )));
            }
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    r
}

/// Whether the native diff is safe with these mount options, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeDiff {
    /// Safe to read upper dirs as diffs.
    pub native: bool,
    /// Why (or why not), for `status`.
    pub why: String,
}

/// Mounts a small overlay in scratch dirs under `home` with `options` and
/// checks the three known hazards: the opaque flag copied up with a
/// directory (kernels before 4.8), `redirect_dir` (a renamed lower dir
/// becomes a redirect xattr) and `metacopy` (an upper file holding only
/// metadata). Leaves nothing behind.
pub fn probe_native_diff(home: &Path, api: Api, options: &[String]) -> NativeDiff {
    if options
        .iter()
        .any(|o| o == "index=on" || o == "nfs_export=on")
    {
        // With the index, a copied-up lower hard link is shared through the
        // index dir: its other names show the new data but are not in the
        // upper dir, so the upper is not the layer's whole diff.
        return NativeDiff {
            native: false,
            why: "index=on: hard-link aliases of a copied-up file may be missing from the \
                  upper dir"
                .into(),
        };
    }
    let scratch = home.join(Layout::scratch_name(PROBE_PREFIX));
    let merged = scratch.join("merged");
    let r = native_probe_in(&scratch, api, options);
    let _ = mounts::unmount(&merged);
    let _ = fs::remove_dir_all(&scratch);
    match r {
        Ok(n) => n,
        Err(e) => NativeDiff {
            native: false,
            why: format!("the probe mount failed ({e}), so the naive differ is used"),
        },
    }
}

fn native_probe_in(scratch: &Path, api: Api, options: &[String]) -> Result<NativeDiff> {
    let mk = |p: &Path| fs::create_dir_all(p).ctx("mkdir", p);
    let (l1, l2, up, work, merged) = (
        scratch.join("l1"),
        scratch.join("l2"),
        scratch.join("up"),
        scratch.join("work"),
        scratch.join("merged"),
    );
    for d in [&l1, &l2, &up, &work, &merged] {
        mk(d)?;
    }
    mk(&l1.join("d"))?;
    mk(&l1.join("r"))?;
    fs::write(l1.join("r/f"), b"x").ctx("write", l1.join("r/f"))?;
    fs::write(l1.join("m"), b"data").ctx("write", l1.join("m"))?;
    mk(&l2.join("d"))?;
    xattr::set(l2.join("d"), OPAQUE_XATTR, b"y").ctx("setxattr", l2.join("d"))?;
    OverlayMount {
        lowers: vec![l2.clone(), l1.clone()],
        upper: Some((up.clone(), work.clone())),
        options: options.to_vec(),
        read_only: false,
        relative_to: None,
    }
    .mount(api, &merged)?;

    // 1. Copy-up of an opaque lower dir must not make the upper opaque.
    let f = merged.join("d/f");
    fs::write(&f, b"").ctx("write", &f)?;
    let opq = xattr::get(up.join("d"), OPAQUE_XATTR).ctx("getxattr", up.join("d"))?;
    if opq.as_deref() == Some(b"y") {
        return Ok(NativeDiff {
            native: false,
            why: "this kernel copies the opaque flag up with a directory (fixed in 4.8)".into(),
        });
    }
    // 2. Renaming a lower dir: EXDEV when redirect_dir is off.
    match fs::rename(merged.join("r"), merged.join("r2")) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => return Err(Error::io("rename", merged.join("r"), e)),
        Ok(()) => {
            let redirect = xattr::get(up.join("r2"), "trusted.overlay.redirect")
                .ctx("getxattr", up.join("r2"))?;
            if redirect.is_some() {
                return Ok(NativeDiff {
                    native: false,
                    why: "redirect_dir is on: renamed directories are redirect xattrs in the \
                          upper dir, not copies"
                        .into(),
                });
            }
        }
    }
    // 3. chmod of a lower file: a metacopy upper holds no data.
    let m = merged.join("m");
    fs::set_permissions(&m, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .ctx("chmod", &m)?;
    let meta =
        xattr::get(up.join("m"), "trusted.overlay.metacopy").ctx("getxattr", up.join("m"))?;
    if meta.is_some() {
        return Ok(NativeDiff {
            native: false,
            why: "metacopy is on: upper files may hold only metadata".into(),
        });
    }
    Ok(NativeDiff {
        native: true,
        why: "probe passed: no opaque copy-up bug, redirect_dir and metacopy off".into(),
    })
}
