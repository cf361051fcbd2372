//! `strata serve` as containerd's snapshotter.
//!
//! - `snapshotter_suite_*`: the scenarios of containerd's snapshotter test
//!   suite, run through the gRPC API (a tonic client on the socket) against
//!   a real `strata serve` per driver (vfs, overlay), the returned mounts
//!   made with `mount(8)` as containerd would; then a SIGTERM with a
//!   request in flight, and a restarted server serving the same snapshots.
//! - `containerd_runs_containers`: a private containerd (own root, state,
//!   socket and config, one `[proxy_plugins.strata-<driver>]` per driver)
//!   imports an OCI image archive built here (a static busybox in layer 1;
//!   layer 2 changes and deletes files) into each driver the host runs
//!   (vfs, overlay, aufs, btrfs on a loop btrfs), runs a container that
//!   reads the files and writes one, and the test reads the container's
//!   snapshot back with `strata changes`. devmapper: not on this host (no
//!   device-mapper in the kernel; containerd in the VM is out of scope).
//!
//! Everything runs on loop-mounted scratch filesystems; containerd, its
//! shims, the servers, the FUSE servers and every mount are torn down by
//! guards, also when a test fails. Needs root, containerd, runc and a
//! static busybox (installed with apt when missing); without them the tests
//! print why and skip, and under `CI=true` they fail instead.

mod common;

use anyhow::{bail, ensure, Context, Result};
use containerd_snapshots::api::snapshots::v1::{
    snapshots_client::SnapshotsClient, CleanupRequest, CommitSnapshotRequest, Info,
    ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use containerd_snapshots::api::types::Mount;
use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use strata_conformance::fixtures::LoopFs;
use tonic::transport::Channel;
use tonic::Code;

// ---- skips -----------------------------------------------------------------

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Prints why the test is skipped; under `CI=true` fails it instead.
fn skip(test: &str, why: &str) {
    if ci() {
        panic!("{test}: {why}, and CI=true requires every condition");
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn busybox_static() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "busybox-static"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        && Path::new("/bin/busybox").exists()
}

/// containerd, ctr, runc and a static busybox: installs the Debian packages
/// when one is missing. `Err` says what is still missing.
fn ensure_packages() -> Result<(), String> {
    let missing = || {
        let mut m: Vec<&str> = ["containerd", "ctr", "runc"]
            .into_iter()
            .filter(|t| !have(t))
            .collect();
        if !busybox_static() {
            m.push("busybox-static");
        }
        m
    };
    if missing().is_empty() {
        return Ok(());
    }
    let _ = writeln!(
        std::io::stderr(),
        "installing containerd, runc and busybox-static with apt (missing: {:?})",
        missing()
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let mut o = apt(&[
        "install",
        "-y",
        "-qq",
        "containerd",
        "runc",
        "busybox-static",
    ]);
    if !o.as_ref().is_ok_and(|o| o.status.success()) {
        let _ = apt(&["update", "-qq"]);
        o = apt(&[
            "install",
            "-y",
            "-qq",
            "containerd",
            "runc",
            "busybox-static",
        ]);
    }
    let left = missing();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {left:?} and apt-get could not install them ({})",
            match o {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            }
        ))
    }
}

