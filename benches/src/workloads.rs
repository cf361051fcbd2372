//! The workloads of `strata compare` and of the criterion benches, each
//! defined once and run on any `Arc<dyn Driver>`, with the reference each
//! is measured against in the same run.
//!
//! | workload | timed strata work | reference (same filesystem) |
//! | --- | --- | --- |
//! | `import` | create + apply the rootfs tar + `sync -f` | `tar -x` + `sync -f` |
//! | `diff` | diff of the imported layer to a file | `tar -c` of the same tree to a file |
//! | `child-diff` | diff of a child after 100 small changes | the naive tree diff of the same layers |
//! | `churn` | create, mount, write, unmount, remove, 200 times | none |
//! | `deep` | build a chain of N layers; mount the top, read the bottom file | none |
//! | `read` | read a 1 GiB lower file through a mount; stat 10,000 lower files | a plain directory |
//! | `copy-up` | modify 1,000 lower files through a mount | a plain directory |
//!
//! Timings exclude setup (making the lower layers and reference trees).
//! Every loop checks a [`Cancel`] flag, so an interrupted run stops within
//! one step.

use crate::{generate_rootfs, small_changes, RootfsSpec, TreeStats};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_driver_api::{CreateOpts, Driver, LayerId, MountOpts};

/// A cancellation flag shared between a run and its signal handler.
pub type Cancel = Arc<AtomicBool>;

/// Fails with "interrupted" once `cancel` is set.
///
/// # Errors
/// When the flag is set.
pub fn check(cancel: &Cancel) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// One workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// Import the rootfs tar into a new layer.
    Import,
    /// Export the imported layer as a tar.
    Diff,
    /// 100 small changes in a child layer, then its diff.
    ChildDiff,
    /// Create, mount, write one file, unmount, remove, 200 times.
    Churn,
    /// A chain of N layers, mount the top, read a file of the bottom.
    Deep,
    /// Sequential read of a large lower file and stat of many lower files.
    Read,
    /// Modify many lower files through the mount.
    CopyUp,
}

impl Workload {
    /// Every workload, in run order.
    pub const ALL: [Workload; 7] = [
        Workload::Import,
        Workload::Diff,
        Workload::ChildDiff,
        Workload::Churn,
        Workload::Deep,
        Workload::Read,
        Workload::CopyUp,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Import => "import",
            Workload::Diff => "diff",
            Workload::ChildDiff => "child-diff",
            Workload::Churn => "churn",
            Workload::Deep => "deep",
            Workload::Read => "read",
            Workload::CopyUp => "copy-up",
        }
    }

    /// The workload called `name`.
    ///
    /// # Errors
    /// An unknown name (the message lists the known ones).
    pub fn parse(name: &str) -> Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .with_context(|| {
                let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
                format!("unknown workload {name:?}; known: {}", names.join(", "))
            })
    }
}

/// How big the work is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// Seconds per driver: for tests.
    Tiny,
    /// The default: a 2,000-file, 24 MB tree, a 256 MiB read file, churn
    /// and deep chains cut at 8 s each; the whole compare in a few minutes
    /// on 2 cores.
    Small,
    /// A rootfs-sized tree (160 MB, 6,000 files), a 1 GiB read file, the
    /// full 200 churn cycles and chains of up to 500 layers.
    Medium,
    /// A large tree (600 MB, 20,000 files), otherwise as medium.
    Large,
}

