//! Fixtures: loop-mounted filesystem images, driver factories, and probes
//! of what a test left behind (mounts, loop devices).

use crate::{Factory, Fixture};
use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use strata_drivers::registry::{self, DriverOptions};

/// An error meaning "this fixture cannot be made here, for this reason"
/// (not root, a tool or kernel feature missing). The runner reports it as
/// [`crate::Outcome::Skip`] (which fails under `CI=true`).
#[derive(Debug, Clone)]
pub struct SkipReason(pub String);

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SkipReason {}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `test` may run: as root. Otherwise prints that it skips and
/// why (`needs`: what root is for) on stderr, past the harness's capture,
/// and returns false; under `CI=true` it panics instead.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    if is_root() {
        return true;
    }
    let why = format!("SKIP: {test} needs root ({needs})");
    assert!(
        !crate::in_ci(),
        "{why}, and CI=true requires every condition"
    );
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{why}");
    false
}

/// Whether an executable `tool` is on `PATH` (or in `/sbin`, `/usr/sbin`).
pub fn have_tool(tool: &str) -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/sbin".into());
    dirs.push("/usr/sbin".into());
    dirs.iter().any(|d| d.join(tool).is_file())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A filesystem in a sparse image file, attached to a loop device and
/// mounted in a private temporary directory.
///
/// Dropping it unmounts (lazily if the mount is busy), detaches the loop
/// device and deletes the image, also while a test panics.
#[derive(Debug)]
pub struct LoopFs {
    kind: String,
    device: String,
    mount: PathBuf,
    mounted: bool,
    // Last: removed after the unmount and detach of `drop`.
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// Makes a `kind` filesystem (`btrfs`, `xfs` with reflink, or `ext4`)
    /// of `size_bytes` (sparse) and mounts it. Blocking (runs mkfs).
    ///
    /// # Errors
    /// [`SkipReason`] when not root or `mkfs.<kind>`/`losetup` is missing;
    /// otherwise the failing step (mkfs, losetup, mount). Whatever was set
    /// up before the failure is torn down.
    pub fn new(kind: &str, size_bytes: u64) -> Result<LoopFs> {
        if !is_root() {
            return Err(SkipReason(format!("a loop-mounted {kind} needs root")).into());
        }
        let mkfs = format!("mkfs.{kind}");
        for tool in [mkfs.as_str(), "losetup"] {
            if !have_tool(tool) {
                return Err(SkipReason(format!("{tool} is not installed")).into());
            }
        }
        load_modules(kind);
        let dir = tempfile::Builder::new()
            .prefix("strata-loop-")
            .tempdir()
            .context("temp dir for the image")?;
        let image = dir.path().join(format!("{kind}.img"));
        let f = fs::File::create(&image).with_context(|| format!("create {}", image.display()))?;
        f.set_len(size_bytes)
            .with_context(|| format!("truncate {}", image.display()))?;
        drop(f);
        let mut mk = Command::new(&mkfs);
        match kind {
            "btrfs" => mk.args(["-q", "-f"]),
            "xfs" => mk.args(["-q", "-f", "-m", "reflink=1"]),
            "ext4" => mk.args(["-q", "-F"]),
            other => bail!("unknown loop filesystem kind {other:?}"),
        };
        run(mk.arg(&image))?;
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        let mount = dir.path().join("mnt");
        let mut me = LoopFs {
            kind: kind.to_string(),
            device,
            mount,
            mounted: false,
            _dir: dir,
        };
        fs::create_dir(&me.mount).with_context(|| format!("mkdir {}", me.mount.display()))?;
        nix::mount::mount(
            Some(me.device.as_str()),
            &me.mount,
            Some(kind),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount {} ({kind}) on {}", me.device, me.mount.display()))?;
        me.mounted = true;
        Ok(me)
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// The loop device (`/dev/loopN`).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The filesystem kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // A fork in another test thread can hold files of this mount for
            // the moment before its exec: retry briefly before detaching.
            let mut res = nix::mount::umount2(&self.mount, nix::mount::MntFlags::empty());
            for _ in 0..10 {
                if res != Err(nix::errno::Errno::EBUSY) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                res = nix::mount::umount2(&self.mount, nix::mount::MntFlags::empty());
            }
            if let Err(e) = res {
                eprintln!(
                    "LoopFs: unmount {} failed ({e}); detaching lazily",
                    self.mount.display()
                );
                let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Err(e) = run(Command::new("losetup").args(["-d", &self.device])) {
            eprintln!("LoopFs: {e}");
        }
    }
}

/// Decodes the octal escapes (`\040`) of a `/proc/self/mountinfo` field.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let d = &b[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
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
    out
}

/// The mount points (of this mount namespace) at or below `path`.
///
/// # Errors
/// Reading `/proc/self/mountinfo`.
pub fn mounts_under(path: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let base = path.as_os_str().as_bytes();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = unescape_mountinfo(mp);
        if mp == base || (mp.starts_with(base) && mp.get(base.len()) == Some(&b'/')) {
            out.push(PathBuf::from(std::ffi::OsStr::from_bytes(&mp)));
        }
    }
    Ok(out)
}

