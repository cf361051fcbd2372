//! The aufs driver's FUSE process model through the real `strata` binary:
//! `mount` leaves a server running after the command exits, `unmount`
//! stops it, and `fsck --repair` mends the stale mount of a killed server.
//! A guard detaches every mount under the root and kills every recorded
//! server on drop, even when the test fails.
//!
//! Run: `cargo test -p strata --test aufs`. Needs root and /dev/fuse; without
//! them it prints why and skips (a failure when `CI=true`).

mod common;
use common::{alive, kill_aufs_servers, need_root, strata};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Root (through the shared check) and /dev/fuse; prints why not, a
/// failure under `CI=true`.
fn ready(test: &str) -> bool {
    if !need_root(test) {
        return false;
    }
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    let why = format!("{test}: skipped: needs /dev/fuse");
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI: {why}");
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{why}");
    false
}

struct Store {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::Builder::new()
            .prefix("strata-aufs-cli-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        std::fs::write(dir.path().join("strata.toml"), "[aufs]\nmode = \"fuse\"\n").unwrap();
        Store { dir, root }
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = Command::new(strata())
            .arg("--config")
            .arg(self.dir.path().join("strata.toml"))
            .arg("--root")
            .arg(&self.root)
            .arg("--driver")
            .arg("aufs")
            .args(args)
            .env_remove("STRATA_CONFIG")
            .env_remove("STRATA_ROOT")
            .env_remove("STRATA_DRIVER")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "strata {args:?}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    fn pid(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.root.join(format!("aufs/run/{id}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

fn mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

impl Drop for Store {
    fn drop(&mut self) {
        kill_aufs_servers(&self.root);
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| Path::new(p).starts_with(self.dir.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn mount_outlives_the_command_and_unmount_stops_the_server() {
    if !ready("mount_outlives_the_command_and_unmount_stops_the_server") {
        return;
    }
    let s = Store::new();
    s.ok(&["create", "base"]);
    s.ok(&["create", "--rw", "--parent", "base", "top"]);
    let path = PathBuf::from(s.ok(&["mount", "top"]).trim());
    assert!(mounted(&path), "{} not mounted", path.display());
    let pid = s.pid("top").expect("server pid recorded");
    assert!(alive(pid), "server {pid} alive after `strata mount` exited");
    std::fs::write(path.join("hello"), b"through the server").unwrap();
    assert_eq!(
        std::fs::read(s.root.join("aufs/diff/top/hello")).unwrap(),
        b"through the server"
    );
    s.ok(&["unmount", "top"]);
    assert!(!mounted(&path));
    for _ in 0..200 {
        if !alive(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!alive(pid), "server {pid} still running after unmount");
    assert!(s.pid("top").is_none(), "pid file removed");
}

#[test]
fn fsck_mends_a_dead_servers_mount() {
    if !ready("fsck_mends_a_dead_servers_mount") {
        return;
    }
    let s = Store::new();
    s.ok(&["create", "--rw", "l"]);
    let path = PathBuf::from(s.ok(&["mount", "l"]).trim());
    let pid = s.pid("l").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..200 {
        if !alive(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let e = std::fs::metadata(&path).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "stale mount: {e}"
    );
    let out = s.ok(&["fsck", "--repair"]);
    assert!(
        out.contains("repaired") || out.contains("mount"),
        "fsck: {out}"
    );
    assert!(!mounted(&path), "stale mount detached");
    // And the layer mounts again.
    let again = PathBuf::from(s.ok(&["mount", "l"]).trim());
    assert!(std::fs::metadata(&again).is_ok());
    s.ok(&["unmount", "l"]);
}
