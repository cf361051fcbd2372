//! `strata compare`: runs the shared workloads (strata-benches) on every
//! driver this host can run, each on a scratch root made for it, with the
//! references measured in the same run; writes a table, JSON, one SVG chart
//! per workload and a Markdown report; tears everything down afterwards,
//! also on failure, SIGINT or SIGTERM.

mod cs;
mod report;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_benches::scratch::{have_tool, is_root, Scratch};
use strata_benches::workloads::{Bench, Cancel, Figure, Inputs, Size, Workload};
use strata_driver_api::Driver;
use strata_drivers::registry;

/// Arguments of `strata compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Comma-separated targets: vfs, vfs-reflink, overlay, btrfs, aufs,
    /// devmapper (default: all of them; those this host cannot run are
    /// listed with the reason).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub drivers: Vec<String>,
    /// A workload to run (repeatable; default: all): import, diff,
    /// child-diff, churn, deep, read, copy-up.
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,
    /// tiny, small (default), medium or large.
    #[arg(long, value_name = "SIZE", default_value = "small")]
    pub size: String,
    /// Where the table, JSON, charts and report are written.
    #[arg(long, value_name = "DIR", default_value = "strata-compare")]
    pub out: PathBuf,
    /// The directory the scratch directory is made in (default: the
    /// system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Do not run containers-storage even when it is installed.
    #[arg(long)]
    pub no_containers_storage: bool,
}

/// Every compare target: a name, the registry driver, the backing. Each
/// gets a fresh loop filesystem of its own (ext4 where the driver needs no
/// particular one), so no figure depends on the state or the speed of the
/// host's root filesystem; devmapper makes its own thin pool.
pub const TARGETS: [(&str, &str, &str); 6] = [
    ("vfs", "vfs", "ext4"),
    ("vfs-reflink", "vfs", "xfs"),
    ("overlay", "overlay", "ext4"),
    ("btrfs", "btrfs", "btrfs"),
    ("aufs", "aufs", "ext4"),
    ("devmapper", "devmapper", "plain"),
];

/// What happened to one target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TargetReport {
    /// The target's name.
    pub name: String,
    /// The registry driver it opens.
    pub driver: String,
    /// The filesystem its root was on.
    pub backing: String,
    /// Whether it ran.
    pub run: bool,
    /// Why it did not run.
    pub reason: Option<String>,
    /// Workloads that failed, with the error.
    pub errors: Vec<(String, String)>,
}

/// One row of the results: a figure of a target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// The target (`overlay`, `cs-overlay`, ...).
    pub target: String,
    /// The figure.
    #[serde(flatten)]
    pub figure: Figure,
    /// Time over reference time.
    pub ratio: Option<f64>,
}

/// The whole result of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Results {
    /// The size name.
    pub size: String,
    /// Files and bytes of the generated rootfs.
    pub rootfs_files: usize,
    /// Bytes of file data of the generated rootfs.
    pub rootfs_bytes: u64,
    /// Kernel release and CPUs.
    pub host: String,
    /// The targets, run or not.
    pub targets: Vec<TargetReport>,
    /// The figures.
    pub rows: Vec<Row>,
    /// containers-storage: what ran or why not.
    pub containers_storage: cs::CsReport,
    /// Peak RSS limit the figures are held to (KiB).
    pub peak_rss_limit_kib: u64,
}

/// Drivers opened by the run, so the teardown can clean them up even when
/// the run's future was dropped.
type Open = Arc<Mutex<Vec<Arc<dyn Driver>>>>;