// ---- processes -------------------------------------------------------------

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Waits for `child` up to `limit`, then kills it.
fn stop_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Processes whose command line mentions `needle` (the shims of our
/// containerd, strata's FUSE servers of our roots): killed by pid.
fn kill_processes_mentioning(needle: &str) {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A running `strata serve`; stopped (SIGTERM, then SIGKILL) on drop.
struct Server {
    child: Option<Child>,
    root: PathBuf,
    driver: String,
    sock: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(root: &Path, driver: &str, sock: &Path) -> Result<Server> {
        let log = root.with_extension("log");
        let config = root.with_extension("toml");
        std::fs::write(&config, "")?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(common::strata())
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(root)
            .args(["--driver", driver, "serve", "--address"])
            .arg(sock)
            .env_remove("STRATA_CONFIG")
            .env_remove("STRATA_ROOT")
            .env_remove("STRATA_DRIVER")
            .env("RUST_LOG", "strata_serve=debug,info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn strata serve")?;
        let mut s = Server {
            child: Some(child),
            root: root.to_path_buf(),
            driver: driver.to_string(),
            sock: sock.to_path_buf(),
            log,
        };
        let start = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(sock).is_ok() {
                return Ok(s);
            }
            if let Some(st) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                s.child = None;
                bail!("strata serve exited with {st}: {}", s.log_text());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("strata serve did not listen within 60 s: {}", s.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: the exit status (None if it had to be killed).
    fn stop(&mut self) -> Option<ExitStatus> {
        self.child
            .take()
            .and_then(|mut c| stop_child(&mut c, Duration::from_secs(30)))
    }

    /// `strata ARGS` on this server's root (another process on the store).
    fn strata(&self, args: &[&str]) -> Result<String> {
        let o = Command::new(common::strata())
            .arg("--config")
            .arg(self.root.with_extension("toml"))
            .arg("--root")
            .arg(&self.root)
            .args(["--driver", &self.driver])
            .args(args)
            .env_remove("STRATA_CONFIG")
            .env_remove("STRATA_ROOT")
            .env_remove("STRATA_DRIVER")
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            o.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8(o.stdout)?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The scratch filesystem and everything under it: on drop kills what
/// runs from it, unmounts every mount under it, then the loop device goes.
struct Scratch {
    fs: Option<LoopFs>,
}

impl Scratch {
    fn new(kind: &str, size: u64) -> Result<Scratch> {
        Ok(Scratch {
            fs: Some(LoopFs::new(kind, size)?),
        })
    }
    fn path(&self) -> &Path {
        self.fs.as_ref().expect("mounted").path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let p = self.path().to_path_buf();
        kill_processes_mentioning(&p.to_string_lossy());
        for m in common::mounts_under(&p) {
            if m != p {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        self.fs.take();
    }
}

// ---- the gRPC client -------------------------------------------------------

/// A snapshotter client on a socket.
#[derive(Clone)]
struct Snap {
    c: SnapshotsClient<Channel>,
}

type Rpc<T> = std::result::Result<T, tonic::Status>;

const ACTIVE: i32 = 2;
const VIEW: i32 = 1;
const COMMITTED: i32 = 3;

impl Snap {
    async fn connect(sock: &Path) -> Result<Snap> {
        let sock = sock.to_path_buf();
        let ch = tonic::transport::Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                tokio::net::UnixStream::connect(sock.clone())
            }))
            .await?;
        Ok(Snap {
            c: SnapshotsClient::new(ch),
        })
    }
    async fn prepare_l(&self, key: &str, parent: &str, labels: &[(&str, &str)]) -> Rpc<Vec<Mount>> {
        let r = PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Ok(self.c.clone().prepare(r).await?.into_inner().mounts)
    }
    async fn prepare(&self, key: &str, parent: &str) -> Rpc<Vec<Mount>> {
        self.prepare_l(key, parent, &[]).await
    }
    async fn view(&self, key: &str, parent: &str) -> Rpc<Vec<Mount>> {
        let r = ViewSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        Ok(self.c.clone().view(r).await?.into_inner().mounts)
    }
    async fn mounts(&self, key: &str) -> Rpc<Vec<Mount>> {
        let r = MountsRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        Ok(self.c.clone().mounts(r).await?.into_inner().mounts)
    }
    async fn commit_l(&self, name: &str, key: &str, labels: &[(&str, &str)]) -> Rpc<()> {
        let r = CommitSnapshotRequest {
            snapshotter: "strata".into(),
            name: name.into(),
            key: key.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.c.clone().commit(r).await.map(|_| ())
    }
    async fn commit(&self, name: &str, key: &str) -> Rpc<()> {
        self.commit_l(name, key, &[]).await
    }
    async fn remove(&self, key: &str) -> Rpc<()> {
        let r = RemoveSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        self.c.clone().remove(r).await.map(|_| ())
    }
    async fn stat(&self, key: &str) -> Rpc<Info> {
        let r = StatSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        self.c
            .clone()
            .stat(r)
            .await?
            .into_inner()
            .info
            .ok_or_else(|| tonic::Status::internal("no info"))
    }
    async fn update(&self, name: &str, labels: &[(&str, &str)], paths: &[&str]) -> Rpc<Info> {
        let info = Info {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let r = UpdateSnapshotRequest {
            snapshotter: "strata".into(),
            info: Some(info),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|s| s.to_string()).collect(),
            }),
        };
        self.c
            .clone()
            .update(r)
            .await?
            .into_inner()
            .info
            .ok_or_else(|| tonic::Status::internal("no info"))
    }
    async fn usage(&self, key: &str) -> Rpc<(i64, i64)> {
        let r = UsageRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        let u = self.c.clone().usage(r).await?.into_inner();
        Ok((u.size, u.inodes))
    }
    async fn list(&self, filters: &[&str]) -> Rpc<BTreeSet<String>> {
        let r = ListSnapshotsRequest {
            snapshotter: "strata".into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
        };
        let mut stream = self.c.clone().list(r).await?.into_inner();
        let mut out = BTreeSet::new();
        while let Some(page) = stream.message().await? {
            out.extend(page.info.into_iter().map(|i| i.name));
        }
        Ok(out)
    }
    async fn cleanup(&self) -> Rpc<()> {
        let r = CleanupRequest {
            snapshotter: "strata".into(),
        };
        self.c.clone().cleanup(r).await.map(|_| ())
    }
}

fn code<T: std::fmt::Debug>(r: Rpc<T>, want: &[Code], what: &str) -> Result<()> {
    match r {
        Err(s) if want.contains(&s.code()) => Ok(()),
        other => bail!("{what}: expected {want:?}, got {other:?}"),
    }
}

// ---- mounting what the server returns ----------------------------------------

/// The returned mounts made at a target, as containerd would; unmounted on
/// drop.
struct Mounted {
    target: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Mounted {
    fn new(mounts: &[Mount], under: &Path) -> Result<Mounted> {
        let target = under.join(format!("m{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&target)?;
        let me = Mounted { target };
        ensure!(!mounts.is_empty(), "no mounts returned");
        for m in mounts {
            mount_one(m, &me.target)?;
        }
        Ok(me)
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in common::mounts_under(&self.target) {
            if nix::mount::umount2(&m, nix::mount::MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir(&self.target);
    }
}

/// `mount(8)` of one containerd mount. Overlay options longer than a page
/// are made relative to the lower directories' common parent and mounted
/// from there (what containerd does too).
fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let mut cmd = Command::new("mount");
    let mut options = m.options.clone();
    if m.r#type == "overlay" && options.join(",").len() > 4000 {
        let paths: Vec<String> = options
            .iter()
            .flat_map(|o| {
                let v = o.split_once('=').map(|(_, v)| v).unwrap_or("");
                match o.split_once('=').map(|(k, _)| k) {
                    Some("lowerdir" | "upperdir" | "workdir") => {
                        v.split(':').map(str::to_string).collect()
                    }
                    _ => Vec::new(),
                }
            })
            .collect();
        let mut common = PathBuf::from(&paths[0]);
        while !paths.iter().all(|p| Path::new(p).starts_with(&common)) {
            common = common.parent().context("no common parent")?.to_path_buf();
        }
        let rel = |v: &str| {
            v.split(':')
                .map(|p| {
                    Path::new(p)
                        .strip_prefix(&common)
                        .map(|r| r.display().to_string())
                        .unwrap_or_else(|_| p.to_string())
                })
                .collect::<Vec<_>>()
                .join(":")
        };
        options = options
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k @ ("lowerdir" | "upperdir" | "workdir"), v)) => format!("{k}={}", rel(v)),
                _ => o.clone(),
            })
            .collect();
        cmd.current_dir(&common);
    }
    if m.r#type != "bind" {
        cmd.args(["-t", &m.r#type]);
    }
    if !options.is_empty() {
        cmd.arg("-o").arg(options.join(","));
    }
    let o = cmd.arg(&m.source).arg(target).output()?;
    ensure!(
        o.status.success(),
        "mount {m:?} on {}: {}",
        target.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

fn write(p: PathBuf, s: &str) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&p, s).with_context(|| format!("write {}", p.display()))
}

fn read(p: PathBuf) -> Result<String> {
    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
}

fn names(dir: PathBuf) -> Result<BTreeSet<String>> {
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("readdir {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?)
}

// ---- the scenarios of containerd's snapshotter suite --------------------------

/// Prepare, write, commit, prepare on it, change, commit, view: the view
/// shows the second commit; Stat reports kinds and parents.
async fn basic(s: &Snap, w: &Path) -> Result<()> {
    let m = s.prepare("basic/a1", "").await?;
    {
        let g = Mounted::new(&m, w)?;
        write(g.p("foo"), "foo1")?;
        write(g.p("dir/bar"), "bar")?;
        write(g.p("gone"), "x")?;
    }
    let i = s.stat("basic/a1").await?;
    ensure!(
        i.kind == ACTIVE && i.parent.is_empty(),
        "stat active: {i:?}"
    );
    s.commit("basic/c1", "basic/a1").await?;
    let i = s.stat("basic/c1").await?;
    ensure!(
        i.kind == COMMITTED && i.name == "basic/c1" && i.parent.is_empty(),
        "{i:?}"
    );
    code(
        s.stat("basic/a1").await,
        &[Code::NotFound],
        "stat of a committed key",
    )?;
    let m = s.prepare("basic/a2", "basic/c1").await?;
    {
        let g = Mounted::new(&m, w)?;
        ensure!(read(g.p("foo"))? == "foo1");
        std::fs::remove_file(g.p("gone"))?;
        write(g.p("foo"), "foo2")?;
        write(g.p("new"), "new")?;
    }
    let i = s.stat("basic/a2").await?;
    ensure!(i.kind == ACTIVE && i.parent == "basic/c1", "{i:?}");
    s.commit("basic/c2", "basic/a2").await?;
    let m = s.view("basic/v", "basic/c2").await?;
    ensure!(s.stat("basic/v").await?.kind == VIEW);
    {
        let g = Mounted::new(&m, w)?;
        ensure!(read(g.p("foo"))? == "foo2");
        ensure!(read(g.p("new"))? == "new");
        ensure!(read(g.p("dir/bar"))? == "bar");
        ensure!(!g.p("gone").exists(), "a deleted file shows in the child");
    }
    // Mounts gives the same mounts again.
    ensure!(
        s.mounts("basic/v").await? == m,
        "Mounts differs from View's"
    );
    for k in ["basic/v", "basic/c2", "basic/c1"] {
        s.remove(k).await?;
    }
    Ok(())
}

/// Keys and names share one key space; only committed parents; views
/// cannot be committed.
async fn key_rules(s: &Snap) -> Result<()> {
    s.prepare("rules/a", "").await?;
    code(
        s.prepare("rules/a", "").await,
        &[Code::AlreadyExists],
        "prepare twice",
    )?;
    code(
        s.view("rules/a", "").await,
        &[Code::AlreadyExists],
        "view on a taken key",
    )?;
    code(
        s.prepare("rules/x", "rules/missing").await,
        &[Code::NotFound],
        "a missing parent",
    )?;
    code(
        s.prepare("rules/y", "rules/a").await,
        &[Code::InvalidArgument, Code::FailedPrecondition],
        "an active parent",
    )?;
    s.commit("rules/c", "rules/a").await?;
    code(
        s.prepare("rules/c", "").await,
        &[Code::AlreadyExists],
        "a key equal to a name",
    )?;
    s.prepare("rules/b", "").await?;
    code(
        s.commit("rules/c", "rules/b").await,
        &[Code::AlreadyExists],
        "commit to a taken name",
    )?;
    s.prepare("rules/d", "").await?;
    code(
        s.commit("rules/b", "rules/d").await,
        &[Code::AlreadyExists],
        "commit onto an active key",
    )?;
    s.view("rules/v", "rules/c").await?;
    code(
        s.commit("rules/vc", "rules/v").await,
        &[Code::FailedPrecondition],
        "commit a view",
    )?;
    code(
        s.commit("rules/cc", "rules/c").await,
        &[Code::FailedPrecondition],
        "commit a committed",
    )?;
    code(
        s.commit("rules/z", "rules/none").await,
        &[Code::NotFound],
        "commit a missing key",
    )?;
    code(
        s.prepare("", "").await,
        &[Code::InvalidArgument],
        "an empty key",
    )?;
    for k in ["rules/v", "rules/b", "rules/d", "rules/c"] {
        s.remove(k).await?;
    }
    Ok(())
}

/// A view's mount refuses writes.
async fn view_readonly(s: &Snap, w: &Path) -> Result<()> {
    let m = s.prepare("ro/a", "").await?;
    {
        let g = Mounted::new(&m, w)?;
        write(g.p("f"), "x")?;
    }
    s.commit("ro/c", "ro/a").await?;
    let m = s.view("ro/v", "ro/c").await?;
    {
        let g = Mounted::new(&m, w)?;
        let e = std::fs::write(g.p("new"), "y").expect_err("a write into a view");
        ensure!(
            e.raw_os_error() == Some(libc::EROFS),
            "write into a view: {e}"
        );
        ensure!(read(g.p("f"))? == "x");
    }
    s.remove("ro/v").await?;
    s.remove("ro/c").await?;
    Ok(())
}

/// Labels change by field path; nothing else can; times move.
async fn update(s: &Snap) -> Result<()> {
    s.prepare_l("upd/a", "", &[("a", "1"), ("b", "2")]).await?;
    let i0 = s.stat("upd/a").await?;
    ensure!(
        i0.labels.get("a").map(String::as_str) == Some("1") && i0.labels.len() == 2,
        "{i0:?}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let i1 = s
        .update(
            "upd/a",
            &[("a", "10"), ("c", "3")],
            &["labels.a", "labels.c", "labels.b"],
        )
        .await?;
    let want: HashMap<String, String> = [("a", "10"), ("c", "3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ensure!(i1.labels == want, "labels after update: {:?}", i1.labels);
    ensure!(i1.created_at == i0.created_at, "created changed");
    ensure!(i1.updated_at != i0.updated_at, "updated did not change");
    ensure!(
        s.stat("upd/a").await?.labels == want,
        "labels not persisted"
    );
    let i2 = s.update("upd/a", &[("z", "1")], &["labels"]).await?;
    ensure!(
        i2.labels.len() == 1 && i2.labels["z"] == "1",
        "{:?}",
        i2.labels
    );
    code(
        s.update("upd/a", &[], &["name"]).await,
        &[Code::InvalidArgument],
        "update name",
    )?;
    code(
        s.update("upd/none", &[], &["labels"]).await,
        &[Code::NotFound],
        "update a missing key",
    )?;
    // Labels given at commit are the committed snapshot's.
    s.commit_l("upd/c", "upd/a", &[("k", "v")]).await?;
    ensure!(s.stat("upd/c").await?.labels.get("k").map(String::as_str) == Some("v"));
    s.remove("upd/c").await?;
    Ok(())
}

/// A parent with children cannot go; children first, then parents; a key
/// can be used again.
async fn remove(s: &Snap) -> Result<()> {
    s.prepare("rm/a1", "").await?;
    s.commit("rm/c1", "rm/a1").await?;
    s.prepare("rm/a2", "rm/c1").await?;
    s.commit("rm/c2", "rm/a2").await?;
    s.prepare("rm/a3", "rm/c2").await?;
    code(
        s.remove("rm/c1").await,
        &[Code::FailedPrecondition],
        "remove a grandparent",
    )?;
    code(
        s.remove("rm/c2").await,
        &[Code::FailedPrecondition],
        "remove a parent",
    )?;
    s.stat("rm/c2").await?;
    for k in ["rm/a3", "rm/c2", "rm/c1"] {
        s.remove(k).await?;
    }
    code(s.remove("rm/c1").await, &[Code::NotFound], "remove twice")?;
    s.prepare("rm/c1", "").await?;
    s.remove("rm/c1").await?;
    Ok(())
}

/// Changes across three layers: a file updated twice, a directory
/// removed and recreated (nothing old shows through), a rename out of a
/// lower layer, a deleted file that stays deleted, mode and owner changes.
async fn layers(s: &Snap, w: &Path) -> Result<()> {
    let m = s.prepare("lay/a1", "").await?;
    {
        let g = Mounted::new(&m, w)?;
        write(g.p("f"), "1")?;
        write(g.p("g"), "g")?;
        write(g.p("d/x"), "x")?;
        write(g.p("d/y"), "y")?;
        write(g.p("keep/k"), "k")?;
        write(g.p("mv"), "m")?;
        write(g.p("del"), "del")?;
    }
    s.commit("lay/c1", "lay/a1").await?;
    let m = s.prepare("lay/a2", "lay/c1").await?;
    {
        let g = Mounted::new(&m, w)?;
        std::fs::remove_dir_all(g.p("d"))?;
        write(g.p("d/z"), "z")?;
        std::fs::rename(g.p("mv"), g.p("keep/mv2"))?;
        write(g.p("f"), "2")?;
        std::fs::set_permissions(g.p("g"), std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(g.p("keep/k"), Some(1), Some(1))?;
        std::os::unix::fs::chown(g.p("keep"), Some(1), Some(1))?;
        std::fs::remove_file(g.p("del"))?;
    }
    s.commit("lay/c2", "lay/a2").await?;
    let m = s.prepare("lay/a3", "lay/c2").await?;
    {
        let g = Mounted::new(&m, w)?;
        write(g.p("f"), "3")?;
        ensure!(
            !g.p("del").exists(),
            "a file deleted in layer 2 is back in layer 3"
        );
    }
    s.commit("lay/c3", "lay/a3").await?;
    let m = s.view("lay/v", "lay/c3").await?;
    {
        let g = Mounted::new(&m, w)?;
        ensure!(read(g.p("f"))? == "3");
        let d = names(g.p("d"))?;
        ensure!(
            d == BTreeSet::from(["z".to_string()]),
            "the recreated directory: {d:?}"
        );
        ensure!(
            read(g.p("keep/mv2"))? == "m" && !g.p("mv").exists(),
            "rename from a lower layer"
        );
        ensure!(!g.p("del").exists(), "deleted file");
        let gm = std::fs::metadata(g.p("g"))?;
        ensure!(gm.mode() & 0o7777 == 0o600, "mode {:o}", gm.mode());
        for p in ["keep", "keep/k"] {
            let md = std::fs::metadata(g.p(p))?;
            ensure!(
                (md.uid(), md.gid()) == (1, 1),
                "{p} owner {}:{}",
                md.uid(),
                md.gid()
            );
        }
    }
    for k in ["lay/v", "lay/c3", "lay/c2", "lay/c1"] {
        s.remove(k).await?;
    }
    Ok(())
}

/// 128 layers, one file each, all visible from the top.
async fn deep(s: &Snap, w: &Path) -> Result<()> {
    const N: usize = 128;
    let mut parent = String::new();
    for i in 0..N {
        let key = format!("deep/a{i}");
        let m = s
            .prepare(&key, &parent)
            .await
            .with_context(|| format!("layer {i}"))?;
        {
            let g = Mounted::new(&m, w).with_context(|| format!("mount layer {i}"))?;
            write(g.p(&format!("f{i}")), &i.to_string())?;
        }
        let name = format!("deep/c{i}");
        s.commit(&name, &key).await?;
        parent = name;
    }
    let m = s.view("deep/v", &parent).await?;
    {
        let g = Mounted::new(&m, w)?;
        for i in 0..N {
            ensure!(
                read(g.p(&format!("f{i}")))? == i.to_string(),
                "file of layer {i}"
            );
        }
    }
    s.remove("deep/v").await?;
    for i in (0..N).rev() {
        s.remove(&format!("deep/c{i}")).await?;
    }
    Ok(())
}

/// Walk with containerd's filters: `,` is and, several filters are or.
async fn walk(s: &Snap) -> Result<()> {
    s.prepare_l("walk/a", "", &[("team", "a")]).await?;
    s.commit_l(
        "walk/c1",
        "walk/a",
        &[("team", "a"), ("containerd.io/gc.root", "x")],
    )
    .await?;
    s.prepare_l("walk/b", "walk/c1", &[("team", "b")]).await?;
    s.view("walk/v", "walk/c1").await?;
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let ours = |all: BTreeSet<String>| {
        all.into_iter()
            .filter(|n| n.starts_with("walk/"))
            .collect::<BTreeSet<_>>()
    };
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["walk/b", "walk/c1", "walk/v"]),
        (&["kind==committed"], &["walk/c1"]),
        (&["labels.team==a"], &["walk/c1"]),
        (&[r#"labels."containerd.io/gc.root""#], &["walk/c1"]),
        (&["labels.team==b", "kind==view"], &["walk/b", "walk/v"]),
        (&["kind==active,labels.team==b"], &["walk/b"]),
        (&["kind==active,labels.team==a"], &[]),
        (&[r#"parent=="walk/c1""#], &["walk/b", "walk/v"]),
        (&[r#"name~="^walk/[bv]$""#], &["walk/b", "walk/v"]),
        (&["name==walk/c1"], &["walk/c1"]),
    ];
    for (filters, want) in cases {
        let got = ours(s.list(filters).await?);
        ensure!(
            got == set(want),
            "walk {filters:?}: got {got:?}, want {want:?}"
        );
    }
    for k in ["walk/b", "walk/v", "walk/c1"] {
        s.remove(k).await?;
    }
    Ok(())
}

/// Usage is the snapshot's own data, not its parents'.
async fn usage(s: &Snap, w: &Path) -> Result<()> {
    let m = s.prepare("use/a", "").await?;
    {
        let g = Mounted::new(&m, w)?;
        std::fs::write(g.p("big"), vec![7u8; 1 << 20])?;
        write(g.p("small"), "0123456789")?;
    }
    let (size, inodes) = s.usage("use/a").await?;
    ensure!(
        size >= (1 << 20) + 10 && inodes >= 2,
        "active usage {size} bytes {inodes} inodes"
    );
    s.commit("use/c", "use/a").await?;
    let (csize, cinodes) = s.usage("use/c").await?;
    ensure!(
        (csize, cinodes) == (size, inodes),
        "committed usage {csize} {cinodes}"
    );
    s.prepare("use/b", "use/c").await?;
    let (bsize, binodes) = s.usage("use/b").await?;
    ensure!(
        bsize == 0 && binodes == 0,
        "a fresh child's usage {bsize} {binodes}"
    );
    code(
        s.usage("use/none").await,
        &[Code::NotFound],
        "usage of a missing key",
    )?;
    s.remove("use/b").await?;
    s.remove("use/c").await?;
    Ok(())
}

/// SIGTERM with a Prepare in flight: the Prepare completes, the server
/// exits 0, and a restarted server serves every snapshot as it was.
async fn restart(server: &mut Server, w: &Path) -> Result<()> {
    let s = Snap::connect(&server.sock).await?;
    let m = s.prepare("rs/a", "").await?;
    {
        let g = Mounted::new(&m, w)?;
        write(g.p("kept"), "kept")?;
        for i in 0..1500 {
            write(g.p(&format!("many/{i}")), "x")?;
        }
    }
    s.commit_l("rs/c", "rs/a", &[("k", "v")]).await?;
    // A Prepare on a parent of 1500 files, then SIGTERM while it runs.
    let s2 = s.clone();
    let inflight = tokio::spawn(async move { s2.prepare("rs/b", "rs/c").await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let st = tokio::task::block_in_place(|| server.stop());
    let r = inflight.await?;
    ensure!(
        st.is_some_and(|s| s.success()),
        "exit on SIGTERM: {st:?}: {}",
        server.log_text()
    );
    ensure!(r.is_ok(), "the request in flight at SIGTERM failed: {r:?}");
    let again =
        tokio::task::block_in_place(|| Server::start(&server.root, &server.driver, &server.sock))?;
    *server = again;
    let s = Snap::connect(&server.sock).await?;
    let c = s.stat("rs/c").await?;
    ensure!(
        c.kind == COMMITTED && c.labels.get("k").map(String::as_str) == Some("v"),
        "{c:?}"
    );
    let b = s.stat("rs/b").await?;
    ensure!(b.kind == ACTIVE && b.parent == "rs/c", "{b:?}");
    {
        let g = Mounted::new(&s.mounts("rs/b").await?, w)?;
        ensure!(read(g.p("kept"))? == "kept");
        ensure!(names(g.p("many"))?.len() == 1500);
    }
    s.cleanup().await?;
    s.remove("rs/b").await?;
    s.remove("rs/c").await?;
    ensure!(
        s.list(&[]).await?.is_empty(),
        "snapshots left: {:?}",
        s.list(&[]).await?
    );
    Ok(())
}

fn suite(driver: &str) {
    let test = format!("snapshotter_suite_{driver}");
    if !common::need_root(&test) {
        return;
    }
    let scratch = match Scratch::new("ext4", 2u64 << 30) {
        Ok(s) => s,
        Err(e) => return skip(&test, &format!("no loop ext4: {e:#}")),
    };
    let started = Instant::now();
    let root = scratch.path().join(format!("root-{driver}"));
    let sock = scratch.path().join(format!("{driver}.sock"));
    let work = scratch.path().join("mnt");
    let mut server = Server::start(&root, driver, &sock).expect("strata serve starts");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r: Result<()> = rt.block_on(async {
        let s = Snap::connect(&sock).await?;
        basic(&s, &work).await.context("basic")?;
        key_rules(&s).await.context("key rules")?;
        view_readonly(&s, &work).await.context("view read-only")?;
        update(&s).await.context("update")?;
        remove(&s).await.context("remove")?;
        layers(&s, &work).await.context("layers")?;
        walk(&s).await.context("walk")?;
        usage(&s, &work).await.context("usage")?;
        deep(&s, &work).await.context("128 layers")?;
        restart(&mut server, &work)
            .await
            .context("SIGTERM and restart")?;
        Ok(())
    });
    if let Err(e) = r {
        panic!("{test}: {e:#}\nserver log:\n{}", server.log_text());
    }
    let st = server.stop();
    assert!(st.is_some_and(|s| s.success()), "{test}: stop: {st:?}");
    let ls = Command::new(common::strata())
        .arg("--config")
        .arg(root.with_extension("toml"))
        .arg("--root")
        .arg(&root)
        .args(["--driver", driver, "--json", "ls"])
        .output()
        .unwrap();
    let layers: Vec<serde_json::Value> = serde_json::from_slice(&ls.stdout).unwrap();
    assert!(layers.is_empty(), "{test}: layers left: {layers:?}");
    let _ = writeln!(
        std::io::stderr(),
        "{test}: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn snapshotter_suite_vfs() {
    suite("vfs");
}

#[test]
fn snapshotter_suite_overlay() {
    suite("overlay");
}

// ---- containerd ----------------------------------------------------------------

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// A tar (with `tar(1)`) of the entries under `dir`, sorted, numeric owners.
fn tar_of(dir: &Path, out: &Path) -> Result<Vec<u8>> {
    let o = Command::new("tar")
        .args([
            "--format=pax",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .output()?;
    ensure!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(std::fs::read(out)?)
}

/// An OCI image archive: layer 1 has a static busybox (`/bin/sh` and a few
/// applets) and `/data/{a,b,gone,dir/c}`; layer 2 changes `/data/a`,
/// deletes `/data/gone` and `/data/dir`, adds `/data/new`.
fn build_image(work: &Path, out: &Path) -> Result<()> {
    let l1 = work.join("l1");
    for d in ["bin", "data/dir", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(l1.join(d))?;
    }
    std::fs::copy("/bin/busybox", l1.join("bin/busybox"))?;
    for applet in ["sh", "cat", "echo", "test", "ls", "rm"] {
        std::os::unix::fs::symlink("busybox", l1.join("bin").join(applet))?;
    }
    std::fs::write(l1.join("data/a"), "original a\n")?;
    std::fs::write(l1.join("data/b"), "bee\n")?;
    std::fs::write(l1.join("data/gone"), "to be deleted\n")?;
    std::fs::write(l1.join("data/dir/c"), "ceee\n")?;
    let l2 = work.join("l2");
    std::fs::create_dir_all(l2.join("data"))?;
    std::fs::write(l2.join("data/a"), "changed a\n")?;
    std::fs::write(l2.join("data/new"), "new\n")?;
    std::fs::write(l2.join("data/.wh.gone"), "")?;
    std::fs::write(l2.join("data/.wh.dir"), "")?;
    let layout = work.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |b: &[u8]| -> Result<(String, usize)> {
        let d = sha256(b);
        std::fs::write(blobs.join(&d["sha256:".len()..]), b)?;
        Ok((d, b.len()))
    };
    let t1 = tar_of(&l1, &work.join("l1.tar"))?;
    let t2 = tar_of(&l2, &work.join("l2.tar"))?;
    let (d1, s1) = put(&t1)?;
    let (d2, s2) = put(&t2)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [d1, d2]},
    });
    let (dc, sc) = put(&serde_json::to_vec(&config)?)?;
    let layer = "application/vnd.oci.image.layer.v1.tar";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": sc},
        "layers": [
            {"mediaType": layer, "digest": d1, "size": s1},
            {"mediaType": layer, "digest": d2, "size": s2},
        ],
    });
    let (dm, sm) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": dm, "size": sm,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": IMAGE,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let o = Command::new("tar")
        .args(["--format=pax", "-C"])
        .arg(&layout)
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"])
        .output()?;
    ensure!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

const IMAGE: &str = "docker.io/library/strata-serve-test:latest";

/// A private containerd; stopped on drop (with its shims).
struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    sock: PathBuf,
    log: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, plugins: &[(String, PathBuf)]) -> Result<Containerd> {
        std::fs::create_dir_all(dir)?;
        let sock = dir.join("c.sock");
        let mut cfg = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{dir}/debug.sock\"\n[metrics]\n  address = \"\"\n\
             [proxy_plugins]\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = sock.display(),
            dir = dir.display(),
        );
        for (name, addr) in plugins {
            cfg.push_str(&format!(
                "  [proxy_plugins.{name}]\n    type = \"snapshot\"\n    address = \"{}\"\n",
                addr.display()
            ));
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, cfg)?;
        let log = dir.join("containerd.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn containerd")?;
        let mut me = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            sock,
            log,
        };
        let start = Instant::now();
        loop {
            let ok = Command::new("ctr")
                .arg("-a")
                .arg(&me.sock)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(me);
            }
            if let Some(st) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                me.child = None;
                bail!("containerd exited with {st}: {}", me.log_text());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("containerd did not answer within 60 s: {}", me.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr -a SOCK -n NS ARGS`: stdout, or an error with stderr.
    fn ctr(&self, ns: &str, args: &[&str]) -> Result<String> {
        let o = Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run ctr")?;
        ensure!(
            o.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(20));
        }
        // Shims outlive containerd by design: ours name our state dir.
        kill_processes_mentioning(&self.dir.to_string_lossy());
    }
}

/// What the container runs: reads layer 1 and 2's files, checks the
/// deletions, writes a file.
const SCRIPT: &str = "set -e; \
    test \"$(cat /data/a)\" = 'changed a'; \
    test \"$(cat /data/b)\" = bee; \
    test \"$(cat /data/new)\" = new; \
    test ! -e /data/gone; test ! -e /data/dir; \
    echo written > /data/written; \
    echo container-ok";

fn run_on(ctrd: &Containerd, server: &Server, image: &Path) -> Result<()> {
    let d = &server.driver;
    let snapshotter = format!("strata-{d}");
    let ns = format!("strata-{d}");
    let image_s = image.to_string_lossy();
    ctrd.ctr(
        &ns,
        &["images", "import", "--snapshotter", &snapshotter, &image_s],
    )
    .context("import")?;
    let id = format!("ctr-{d}");
    let out = ctrd
        .ctr(
            &ns,
            &[
                "run",
                "--snapshotter",
                &snapshotter,
                IMAGE,
                &id,
                "/bin/sh",
                "-c",
                SCRIPT,
            ],
        )
        .context("run")?;
    ensure!(out.contains("container-ok"), "container output: {out}");
    // The container's snapshot, read back through strata.
    let ls: Vec<serde_json::Value> = serde_json::from_str(&server.strata(&["--json", "ls"])?)?;
    let suffix = format!("/{id}");
    let layer = ls
        .iter()
        .find(|l| {
            l["labels"][strata_serve_key()]
                .as_str()
                .is_some_and(|k| k.ends_with(&suffix))
        })
        .with_context(|| format!("no layer of snapshot {id}: {ls:?}"))?;
    let layer_id = layer["id"].as_str().context("id")?;
    let changes = server.strata(&["changes", layer_id])?;
    let lines: BTreeSet<&str> = changes.lines().collect();
    ensure!(
        lines.contains("A /data/written"),
        "changes of the container: {changes}"
    );
    ensure!(
        lines.contains("C /data"),
        "changes of the container: {changes}"
    );
    ensure!(
        !changes.lines().any(|l| l.starts_with("D ")),
        "deletions: {changes}"
    );
    ensure!(!lines.contains("A /data/a"), "changes: {changes}");
    ctrd.ctr(&ns, &["containers", "rm", &id]).context("rm")?;
    let _ = ctrd.ctr(&ns, &["images", "rm", "--sync", IMAGE]);
    Ok(())
}

fn strata_serve_key() -> &'static str {
    "strata.serve.key"
}

#[test]
fn containerd_runs_containers() {
    let test = "containerd_runs_containers";
    if !common::need_root(test) {
        return;
    }
    if let Err(why) = ensure_packages() {
        return skip(test, &why);
    }
    let started = Instant::now();
    let scratch = match Scratch::new("ext4", 2u64 << 30) {
        Ok(s) => s,
        Err(e) => return skip(test, &format!("no loop ext4: {e:#}")),
    };
    let btrfs = match Scratch::new("btrfs", 1u64 << 30) {
        Ok(s) => Some(s),
        Err(e) => {
            skip(test, &format!("btrfs: no loop btrfs: {e:#}"));
            None
        }
    };
    let _ = writeln!(
        std::io::stderr(),
        "{test}: devmapper: not run: this host's kernel has no device-mapper, and containerd \
         inside the dm VM is out of scope"
    );
    let image = scratch.path().join("image.tar");
    build_image(&scratch.path().join("image"), &image).expect("build the OCI archive");
    let mut servers = Vec::new();
    let mut plugins = Vec::new();
    let mut drivers: Vec<(&str, &Path)> = vec![
        ("vfs", scratch.path()),
        ("overlay", scratch.path()),
        ("aufs", scratch.path()),
    ];
    if let Some(b) = &btrfs {
        drivers.push(("btrfs", b.path()));
    }
    for (d, base) in &drivers {
        let root = base.join(format!("root-{d}"));
        let sock = scratch.path().join(format!("{d}.sock"));
        servers.push(Server::start(&root, d, &sock).expect("strata serve starts"));
        plugins.push((format!("strata-{d}"), sock));
    }
    let ctrd =
        Containerd::start(&scratch.path().join("containerd"), &plugins).expect("containerd starts");
    let mut failures = Vec::new();
    for server in &servers {
        let t = Instant::now();
        match run_on(&ctrd, server, &image) {
            Ok(()) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "{test}: {}: passed in {:.1} s",
                    server.driver,
                    t.elapsed().as_secs_f64()
                );
            }
            Err(e) => failures.push(format!(
                "{}: {e:#}\nserver log:\n{}",
                server.driver,
                server.log_text()
            )),
        }
    }
    if !failures.is_empty() {
        panic!(
            "{test}:\n{}\ncontainerd log (tail):\n{}",
            failures.join("\n"),
            ctrd.log_text()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    drop(ctrd);
    drop(servers);
    let _ = writeln!(
        std::io::stderr(),
        "{test}: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
