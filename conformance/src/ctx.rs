//! What a scenario gets: the driver, a scratch directory for reference
//! trees and tars, and helpers that build layers from [`Op`]s and compare
//! their views.

use crate::ops::{self, Op};
use crate::tree::{self, Manifest};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use strata_driver_api::{Change, CreateOpts, Driver, LayerId, MountOpts};

/// The context of one scenario run.
pub struct Ctx {
    /// The driver under test (fresh, on its own root).
    pub driver: Arc<dyn Driver>,
    /// The driver's root.
    pub root: PathBuf,
    /// A private scratch directory, removed after the scenario.
    pub scratch: PathBuf,
    /// The factory's name, for messages.
    pub factory: String,
    seq: AtomicUsize,
    notes: Arc<Mutex<Vec<String>>>,
}

/// A layer id from a literal; scenarios only use valid ids.
///
/// # Errors
/// When `s` is not a valid id.
pub fn lid(s: &str) -> Result<LayerId> {
    LayerId::new(s).with_context(|| format!("layer id {s:?}"))
}

fn opt_lid(s: Option<&str>) -> Result<Option<LayerId>> {
    s.map(lid).transpose()
}

impl Ctx {
    /// A context for `driver` on `root`, with `scratch` as its private
    /// directory.
    pub fn new(driver: Arc<dyn Driver>, root: PathBuf, scratch: PathBuf, factory: String) -> Self {
        Ctx {
            driver,
            root,
            scratch,
            factory,
            seq: AtomicUsize::new(0),
            notes: Arc::default(),
        }
    }