/// Progress: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::new(total).with_style(
                ProgressStyle::with_template("compare [{bar:30}] {pos}/{len} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            pb.set_draw_target(ProgressDrawTarget::stderr());
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        });
        Progress {
            bar,
            total,
            done: 0,
        }
    }
    fn start(&self, what: &str) {
        match &self.bar {
            Some(b) => b.set_message(what.to_string()),
            None => eprintln!("compare: [{}/{}] {what}", self.done + 1, self.total),
        }
    }
    fn note(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("compare: {line}"),
        }
    }
    fn step(&mut self) {
        self.done += 1;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Why a target cannot run on this host, before any setup.
fn precheck(driver: &str, backing: &str) -> Option<String> {
    if let Err(e) = registry::is_built(driver) {
        return Some(e.to_string());
    }
    if driver == "devmapper" && !kernel_has_dm_thin() {
        return Some("the kernel has no device-mapper thin-provisioning (dm-thin)".into());
    }
    if backing != "plain" {
        let mkfs = format!("mkfs.{backing}");
        for tool in [mkfs.as_str(), "losetup"] {
            if !have_tool(tool) {
                return Some(format!("{tool} is not installed"));
            }
        }
    }
    None
}

fn kernel_has_dm_thin() -> bool {
    let devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    devices.contains("device-mapper")
        && (Path::new("/sys/module/dm_thin_pool").exists()
            || std::process::Command::new("modprobe")
                .args(["-n", "dm-thin-pool"])
                .status()
                .is_ok_and(|s| s.success()))
}

/// Runs `strata compare`.
///
/// # Errors
/// Bad arguments, not root, or a failure of the shared setup (generating
/// the rootfs). A failing workload is reported in the results, not here.
pub async fn run(args: &CompareArgs, json: bool) -> Result<ExitCode> {
    let size = Size::parse(&args.size)?;
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        let mut v = args
            .workloads
            .iter()
            .map(|w| Workload::parse(w))
            .collect::<Result<Vec<_>>>()?;
        v.sort();
        v.dedup();
        v
    };
    let targets: Vec<(&str, &str, &str)> = if args.drivers.is_empty() {
        TARGETS.to_vec()
    } else {
        let mut v = Vec::new();
        for d in &args.drivers {
            let t = TARGETS.iter().find(|t| t.0 == d).with_context(|| {
                let names: Vec<_> = TARGETS.iter().map(|t| t.0).collect();
                format!("unknown compare target {d:?}; known: {}", names.join(", "))
            })?;
            if !v.contains(t) {
                v.push(*t);
            }
        }
        v
    };
    if !is_root() {
        bail!("compare needs root (mounts and loop devices); run it as root");
    }
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("mkdir {}", out.display()))?;
    let scratch_parent = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Arc::new(Mutex::new(Scratch::new(&scratch_parent)?));

    // Signals: the first SIGINT/SIGTERM asks the run to stop; later ones
    // are only acknowledged, so the teardown always finishes.
    let cancel: Cancel = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(tokio::sync::Notify::new());
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let (cancel, notify) = (cancel.clone(), notify.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if cancel.swap(true, Ordering::SeqCst) {
                    eprintln!("strata compare: still cleaning up, please wait");
                } else {
                    eprintln!("strata compare: interrupted; stopping and cleaning up");
                }
                notify.notify_one();
            }
        });
    }

    let open: Open = Arc::new(Mutex::new(Vec::new()));
    let body = run_all(
        size,
        &workloads,
        &targets,
        !args.no_containers_storage,
        scratch.clone(),
        cancel.clone(),
        open.clone(),
    );
    tokio::pin!(body);
    let result = tokio::select! {
        r = &mut body => r,
        _ = notify.notified() => {
            // Give the run a moment to stop at its next check, then drop it.
            match tokio::time::timeout(Duration::from_secs(3), &mut body).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("interrupted")),
            }
        }
    };

    // Teardown: driver cleanups (bounded), then everything under scratch.
    let drivers: Vec<Arc<dyn Driver>> = std::mem::take(&mut *open.lock().expect("lock"));
    for d in drivers {
        match tokio::time::timeout(Duration::from_secs(20), d.cleanup()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("strata compare: cleanup of {}: {e}", d.name()),
            Err(_) => eprintln!("strata compare: cleanup of {} timed out", d.name()),
        }
    }
    let sc = scratch.clone();
    let torn = tokio::task::spawn_blocking(move || sc.lock().expect("lock").teardown()).await;
    let torn = match torn {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("teardown panicked: {e}")),
    };
    if cancel.load(Ordering::SeqCst) {
        if let Err(e) = torn {
            eprintln!("strata compare: teardown: {e:#}");
        }
        eprintln!("strata compare: interrupted; scratch space removed");
        return Ok(ExitCode::from(130));
    }
    torn.context("tearing down the scratch space")?;
    let results = result?;
    report::write_all(&results, &out, json)?;
    Ok(ExitCode::SUCCESS)
}

