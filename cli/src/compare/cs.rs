//! containers-storage side by side: the `import`, `diff`, `child-diff` and
//! `churn` workloads through the `containers-storage` command (Debian
//! package of the same name) with its overlay, vfs and btrfs drivers, each
//! on its own `--graph`/`--run` root inside the scratch space. Every step is
//! one process of that command, as its users run it, so its figures include
//! process start-up.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use strata_benches::scratch::have_tool;
use strata_benches::workloads::{check, Cancel, Figure, Inputs, Reference, Workload};

/// The workloads containers-storage runs.
pub const WORKLOADS: [Workload; 4] = [
    Workload::Import,
    Workload::Diff,
    Workload::ChildDiff,
    Workload::Churn,
];

/// Its drivers compared.
pub const DRIVERS: [&str; 3] = ["overlay", "vfs", "btrfs"];

/// What containers-storage did in this run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CsReport {
    /// Whether it ran.
    pub run: bool,
    /// Its version line, when it ran.
    pub version: Option<String>,
    /// Why it did not run.
    pub reason: Option<String>,
    /// Steps that failed, with the error.
    pub errors: Vec<(String, String)>,
}

impl CsReport {
    /// A report of a run that did not happen.
    pub fn not_run(why: String) -> CsReport {
        CsReport {
            run: false,
            version: None,
            reason: Some(why),
            errors: Vec::new(),
        }
    }
    /// A report of a run.
    pub fn ran(version: String) -> CsReport {
        CsReport {
            run: true,
            version: Some(version),
            reason: None,
            errors: Vec::new(),
        }
    }
}

