//! The shared conformance suite every strata driver passes.
//!
//! A driver is tested through a [`Factory`] that makes a fresh driver on a
//! fresh root for each scenario. [`run_suite`] runs the single-driver
//! scenarios ([`scenarios`]) and [`run_cross`] the cross-driver ones; both
//! return a [`Report`] of one row per scenario: pass, fail, skipped (with the
//! reason: a missing condition, which fails under `CI=true`) or not
//! applicable (the driver's [`Capabilities`](strata_driver_api::Capabilities)
//! rule it out, with the reason). No scenario passes silently.
//!
//! ```no_run
//! # async fn demo() {
//! use strata_conformance::{fixtures::{Backing, VfsFactory}, run_suite};
//! let report = run_suite(&VfsFactory::new(Backing::Plain), None).await;
//! report.print();
//! report.assert_ok();
//! # }
//! ```
//!
//! Every fixture is torn down after its scenario, failed or not: the
//! driver's `cleanup()`, then its temporary directory or loop-mounted image.
//! A mount left under the root after `cleanup()` fails the scenario.
//!
//! Modules: [`tree`] (tree manifests and their comparison), [`ops`] (the
//! operations scenarios apply to layers and to reference directories),
//! [`fixtures`] (loop filesystems, the vfs factory), [`tarfile`] (a minimal
//! tar writer for hand-made tars), [`hostile`] (the hostile-archive corpus), [`Ctx`] (what a scenario gets).

pub mod fixtures;
pub mod hostile;
pub mod ops;
pub mod tarfile;
pub mod tree;

mod ctx;
mod scenarios;

pub use ctx::Ctx;

use async_trait::async_trait;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_driver_api::Driver;

/// Makes fresh drivers for the suite.
#[async_trait]
pub trait Factory: Send + Sync {
    /// A short name for reports (`vfs`, `vfs-on-btrfs`, `overlay`...).
    fn name(&self) -> String;

    /// A fresh driver on a fresh, empty root. Called once per scenario.
    ///
    /// # Errors
    /// [`fixtures::SkipReason`] when the driver cannot be made here (the
    /// scenario is reported skipped), anything else when making it failed.
    async fn make(&self) -> anyhow::Result<Fixture>;
}

/// A driver on its own root, and what must be torn down after it.
///
/// Dropping it (or [`Fixture::close`]) calls `driver.cleanup()` and then
/// removes whatever was made for it (temporary directory, loop mount).
pub struct Fixture {
    /// The driver under test.
    pub driver: Arc<dyn Driver>,
    /// The root the driver was opened on.
    pub root: PathBuf,
    // Declared after `driver`: dropped after it, so the driver's open files
    // are closed before a loop-mounted root is unmounted.
    _guard: Option<Box<dyn Any + Send + Sync>>,
    closed: bool,
    scratch_base: Option<PathBuf>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("driver", &self.driver.name())
            .field("root", &self.root)
            .finish()
    }
}

impl Fixture {
    /// A fixture of `driver` on `root`; `guard` is dropped after the
    /// driver's cleanup (a `TempDir`, a [`fixtures::LoopFs`], a tuple...).
    pub fn new(driver: Arc<dyn Driver>, root: PathBuf, guard: impl Any + Send + Sync) -> Self {
        Fixture {
            driver,
            root,
            _guard: Some(Box::new(guard)),
            closed: false,
            scratch_base: None,
        }
    }

    /// Puts the scenario's scratch directory (reference trees, tar files)
    /// under `dir` instead of the system temporary directory: on the
    /// fixture's own filesystem, so a loop-mounted fixture does not write
    /// its scratch files through the host's (possibly slow) filesystem.
    /// `dir` must exist and outlive the fixture's scenarios.
    #[must_use]
    pub fn with_scratch_in(mut self, dir: PathBuf) -> Self {
        self.scratch_base = Some(dir);
        self
    }

