//! Kernel mode: mount data of the aufs module and its branch batching.
//!
//! The first `mount(2)` takes `br:<top>=rw:<p1>=ro+wh:...` plus the fixed
//! options, as many branches as fit one page of mount data; the rest are
//! added by `remount` calls with `append:<dir>=ro+wh` options, again as
//! many per call as fit a page. The module stacks at most
//! [`MAX_BRANCHES`] branches.
//!
//! Not run on hosts without the aufs module (the build machine has none):
//! the option building is unit-tested, the mount calls are not.

use std::path::{Path, PathBuf};
use strata_driver_api::{Error, Result};

/// The aufs module's branch limit.
pub const MAX_BRANCHES: usize = 127;
/// One page: the kernel copies at most this much mount data.
pub const PAGE: usize = 4096;
/// Options after the branch list of the first mount.
pub const FIXED_OPTIONS: &str = "dio,xino=/dev/shm/aufs.xino";

/// The mount data of one kernel aufs mount: the first `mount(2)` and the
/// `remount` calls that append the remaining branches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelMount {
    /// The data of the first mount.
    pub first: String,
    /// The data of each following remount (without `remount`, which is a
    /// flag).
    pub appends: Vec<String>,
}

/// Whether the kernel knows the aufs filesystem (`/proc/filesystems`).
pub fn kernel_has_aufs() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("aufs"))
        })
        .unwrap_or(false)
}

/// Kernel aufs options that name or change branches: only the driver
/// sets them, extra options may not.
pub const RESERVED_OPTIONS: &[&str] = &[
    "br", "dirs", "add", "ins", "append", "prepend", "del", "idel", "mod", "imod",
];

/// Builds the mount data for `branches` (top first). The top is `=rw`
/// when `writable`, else `=ro+wh` like the others; `extra` options go
/// after the fixed ones. `page` is the size limit of one call's data
/// (including its terminating NUL).
///
/// # Errors
/// [`Error::InvalidArgument`] for more than [`MAX_BRANCHES`] branches, a
/// branch path holding `:` `,` or `=` (the option syntax cannot carry
/// them), an extra option that holds `,` or sets a branch
/// ([`RESERVED_OPTIONS`]), or a single branch or the fixed options not
/// fitting a page.
pub fn build(
    branches: &[PathBuf],
    writable: bool,
    extra: &[String],
    page: usize,
) -> Result<KernelMount> {
    crate::mounts::check_extra_options("aufs", extra, RESERVED_OPTIONS)?;
    if branches.is_empty() || branches.len() > MAX_BRANCHES {
        return Err(Error::InvalidArgument {
            what: format!("{} aufs branches", branches.len()),
            why: format!("the aufs module stacks 1 to {MAX_BRANCHES} branches"),
        });
    }
    let mut tail = format!(",{FIXED_OPTIONS}");
    for e in extra.iter().filter(|e| !e.is_empty()) {
        tail.push(',');
        tail.push_str(e);
    }
    let spec = |i: usize, p: &Path| -> Result<String> {
        let s = p.to_str().ok_or_else(|| bad(p, "not UTF-8"))?;
        if s.contains([':', ',', '=']) {
            return Err(bad(p, "holds ':', ',' or '='"));
        }
        Ok(if i == 0 && writable {
            format!("{s}=rw")
        } else {
            format!("{s}=ro+wh")
        })
    };
    let mut first = String::from("br:");
    let mut i = 0;
    while i < branches.len() {
        let s = spec(i, &branches[i])?;
        let sep = if i == 0 { 0 } else { 1 };
        if first.len() + sep + s.len() + tail.len() + 1 > page {
            break;
        }
        if i > 0 {
            first.push(':');
        }
        first.push_str(&s);
        i += 1;
    }
    if i == 0 {
        return Err(bad(&branches[0], "its mount data do not fit one page"));
    }
    first.push_str(&tail);
    let mut appends = Vec::new();
    let mut cur = String::new();
    for (j, b) in branches.iter().enumerate().skip(i) {
        let o = format!("append:{}", spec(j, b)?);
        if o.len() + 1 > page {
            return Err(bad(b, "its append option does not fit one page"));
        }
        if !cur.is_empty() && cur.len() + 1 + o.len() + 1 > page {
            appends.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(',');
        }
        cur.push_str(&o);
    }
    if !cur.is_empty() {
        appends.push(cur);
    }
    Ok(KernelMount { first, appends })
}

fn bad(p: &Path, why: &str) -> Error {
    Error::InvalidArgument {
        what: format!("aufs branch {}", p.display()),
        why: why.to_string(),
    }
}