/// How many mounts sit exactly on `path` in this mount namespace.
///
/// # Errors
/// Reading `/proc/self/mountinfo`.
pub fn mount_count_at(path: &Path) -> Result<usize> {
    Ok(mounts_under(path)?
        .iter()
        .filter(|m| m.as_path() == path)
        .count())
}

/// The loop devices whose backing file lies at or below `path`.
///
/// # Errors
/// Reading `/sys/block`.
pub fn loops_under(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Ok(out);
    };
    for ent in rd {
        let ent = ent.context("readdir /sys/block")?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(ent.path().join("loop/backing_file")) {
            let b = b.trim();
            if Path::new(b).starts_with(path) {
                out.push(format!("/dev/{name} ({b})"));
            }
        }
    }
    Ok(out)
}

/// Loads the `loop` module and the filesystem's when they are not there
/// yet (a kernel booted without an init that loads them, such as the VM
/// runner's guest, has neither `/dev/loop-control` nor the filesystem).
/// Best effort: a module that cannot load shows up as the failure of the
/// step that needs it.
fn load_modules(kind: &str) {
    let mut want = Vec::new();
    if !Path::new("/dev/loop-control").exists() {
        want.push("loop");
    }
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !known
        .lines()
        .any(|l| l.split_whitespace().last() == Some(kind))
    {
        want.push(kind);
    }
    for module in want {
        match Command::new("modprobe").arg(module).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "modprobe {module}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("modprobe {module}: {e}"),
        }
    }
}

/// Where a [`VfsFactory`] puts its driver root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A temporary directory on the host's filesystem.
    Plain,
    /// A fresh loop-mounted btrfs (reflink copies).
    Btrfs,
    /// A fresh loop-mounted xfs with `reflink=1`.
    Xfs,
    /// A fresh loop-mounted ext4: the usual host filesystem, on its own
    /// device, so file-heavy scenarios do not depend on the speed (or the
    /// free space) of the host's root filesystem.
    Ext4,
}

/// Size of the sparse images behind loop-backed fixtures.
pub const LOOP_IMAGE_SIZE: u64 = 8 << 30;

/// Makes a fresh vfs driver on a fresh root, on the chosen backing.
#[derive(Clone, Copy, Debug)]
pub struct VfsFactory {
    /// Where the root lives.
    pub backing: Backing,
}

impl VfsFactory {
    /// A factory for vfs on `backing`.
    pub fn new(backing: Backing) -> Self {
        VfsFactory { backing }
    }
}