    /// Calls `driver.cleanup()`, checks that no mount is left under the
    /// root, then drops the guard. Idempotent through ownership.
    ///
    /// # Errors
    /// The cleanup's error, or the list of mounts it left.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let cleaned = self.driver.cleanup().await;
        self.closed = true;
        let left = fixtures::mounts_under(&self.root);
        if let Ok(left) = &left {
            for m in left.iter().rev() {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // Fields drop in order: the driver (and whatever files it holds
        // open on the root) before the guard that unmounts the root.
        drop(self);
        cleaned.map_err(|e| anyhow::anyhow!("cleanup(): {e}"))?;
        let left = left?;
        if !left.is_empty() {
            anyhow::bail!(
                "mounts left under the root after cleanup(): {}",
                left.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.closed {
            let driver = self.driver.clone();
            // Drop cannot await: run the cleanup on a thread of its own with
            // its own runtime (this may be inside a runtime already).
            let done = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(driver.cleanup()))
            })
            .join();
            if !matches!(done, Ok(Ok(Ok(())))) {
                eprintln!("fixture: driver cleanup failed while dropping");
            }
            if let Ok(left) = fixtures::mounts_under(&self.root) {
                for m in left.iter().rev() {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        // The guard is dropped after the driver by field order.
    }
}

/// The result of one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A check failed: what, with the details.
    Fail(String),
    /// A condition is missing here (root, a tool, a kernel feature): which.
    /// Counts as a failure when `CI=true`.
    Skip(String),
    /// The driver's capabilities rule the scenario out: which and why.
    NotApplicable(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "skip",
            Outcome::NotApplicable(_) => "n/a",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Fail(s) | Outcome::Skip(s) | Outcome::NotApplicable(s) => s,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("pass"),
            o => write!(f, "{}: {}", o.label(), o.detail()),
        }
    }
}

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a scenario is run: given its context, check and report.
pub type RunFn = fn(Ctx) -> BoxFuture<anyhow::Result<Outcome>>;

/// One named scenario of the suite.
#[derive(Clone)]
pub struct Scenario {
    /// Unique name (`kebab-case`), usable as a filter.
    pub name: &'static str,
    /// Its group: `lifecycle`, `contents`, `beyond` or `hostile`.
    pub group: &'static str,
    /// What it checks, one line.
    pub about: &'static str,
    /// Whether it needs root (mounts, chown, mknod): skipped otherwise.
    pub needs_root: bool,
    run: RunFn,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("group", &self.group)
            .finish()
    }
}

impl Scenario {
    /// A scenario running `run`.
    pub fn new(
        name: &'static str,
        group: &'static str,
        about: &'static str,
        needs_root: bool,
        run: RunFn,
    ) -> Self {
        Scenario {
            name,
            group,
            about,
            needs_root,
            run,
        }
    }
}

/// Every single-driver scenario, in run order.
pub fn scenarios() -> Vec<Scenario> {
    scenarios::all()
}

/// Every cross-driver scenario (run by [`run_cross`]).
pub fn cross_scenarios() -> Vec<&'static str> {
    scenarios::cross::NAMES.to_vec()
}

/// One row of a [`Report`].
#[derive(Clone, Debug)]
pub struct Row {
    /// The scenario's name (with the driver pair for cross scenarios).
    pub scenario: String,
    /// The scenario's group.
    pub group: String,
    /// The factory's name (or names, for cross scenarios).
    pub driver: String,
    /// What happened.
    pub outcome: Outcome,
    /// How long it took, fixture set-up and tear-down included.
    pub elapsed: Duration,
    /// Notes the scenario left (what depth it tested...), shown as the
    /// detail of a pass.
    pub notes: Vec<String>,
}

/// The results of a run: one row per scenario.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The rows, in run order.
    pub rows: Vec<Row>,
}

/// Whether `CI=true` (missing conditions fail instead of skipping).
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

