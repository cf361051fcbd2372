//! Scratch space for a compare run or a bench: one directory that holds
//! every driver root, loop image, mount point, tar and reference tree of
//! the run, and a teardown that finds and releases all of it again.
//!
//! Teardown does not trust bookkeeping: it reads the mount table for mount
//! points at or below the scratch directory (deepest first), asks `losetup`
//! which loop devices are backed by image files of the scratch directory,
//! and then deletes the directory. It is idempotent, runs on drop, and can
//! be called again after a failed or interrupted run.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A scratch directory and the loop filesystems made inside it.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    images: Vec<PathBuf>,
    torn_down: bool,
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `tool` is an executable on `PATH` (or the usual sbin dirs).
pub fn have_tool(tool: &str) -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.iter().any(|d| d.join(tool).is_file())
}

/// Runs a command to completion and returns its trimmed stdout.
///
/// # Errors
/// When it cannot start or exits non-zero (with its stderr).
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Scratch {
    /// Makes a new, unique scratch directory `strata-compare-<pid>-<n>`
    /// under `parent` (created if missing).
    ///
    /// # Errors
    /// When the directory cannot be made.
    pub fn new(parent: &Path) -> Result<Scratch> {
        fs::create_dir_all(parent).with_context(|| format!("mkdir {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-compare-{}-", std::process::id()))
            .tempdir_in(parent)
            .with_context(|| format!("scratch directory in {}", parent.display()))?
            .keep();
        Ok(Scratch {
            dir,
            images: Vec::new(),
            torn_down: false,
        })
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes a sparse image of `size_bytes` holding a fresh `kind`
    /// filesystem (`btrfs`, `xfs` with reflink=1, or `ext4`), attaches it to
    /// a loop device and mounts it at `<scratch>/mnt-<name>`; returns the
    /// mount point. Blocking (runs mkfs and losetup).
    ///
    /// # Errors
    /// When not root, when a tool is missing, or the failing step. What was
    /// set up is released by [`Scratch::teardown`].
    pub fn loop_fs(&mut self, name: &str, kind: &str, size_bytes: u64) -> Result<PathBuf> {
        if !is_root() {
            bail!("a loop-mounted {kind} needs root");
        }
        let mkfs = format!("mkfs.{kind}");
        for tool in [mkfs.as_str(), "losetup"] {
            if !have_tool(tool) {
                bail!("{tool} is not installed");
            }
        }
        let image = self.dir.join(format!("{name}.img"));
        let f = fs::File::create(&image).with_context(|| format!("create {}", image.display()))?;
        f.set_len(size_bytes)
            .with_context(|| format!("truncate {}", image.display()))?;
        drop(f);
        self.images.push(image.clone());
        let mut mk = Command::new(&mkfs);
        match kind {
            "btrfs" => mk.args(["-q", "-f"]),
            "xfs" => mk.args(["-q", "-f", "-m", "reflink=1"]),
            "ext4" => mk.args(["-q", "-F"]),
            other => bail!("unknown loop filesystem kind {other:?}"),
        };
        run_cmd(mk.arg(&image))?;
        let device = run_cmd(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&image),
        )?;
        let mnt = self.dir.join(format!("mnt-{name}"));
        fs::create_dir(&mnt).with_context(|| format!("mkdir {}", mnt.display()))?;
        nix::mount::mount(
            Some(device.as_str()),
            &mnt,
            Some(kind),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount {device} ({kind}) on {}", mnt.display()))?;
        Ok(mnt)
    }

    /// Releases everything under the scratch directory: unmounts every
    /// mount at or below it (deepest first, lazily when busy), detaches the
    /// loop devices backed by its images, deletes it. Idempotent.
    ///
    /// # Errors
    /// The first step that failed (all steps are tried).
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        let mut first: Option<anyhow::Error> = None;
        if let Err(e) = unmount_under(&self.dir) {
            first.get_or_insert(e);
        }
        if let Err(e) = detach_loops_under(&self.dir) {
            first.get_or_insert(e);
        }
        let mut res = Ok(());
        for _ in 0..20 {
            res = match fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            };
            if res.is_ok() {
                break;
            }
            // A writer still finishing (a blocking task of an interrupted
            // run) can add entries while we delete: try again shortly.
            std::thread::sleep(Duration::from_millis(100));
            let _ = unmount_under(&self.dir);
        }
        if let Err(e) = res {
            first.get_or_insert(
                anyhow::Error::new(e).context(format!("remove {}", self.dir.display())),
            );
        }
        self.torn_down = true;
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("scratch teardown: {e:#}");
        }
    }
}

