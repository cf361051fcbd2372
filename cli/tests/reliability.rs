//! The reliability suite (part A), through the real `strata` binary, for
//! every driver this host runs: vfs, overlay and aufs (FUSE) on a
//! loop-mounted ext4, btrfs on a loop-mounted btrfs; devmapper only in the
//! VM (below).
//!
//! - **Crash injection** (`crash_*`): `import`, `create`, `apply` and `rm`
//!   killed with SIGKILL at every named crash step (`STRATA_TEST_CRASH_AT`)
//!   and at time offsets spread over each command's measured duration; after
//!   each kill `fsck --repair --verify` must mend everything (and find no
//!   digest mismatch), a second `fsck` must be clean, every layer must be
//!   `ready` with the digest a complete operation gives (or none, after an
//!   interrupted apply), the layer must mount, and nothing may stay mounted.
//!   At least 100 kill points per driver (`STRATA_RELIABILITY_KILLS` timed
//!   kills per command, default 24, plus the named steps).
//! - **Full filesystem** (`full_*`): import and apply of a tar bigger than
//!   the small filesystem (64 MiB; 128 MiB for btrfs; for devmapper a 64 MiB
//!   layer device): a one-line error naming "No space left on device", no
//!   half-made layer (records, driver data and free space as before), the
//!   store still opens and the earlier layer keeps its digest.
//! - **Concurrency** (`concurrent_*`): 16 processes at once, each running
//!   200 mixed commands (create, import, mount, write into the mount,
//!   unmount, diff, rm, plus mounts of a shared layer and removals that must
//!   fail with "has children" or "busy") on one root: every command
//!   succeeds or fails with one of those clear errors, and at the end `fsck`
//!   and `fsck --verify` are clean and nothing is mounted.
//!   `STRATA_RELIABILITY_PROCS` / `STRATA_RELIABILITY_OPS` change the 16 /
//!   200.
//!
//! Each test prints its counts (kill points tried, operations run) on
//! stderr, past the harness's capture.
//!
//! Run: `cargo test -p strata --test reliability` (root; /dev/fuse for aufs;
//! mkfs.btrfs for btrfs). Without them a test prints why and skips, which
//! fails under `CI=true`. The devmapper tests are built with the feature
//! `vm-tests` and run in the VM:
//!
//! ```sh
//! conformance/vm/run-suites reliability   # in CI, scaled (see run-suites)
//! ```
//!
//! There every command is a new process costing ~0.9 s of CPU under
//! emulation, so run-suites scales the part to 103 kill points (21 timed
//! kills per command) and 16 x 100 commands.

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use strata_conformance::fixtures::{loops_under, LoopFs, SkipReason};

/// Writes a line past the test harness's capture.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Prints why `test` cannot run; under `CI=true` fails instead.
fn skip(test: &str, why: &str) {
    let why = format!("{test}: skipped: {why}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true requires every condition");
    }
    say(&why);
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether this process runs inside the VM of `conformance/vm/run`.
#[cfg(feature = "vm-tests")]
fn in_vm(test: &str) -> bool {
    if std::env::var("STRATA_IN_VM").is_ok_and(|v| v == "1") {
        return true;
    }
    skip(
        test,
        "needs device-mapper, which runs in the VM \
         (conformance/vm/run-suites reliability)",
    );
    false
}

/// The `[devmapper]` table of the dm tests: a small sparse pool, small
/// layer devices (`base_size` bytes).
#[cfg(feature = "vm-tests")]
fn dm_config(base_size: u64) -> String {
    format!(
        "[devmapper]\ndata_size = {}\nmetadata_size = {}\nbase_size = {base_size}\nfs = \"ext4\"\n",
        4u64 << 30,
        64u64 << 20
    )
}

/// A store root for one driver on its own backing filesystem. Drop order:
/// the root (servers killed, mounts detached, devmapper pool torn down),
/// then the filesystem.
struct Rig {
    r: Root,
    driver: String,
    config: String,
    _fs: Option<LoopFs>,
}

