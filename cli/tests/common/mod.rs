//! Shared harness of the CLI tests: runs the real `strata` binary on a
//! private root, and cleans every mount under it on drop (even when the
//! test failed).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test, as cargo built it.
pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// The binary the tests run: [`STRATA`], or with `STRATA_TEST_BIN_DIR` set,
/// a copy of it made there once per test process, named `strata` (in a
/// directory of its own) as aufs needs to find it to start FUSE servers.
///
/// The VM runner (conformance/vm/run) sets `STRATA_TEST_BIN_DIR` to the
/// guest's scratch disk: the guest reads the workspace over 9p, which
/// faults every page of the binary in again at each exec (measured in the
/// VM: `strata ls` on a devmapper root 4 to 9 s from the 9p path, 1.2 to
/// 1.6 s from a copy), and the reliability suite runs thousands of
/// commands. The copy is left on that disk, which the runner discards.
pub fn strata() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(STRATA);
        let Some(dir) = std::env::var_os("STRATA_TEST_BIN_DIR") else {
            return built;
        };
        let own = Path::new(&dir).join(format!("strata-test-bin.{}", std::process::id()));
        let copy = own.join("strata");
        let partial = own.join("strata.partial");
        if let Err(e) = std::fs::create_dir_all(&own)
            .and_then(|_| std::fs::copy(&built, &partial))
            .and_then(|_| std::fs::rename(&partial, &copy))
        {
            panic!(
                "STRATA_TEST_BIN_DIR: copying {} to {}: {e}",
                built.display(),
                copy.display()
            );
        }
        copy
    })
}

/// Whether the tests that mount may run: as root. Prints why not; under
/// `CI=true` a missing condition fails the test instead.
pub fn need_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = format!("{test}: skipped: needs root (mounts)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true requires every condition");
    }
    {
        // Written past the test harness's capture, so the skip is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{why}");
    }
    false
}

/// A temporary store root with a config file (empty unless made with
/// [`Root::for_driver`]).
pub struct Root {
    /// The scratch directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The store root: inside `dir`, or on the filesystem given to
    /// [`Root::for_driver`].
    pub root: PathBuf,
    /// The config file inside `dir`.
    pub config: PathBuf,
    /// The `--driver` every command gets (`vfs` unless made with
    /// [`Root::for_driver`]).
    pub driver: String,
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

impl Root {
    /// A fresh scratch directory.
    pub fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("strata-cli-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        let config = dir.path().join("strata.toml");
        std::fs::write(&config, "").unwrap();
        Root {
            dir,
            root,
            config,
            driver: "vfs".into(),
        }
    }

    /// A scratch directory whose commands use `driver` with `config` as
    /// the config file's text, and the store root `<base>/root` (a
    /// loop-mounted filesystem, say) or inside the scratch directory.
    pub fn for_driver(driver: &str, base: Option<&Path>, config: &str) -> Root {
        let mut r = Root::new();
        if let Some(b) = base {
            r.root = b.join("root");
        }
        std::fs::write(&r.config, config).unwrap();
        r.driver = driver.to_string();
        r
    }

    /// A path in the test's scratch directory (outside the root).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `strata --config <config> --root <root> --driver <driver> ARGS`,
    /// with no STRATA_* variables from the outside.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(strata());
        c.arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--driver")
            .arg(&self.driver)
            .args(args)
            .env_remove("STRATA_CONFIG")
            .env_remove("STRATA_ROOT")
            .env_remove("STRATA_DRIVER")
            .env_remove("STRATA_TEST_CRASH_AT")
            .stdin(Stdio::null());
        c
    }

    /// Runs `strata ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed: {}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs and asserts exit status `code`; returns stderr, checked to be
    /// one line for exit 1.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(code),
            "strata {args:?}: stdout {} stderr {err}",
            String::from_utf8_lossy(&o.stdout)
        );
        if code == 1 {
            assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
            assert!(err.starts_with("strata: "), "{err}");
        }
        err
    }

    /// `strata --json ls`, parsed.
    pub fn ls(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["--json", "ls"])).unwrap()
    }

    /// The `ls` record of `id`.
    pub fn layer(&self, id: &str) -> Option<serde_json::Value> {
        self.ls().into_iter().find(|l| l["id"] == id)
    }

    /// Asserts `strata fsck` reports clean.
    pub fn fsck_clean(&self) {
        let out = self.ok(&["fsck"]);
        assert!(out.contains("clean"), "fsck: {out}");
    }
}

/// Mount points under `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Whether process `pid` runs (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// SIGKILLs the aufs FUSE servers of the store at `root` (their pid files
/// in `aufs/run/`): what a test's teardown does before unmounting.
pub fn kill_aufs_servers(root: &Path) {
    if let Ok(rd) = std::fs::read_dir(root.join("aufs/run")) {
        for e in rd.flatten() {
            if let Some(pid) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // aufs FUSE servers first (their pid files), then every mount.
        kill_aufs_servers(&self.root);
        let mut points = mounts_under(&self.root);
        if !self.root.starts_with(self.dir.path()) {
            points.extend(mounts_under(self.dir.path()));
        }
        for p in points {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `sha256:<hex>` of a file.
pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Makes a tar of `entries` (relative names) under `src` with the `tar`
/// command; `gzip` adds `-z`.
pub fn make_tar(src: &Path, entries: &[&str], out: &Path, gzip: bool) {
    let mut c = Command::new("tar");
    c.arg("--format=pax")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(src);
    c.arg(if gzip { "-czf" } else { "-cf" })
        .arg(out)
        .args(entries);
    let o = c.output().expect("the tar command");
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A small tree: `a` (5 bytes), `b` (3 bytes), `dir/c` (4 bytes).
pub fn small_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("dir")).unwrap();
    std::fs::write(dir.join("a"), "hello").unwrap();
    std::fs::write(dir.join("b"), "bee").unwrap();
    std::fs::write(dir.join("dir/c"), "ceee").unwrap();
}