impl Report {
    /// The table, as text: scenario, driver, result, time, detail.
    pub fn table(&self) -> String {
        let w0 = self
            .rows
            .iter()
            .map(|r| r.scenario.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.driver.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut s = format!(
            "{:<w0$}  {:<w1$}  {:<6}  {:>7}  detail\n",
            "scenario", "driver", "result", "time"
        );
        s.push_str(&format!("{}\n", "-".repeat(w0 + w1 + 32)));
        for r in &self.rows {
            let mut detail = r.outcome.detail().to_string();
            for n in &r.notes {
                if !detail.is_empty() {
                    detail.push('\n');
                }
                detail.push_str(n);
            }
            let mut lines = detail.lines();
            s.push_str(&format!(
                "{:<w0$}  {:<w1$}  {:<6}  {:>6.1}s  {}\n",
                r.scenario,
                r.driver,
                r.outcome.label(),
                r.elapsed.as_secs_f64(),
                lines.next().unwrap_or("")
            ));
            for l in lines {
                s.push_str(&format!("{:w$}  {l}\n", "", w = w0 + w1 + 28));
            }
        }
        let count = |f: fn(&Outcome) -> bool| self.rows.iter().filter(|r| f(&r.outcome)).count();
        s.push_str(&format!(
            "{} passed, {} failed, {} skipped, {} not applicable\n",
            count(|o| *o == Outcome::Pass),
            count(|o| matches!(o, Outcome::Fail(_))),
            count(|o| matches!(o, Outcome::Skip(_))),
            count(|o| matches!(o, Outcome::NotApplicable(_))),
        ));
        s
    }

    /// Prints [`Report::table`] to stdout.
    pub fn print(&self) {
        print!("{}", self.table());
    }

    /// The rows that count as failures: `Fail`, and `Skip` when `CI=true`.
    pub fn failures(&self) -> Vec<&Row> {
        let ci = in_ci();
        self.rows
            .iter()
            .filter(|r| match r.outcome {
                Outcome::Fail(_) => true,
                Outcome::Skip(_) => ci,
                _ => false,
            })
            .collect()
    }

    /// Panics listing the failures (see [`Report::failures`]), or when no
    /// scenario ran at all.
    pub fn assert_ok(&self) {
        assert!(!self.rows.is_empty(), "no scenario ran");
        let f = self.failures();
        if !f.is_empty() {
            let list: Vec<String> = f
                .iter()
                .map(|r| format!("{} [{}]: {}", r.scenario, r.driver, r.outcome))
                .collect();
            panic!("{} scenario(s) failed:\n{}", f.len(), list.join("\n"));
        }
    }

    /// Appends the rows of `other`.
    pub fn extend(&mut self, other: Report) {
        self.rows.extend(other.rows);
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => {
            if let Some(s) = p.downcast_ref::<&str>() {
                format!("panicked: {s}")
            } else if let Some(s) = p.downcast_ref::<String>() {
                format!("panicked: {s}")
            } else {
                "panicked".into()
            }
        }
        Err(e) => format!("task failed: {e}"),
    }
}

/// Converts a fixture error into the outcome it stands for.
fn fixture_outcome(e: anyhow::Error) -> Outcome {
    match e.downcast_ref::<fixtures::SkipReason>() {
        Some(s) => Outcome::Skip(s.0.clone()),
        None => Outcome::Fail(format!("making the fixture: {e:#}")),
    }
}

/// Runs `run` on a fresh fixture from `factory`, catching panics, and tears
/// the fixture down.
pub(crate) async fn run_on_fixture<F>(factory: &dyn Factory, run: F) -> (Outcome, Vec<String>)
where
    F: FnOnce(Ctx) -> BoxFuture<anyhow::Result<Outcome>>,
{
    let fixture = match factory.make().await {
        Ok(f) => f,
        Err(e) => return (fixture_outcome(e), Vec::new()),
    };
    let mut scratch = tempfile::Builder::new();
    scratch.prefix("strata-ref-");
    let scratch = match &fixture.scratch_base {
        Some(base) => scratch.tempdir_in(base),
        None => scratch.tempdir(),
    };
    let scratch = match scratch {
        Ok(t) => t,
        Err(e) => return (Outcome::Fail(format!("scratch dir: {e}")), Vec::new()),
    };
    let cx = Ctx::new(
        fixture.driver.clone(),
        fixture.root.clone(),
        scratch.path().to_path_buf(),
        factory.name(),
    );
    let notes = cx.notes();
    let outcome = match tokio::spawn(run(cx)).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Fail(format!("{e:#}")),
        Err(e) => Outcome::Fail(panic_message(e)),
    };
    let closed = fixture.close().await;
    drop(scratch);
    let notes = notes.lock().map(|n| n.clone()).unwrap_or_default();
    let outcome = match (outcome, closed) {
        (o, Ok(())) => o,
        (Outcome::Fail(s), Err(e)) => Outcome::Fail(format!("{s}\nand at teardown: {e:#}")),
        (_, Err(e)) => Outcome::Fail(format!("teardown: {e:#}")),
    };
    (outcome, notes)
}