impl Rig {
    /// A rig for `driver` on a fresh loop filesystem of `fs_bytes` (sparse),
    /// or `None` (printed; a failure under `CI=true`) when this host cannot
    /// run it. `config` is the config file's text for devmapper (whose root
    /// lives in `$TMPDIR`).
    fn new(test: &str, driver: &str, fs_bytes: u64, config: &str) -> Option<Rig> {
        if !need_root(test) {
            return None;
        }
        let (kind, config) = match driver {
            "vfs" | "overlay" => (Some("ext4"), config.to_string()),
            "aufs" => (Some("ext4"), "[aufs]\nmode = \"fuse\"\n".to_string()),
            "btrfs" => (Some("btrfs"), config.to_string()),
            _ => (None, config.to_string()),
        };
        if driver == "aufs" && !Path::new("/dev/fuse").exists() {
            skip(test, "needs /dev/fuse (aufs in FUSE mode)");
            return None;
        }
        let fs = match kind {
            None => None,
            Some(k) => match LoopFs::new(k, fs_bytes) {
                Ok(fs) => Some(fs),
                Err(e) if e.is::<SkipReason>() => {
                    skip(test, &e.to_string());
                    return None;
                }
                Err(e) => panic!("{test}: loop {k}: {e:#}"),
            },
        };
        let r = Root::for_driver(driver, fs.as_ref().map(|f| f.path()), &config);
        Some(Rig {
            r,
            driver: driver.to_string(),
            config,
            _fs: fs,
        })
    }