/// The figures of every target, on scratch space under `scratch`.
async fn run_all(
    size: Size,
    workloads: &[Workload],
    targets: &[(&str, &str, &str)],
    with_cs: bool,
    scratch: Arc<Mutex<Scratch>>,
    cancel: Cancel,
    open: Open,
) -> Result<Results> {
    let params = size.params();
    let scratch_dir = scratch.lock().expect("lock").path().to_path_buf();
    let mut reports = Vec::new();
    let mut runnable = Vec::new();
    for (name, driver, backing) in targets {
        let reason = precheck(driver, backing);
        reports.push(TargetReport {
            name: name.to_string(),
            driver: driver.to_string(),
            backing: backing.to_string(),
            run: false,
            reason: reason.clone(),
            errors: Vec::new(),
        });
        if reason.is_none() {
            runnable.push(reports.len() - 1);
        }
    }
    let cs_status = cs::availability(with_cs);
    let cs_work: Vec<Workload> = workloads
        .iter()
        .copied()
        .filter(|w| cs::WORKLOADS.contains(w))
        .collect();
    let cs_steps = if cs_status.is_ok() {
        (cs::DRIVERS.len() * cs_work.len()) as u64
    } else {
        0
    };
    let mut progress = Progress::new(1 + (runnable.len() * workloads.len()) as u64 + cs_steps);
    for r in &reports {
        if let Some(why) = &r.reason {
            progress.note(&format!("{}: not run: {why}", r.name));
        }
    }

    progress.start(&format!(
        "generating the {} rootfs and its tar",
        size.name()
    ));
    let inputs_dir = scratch_dir.join("inputs");
    let c = cancel.clone();
    let inputs = tokio::task::spawn_blocking(move || {
        strata_benches::workloads::check(&c)?;
        Inputs::prepare(&inputs_dir, params)
    })
    .await
    .context("generator panicked")??;
    let inputs = Arc::new(inputs);
    progress.step();

    let mut rows = Vec::new();
    let mut loop_roots: Vec<(String, PathBuf)> = Vec::new();
    for idx in runnable {
        strata_benches::workloads::check(&cancel)?;
        let (name, driver_name, backing) = {
            let r = &reports[idx];
            (r.name.clone(), r.driver.clone(), r.backing.clone())
        };
        progress.start(&format!("{name}: setting up its {backing} scratch root"));
        let base = match setup_backing(
            &scratch,
            &name,
            &driver_name,
            &backing,
            params.scratch_bytes(),
        )
        .await
        {
            Ok(b) => b,
            Err(e) => {
                reports[idx].reason = Some(format!("{e:#}"));
                progress.note(&format!("{name}: not run: {e:#}"));
                for _ in workloads {
                    progress.step();
                }
                continue;
            }
        };
        reports[idx].backing = base.1.clone();
        if backing != "plain" {
            loop_roots.push((backing.clone(), base.0.clone()));
        }
        let root = base.0.join("root");
        let driver = match registry::open(&driver_name, &root, &Default::default()).await {
            Ok(d) => d,
            Err(e) => {
                reports[idx].reason = Some(e.to_string());
                progress.note(&format!("{name}: not run: {e}"));
                for _ in workloads {
                    progress.step();
                }
                continue;
            }
        };
        open.lock().expect("lock").push(driver.clone());
        reports[idx].run = true;
        let mut bench = Bench::new(driver, &base.0.join("work"), inputs.clone(), cancel.clone())?;
        for w in workloads {
            progress.start(&format!("{name}: {}", w.name()));
            match bench.run(*w).await {
                Ok(figs) => {
                    for f in figs {
                        progress.note(&report::line(&name, &f));
                        rows.push(Row {
                            target: name.clone(),
                            ratio: f.ratio(),
                            figure: f,
                        });
                    }
                }
                Err(e) => {
                    strata_benches::workloads::check(&cancel)?;
                    progress.note(&format!("{name}: {} failed: {e:#}", w.name()));
                    reports[idx]
                        .errors
                        .push((w.name().to_string(), format!("{e:#}")));
                }
            }
            progress.step();
        }
        let finished = bench.finish().await;
        open.lock()
            .expect("lock")
            .retain(|d| !Arc::ptr_eq(d, bench.driver()));
        if let Err(e) = finished {
            strata_benches::workloads::check(&cancel)?;
            reports[idx]
                .errors
                .push(("cleanup".into(), format!("{e:#}")));
        }
        // The layers are gone: free the scratch space of a plain-dir target.
        if backing == "plain" {
            let dir = base.0.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
    }

    let containers_storage = match cs_status {
        Err(why) => {
            progress.note(&format!("containers-storage: not run: {why}"));
            cs::CsReport::not_run(why)
        }
        Ok(version) => {
            let mut rep = cs::CsReport::ran(version);
            for d in cs::DRIVERS {
                strata_benches::workloads::check(&cancel)?;
                // containers-storage runs on the same kind of loop
                // filesystem as strata's driver of the same name.
                let kind = if d == "btrfs" { "btrfs" } else { "ext4" };
                let dir = match loop_roots.iter().find(|(k, _)| k == kind) {
                    Some((_, p)) => p.join(format!("cs-{d}")),
                    None => match setup_backing(
                        &scratch,
                        &format!("cs-{kind}"),
                        if kind == "btrfs" { "btrfs" } else { "vfs" },
                        kind,
                        params.scratch_bytes(),
                    )
                    .await
                    {
                        Ok(b) => {
                            loop_roots.push((kind.to_string(), b.0.clone()));
                            b.0.join(format!("cs-{d}"))
                        }
                        Err(e) => {
                            rep.errors.push((format!("cs-{d}"), format!("{e:#}")));
                            continue;
                        }
                    },
                };
                let mut b = cs::CsBench::new(d, &dir, inputs.clone(), cancel.clone())?;
                for w in &cs_work {
                    progress.start(&format!("containers-storage {d}: {}", w.name()));
                    match b.run(*w).await {
                        Ok(f) => {
                            let target = format!("cs-{d}");
                            progress.note(&report::line(&target, &f));
                            rows.push(Row {
                                target,
                                ratio: f.ratio(),
                                figure: f,
                            });
                        }
                        Err(e) => {
                            strata_benches::workloads::check(&cancel)?;
                            progress.note(&format!("cs-{d}: {} failed: {e:#}", w.name()));
                            rep.errors
                                .push((format!("cs-{d} {}", w.name()), format!("{e:#}")));
                        }
                    }
                    progress.step();
                }
                b.finish().await;
            }
            rep
        }
    };
    progress.finish();
    Ok(Results {
        size: size.name().into(),
        rootfs_files: inputs.stats.files,
        rootfs_bytes: inputs.stats.bytes,
        host: host_line(),
        targets: reports,
        rows,
        containers_storage,
        peak_rss_limit_kib: 64 * 1024,
    })
}

/// Makes the directory a target's root and work dir live in: a plain
/// directory of the scratch space, or a loop filesystem; returns it and a
/// description of its filesystem.
async fn setup_backing(
    scratch: &Arc<Mutex<Scratch>>,
    name: &str,
    driver: &str,
    backing: &str,
    bytes: u64,
) -> Result<(PathBuf, String)> {
    let (scratch, name, driver, backing) = (
        scratch.clone(),
        name.to_string(),
        driver.to_string(),
        backing.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let mut s = scratch.lock().expect("lock");
        strata_benches::scratch::prepare_backing(&mut s, &name, &driver, &backing, bytes)
    })
    .await
    .context("setup panicked")?
}

fn host_line() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {cpus} CPUs", kernel.trim())
}