async fn run_one(factory: &dyn Factory, s: &Scenario) -> Row {
    let start = Instant::now();
    let (outcome, notes) = if s.needs_root && !fixtures::is_root() {
        (Outcome::Skip("needs root".into()), Vec::new())
    } else {
        run_on_fixture(factory, s.run).await
    };
    Row {
        scenario: s.name.to_string(),
        group: s.group.to_string(),
        driver: factory.name(),
        outcome,
        elapsed: start.elapsed(),
        notes,
    }
}

/// Runs the scenarios selected by `filter` (all when `None`; otherwise
/// those whose name contains it or whose group equals it), each on a fresh
/// fixture, one after the other.
pub async fn run_suite(factory: &dyn Factory, filter: Option<&str>) -> Report {
    let mut report = Report::default();
    for s in scenarios() {
        let selected = match filter {
            None => true,
            Some(f) => s.name.contains(f) || s.group == f,
        };
        if selected {
            report.rows.push(run_one(factory, &s).await);
        }
    }
    report
}

/// Runs the one scenario named exactly `name`; a report with a failing row
/// when there is no such scenario.
pub async fn run_named(factory: &dyn Factory, name: &str) -> Report {
    let mut report = Report::default();
    match scenarios().into_iter().find(|s| s.name == name) {
        Some(s) => report.rows.push(run_one(factory, &s).await),
        None => report.rows.push(Row {
            scenario: name.to_string(),
            group: String::new(),
            driver: factory.name(),
            outcome: Outcome::Fail("no scenario of this name".into()),
            elapsed: Duration::ZERO,
            notes: Vec::new(),
        }),
    }
    report
}

/// Runs the cross-driver scenarios over `factories` (canonical tar identity
/// through every driver; a layer made with each driver applied with every
/// driver). One row per scenario and driver (or driver pair).
pub async fn run_cross(factories: &[&dyn Factory]) -> Report {
    scenarios::cross::run(factories).await
}

/// Runs the scenario a test function is named after (`deep_chain_max` for
/// `deep-chain-max`) against `factory` on a fresh two-thread runtime,
/// prints its report row and panics when it failed (or was skipped under
/// `CI=true`). What each test of [`scenario_tests!`] calls.
///
/// # Panics
/// When the scenario did not pass, was unknown, or the runtime could not
/// be built.
pub fn run_test(factory: &dyn Factory, test: &str) {
    let name = test.replace('_', "-");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run_named(factory, &name));
    report.print();
    report.assert_ok();
}

/// Panics unless `tests` (test function names, `_` for `-`) name every
/// scenario of [`scenarios`] exactly once. Used by [`scenario_tests!`].
///
/// # Panics
/// On a missing, unknown or repeated name.
pub fn assert_lists_every_scenario(tests: &[&str]) {
    let mut want: Vec<String> = scenarios().iter().map(|s| s.name.to_string()).collect();
    let mut got: Vec<String> = tests.iter().map(|t| t.replace('_', "-")).collect();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "scenario_tests! must list every scenario exactly once"
    );
}

/// Writes a module `$module` of one `#[test]` per scenario, each running
/// that scenario against `$factory` (an expression, evaluated by each test
/// inside the module, which sees the items of its parent) through
/// [`run_test`]:
///
/// ```ignore
/// strata_conformance::scenario_tests!(plain, VfsFactory::new(Backing::Plain));
/// ```
///
/// Each module also gets `every_scenario_has_a_test`, checking the
/// macro's list against [`scenarios`].
#[macro_export]
macro_rules! scenario_tests {
    ($module:ident, $factory:expr) => {
        $crate::scenario_tests!(@list $module, $factory,
            empty_layer, base_modes_owners, chain_views, create_twice, read_only_mount,
            remove_order, recreate_removed, mount_refcount, exists_list,
            delete_stays_deleted, opaque_dir, rename, hardlink_move,
            update_five_times, chown_nested, permission_churn, deep_chain_20,
            deep_chain_max, changes_exact, diff_apply, many_files_wide,
            many_files_deep, xattrs, sparse_files, hardlinks, sockets_fifos,
            device_nodes, long_names, non_utf8_names, wh_lookalikes,
            tar_whiteouts, hostile_archives, symlinks_stay_inside
        );
    };
    (@list $module:ident, $factory:expr, $($t:ident),*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $t() {
                    $crate::run_test(&$factory, stringify!($t))
                }
            )*

            #[test]
            fn every_scenario_has_a_test() {
                $crate::assert_lists_every_scenario(&[$(stringify!($t)),*]);
            }
        }
    };
}

#[cfg(test)]
mod tests {}