    /// Bytes free on the filesystem holding the root; for devmapper, in
    /// the thin pool (`strata info`'s data space total minus used, in MiB).
    /// Deleting a thin device frees its blocks in the pool's metadata but
    /// does not punch them out of the pool's sparse data file, so the
    /// host filesystem's free space does not come back (measured: 54 MiB
    /// of a failed import stayed allocated in the data file), while the
    /// pool can use them again at once.
    fn free(&self) -> u64 {
        if self.driver == "devmapper" {
            let info: serde_json::Value =
                serde_json::from_str(&self.r.ok(&["--json", "info"])).unwrap();
            let mib = |key: &str| -> u64 {
                let status = info["status"].as_array().unwrap();
                let v = status
                    .iter()
                    .find(|e| e["key"] == key)
                    .unwrap_or_else(|| panic!("no {key:?} in strata info: {info}"));
                let v = v["value"].as_str().unwrap();
                v.strip_suffix(" MiB")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{key}: {v:?} is not \"N MiB\""))
            };
            return (mib("data space total") - mib("data space used")) << 20;
        }
        let s = nix::sys::statvfs::statvfs(&self.r.root).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    }

    /// Asserts the free space comes back to within 4 MiB of `before`
    /// (waiting up to 60 s: btrfs frees a deleted subvolume's extents in
    /// the background, by its cleaner thread, which `btrfs filesystem
    /// sync` wakes).
    fn assert_space_back(&self, before: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            nix::unistd::sync();
            if self.driver == "btrfs" {
                let _ = std::process::Command::new("btrfs")
                    .args(["filesystem", "sync"])
                    .arg(&self.r.root)
                    .output();
            }
            let now = self.free();
            if now + (4 << 20) >= before {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: data left behind: {before} bytes free before, {now} after"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Asserts nothing is mounted under the root, no loop device backs a
    /// file under it (devmapper's pool excepted) and no aufs server runs.
    fn assert_nothing_left(&self, what: &str) {
        let m = mounts_under(&self.r.root);
        assert!(m.is_empty(), "{what}: still mounted: {m:?}");
        if self.driver != "devmapper" {
            let l = loops_under(&self.r.root).unwrap();
            assert!(l.is_empty(), "{what}: loop devices left: {l:?}");
        }
        if let Ok(rd) = std::fs::read_dir(self.r.root.join("aufs/run")) {
            for e in rd.flatten() {
                let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    assert!(
                        !alive(pid),
                        "{what}: aufs server {pid} ({}) still running",
                        e.path().display()
                    );
                }
            }
        }
    }

    /// `fsck --repair --verify`, then `fsck`: every finding repaired (none
    /// a digest mismatch, a missing parent or a mount: no command under
    /// test mounts), then clean. Returns the kinds repaired.
    fn repair_and_check(&self, what: &str) -> Vec<String> {
        let o = self.r.run(&["--json", "fsck", "--repair", "--verify"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{what}: fsck --repair --verify: {}\n{out}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut kinds = Vec::new();
        for f in v["report"]["findings"].as_array().unwrap() {
            let kind = f["kind"].as_str().unwrap().to_string();
            assert!(
                matches!(kind.as_str(), "unfinished" | "no-record") && f["repaired"] == true,
                "{what}: fsck finding {f}"
            );
            kinds.push(kind);
        }
        for line in v["recovered_at_open"].as_array().unwrap() {
            kinds.push(format!("open: {}", line.as_str().unwrap_or("")));
        }
        let o = self.r.run(&["--json", "fsck"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        assert!(
            o.status.success() && v["clean"] == true,
            "{what}: fsck after repair: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        kinds
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        #[cfg(feature = "vm-tests")]
        if self.driver == "devmapper" {
            // Unmount what is mounted, then take the pool down (devices,
            // loop devices), even when the test failed.
            for p in mounts_under(&self.r.root) {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
            let root = self.r.root.clone();
            let opts: strata_drivers::registry::DriverOptions =
                toml::from_str(&self.config).unwrap_or_default();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    match strata_drivers::registry::open("devmapper", &root, &opts).await {
                        Ok(d) => {
                            if let Err(e) = d.cleanup().await {
                                eprintln!("devmapper cleanup: {e}");
                            }
                        }
                        Err(e) => eprintln!("devmapper open for cleanup: {e}"),
                    }
                });
            })
            .join();
        }
        let _ = &self.config;
    }
}

/// Writes `files` files of `size` bytes (distinct contents, `seed` picks
/// them) under `top/` of a fresh directory and tars them (`top` first).
fn tree_tar(r: &Root, name: &str, top: &str, files: usize, size: usize, seed: u64) -> PathBuf {
    let src = r.path(&format!("{name}-src"));
    std::fs::create_dir_all(src.join(top)).unwrap();
    let mut x = seed | 1;
    for i in 0..files {
        let mut body = vec![0u8; size];
        for b in body.iter_mut() {
            // xorshift: incompressible enough, fast.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(src.join(top).join(format!("f{i:04}")), body).unwrap();
    }
    let t = r.path(&format!("{name}.tar"));
    make_tar(&src, &[top], &t, false);
    std::fs::remove_dir_all(&src).unwrap();
    t
}

// ---- crash injection ------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Import,
    Create,
    Apply,
    Rm,
}

const OPS: [Op; 4] = [Op::Import, Op::Create, Op::Apply, Op::Rm];

impl Op {
    /// The named crash steps this command passes (devmapper's own with it).
    fn steps(self, driver: &str) -> Vec<&'static str> {
        let mut v = match self {
            Op::Import => vec![
                "import:after-record",
                "import:after-create",
                "import:mid-apply",
                "import:after-apply",
                "import:after-digest",
                "import:before-ready",
                "import:after-ready",
            ],
            Op::Create => vec![
                "create:after-record",
                "create:after-driver",
                "create:before-ready",
            ],
            Op::Apply => vec!["apply:after-apply"],
            Op::Rm => vec!["rm:after-mark", "rm:after-driver"],
        };
        if driver == "devmapper" && matches!(self, Op::Import | Op::Create) {
            v.extend([
                "devmapper-after-record",
                "devmapper-after-snap",
                "devmapper-after-bump",
            ]);
        }
        v
    }
}

/// The crash harness on one rig: layer `base` stays; each kill point works
/// on layer `t`.
struct Crash<'a> {
    rig: &'a Rig,
    import_tar: PathBuf,
    apply_tar: PathBuf,
    base_digest: String,
    import_digest: String,
    apply_digest: String,
    tried: usize,
    named: usize,
    killed: usize,
    finished: usize,
    kept: usize,
    repairs: usize,
}