impl Size {
    /// The size called `name` (`tiny`, `small`, `medium`, `large`).
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse(name: &str) -> Result<Size> {
        Ok(match name {
            "tiny" => Size::Tiny,
            "small" => Size::Small,
            "medium" => Size::Medium,
            "large" => Size::Large,
            n => bail!("unknown size {n:?}; known: tiny, small, medium, large"),
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Size::Tiny => "tiny",
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }

    /// The parameters of this size.
    pub fn params(self) -> Params {
        let base = Params {
            rootfs: RootfsSpec::SMALL,
            child_changes: 100,
            churn: 200,
            deep_cap: 500,
            read_bytes: 1 << 30,
            stat_files: 10_000,
            copy_up_files: 1_000,
            budget: Some(Duration::from_secs(20)),
        };
        match self {
            Size::Tiny => Params {
                rootfs: RootfsSpec {
                    files: 300,
                    dirs: 30,
                    bytes: 4 << 20,
                    seed: 1,
                },
                churn: 20,
                deep_cap: 20,
                read_bytes: 32 << 20,
                stat_files: 1_000,
                copy_up_files: 100,
                budget: Some(Duration::from_secs(4)),
                ..base
            },
            // The default: a 256 MiB read file and 8 s budgets keep the
            // whole compare of vfs, vfs-reflink, overlay and btrfs (and
            // containers-storage) within minutes on 2 shared cores.
            Size::Small => Params {
                read_bytes: 256 << 20,
                budget: Some(Duration::from_secs(8)),
                ..base
            },
            Size::Medium => Params {
                rootfs: RootfsSpec::MEDIUM,
                budget: None,
                ..base
            },
            Size::Large => Params {
                rootfs: RootfsSpec {
                    files: 20_000,
                    dirs: 1_500,
                    bytes: 600 << 20,
                    seed: 1,
                },
                budget: None,
                ..base
            },
        }
    }
}

/// The amounts of work of one run.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// The rootfs imported, diffed and used as the base of children.
    pub rootfs: RootfsSpec,
    /// Small changes made in the child of `child-diff`.
    pub child_changes: usize,
    /// Cycles of `churn`.
    pub churn: usize,
    /// The cap of the chain length of `deep` (the driver's maximum if lower).
    pub deep_cap: usize,
    /// Size of the lower file `read` reads.
    pub read_bytes: u64,
    /// Lower files `read` stats.
    pub stat_files: usize,
    /// Lower files `copy-up` modifies (at most `stat_files`).
    pub copy_up_files: usize,
    /// A time budget for each of `churn` and `deep`'s chain building: when
    /// it runs out they stop early and their figures say how far they got
    /// (drivers that copy whole trees, like vfs, are slow at both). `None`:
    /// always the full amount.
    pub budget: Option<Duration>,
}

impl Params {
    /// Bytes a driver's scratch filesystem needs for one run of every
    /// workload, with room to spare (layers, reference trees, tars).
    pub fn scratch_bytes(&self) -> u64 {
        8 * self.rootfs.bytes + 3 * self.read_bytes + (512 << 20)
    }
}

/// A reference measured in the same run as a figure.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Reference {
    /// What was measured (`tar -x + sync`, ...).
    pub name: String,
    /// Its time in seconds.
    pub seconds: f64,
}

/// One measured figure of a workload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    /// The workload's name.
    pub workload: String,
    /// The figure's name within it (`import`, `stat`, ...).
    pub figure: String,
    /// What the figure measures, with the amounts.
    pub detail: String,
    /// Time of the strata work in seconds.
    pub seconds: f64,
    /// The reference, where the workload has one.
    pub reference: Option<Reference>,
    /// Peak RSS of this process (KiB) during the workload, where measured.
    pub peak_rss_kib: Option<u64>,
}

impl Figure {
    /// Time over reference time (1.0 = as fast; lower is better).
    pub fn ratio(&self) -> Option<f64> {
        self.reference
            .as_ref()
            .filter(|r| r.seconds > 0.0)
            .map(|r| self.seconds / r.seconds)
    }
}

/// Inputs shared by every driver of a run: the generated tree and its tar.
#[derive(Debug)]
pub struct Inputs {
    /// The parameters.
    pub params: Params,
    /// The canonical layer tar of the generated rootfs.
    pub tar: PathBuf,
    /// What was generated.
    pub stats: TreeStats,
}