/// Opens driver `name` (through the registry) on a fresh root, on a plain
/// temporary directory or a fresh loop-mounted filesystem.
///
/// # Errors
/// [`SkipReason`] when the loop filesystem cannot be made here; the
/// registry's error when the driver does not open.
pub async fn open_on(name: &str, backing: Backing) -> Result<Fixture> {
    open_with(name, backing, &DriverOptions::default()).await
}

/// [`open_on`] with the driver's options (`[vfs]`, `[overlay]`...) given.
///
/// # Errors
/// As [`open_on`].
pub async fn open_with(name: &str, backing: Backing, options: &DriverOptions) -> Result<Fixture> {
    match backing {
        Backing::Plain => {
            let tmp = tempfile::Builder::new()
                .prefix("strata-conf-")
                .tempdir()
                .context("temp dir for the driver root")?;
            let root = tmp.path().join("root");
            let driver = registry::open(name, &root, options)
                .await
                .with_context(|| format!("open {name} on {}", root.display()))?;
            Ok(Fixture::new(driver, root, tmp))
        }
        Backing::Btrfs | Backing::Xfs | Backing::Ext4 => {
            let lfs = loop_fs(backing).await?;
            let root = lfs.path().join("root");
            let driver = registry::open(name, &root, options)
                .await
                .with_context(|| format!("open {name} on {} ({})", root.display(), lfs.kind()))?;
            let scratch = scratch_dir(&lfs)?;
            Ok(Fixture::new(driver, root, lfs).with_scratch_in(scratch))
        }
    }
}

/// A fresh loop-mounted filesystem of `backing`'s kind ([`LOOP_IMAGE_SIZE`]).
///
/// # Errors
/// As [`LoopFs::new`]; `Backing::Plain` is refused (it has no filesystem).
pub async fn loop_fs(backing: Backing) -> Result<LoopFs> {
    let kind = match backing {
        Backing::Btrfs => "btrfs",
        Backing::Xfs => "xfs",
        Backing::Ext4 => "ext4",
        Backing::Plain => bail!("a plain directory backing has no loop filesystem"),
    };
    tokio::task::spawn_blocking(move || LoopFs::new(kind, LOOP_IMAGE_SIZE))
        .await
        .context("loop fs task panicked")?
}

/// Makes `scratch/` on `lfs`, for [`Fixture::with_scratch_in`].
///
/// # Errors
/// The mkdir failing.
pub fn scratch_dir(lfs: &LoopFs) -> Result<PathBuf> {
    let dir = lfs.path().join("scratch");
    fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    Ok(dir)
}

#[async_trait]
impl Factory for VfsFactory {
    fn name(&self) -> String {
        match self.backing {
            Backing::Plain => "vfs".into(),
            Backing::Btrfs => "vfs-on-btrfs".into(),
            Backing::Xfs => "vfs-on-xfs".into(),
            Backing::Ext4 => "vfs-on-ext4".into(),
        }
    }

    async fn make(&self) -> Result<Fixture> {
        open_on("vfs", self.backing).await
    }
}

/// Makes a fresh driver `name` (through the registry) on a fresh root per
/// fixture: a loop-mounted btrfs for `btrfs`, a temporary directory for the
/// others. What `strata check` runs the suite with.
pub struct RegistryFactory {
    /// The driver's registry name.
    pub name: String,
}

impl RegistryFactory {
    /// A factory for driver `name`.
    pub fn new(name: impl Into<String>) -> Self {
        RegistryFactory { name: name.into() }
    }

    /// The backing the driver's roots are made on.
    pub fn backing(&self) -> Backing {
        if self.name == "btrfs" {
            Backing::Btrfs
        } else {
            Backing::Plain
        }
    }
}

#[async_trait::async_trait]
impl Factory for RegistryFactory {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn make(&self) -> Result<Fixture> {
        open_on(&self.name, self.backing()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo("/end\\"), b"/end\\");
    }

    #[test]
    fn proc_mounts_include_root() {
        assert!(!mounts_under(Path::new("/")).unwrap().is_empty());
    }
}