impl<'a> Crash<'a> {
    fn new(rig: &'a Rig) -> Crash<'a> {
        let r = &rig.r;
        let base_tar = tree_tar(r, "base", "b", 20, 2000, 1);
        let import_tar = tree_tar(r, "import", "d", 150, 3000, 2);
        let apply_tar = tree_tar(r, "apply", "e", 150, 3000, 3);
        r.ok(&["import", "--id", "base", base_tar.to_str().unwrap()]);
        let base_digest = r.layer("base").unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        Crash {
            rig,
            import_tar,
            apply_tar,
            base_digest,
            import_digest: String::new(),
            apply_digest: String::new(),
            tried: 0,
            named: 0,
            killed: 0,
            finished: 0,
            kept: 0,
            repairs: 0,
        }
    }

    fn r(&self) -> &Root {
        &self.rig.r
    }

    /// Puts layer `t` where `op` starts from.
    fn prepare(&self, op: Op) {
        let r = self.r();
        let present = r.layer("t").is_some();
        match op {
            Op::Import | Op::Create => {
                if present {
                    r.ok(&["rm", "t"]);
                }
            }
            Op::Apply => {
                if present {
                    r.ok(&["rm", "t"]);
                }
                r.ok(&["create", "--parent", "base", "t"]);
            }
            Op::Rm => {
                if !present {
                    r.ok(&[
                        "import",
                        "--parent",
                        "base",
                        "--id",
                        "t",
                        self.import_tar.to_str().unwrap(),
                    ]);
                }
            }
        }
    }

    fn args(&self, op: Op) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect();
        match op {
            Op::Import => s(&[
                "import",
                "--parent",
                "base",
                "--id",
                "t",
                self.import_tar.to_str().unwrap(),
            ]),
            Op::Create => s(&["create", "--parent", "base", "t"]),
            Op::Apply => s(&["apply", "t", self.apply_tar.to_str().unwrap()]),
            Op::Rm => s(&["rm", "t"]),
        }
    }

    /// The quicker of two complete runs of `op` (the first warms caches);
    /// records the reference digests.
    fn measure(&mut self, op: Op) -> Duration {
        let mut best = Duration::MAX;
        for _ in 0..2 {
            self.prepare(op);
            let args = self.args(op);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let start = Instant::now();
            self.r().ok(&args);
            best = best.min(start.elapsed());
        }
        let digest = |c: &Self| {
            c.r().layer("t").unwrap()["digest"]
                .as_str()
                .unwrap()
                .to_string()
        };
        match op {
            Op::Import => self.import_digest = digest(self),
            Op::Apply => self.apply_digest = digest(self),
            _ => {}
        }
        best
    }

