//! Shared helpers of the `naive_*` and `copy_*` tests: conditions (root,
//! tools) that skip with a printed reason or fail under `CI=true`, scratch
//! filesystems (loop-mounted btrfs, tmpfs) torn down by guards, and small
//! tree builders.
#![allow(dead_code)]

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the tests run in CI, where every condition must hold.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `true` when `cond` holds; otherwise prints why the test is skipped and
/// returns `false`, or panics under `CI=true`.
pub fn require(cond: bool, why: &str) -> bool {
    if cond {
        return true;
    }
    if in_ci() {
        panic!("CI=true and a test condition is missing: {why}");
    }
    {
        // Written past the test harness's capture, so the skip is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    }
    false
}

/// [`require`] root.
pub fn require_root(test: &str) -> bool {
    require(
        nix::unistd::geteuid().is_root(),
        &format!("{test} needs root (chown, mknod, trusted.* xattrs, mounts)"),
    )
}

/// Whether `tool` is on the PATH or in an sbin directory.
pub fn have_tool(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

/// Runs a command; panics with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A scratch filesystem mounted at [`ScratchFs::mnt`]: unmounted, its loop
/// device detached and its image removed when dropped, also when a test
/// fails.
pub struct ScratchFs {
    /// Where it is mounted.
    pub mnt: PathBuf,
    loopdev: Option<String>,
    mounted: bool,
    // Holds the image file and the mount point; removed last.
    _dir: tempfile::TempDir,
}

impl ScratchFs {
    /// A fresh btrfs on a 512 MiB sparse image, loop-mounted.
    pub fn btrfs() -> ScratchFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut fs = ScratchFs {
            mnt,
            loopdev: None,
            mounted: false,
            _dir: dir,
        };
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(512 << 20).unwrap();
        drop(file);
        run("mkfs.btrfs", &["-q", "-f", image.to_str().unwrap()]);
        let dev = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        fs.loopdev = Some(dev.clone());
        run("mount", &["-t", "btrfs", &dev, fs.mnt.to_str().unwrap()]);
        fs.mounted = true;
        fs
    }

    /// A fresh tmpfs.
    pub fn tmpfs() -> ScratchFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut fs = ScratchFs {
            mnt,
            loopdev: None,
            mounted: false,
            _dir: dir,
        };
        nix::mount::mount(
            Some("tmpfs"),
            &fs.mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=256m,mode=0755"),
        )
        .expect("mount tmpfs");
        fs.mounted = true;
        fs
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = nix::mount::umount(&self.mnt) {
                eprintln!("umount {}: {e}; detaching", self.mnt.display());
                let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Some(dev) = &self.loopdev {
            let status = Command::new("losetup").args(["-d", dev]).status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("losetup -d {dev} failed: {status:?}");
            }
        }
    }
}

/// Sets atime and mtime of `path` (not following a symlink).
pub fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    utimensat(
        None,
        path,
        &TimeSpec::new(atime.0, atime.1),
        &TimeSpec::new(mtime.0, mtime.1),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// Sets only the mtime of `path` (not following a symlink), keeping atime.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let md = std::fs::symlink_metadata(path).unwrap();
    set_times(path, (md.atime(), md.atime_nsec()), (sec, nsec));
}

/// Recent times (an hour and two hours ago, odd nanoseconds): with atime
/// after mtime and within a day, relatime never updates atime on a read, so
/// copies can be compared to the nanosecond.
pub fn recent_times(salt: i64) -> ((i64, i64), (i64, i64)) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (
        (now - 3600 + salt, 123_456_789 + salt),
        (now - 7200 + salt, 987_654_321 - salt),
    )
}

/// Writes `data` to a new file at `path` (parents created).
pub fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