/// Makes the directory a driver's root and work directory live in, for
/// target `name` of driver `driver`: with `backing` `plain` a directory of
/// the scratch space (or, for overlay when the host filesystem cannot
/// carry it, an ext4 loop image); otherwise a loop image of that
/// filesystem (`btrfs`, `xfs` with reflink, `ext4`) of `bytes`. Checks
/// with the registry's probe that the driver can work there. Returns the
/// directory and a description of its filesystem. Blocking.
///
/// # Errors
/// The failing step, or the probe's reason.
pub fn prepare_backing(
    scratch: &mut Scratch,
    name: &str,
    driver: &str,
    backing: &str,
    bytes: u64,
) -> Result<(PathBuf, String)> {
    use strata_drivers::registry;
    if backing == "plain" {
        let dir = scratch.path().join(name);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        match registry::probe(driver, &dir.join("root")) {
            Ok(()) => {
                let what = format!("plain directory ({})", fs_type(&dir));
                return Ok((dir, what));
            }
            // Overlay cannot stack on every filesystem: use ext4 then.
            Err(_) if driver == "overlay" => {}
            Err(e) => return Err(e.into()),
        }
        let mnt = scratch.loop_fs(name, "ext4", bytes)?;
        registry::probe(driver, &mnt.join("root"))?;
        return Ok((mnt, "ext4 loop image".into()));
    }
    let mnt = scratch.loop_fs(name, backing, bytes)?;
    registry::probe(driver, &mnt.join("root"))?;
    let what = match backing {
        "xfs" => "xfs loop image, reflink=1".to_string(),
        b => format!("{b} loop image"),
    };
    Ok((mnt, what))
}

/// The filesystem type of `dir` as `stat -f` names it.
fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Decodes the octal escapes (`\040`) of a `/proc/self/mountinfo` field.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let d = &b[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mount points of this mount namespace at or below `dir`, in
/// mount-table order.
///
/// # Errors
/// Reading `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// Unmounts every mount at or below `dir`, last mounted first; a busy
/// mount is retried briefly, then detached lazily.
///
/// # Errors
/// Reading the mount table, or an unmount that failed even lazily.
pub fn unmount_under(dir: &Path) -> Result<()> {
    use nix::mount::{umount2, MntFlags};
    let mut first = None;
    for _round in 0..3 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts.iter().rev() {
            let mut res = umount2(m, MntFlags::empty());
            for _ in 0..5 {
                if res != Err(nix::errno::Errno::EBUSY) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                res = umount2(m, MntFlags::empty());
            }
            if res == Err(nix::errno::Errno::EBUSY) {
                res = umount2(m, MntFlags::MNT_DETACH);
            }
            match res {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    first.get_or_insert_with(|| anyhow::anyhow!("unmount {}: {e}", m.display()));
                }
            }
        }
    }
    match first {
        Some(e) if !mounts_under(dir)?.is_empty() => Err(e),
        _ => Ok(()),
    }
}

/// The loop devices (`/dev/loopN`) whose backing file is at or below `dir`,
/// from `/sys/block/loop*/loop/backing_file`.
///
/// # Errors
/// None in practice: unreadable entries are skipped.
pub fn loops_under(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(back) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        // A deleted backing file reads as "<path> (deleted)".
        let back = back.trim().trim_end_matches(" (deleted)");
        if Path::new(back).starts_with(dir) {
            out.push(format!("/dev/{name}"));
        }
    }
    out.sort();
    Ok(out)
}

/// Detaches every loop device backed by a file at or below `dir`. A device
/// still held by a lazily detached mount is marked to clear itself when
/// released (what `losetup -d` does for a busy device).
///
/// # Errors
/// The first `losetup -d` that failed.
pub fn detach_loops_under(dir: &Path) -> Result<()> {
    let mut first = None;
    for dev in loops_under(dir)? {
        if let Err(e) = run_cmd(Command::new("losetup").args(["-d", &dev])) {
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