    /// After a kill of `op`: repair, then the invariants.
    fn check(&mut self, op: Op, what: &str) {
        let r = &self.rig.r;
        self.repairs += self.rig.repair_and_check(what).len();
        let ls = r.ls();
        let mut ids = BTreeSet::new();
        for l in &ls {
            assert_eq!(l["state"], "ready", "{what}: {l}");
            assert_eq!(l["mount_count"], 0, "{what}: {l}");
            ids.insert(l["id"].as_str().unwrap().to_string());
        }
        assert!(ids.contains("base"), "{what}: base lost: {ls:?}");
        assert!(
            ids.iter().all(|i| i == "base" || i == "t"),
            "{what}: stray layers: {ls:?}"
        );
        let base = ls.iter().find(|l| l["id"] == "base").unwrap();
        assert_eq!(base["digest"], self.base_digest.as_str(), "{what}: base");
        let Some(t) = ls.iter().find(|l| l["id"] == "t") else {
            assert!(op != Op::Apply, "{what}: an apply lost its layer");
            self.rig.assert_nothing_left(what);
            return;
        };
        self.kept += 1;
        let digest = t["digest"].as_str();
        // The file a complete operation leaves, to look for in the mount.
        let probe = match op {
            Op::Import | Op::Rm => {
                assert_eq!(digest, Some(self.import_digest.as_str()), "{what}: {t}");
                Some("d/f0000")
            }
            Op::Create => {
                assert!(digest.is_none(), "{what}: {t}");
                None
            }
            Op::Apply => match digest {
                // Interrupted: the digest stays cleared (documented).
                None => None,
                Some(d) => {
                    assert_eq!(d, self.apply_digest, "{what}: {t}");
                    Some("e/f0149")
                }
            },
        };
        let o = r.run(&["mount", "t"]);
        assert!(
            o.status.success(),
            "{what}: mount t after the repair: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        assert!(path.join("b/f0000").is_file(), "{what}: parent's file");
        if let Some(p) = probe {
            assert!(path.join(p).is_file(), "{what}: {p} missing in the mount");
        }
        r.ok(&["unmount", "t"]);
        self.rig.assert_nothing_left(what);
    }

    /// One kill point: `op` killed at named `step`.
    fn kill_at_step(&mut self, op: Op, step: &str) {
        self.prepare(op);
        let args = self.args(op);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = self
            .r()
            .cmd(&args)
            .env("STRATA_TEST_CRASH_AT", step)
            .output()
            .unwrap();
        assert_eq!(
            o.status.signal(),
            Some(9),
            "{op:?} at {step}: not killed: {o:?}"
        );
        self.tried += 1;
        self.named += 1;
        self.killed += 1;
        self.check(op, &format!("{} {op:?} killed at {step}", self.rig.driver));
    }

    /// One kill point: `op` killed `after` its start.
    fn kill_after(&mut self, op: Op, after: Duration) {
        self.prepare(op);
        let args = self.args(op);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self
            .r()
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGKILL,
        );
        let o = child.wait_with_output().unwrap();
        self.tried += 1;
        if o.status.signal() == Some(9) {
            self.killed += 1;
        } else {
            assert!(
                o.status.success(),
                "{op:?} after {after:?}: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            self.finished += 1;
        }
        let what = format!("{} {op:?} killed after {after:?}", self.rig.driver);
        self.check(op, &what);
    }
}

/// The crash test of one driver.
fn crash_suite(test: &str, rig: Option<Rig>) {
    let Some(rig) = rig else { return };
    let start = Instant::now();
    let per_op = env_num("STRATA_RELIABILITY_KILLS", 24);
    let mut c = Crash::new(&rig);
    let mut timings = Vec::new();
    for op in OPS {
        let full = c.measure(op);
        timings.push(format!("{op:?} {full:.0?}"));
        for step in op.steps(&rig.driver) {
            c.kill_at_step(op, step);
        }
        for k in 0..per_op {
            c.kill_after(op, full * (k as u32 + 1) / (per_op as u32 + 1));
        }
    }
    // The end: base still complete, and removable.
    if r_has(&rig.r, "t") {
        rig.r.ok(&["rm", "t"]);
    }
    rig.r.ok(&["rm", "base"]);
    rig.repair_and_check(test);
    assert!(rig.r.ls().is_empty());
    rig.assert_nothing_left(test);
    say(&format!(
        "{test}: driver {}: {} kill points tried ({} named steps, {} timed; {} killed, \
         {} finished first), layer complete after {} of them, {} repairs by fsck/open; \
         full runs: {}; {:.1?}",
        rig.driver,
        c.tried,
        c.named,
        c.tried - c.named,
        c.killed,
        c.finished,
        c.kept,
        c.repairs,
        timings.join(", "),
        start.elapsed()
    ));
    assert!(c.tried >= 100, "only {} kill points", c.tried);
}

fn r_has(r: &Root, id: &str) -> bool {
    r.layer(id).is_some()
}

const CRASH_FS: u64 = 1 << 30;

#[test]
fn crash_vfs() {
    crash_suite("crash_vfs", Rig::new("crash_vfs", "vfs", CRASH_FS, ""));
}

#[test]
fn crash_overlay() {
    crash_suite(
        "crash_overlay",
        Rig::new("crash_overlay", "overlay", CRASH_FS, ""),
    );
}

#[test]
fn crash_btrfs() {
    crash_suite(
        "crash_btrfs",
        Rig::new("crash_btrfs", "btrfs", CRASH_FS, ""),
    );
}

#[test]
fn crash_aufs() {
    crash_suite("crash_aufs", Rig::new("crash_aufs", "aufs", CRASH_FS, ""));
}

#[cfg(feature = "vm-tests")]
#[test]
fn crash_devmapper() {
    if !in_vm("crash_devmapper") {
        return;
    }
    crash_suite(
        "crash_devmapper",
        Rig::new("crash_devmapper", "devmapper", 0, &dm_config(256 << 20)),
    );
}

// ---- full filesystem ------------------------------------------------------

/// Import, then apply, of a tar bigger than the filesystem.
fn full_suite(test: &str, rig: Option<Rig>, big_bytes: usize) {
    let Some(rig) = rig else { return };
    let start = Instant::now();
    let r = &rig.r;
    let base_tar = tree_tar(r, "base", "b", 20, 2000, 1);
    r.ok(&["import", "--id", "base", base_tar.to_str().unwrap()]);
    let base = r.layer("base").unwrap();
    let files = big_bytes.div_ceil(4 << 20);
    let big = tree_tar(r, "big", "big", files, 4 << 20, 7);
    nix::unistd::sync();
    let free_before = rig.free();

    // Exit 1 and the error as the last line (a warning may come before it:
    // on btrfs the record of the failed layer cannot be deleted until the
    // filesystem frees the removed subvolume; the next open does it).
    let fails = |args: &[&str]| -> String {
        let o = r.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{test}: {args:?}: {err}");
        let last = err.trim_end().lines().last().unwrap_or("").to_string();
        assert!(last.starts_with("strata: "), "{test}: {args:?}: {err}");
        last
    };
    let no_space = |err: &str, what: &str| {
        assert!(
            err.contains("No space left on device")
                || err.contains("ENOSPC")
                || (rig.driver == "devmapper" && err.contains("free space")),
            "{test}: {what}: the error does not name ENOSPC: {err}"
        );
    };
    // Import: fails, leaves nothing.
    let err = fails(&[
        "import",
        "--parent",
        "base",
        "--id",
        "big",
        big.to_str().unwrap(),
    ]);
    no_space(&err, "import");
    rig.assert_space_back(free_before, &format!("{test}: the failed import"));
    let ids: Vec<_> = r.ls().iter().map(|l| l["id"].clone()).collect();
    assert_eq!(ids, ["base"], "{test}: after the failed import");
    rig.repair_and_check(&format!("{test}: after the failed import"));
    let out = r.ok(&["fsck"]);
    assert!(out.contains("clean: 1 records, 1 driver layers"), "{out}");

    // Apply into a layer: fails, the layer's digest stays cleared, and
    // removing it gives the space back.
    r.ok(&["create", "--parent", "base", "x"]);
    let err = fails(&["apply", "x", big.to_str().unwrap()]);
    no_space(&err, "apply");
    let x = r.layer("x").unwrap();
    assert_eq!(x["state"], "ready", "{x}");
    assert!(
        x["digest"].is_null(),
        "{test}: partial apply has a digest: {x}"
    );
    rig.repair_and_check(&format!("{test}: after the failed apply"));
    r.ok(&["rm", "x"]);
    rig.assert_space_back(free_before, &format!("{test}: rm after the failed apply"));

    // The store still works, the earlier layer is intact.
    assert_eq!(r.layer("base").unwrap()["digest"], base["digest"]);
    r.ok(&[
        "import",
        "--parent",
        "base",
        "--id",
        "again",
        base_tar.to_str().unwrap(),
    ]);
    let path = PathBuf::from(r.ok(&["mount", "again"]).trim());
    assert!(path.join("b/f0019").is_file());
    r.ok(&["unmount", "again"]);
    rig.repair_and_check(test);
    r.ok(&["rm", "again"]);
    r.ok(&["rm", "base"]);
    rig.assert_nothing_left(test);
    say(&format!(
        "{test}: driver {}: import and apply of {} MiB hit ENOSPC cleanly \
         ({} MiB free before); {:.1?}",
        rig.driver,
        files * 4,
        free_before >> 20,
        start.elapsed()
    ));
}

const FULL_FS: u64 = 64 << 20;

#[test]
fn full_vfs() {
    full_suite(
        "full_vfs",
        Rig::new("full_vfs", "vfs", FULL_FS, ""),
        80 << 20,
    );
}

#[test]
fn full_overlay() {
    full_suite(
        "full_overlay",
        Rig::new("full_overlay", "overlay", FULL_FS, ""),
        80 << 20,
    );
}

#[test]
fn full_btrfs() {
    full_suite(
        "full_btrfs",
        Rig::new("full_btrfs", "btrfs", 2 * FULL_FS, ""),
        80 << 20,
    );
}

#[test]
fn full_aufs() {
    full_suite(
        "full_aufs",
        Rig::new("full_aufs", "aufs", FULL_FS, ""),
        80 << 20,
    );
}

#[cfg(feature = "vm-tests")]
#[test]
fn full_devmapper() {
    if !in_vm("full_devmapper") {
        return;
    }
    full_suite(
        "full_devmapper",
        Rig::new("full_devmapper", "devmapper", 0, &dm_config(FULL_FS)),
        80 << 20,
    );
}

// ---- concurrency ----------------------------------------------------------

/// What one worker did.
#[derive(Default)]
struct Tally {
    ops: usize,
    refused: usize,
    by_kind: std::collections::BTreeMap<&'static str, usize>,
}

/// A worker's own layer.
struct Own {
    id: String,
    rw: bool,
    mounted: Option<PathBuf>,
}

/// One worker: `ops` random commands (seeded by `w`) on its own layers and
/// the shared ones.
fn worker(r: &Root, w: usize, ops: usize, tar: &Path) -> Tally {
    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 * 7919 + 1);
    let mut own: Vec<Own> = Vec::new();
    let mut shared_mounts = 0;
    let mut t = Tally::default();
    let out = r.path(&format!("w{w}.tar"));
    let run = |t: &mut Tally, kind: &'static str, args: &[&str]| -> String {
        t.ops += 1;
        *t.by_kind.entry(kind).or_default() += 1;
        r.ok(args)
    };
    for i in 0..ops {
        let unmounted: Vec<usize> = (0..own.len())
            .filter(|&k| own[k].mounted.is_none())
            .collect();
        let mounted: Vec<usize> = (0..own.len())
            .filter(|&k| own[k].mounted.is_some())
            .collect();
        let writable: Vec<usize> = mounted.iter().copied().filter(|&k| own[k].rw).collect();
        let mut kinds: Vec<&'static str> = vec!["diff-shared"];
        if own.len() < 3 {
            kinds.extend(["create", "create", "import"]);
        }
        if !unmounted.is_empty() {
            kinds.extend(["mount", "rm", "diff"]);
        }
        if !mounted.is_empty() {
            kinds.extend(["unmount", "diff"]);
        }
        if !writable.is_empty() {
            kinds.extend(["write", "write"]);
        }
        if shared_mounts < 2 {
            kinds.push("mount-shared");
        }
        if shared_mounts > 0 {
            kinds.push("unmount-shared");
        }
        if i % 10 == 5 {
            kinds = vec!["rm-in-use"];
        }
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let pick = |rng: &mut rand::rngs::StdRng, v: &[usize]| v[rng.gen_range(0..v.len())];
        match kind {
            "create" => {
                let id = format!("w{w}-{i}");
                run(&mut t, kind, &["create", "--rw", "--parent", "shared", &id]);
                own.push(Own {
                    id,
                    rw: true,
                    mounted: None,
                });
            }
            "import" => {
                let id = format!("w{w}-{i}");
                run(
                    &mut t,
                    kind,
                    &[
                        "import",
                        "--parent",
                        "base",
                        "--id",
                        &id,
                        tar.to_str().unwrap(),
                    ],
                );
                own.push(Own {
                    id,
                    rw: false,
                    mounted: None,
                });
            }
            "mount" => {
                let k = pick(&mut rng, &unmounted);
                let p = run(&mut t, kind, &["mount", &own[k].id]);
                own[k].mounted = Some(PathBuf::from(p.trim()));
            }
            "unmount" => {
                let k = pick(&mut rng, &mounted);
                run(&mut t, kind, &["unmount", &own[k].id]);
                own[k].mounted = None;
            }
            "write" => {
                let k = pick(&mut rng, &writable);
                let p = own[k].mounted.as_ref().unwrap().join(format!("f{i}"));
                t.ops += 1;
                *t.by_kind.entry(kind).or_default() += 1;
                std::fs::write(&p, format!("worker {w} op {i}"))
                    .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            }
            "diff" => {
                let k = rng.gen_range(0..own.len());
                run(
                    &mut t,
                    kind,
                    &["diff", "-o", out.to_str().unwrap(), &own[k].id],
                );
            }
            "diff-shared" => {
                run(
                    &mut t,
                    kind,
                    &["diff", "-o", out.to_str().unwrap(), "shared"],
                );
            }
            "rm" => {
                let k = pick(&mut rng, &unmounted);
                run(&mut t, kind, &["rm", &own[k].id]);
                own.remove(k);
            }
            "mount-shared" => {
                run(&mut t, kind, &["mount", "shared"]);
                shared_mounts += 1;
            }
            "unmount-shared" => {
                run(&mut t, kind, &["unmount", "shared"]);
                shared_mounts -= 1;
            }
            "rm-in-use" => {
                // `shared` always has the child `pin`; `base` has `shared`.
                let id = if rng.gen_bool(0.5) { "shared" } else { "base" };
                t.ops += 1;
                t.refused += 1;
                *t.by_kind.entry(kind).or_default() += 1;
                let err = r.fails(&["rm", id], 1);
                assert!(
                    err.contains("has children") || err.contains("busy"),
                    "rm {id}: not a clear refusal: {err}"
                );
            }
            _ => unreachable!(),
        }
    }
    for o in own {
        if o.mounted.is_some() {
            r.ok(&["unmount", &o.id]);
        }
        r.ok(&["rm", &o.id]);
    }
    for _ in 0..shared_mounts {
        r.ok(&["unmount", "shared"]);
    }
    t
}