impl Inputs {
    /// Generates the rootfs under `dir/src` and its tar `dir/rootfs.tar`.
    /// Blocking.
    ///
    /// # Errors
    /// Writing the tree or the tar.
    pub fn prepare(dir: &Path, params: Params) -> Result<Inputs> {
        let src = dir.join("src");
        fs::create_dir_all(&src).with_context(|| format!("mkdir {}", src.display()))?;
        let stats = generate_rootfs(&src, params.rootfs)?;
        let tar = dir.join("rootfs.tar");
        crate::tar_of_tree(&src, &tar)?;
        fs::remove_dir_all(&src).with_context(|| format!("remove {}", src.display()))?;
        Ok(Inputs { params, tar, stats })
    }
}

/// The peak RSS of this process since the last [`reset_peak_rss`], in KiB
/// (`VmHWM` of `/proc/self/status`).
pub fn peak_rss_kib() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak RSS mark of this process (writes `5` to
/// `/proc/self/clear_refs`); returns whether it could.
pub fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Runs the workloads on one driver. Layers it makes are named `cmp-*`;
/// [`Bench::finish`] removes them.
pub struct Bench {
    driver: Arc<dyn Driver>,
    work: PathBuf,
    inputs: Arc<Inputs>,
    cancel: Cancel,
    n: u64,
    base: Option<LayerId>,
    ref_tree: Option<PathBuf>,
    lower: Option<LayerId>,
    ref_lower: Option<PathBuf>,
    made: Vec<LayerId>,
}

fn lid(s: &str) -> LayerId {
    LayerId::new(s).expect("generated layer ids are valid")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task panicked")?
}

/// Runs a command (killed if the run is dropped) and fails on non-zero exit.
async fn command(program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `sync -f DIR`: flushes the filesystem holding `dir`.
async fn syncfs(dir: &Path) -> Result<()> {
    command("sync", &["-f".as_ref(), dir.as_os_str()]).await
}

/// The relative path of stat file `i` of the lower tree.
fn stat_rel(i: usize) -> PathBuf {
    PathBuf::from(format!("stat/d{:03}/f{i:05}", i / 100))
}

/// Fills `dir` with the lower tree of `read` and `copy-up`: `big.bin` of
/// `bytes` and `files` small files. Blocking; deterministic.
fn fill_lower(dir: &Path, bytes: u64, files: usize, cancel: &Cancel) -> Result<()> {
    let mut rng = crate::Rng::new(42);
    let p = dir.join("big.bin");
    let f = fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        check(cancel)?;
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    for i in 0..files {
        if i % 100 == 0 {
            check(cancel)?;
            let d = dir.join(stat_rel(i));
            let d = d.parent().expect("has a parent");
            fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        let p = dir.join(stat_rel(i));
        fs::write(&p, format!("small file {i}\n").repeat(5))
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

/// Reads `path` to the end (1 MiB reads); returns the bytes read.
fn read_all(path: &Path, cancel: &Cancel) -> Result<u64> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total % (64 << 20) == 0 {
            check(cancel)?;
        }
    }
}

fn stat_all(dir: &Path, files: usize, cancel: &Cancel) -> Result<()> {
    for i in 0..files {
        if i % 500 == 0 {
            check(cancel)?;
        }
        let p = dir.join(stat_rel(i));
        fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
    }
    Ok(())
}

fn modify_all(dir: &Path, files: usize, cancel: &Cancel) -> Result<()> {
    for i in 0..files {
        if i % 100 == 0 {
            check(cancel)?;
        }
        let p = dir.join(stat_rel(i));
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .with_context(|| format!("open {} for writing", p.display()))?;
        f.write_all(b"modified\n")
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

impl Bench {
    /// A bench of `driver`; references and outputs go to `work`, a directory
    /// on the same filesystem as the driver's root (created if missing).
    ///
    /// # Errors
    /// When `work` cannot be made.
    pub fn new(
        driver: Arc<dyn Driver>,
        work: &Path,
        inputs: Arc<Inputs>,
        cancel: Cancel,
    ) -> Result<Bench> {
        fs::create_dir_all(work).with_context(|| format!("mkdir {}", work.display()))?;
        Ok(Bench {
            driver,
            work: work.to_path_buf(),
            inputs,
            cancel,
            n: 0,
            base: None,
            ref_tree: None,
            lower: None,
            ref_lower: None,
            made: Vec::new(),
        })
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    fn next_id(&mut self, what: &str) -> LayerId {
        self.n += 1;
        lid(&format!("cmp-{what}-{}", self.n))
    }

    /// Runs `w` and returns its figures, with this process's peak RSS
    /// during it.
    ///
    /// # Errors
    /// The first driver or reference step that failed, or "interrupted".
    pub async fn run(&mut self, w: Workload) -> Result<Vec<Figure>> {
        check(&self.cancel)?;
        let measured = reset_peak_rss();
        let mut figs = match w {
            Workload::Import => vec![self.import().await?],
            Workload::Diff => vec![self.diff().await?],
            Workload::ChildDiff => vec![self.child_diff().await?],
            Workload::Churn => vec![self.churn().await?],
            Workload::Deep => self.deep().await?,
            Workload::Read => self.read().await?,
            Workload::CopyUp => vec![self.copy_up().await?],
        };
        let rss = if measured { peak_rss_kib() } else { None };
        for f in &mut figs {
            f.peak_rss_kib = rss;
        }
        Ok(figs)
    }

    fn figure(w: Workload, figure: &str, detail: String, seconds: f64) -> Figure {
        Figure {
            workload: w.name().into(),
            figure: figure.into(),
            detail,
            seconds,
            reference: None,
            peak_rss_kib: None,
        }
    }

    /// Imports the tar into a new read-only layer; returns it and the time
    /// of create + apply + `sync -f`.
    async fn import_layer(&mut self) -> Result<(LayerId, f64)> {
        let id = self.next_id("import");
        let t = Instant::now();
        self.driver.create(&id, None, &CreateOpts::ro()).await?;
        self.made.push(id.clone());
        let f = fs::File::open(&self.inputs.tar)
            .with_context(|| format!("open {}", self.inputs.tar.display()))?;
        let src = Box::new(std::io::BufReader::with_capacity(1 << 20, f));
        self.driver.apply_diff(&id, None, src).await?;
        syncfs(self.driver.root()).await?;
        Ok((id, t.elapsed().as_secs_f64()))
    }

    /// `tar -x` of the rootfs tar into a fresh directory + `sync -f`.
    async fn ref_extract(&mut self) -> Result<f64> {
        let dir = self.work.join("ref-tree");
        if dir.exists() {
            let d = dir.clone();
            blocking(move || Ok(fs::remove_dir_all(&d)?)).await?;
        }
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let t = Instant::now();
        command(
            "tar",
            &[
                "-x".as_ref(),
                "-f".as_ref(),
                self.inputs.tar.as_os_str(),
                "-C".as_ref(),
                dir.as_os_str(),
            ],
        )
        .await?;
        syncfs(&dir).await?;
        let secs = t.elapsed().as_secs_f64();
        self.ref_tree = Some(dir);
        Ok(secs)
    }

    async fn ensure_base(&mut self) -> Result<LayerId> {
        if self.base.is_none() {
            let (id, _) = self.import_layer().await?;
            self.base = Some(id);
        }
        if self.ref_tree.is_none() {
            self.ref_extract().await?;
        }
        Ok(self.base.clone().expect("set above"))
    }

    async fn import(&mut self) -> Result<Figure> {
        let (id, secs) = self.import_layer().await?;
        check(&self.cancel)?;
        let ref_secs = self.ref_extract().await?;
        match &self.base {
            None => self.base = Some(id),
            // A repeated import (criterion iterations): keep the first.
            Some(_) => self.remove_layer(&id).await?,
        }
        let s = &self.inputs.stats;
        let mut f = Self::figure(
            Workload::Import,
            "import",
            format!("{} files, {} MB tar", s.files, s.bytes >> 20),
            secs,
        );
        f.reference = Some(Reference {
            name: "tar -x + sync".into(),
            seconds: ref_secs,
        });
        Ok(f)
    }

    async fn diff(&mut self) -> Result<Figure> {
        let base = self.ensure_base().await?;
        let out = self.work.join("diff.tar");
        let t = Instant::now();
        let f = fs::File::create(&out).with_context(|| format!("create {}", out.display()))?;
        let sink = self
            .driver
            .diff(
                &base,
                None,
                Box::new(std::io::BufWriter::with_capacity(1 << 20, f)),
            )
            .await?;
        drop(sink);
        let secs = t.elapsed().as_secs_f64();
        check(&self.cancel)?;
        let tree = self.ref_tree.clone().expect("ensure_base made it");
        let ref_out = self.work.join("ref-diff.tar");
        let t = Instant::now();
        command(
            "tar",
            &[
                "-c".as_ref(),
                "-f".as_ref(),
                ref_out.as_os_str(),
                "-C".as_ref(),
                tree.as_os_str(),
                ".".as_ref(),
            ],
        )
        .await?;
        let ref_secs = t.elapsed().as_secs_f64();
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(&ref_out);
        let mut f = Self::figure(
            Workload::Diff,
            "diff",
            format!("{} files to a tar file", self.inputs.stats.files),
            secs,
        );
        f.reference = Some(Reference {
            name: "tar -c to a file".into(),
            seconds: ref_secs,
        });
        Ok(f)
    }

    async fn child_diff(&mut self) -> Result<Figure> {
        let base = self.ensure_base().await?;
        let child = self.next_id("child");
        self.driver
            .create(&child, Some(&base), &CreateOpts::rw())
            .await?;
        self.made.push(child.clone());
        let mnt = self.driver.mount(&child, &MountOpts::default()).await?;
        let n = self.inputs.params.child_changes;
        let r = blocking(move || small_changes(&mnt, n, 3)).await;
        self.driver.unmount(&child).await?;
        r?;
        check(&self.cancel)?;
        let t = Instant::now();
        self.driver
            .diff(&child, Some(&base), Box::new(std::io::sink()))
            .await?;
        let secs = t.elapsed().as_secs_f64();
        check(&self.cancel)?;
        let t = Instant::now();
        strata_driver_api::naive_diff(
            &*self.driver,
            &child,
            Some(&base),
            Box::new(std::io::sink()),
        )
        .await?;
        let ref_secs = t.elapsed().as_secs_f64();
        self.remove_layer(&child).await?;
        let mut f = Self::figure(
            Workload::ChildDiff,
            "child-diff",
            format!("{n} small changes on the rootfs"),
            secs,
        );
        f.reference = Some(Reference {
            name: "naive tree diff".into(),
            seconds: ref_secs,
        });
        Ok(f)
    }

    async fn churn(&mut self) -> Result<Figure> {
        let base = self.ensure_base().await?;
        let n = self.inputs.params.churn;
        let budget = self.inputs.params.budget;
        let t = Instant::now();
        let mut done = 0usize;
        while done < n {
            check(&self.cancel)?;
            if budget.is_some_and(|b| t.elapsed() > b) {
                break;
            }
            done += 1;
            let id = self.next_id("churn");
            self.driver
                .create(&id, Some(&base), &CreateOpts::rw())
                .await?;
            self.made.push(id.clone());
            let p = self.driver.mount(&id, &MountOpts::default()).await?;
            let w = fs::write(p.join("hello"), b"hello\n")
                .with_context(|| format!("write {}", p.join("hello").display()));
            self.driver.unmount(&id).await?;
            w?;
            self.remove_layer(&id).await?;
        }
        let per = t.elapsed().as_secs_f64() / done.max(1) as f64;
        let cut = if done < n {
            format!(" (time budget: {done} of {n} ran)")
        } else {
            String::new()
        };
        Ok(Self::figure(
            Workload::Churn,
            "churn",
            format!("one create+mount+write+unmount+remove, mean of {done}{cut}"),
            per,
        ))
    }

    async fn deep(&mut self) -> Result<Vec<Figure>> {
        let depth = self
            .driver
            .capabilities()
            .max_depth
            .min(self.inputs.params.deep_cap)
            .max(1);
        let budget = self.inputs.params.budget;
        let mut chain: Vec<LayerId> = Vec::with_capacity(depth);
        let t = Instant::now();
        let built = async {
            for k in 0..depth {
                check(&self.cancel)?;
                if k > 0 && budget.is_some_and(|b| t.elapsed() > b) {
                    break;
                }
                let id = self.next_id("deep");
                self.driver
                    .create(&id, chain.last(), &CreateOpts::rw())
                    .await?;
                chain.push(id.clone());
                self.made.push(id.clone());
                let view = self.driver.view(&id, true).await?;
                let name = if k == 0 {
                    "bottom".to_string()
                } else {
                    format!("f{k:03}")
                };
                let p = view.path().join(name);
                fs::write(&p, format!("layer {k}\n"))
                    .with_context(|| format!("write {}", p.display()))?;
                drop(view);
            }
            anyhow::Ok(())
        }
        .await;
        let build_secs = t.elapsed().as_secs_f64();
        let result = match built {
            Ok(()) => {
                let top = chain.last().expect("depth >= 1").clone();
                let t = Instant::now();
                let r = async {
                    let p = self.driver.mount(&top, &MountOpts::default()).await?;
                    let got = fs::read_to_string(p.join("bottom"))
                        .with_context(|| format!("read {}", p.join("bottom").display()));
                    self.driver.unmount(&top).await?;
                    if got? != "layer 0\n" {
                        bail!("the bottom file read through the top of the chain differs");
                    }
                    anyhow::Ok(())
                }
                .await;
                r.map(|()| t.elapsed().as_secs_f64())
            }
            Err(e) => Err(e),
        };
        // Remove the chain top down (not timed), also after a failure.
        for id in chain.iter().rev() {
            if self.cancel.load(Ordering::Relaxed) {
                break;
            }
            self.remove_layer(id).await?;
        }
        let mount_secs = result?;
        let reached = chain.len();
        let cut = if reached < depth {
            format!(" (time budget: {reached} of {depth} built)")
        } else {
            String::new()
        };
        let depth = reached;
        Ok(vec![
            Self::figure(
                Workload::Deep,
                "deep-build",
                format!("create a chain of {depth} layers, one file each{cut}"),
                build_secs,
            ),
            Self::figure(
                Workload::Deep,
                "deep-mount-read",
                format!("mount the top of {depth} layers, read the bottom file"),
                mount_secs,
            ),
        ])
    }

    /// The lower layer of `read` and `copy-up` and its plain-directory copy.
    async fn ensure_lower(&mut self) -> Result<(LayerId, PathBuf)> {
        let p = self.inputs.params;
        if self.lower.is_none() {
            let id = self.next_id("lower");
            self.driver.create(&id, None, &CreateOpts::rw()).await?;
            self.made.push(id.clone());
            let view = self.driver.view(&id, true).await?;
            let c = self.cancel.clone();
            let view = blocking(move || {
                fill_lower(view.path(), p.read_bytes, p.stat_files, &c)?;
                Ok(view)
            })
            .await?;
            drop(view);
            self.lower = Some(id);
        }
        if self.ref_lower.is_none() {
            let dir = self.work.join("ref-lower");
            fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            let (d, c) = (dir.clone(), self.cancel.clone());
            blocking(move || fill_lower(&d, p.read_bytes, p.stat_files, &c)).await?;
            self.ref_lower = Some(dir);
        }
        Ok((
            self.lower.clone().expect("set above"),
            self.ref_lower.clone().expect("set above"),
        ))
    }

    /// A fresh child of the lower layer, mounted; returns it and its path.
    async fn mounted_child(&mut self, lower: &LayerId) -> Result<(LayerId, PathBuf)> {
        let id = self.next_id("upper");
        self.driver
            .create(&id, Some(lower), &CreateOpts::rw())
            .await?;
        self.made.push(id.clone());
        let p = self.driver.mount(&id, &MountOpts::default()).await?;
        Ok((id, p))
    }

    async fn read(&mut self) -> Result<Vec<Figure>> {
        let (lower, refdir) = self.ensure_lower().await?;
        let (child, mnt) = self.mounted_child(&lower).await?;
        let p = self.inputs.params;
        let c = self.cancel.clone();
        let r = blocking(move || {
            let big = mnt.join("big.bin");
            // Warm both files first: the figures compare the read paths
            // with the data in the page cache, not the disks behind them.
            read_all(&big, &c)?;
            read_all(&refdir.join("big.bin"), &c)?;
            let (n, read_secs) = timed(|| read_all(&big, &c))?;
            if n != p.read_bytes {
                bail!(
                    "read {n} bytes of {}, expected {}",
                    big.display(),
                    p.read_bytes
                );
            }
            let (_, ref_read) = timed(|| read_all(&refdir.join("big.bin"), &c))?;
            let (_, stat_secs) = timed(|| stat_all(&mnt, p.stat_files, &c))?;
            let (_, ref_stat) = timed(|| stat_all(&refdir, p.stat_files, &c))?;
            Ok((read_secs, ref_read, stat_secs, ref_stat))
        })
        .await;
        self.driver.unmount(&child).await?;
        let (read_secs, ref_read, stat_secs, ref_stat) = r?;
        self.remove_layer(&child).await?;
        let mb = p.read_bytes as f64 / f64::from(1 << 20);
        let mut a = Self::figure(
            Workload::Read,
            "read",
            format!(
                "sequential (cached) read of a {} MiB lower file, {:.0} MiB/s",
                p.read_bytes >> 20,
                mb / read_secs.max(1e-9)
            ),
            read_secs,
        );
        a.reference = Some(Reference {
            name: "plain directory".into(),
            seconds: ref_read,
        });
        let mut b = Self::figure(
            Workload::Read,
            "stat",
            format!("stat of {} lower files", p.stat_files),
            stat_secs,
        );
        b.reference = Some(Reference {
            name: "plain directory".into(),
            seconds: ref_stat,
        });
        Ok(vec![a, b])
    }

    async fn copy_up(&mut self) -> Result<Figure> {
        let (lower, refdir) = self.ensure_lower().await?;
        let (child, mnt) = self.mounted_child(&lower).await?;
        let p = self.inputs.params;
        let n = p.copy_up_files.min(p.stat_files);
        let c = self.cancel.clone();
        let r = blocking(move || {
            let (_, secs) = timed(|| modify_all(&mnt, n, &c))?;
            let (_, ref_secs) = timed(|| modify_all(&refdir, n, &c))?;
            Ok((secs, ref_secs))
        })
        .await;
        self.driver.unmount(&child).await?;
        let (secs, ref_secs) = r?;
        self.remove_layer(&child).await?;
        let mut f = Self::figure(
            Workload::CopyUp,
            "copy-up",
            format!("append to {n} small lower files"),
            secs,
        );
        f.reference = Some(Reference {
            name: "plain directory".into(),
            seconds: ref_secs,
        });
        Ok(f)
    }

    async fn remove_layer(&mut self, id: &LayerId) -> Result<()> {
        self.driver.remove(id).await?;
        self.made.retain(|m| m != id);
        Ok(())
    }

    /// Unmounts and removes every layer this bench made (children first),
    /// then runs the driver's cleanup. Best effort: all steps are tried.
    ///
    /// # Errors
    /// The first step that failed.
    pub async fn finish(&mut self) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        for id in std::mem::take(&mut self.made).iter().rev() {
            let _ = self.driver.unmount(id).await;
            match self.driver.remove(id).await {
                Ok(()) | Err(strata_driver_api::Error::NotFound { .. }) => {}
                Err(e) => {
                    first.get_or_insert(e.into());
                }
            }
        }
        self.base = None;
        self.lower = None;
        if let Err(e) = self.driver.cleanup().await {
            first.get_or_insert(e.into());
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