/// Its version when it is installed and wanted, else why not.
pub fn availability(wanted: bool) -> std::result::Result<String, String> {
    if !wanted {
        return Err("skipped (--no-containers-storage)".into());
    }
    if !have_tool("containers-storage") {
        return Err("the containers-storage command is not installed \
                    (Debian: apt-get install containers-storage)"
            .into());
    }
    let out = std::process::Command::new("containers-storage")
        .arg("version")
        .output()
        .map_err(|e| format!("cannot run containers-storage: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("version"))
        .unwrap_or("unknown version")
        .trim()
        .to_string())
}

/// The workloads on one containers-storage driver.
pub struct CsBench {
    driver: &'static str,
    dir: PathBuf,
    inputs: Arc<Inputs>,
    cancel: Cancel,
    base: Option<String>,
    ref_tree: Option<PathBuf>,
}

impl CsBench {
    /// A bench of containers-storage's `driver` with its roots under `dir`.
    ///
    /// # Errors
    /// When `dir` cannot be made.
    pub fn new(
        driver: &'static str,
        dir: &Path,
        inputs: Arc<Inputs>,
        cancel: Cancel,
    ) -> Result<CsBench> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(CsBench {
            driver,
            dir: dir.to_path_buf(),
            inputs,
            cancel,
            base: None,
            ref_tree: None,
        })
    }

    /// Runs `containers-storage <args>` with this bench's roots and driver;
    /// returns the last line of its stdout.
    async fn cs(&self, args: &[&std::ffi::OsStr]) -> Result<String> {
        let out = tokio::process::Command::new("containers-storage")
            .arg("--graph")
            .arg(self.dir.join("graph"))
            .arg("--run")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", self.driver])
            .args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run containers-storage")?;
        if !out.status.success() {
            bail!(
                "containers-storage -s {} {args:?} failed ({}): {}",
                self.driver,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string())
    }

    async fn tool(program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
        let out = tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn figure(
        &self,
        w: Workload,
        detail: String,
        seconds: f64,
        reference: Option<Reference>,
    ) -> Figure {
        Figure {
            workload: w.name().into(),
            figure: w.name().into(),
            detail,
            seconds,
            reference,
            peak_rss_kib: None,
        }
    }

    async fn import_layer(&mut self) -> Result<(String, f64)> {
        let t = Instant::now();
        let id = self
            .cs(&[
                "import-layer".as_ref(),
                "-f".as_ref(),
                self.inputs.tar.as_os_str(),
            ])
            .await?;
        Self::tool("sync", &["-f".as_ref(), self.dir.as_os_str()]).await?;
        Ok((id, t.elapsed().as_secs_f64()))
    }

    async fn ref_extract(&mut self) -> Result<f64> {
        let dir = self.dir.join("ref-tree");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let t = Instant::now();
        Self::tool(
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
        Self::tool("sync", &["-f".as_ref(), dir.as_os_str()]).await?;
        self.ref_tree = Some(dir);
        Ok(t.elapsed().as_secs_f64())
    }

    async fn ensure_base(&mut self) -> Result<String> {
        if self.base.is_none() {
            let (id, _) = self.import_layer().await?;
            self.base = Some(id);
        }
        if self.ref_tree.is_none() {
            self.ref_extract().await?;
        }
        Ok(self.base.clone().expect("set above"))
    }

    /// Runs workload `w` (one of [`WORKLOADS`]).
    ///
    /// # Errors
    /// A failing step, or "interrupted".
    pub async fn run(&mut self, w: Workload) -> Result<Figure> {
        check(&self.cancel)?;
        let files = self.inputs.stats.files;
        match w {
            Workload::Import => {
                let (id, secs) = self.import_layer().await?;
                let r = self.ref_extract().await?;
                if self.base.is_none() {
                    self.base = Some(id);
                } else {
                    self.cs(&["delete-layer".as_ref(), id.as_ref()]).await?;
                }
                Ok(self.figure(
                    w,
                    format!("{files} files (containers-storage import-layer)"),
                    secs,
                    Some(Reference {
                        name: "tar -x + sync".into(),
                        seconds: r,
                    }),
                ))
            }
            Workload::Diff => {
                let base = self.ensure_base().await?;
                let out = self.dir.join("diff.tar");
                let t = Instant::now();
                self.cs(&[
                    "diff".as_ref(),
                    "-u".as_ref(),
                    "-f".as_ref(),
                    out.as_os_str(),
                    base.as_ref(),
                ])
                .await?;
                let secs = t.elapsed().as_secs_f64();
                let tree = self.ref_tree.clone().expect("ensure_base made it");
                let ref_out = self.dir.join("ref-diff.tar");
                let t = Instant::now();
                Self::tool(
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
                let r = t.elapsed().as_secs_f64();
                let _ = std::fs::remove_file(&out);
                let _ = std::fs::remove_file(&ref_out);
                Ok(self.figure(
                    w,
                    format!("{files} files to a tar file"),
                    secs,
                    Some(Reference {
                        name: "tar -c to a file".into(),
                        seconds: r,
                    }),
                ))
            }
            Workload::ChildDiff => {
                let base = self.ensure_base().await?;
                let child = self.cs(&["create-layer".as_ref(), base.as_ref()]).await?;
                let mnt = PathBuf::from(self.cs(&["mount".as_ref(), child.as_ref()]).await?);
                let n = self.inputs.params.child_changes;
                let r =
                    tokio::task::spawn_blocking(move || strata_benches::small_changes(&mnt, n, 3))
                        .await
                        .context("changes panicked")?;
                self.cs(&["unmount".as_ref(), child.as_ref()]).await?;
                r?;
                let out = self.dir.join("child.tar");
                let t = Instant::now();
                self.cs(&[
                    "diff".as_ref(),
                    "-u".as_ref(),
                    "-f".as_ref(),
                    out.as_os_str(),
                    child.as_ref(),
                ])
                .await?;
                let secs = t.elapsed().as_secs_f64();
                let _ = std::fs::remove_file(&out);
                self.cs(&["delete-layer".as_ref(), child.as_ref()]).await?;
                Ok(self.figure(w, format!("{n} small changes on the rootfs"), secs, None))
            }
            Workload::Churn => {
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
                    let id = self.cs(&["create-layer".as_ref(), base.as_ref()]).await?;
                    let p = PathBuf::from(self.cs(&["mount".as_ref(), id.as_ref()]).await?);
                    let wr = std::fs::write(p.join("hello"), b"hello\n");
                    self.cs(&["unmount".as_ref(), id.as_ref()]).await?;
                    wr.with_context(|| format!("write {}", p.join("hello").display()))?;
                    self.cs(&["delete-layer".as_ref(), id.as_ref()]).await?;
                }
                let per = t.elapsed().as_secs_f64() / done.max(1) as f64;
                let cut = if done < n {
                    format!(" (time budget: {done} of {n} ran)")
                } else {
                    String::new()
                };
                Ok(self.figure(
                    w,
                    format!(
                        "one create+mount+write+unmount+remove (4 processes), mean of {done}{cut}"
                    ),
                    per,
                    None,
                ))
            }
            other => bail!(
                "containers-storage does not run the {} workload",
                other.name()
            ),
        }
    }

    /// Unmounts whatever it still has mounted (`shutdown --force`). The
    /// scratch teardown removes its files.
    pub async fn finish(&mut self) {
        let _ = self.cs(&["shutdown".as_ref(), "--force".as_ref()]).await;
    }
}