fn concurrent_suite(test: &str, rig: Option<Rig>) {
    let Some(rig) = rig else { return };
    let start = Instant::now();
    let procs = env_num("STRATA_RELIABILITY_PROCS", 16);
    let ops = env_num("STRATA_RELIABILITY_OPS", 200);
    let r = &rig.r;
    let base_tar = tree_tar(r, "base", "b", 20, 2000, 1);
    let small = tree_tar(r, "small", "s", 5, 1000, 5);
    r.ok(&["import", "--id", "base", base_tar.to_str().unwrap()]);
    r.ok(&["create", "--parent", "base", "shared"]);
    r.ok(&["create", "--parent", "shared", "pin"]);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..procs)
            .map(|w| {
                let small = &small;
                s.spawn(move || worker(r, w, ops, small))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ls = r.ls();
    let ids: Vec<_> = ls.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["base", "pin", "shared"], "{test}: {ls:?}");
    for l in &ls {
        assert_eq!(l["state"], "ready", "{l}");
        assert_eq!(l["mount_count"], 0, "{l}");
    }
    let out = r.ok(&["fsck", "--verify"]);
    assert!(out.contains("clean"), "{test}: fsck --verify: {out}");
    rig.assert_nothing_left(test);
    let total: usize = tallies.iter().map(|t| t.ops).sum();
    let refused: usize = tallies.iter().map(|t| t.refused).sum();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for t in &tallies {
        for (k, n) in &t.by_kind {
            *kinds.entry(k).or_default() += n;
        }
    }
    say(&format!(
        "{test}: driver {}: {procs} processes x {ops} operations: {total} run, \
         {refused} refused as expected (has children / busy), none failed otherwise; \
         {kinds:?}; {:.1?}",
        rig.driver,
        start.elapsed()
    ));
}

#[test]
fn concurrent_vfs() {
    concurrent_suite(
        "concurrent_vfs",
        Rig::new("concurrent_vfs", "vfs", CRASH_FS, ""),
    );
}

#[test]
fn concurrent_overlay() {
    concurrent_suite(
        "concurrent_overlay",
        Rig::new("concurrent_overlay", "overlay", CRASH_FS, ""),
    );
}

#[test]
fn concurrent_btrfs() {
    concurrent_suite(
        "concurrent_btrfs",
        Rig::new("concurrent_btrfs", "btrfs", CRASH_FS, ""),
    );
}

#[test]
fn concurrent_aufs() {
    concurrent_suite(
        "concurrent_aufs",
        Rig::new("concurrent_aufs", "aufs", CRASH_FS, ""),
    );
}

#[cfg(feature = "vm-tests")]
#[test]
fn concurrent_devmapper() {
    if !in_vm("concurrent_devmapper") {
        return;
    }
    concurrent_suite(
        "concurrent_devmapper",
        Rig::new(
            "concurrent_devmapper",
            "devmapper",
            0,
            &dm_config(256 << 20),
        ),
    );
}