/// Mounts `m` on `target`: the first mount, then each append as a
/// remount; read-only mounts are remounted read-only at the end. On error
/// the mount is detached again.
///
/// # Errors
/// [`Error::Io`] from `mount(2)`.
pub fn mount(m: &KernelMount, target: &Path, read_only: bool) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some("none"),
        target,
        Some("aufs"),
        MsFlags::empty(),
        Some(m.first.as_str()),
    )
    .map_err(|e| Error::nix("mount aufs", target, e))?;
    let r = (|| {
        for a in &m.appends {
            mount(
                Some("none"),
                target,
                Some("aufs"),
                MsFlags::MS_REMOUNT,
                Some(a.as_str()),
            )
            .map_err(|e| Error::nix("remount aufs (append)", target, e))?;
        }
        if read_only {
            mount(
                Some("none"),
                target,
                Some("aufs"),
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| Error::nix("remount aufs read-only", target, e))?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = crate::mounts::detach(target);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branches(n: usize, len: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let name = format!("{i:0>width$}", width = len);
                PathBuf::from(format!("/var/lib/strata/aufs/diff/{name}"))
            })
            .collect()
    }

    #[test]
    fn small_chain_fits_one_mount() {
        let m = build(&branches(3, 4), true, &[], PAGE).unwrap();
        assert_eq!(
            m.first,
            "br:/var/lib/strata/aufs/diff/0000=rw:/var/lib/strata/aufs/diff/0001=ro+wh:\
             /var/lib/strata/aufs/diff/0002=ro+wh,dio,xino=/dev/shm/aufs.xino"
        );
        assert!(m.appends.is_empty());
        let ro = build(&branches(1, 4), false, &["dirperm1".into()], PAGE).unwrap();
        assert_eq!(
            ro.first,
            "br:/var/lib/strata/aufs/diff/0000=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1"
        );
    }

    #[test]
    fn long_chain_is_batched_within_pages() {
        // 64-character ids, as Docker's: about 40 branches per page.
        let bs = branches(127, 64);
        let m = build(&bs, true, &[], PAGE).unwrap();
        assert!(m.first.len() < PAGE);
        assert!(!m.appends.is_empty());
        for a in &m.appends {
            assert!(a.len() < PAGE, "{} bytes", a.len());
            assert!(a.starts_with("append:"));
        }
        // Every branch appears once, in order.
        let mut seen = Vec::new();
        let list = m
            .first
            .strip_prefix("br:")
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        seen.extend(
            list.split(':')
                .map(|s| s.split('=').next().unwrap().to_string()),
        );
        for a in &m.appends {
            for o in a.split(',') {
                let s = o.strip_prefix("append:").unwrap();
                assert!(s.ends_with("=ro+wh"));
                seen.push(s.split('=').next().unwrap().to_string());
            }
        }
        let want: Vec<String> = bs.iter().map(|b| b.display().to_string()).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn page_boundary_inside_a_branch_and_a_suffix() {
        // Pad so that the page ends inside a branch path, then inside the
        // "=ro+wh" suffix: the branch goes whole to the next batch.
        for pad in 0..80 {
            let bs: Vec<PathBuf> = (0..60)
                .map(|i| PathBuf::from(format!("/{}/{i:03}", "p".repeat(pad + 20))))
                .collect();
            let m = build(&bs, true, &[], 1024).unwrap();
            assert!(m.first.len() < 1024);
            assert!(m.appends.iter().all(|a| a.len() < 1024));
            let count = m.first.matches("=r").count()
                + m.appends
                    .iter()
                    .map(|a| a.matches("append:").count())
                    .sum::<usize>();
            assert_eq!(count, 60, "pad {pad}");
        }
    }

    #[test]
    fn limits() {
        assert!(build(&branches(128, 4), true, &[], PAGE).is_err());
        assert!(build(&[], true, &[], PAGE).is_err());
        assert!(build(&[PathBuf::from("/a:b")], true, &[], PAGE).is_err());
        // Extra options may not add or change branches, nor smuggle more
        // options in after a comma.
        for bad in [
            "br:/etc=rw",
            "add:0:/etc",
            "dirperm1,br:/etc",
            "del:/x",
            "dirs=/etc",
        ] {
            assert!(
                build(&branches(2, 4), true, &[bad.into()], PAGE).is_err(),
                "{bad} accepted"
            );
        }
        assert!(build(
            &[PathBuf::from(format!("/{}", "x".repeat(5000)))],
            true,
            &[],
            PAGE
        )
        .is_err());
    }
}