    /// Adds a note shown in the report's detail column (also for a pass):
    /// what was tested when it is worth knowing (a depth, a limit).
    pub fn note(&self, note: impl Into<String>) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(note.into());
        }
    }

    /// A handle on the notes, read by the runner after the scenario.
    pub(crate) fn notes(&self) -> Arc<Mutex<Vec<String>>> {
        self.notes.clone()
    }

    /// A fresh path in the scratch directory (not created).
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.scratch.join(format!("{what}-{n}"))
    }

    /// Creates layer `id` on `parent` with `opts`.
    ///
    /// # Errors
    /// The driver's error, with the layer named.
    pub async fn create_with(
        &self,
        id: &str,
        parent: Option<&str>,
        opts: &CreateOpts,
    ) -> Result<()> {
        let (i, p) = (lid(id)?, opt_lid(parent)?);
        self.driver
            .create(&i, p.as_ref(), opts)
            .await
            .with_context(|| format!("create {id} on {parent:?}"))
    }

    /// Creates a read-write layer `id` on `parent`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn create(&self, id: &str, parent: Option<&str>) -> Result<()> {
        self.create_with(id, parent, &CreateOpts::rw()).await
    }

    /// Mounts `id` (default options).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn mount(&self, id: &str) -> Result<PathBuf> {
        self.driver
            .mount(&lid(id)?, &MountOpts::default())
            .await
            .with_context(|| format!("mount {id}"))
    }

    /// Unmounts `id`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn unmount(&self, id: &str) -> Result<()> {
        self.driver
            .unmount(&lid(id)?)
            .await
            .with_context(|| format!("unmount {id}"))
    }

    /// Mounts `id`, applies `ops` in its mounted tree, unmounts (also when
    /// an operation failed).
    ///
    /// # Errors
    /// Mount, an operation, or unmount failing.
    pub async fn write(&self, id: &str, ops: Vec<Op>) -> Result<()> {
        let path = self.mount(id).await?;
        let applied = tokio::task::spawn_blocking(move || ops::apply(&path, &ops))
            .await
            .context("ops task panicked")?;
        let unmounted = self.unmount(id).await;
        applied.with_context(|| format!("writing into layer {id}"))?;
        unmounted
    }

    /// Creates read-write layer `id` on `parent` and writes `ops` into it.
    ///
    /// # Errors
    /// As [`Ctx::create`] and [`Ctx::write`].
    pub async fn build(&self, id: &str, parent: Option<&str>, ops: Vec<Op>) -> Result<()> {
        self.create(id, parent).await?;
        self.write(id, ops).await
    }

    /// The manifest of `id`'s mounted tree (mounted and unmounted again).
    ///
    /// # Errors
    /// Mount, capture or unmount failing.
    pub async fn manifest(&self, id: &str) -> Result<Manifest> {
        let path = self.mount(id).await?;
        let m = Manifest::capture_async(path).await;
        let u = self.unmount(id).await;
        let m = m.with_context(|| format!("capturing layer {id}"))?;
        u?;
        Ok(m)
    }

    /// The manifest of a plain directory built by `ops` from an empty root
    /// (mode 0755, root-owned); the directory is removed afterwards.
    ///
    /// # Errors
    /// An operation failing.
    pub async fn reference(&self, ops: &[Op]) -> Result<Manifest> {
        let dir = self.scratch_path("ref");
        let ops = ops.to_vec();
        tokio::task::spawn_blocking(move || {
            ops::reference_root(&dir)?;
            ops::apply(&dir, &ops).context("building the reference tree")?;
            let m = Manifest::capture(&dir);
            let _ = fs::remove_dir_all(&dir);
            m
        })
        .await
        .context("reference task panicked")?
    }

    /// Checks that `id`'s mounted view equals the reference tree of `ops`.
    ///
    /// # Errors
    /// The differences, listed.
    pub async fn expect_view(&self, id: &str, ops: &[Op]) -> Result<Manifest> {
        let want = self.reference(ops).await?;
        let got = self.manifest(id).await?;
        tree::assert_equal_as(&want, &got, "reference", &format!("layer {id}"))?;
        Ok(got)
    }

    /// Writes `diff(id, parent)` to a scratch file and returns its path.
    ///
    /// # Errors
    /// The driver's error or writing the file.
    pub async fn diff_to_file(&self, id: &str, parent: Option<&str>) -> Result<PathBuf> {
        let path = self.scratch_path("diff");
        let f = fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let (i, p) = (lid(id)?, opt_lid(parent)?);
        let mut out = self
            .driver
            .diff(&i, p.as_ref(), Box::new(BufWriter::new(f)))
            .await
            .with_context(|| format!("diff {id} against {parent:?}"))?;
        out.flush().context("flushing the diff")?;
        drop(out);
        Ok(path)
    }

    /// Applies the tar at `file` to `id` (made against `parent`), returning
    /// the byte count the driver reports.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn apply_file(&self, id: &str, parent: Option<&str>, file: &Path) -> Result<u64> {
        let f = fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
        let (i, p) = (lid(id)?, opt_lid(parent)?);
        self.driver
            .apply_diff(&i, p.as_ref(), Box::new(BufReader::new(f)))
            .await
            .with_context(|| format!("apply_diff into {id} (parent {parent:?})"))
    }

    /// `diff_size(id, parent)`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        let (i, p) = (lid(id)?, opt_lid(parent)?);
        self.driver
            .diff_size(&i, p.as_ref())
            .await
            .with_context(|| format!("diff_size {id} against {parent:?}"))
    }

    /// `changes(id, parent)`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
        let (i, p) = (lid(id)?, opt_lid(parent)?);
        self.driver
            .changes(&i, p.as_ref())
            .await
            .with_context(|| format!("changes {id} against {parent:?}"))
    }

    /// Diffs `id` against `parent`, creates `fresh` on the same parent,
    /// applies the diff to it and checks: the applied size equals
    /// `diff_size`, and (when `strict`) the two views are equal trees.
    /// Returns the manifests of `id` and `fresh`.
    ///
    /// # Errors
    /// Any step failing, a size mismatch, or (strict) the differences.
    pub async fn roundtrip(
        &self,
        id: &str,
        parent: Option<&str>,
        fresh: &str,
        strict: bool,
    ) -> Result<(Manifest, Manifest)> {
        let (a, b, _) = self.roundtrip_timed(id, parent, fresh, strict).await?;
        Ok((a, b))
    }

    /// [`Ctx::roundtrip`], also returning the time of each step (`diff
    /// 1.2 s, diff_size 0.3 s, ...`) for a scenario's note.
    ///
    /// # Errors
    /// As [`Ctx::roundtrip`].
    pub async fn roundtrip_timed(
        &self,
        id: &str,
        parent: Option<&str>,
        fresh: &str,
        strict: bool,
    ) -> Result<(Manifest, Manifest, String)> {
        let mut steps = Vec::new();
        let mut t = Instant::now();
        let mut lap = |what: &str| {
            steps.push(format!("{what} {:.1} s", t.elapsed().as_secs_f64()));
            t = Instant::now();
        };
        let tar = self.diff_to_file(id, parent).await?;
        lap("diff");
        let want_size = self.diff_size(id, parent).await?;
        lap("diff_size");
        self.create(fresh, parent).await?;
        lap("create");
        let got_size = self.apply_file(fresh, parent, &tar).await?;
        lap("apply");
        if got_size != want_size {
            bail!(
                "apply_diff into {fresh} returned {got_size} bytes, diff_size({id}) is {want_size}"
            );
        }
        let a = self.manifest(id).await?;
        let b = self.manifest(fresh).await?;
        lap("manifests");
        if strict {
            tree::assert_equal_as(&a, &b, &format!("layer {id}"), &format!("applied {fresh}"))?;
        }
        let _ = fs::remove_file(&tar);
        Ok((a, b, steps.join(", ")))
    }
}

/// Formats changes as `A /path` lines, for messages.
pub fn show_changes(c: &[Change]) -> String {
    use std::os::unix::ffi::OsStrExt;
    c.iter()
        .map(|c| {
            format!(
                "{} {}",
                c.kind.letter(),
                tree::show(c.path.as_os_str().as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
