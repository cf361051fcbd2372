//! `strata compare` through the real binary: a tiny run writes the table,
//! JSON, charts and report and leaves nothing mounted or attached; SIGINT
//! in the middle of a run leaves nothing behind and exits non-zero
//! promptly; and the peak RSS of importing a 1 GiB layer stays under
//! 64 MiB (`/usr/bin/time -v`).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_benches::scratch::{detach_loops_under, loops_under, mounts_under, unmount_under};

/// The directories of one compare run; on drop (also when the test fails)
/// kills a still-running child and releases whatever is left under the
/// scratch directory, so a failing test does not leak either.
struct Run {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: tempfile::Builder::new()
                .prefix("strata-cmp-test-")
                .tempdir()
                .unwrap(),
            child: None,
        }
    }
    fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(strata());
        c.arg("compare")
            .arg("--out")
            .arg(self.out())
            .arg("--scratch")
            .arg(self.scratch())
            .arg("--no-containers-storage")
            .args(args)
            .stdin(Stdio::null());
        c
    }
    /// Asserts nothing of the run is left: no mount and no loop device
    /// under the scratch directory, and the scratch directory is empty.
    fn assert_clean(&self) {
        let s = self.scratch();
        assert_eq!(
            mounts_under(&s).unwrap(),
            Vec::<PathBuf>::new(),
            "mounts left"
        );
        assert_eq!(loops_under(&s).unwrap(), Vec::<String>::new(), "loops left");
        let out = Command::new("losetup").arg("-a").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains(s.to_str().unwrap()),
            "losetup -a still lists the scratch images:\n{text}"
        );
        if s.exists() {
            let left: Vec<_> = std::fs::read_dir(&s)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert!(left.is_empty(), "scratch not removed: {left:?}");
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let s = self.scratch();
        let _ = unmount_under(&s);
        let _ = detach_loops_under(&s);
    }
}

fn need_tool(test: &str, tool: &str) -> bool {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
    if found {
        return true;
    }
    let why = format!("{test}: skipped: {tool} is not installed");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true requires every condition");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{why}");
    false
}

#[test]
fn tiny_run_writes_every_output_and_leaves_nothing() {
    let test = "tiny_run_writes_every_output_and_leaves_nothing";
    if !need_root(test) || !need_tool(test, "mkfs.btrfs") {
        return;
    }
    let run = Run::new();
    let out = run
        .cmd(&[
            "--json",
            "--size",
            "tiny",
            "--drivers",
            "overlay,btrfs,devmapper",
            "--workload",
            "import",
            "--workload",
            "read",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compare failed: {stderr}");
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = js["rows"].as_array().unwrap();
    for (target, figure) in [
        ("overlay", "import"),
        ("overlay", "read"),
        ("overlay", "stat"),
        ("btrfs", "import"),
        ("btrfs", "read"),
    ] {
        let row = rows
            .iter()
            .find(|r| r["target"] == target && r["figure"] == figure)
            .unwrap_or_else(|| panic!("no {target} {figure} row in {js}"));
        assert!(row["seconds"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["reference"]["seconds"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["peak_rss_kib"].as_u64().unwrap() > 0, "{row}");
    }
    let targets = js["targets"].as_array().unwrap();
    let dm = targets.iter().find(|t| t["name"] == "devmapper").unwrap();
    assert_eq!(dm["run"], false, "{dm}");
    assert!(!dm["reason"].as_str().unwrap().is_empty(), "{dm}");
    assert_eq!(js["containers_storage"]["run"], false);

    let o = run.out();
    for f in [
        "table.txt",
        "compare.json",
        "report.md",
        "import.svg",
        "read.svg",
    ] {
        let p = o.join(f);
        assert!(p.is_file(), "{} not written", p.display());
    }
    assert!(
        !o.join("churn.svg").exists(),
        "a chart of a workload that did not run"
    );
    let svg = std::fs::read_to_string(o.join("import.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<rect") && svg.trim_end().ends_with("</svg>"));
    let md = std::fs::read_to_string(o.join("report.md")).unwrap();
    assert!(
        md.contains("![import](import.svg)") && md.contains("![read](read.svg)"),
        "{md}"
    );
    assert!(md.contains("devmapper: not run"), "{md}");
    let table = std::fs::read_to_string(o.join("table.txt")).unwrap();
    assert!(
        table.contains("tar -x + sync") && table.contains("plain directory"),
        "{table}"
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o.join("compare.json")).unwrap()).unwrap();
    assert_eq!(saved, js);
    run.assert_clean();

    // The terminal table, when --json is not given.
    let run2 = Run::new();
    let out = run2
        .cmd(&["--size", "tiny", "--drivers", "vfs", "--workload", "churn"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ratio") && stdout.contains("vfs") && stdout.contains("churn"),
        "{stdout}"
    );
    run2.assert_clean();
}

#[test]
fn sigint_mid_run_leaves_nothing_and_exits_non_zero() {
    let test = "sigint_mid_run_leaves_nothing_and_exits_non_zero";
    if !need_root(test) || !need_tool(test, "mkfs.btrfs") {
        return;
    }
    let mut run = Run::new();
    let child = run
        .cmd(&["--size", "small", "--drivers", "btrfs,overlay"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    run.child = Some(child);
    // Wait until the run has its btrfs image attached and mounted.
    let t = Instant::now();
    loop {
        let s = run.scratch();
        if !loops_under(&s).unwrap().is_empty() && !mounts_under(&s).unwrap().is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the run never mounted its scratch filesystem"
        );
        if let Some(st) = run.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("compare ended before it could be interrupted: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let it get into a workload, then interrupt.
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    // A second Ctrl-C while it cleans up must not make it leak.
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = run.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "compare did not exit within 30 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read as _;
    let mut pipe = run.child.as_mut().unwrap().stderr.take().unwrap();
    pipe.read_to_string(&mut err).unwrap();
    assert!(
        !status.success(),
        "exit status {status} after SIGINT; {err}"
    );
    assert!(err.contains("interrupted"), "{err}");
    run.assert_clean();
}

#[test]
fn import_of_a_1gib_layer_peaks_under_64mib_rss() {
    let test = "import_of_a_1gib_layer_peaks_under_64mib_rss";
    if !need_root(test) || !need_tool(test, "time") {
        return;
    }
    let r = Root::new();
    // One 1 GiB file of incompressible data and a few small ones.
    let src = r.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    {
        use std::io::Write as _;
        let f = std::fs::File::create(src.join("d/big")).unwrap();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            w.write_all(&buf).unwrap();
        }
        w.flush().unwrap();
        for i in 0..10 {
            std::fs::write(src.join(format!("d/small{i}")), format!("{i}\n")).unwrap();
        }
    }
    let tar = r.path("big.tar");
    make_tar(&src, &["d"], &tar, false);
    std::fs::remove_dir_all(&src).unwrap();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(strata())
        .args(["--config"])
        .arg(&r.config)
        .arg("--root")
        .arg(&r.root)
        .args(["--driver", "vfs", "import", "--id", "big"])
        .arg(&tar)
        .env_remove("STRATA_CONFIG")
        .env_remove("STRATA_ROOT")
        .env_remove("STRATA_DRIVER")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let kib: u64 = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .unwrap_or_else(|| panic!("no maximum RSS in: {err}"))
        .trim()
        .parse()
        .unwrap();
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "{test}: import of a 1 GiB layer: peak RSS {kib} KiB ({:.1} MiB)",
            kib as f64 / 1024.0
        );
    }
    assert!(kib < 64 * 1024, "peak RSS {kib} KiB is over 64 MiB");
    r.ok(&["rm", "big"]);
}
