//! Cross-driver identity: a canonical tar goes through every driver
//! unchanged, and a layer made with any driver applies to equal trees with
//! every driver.

use super::{rich_base, rich_child};
use crate::tarfile;
use crate::tree::{self, Manifest};
use crate::{fixtures, run_on_fixture, Ctx, Factory, Outcome, Report, Row};
use anyhow::{ensure, Context, Result};
use std::fs;
use std::path::PathBuf;
use std::time::Instant;
use strata_driver_api::CreateOpts;

/// The cross-driver scenarios.
pub(crate) const NAMES: [&str; 2] = ["cross-canonical-tar", "cross-driver-trees"];

/// What the source driver produced: tars and the view they came from.
struct Made {
    base_tar: PathBuf,
    child_tar: PathBuf,
    flat_tar: PathBuf,
    child_view: Manifest,
}

fn row(
    scenario: &str,
    driver: String,
    outcome: Outcome,
    start: Instant,
    notes: Vec<String>,
) -> Row {
    Row {
        scenario: scenario.to_string(),
        group: "cross".into(),
        driver,
        outcome,
        elapsed: start.elapsed(),
        notes,
    }
}

/// [`rich_child`], with `etc/passwd` (which has a second name,
/// `hard-passwd`, in the base) replaced by a new file rather than written
/// in place. Writing one name of a lower hard-linked file legitimately
/// gives different layers on different drivers (overlay with `index=off`
/// copies up only that name; `Capabilities::copy_up_keeps_links`); the
/// `hardlinks` scenario checks that per driver. Byte identity across
/// drivers is asked only of a change set whose meaning every driver shares.
fn cross_child() -> Vec<crate::ops::Op> {
    let mut ops = rich_child();
    let at = ops
        .iter()
        .position(|op| op.short().contains("etc/passwd"))
        .expect("rich_child rewrites etc/passwd");
    ops.insert(at, crate::ops::rm("etc/passwd"));
    ops
}

/// Builds the rich base and child with `factory`'s driver and keeps its
/// diffs (base on nothing, child on base, child on nothing) in `dir`.
async fn make_source(factory: &dyn Factory, dir: PathBuf) -> (Outcome, Option<Made>) {
    let out = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = out.clone();
    let (outcome, _) = run_on_fixture(factory, move |cx: Ctx| {
        Box::pin(async move {
            cx.build("base", None, rich_base()).await?;
            cx.build("child", Some("base"), cross_child()).await?;
            let keep = |from: PathBuf, name: &str| -> Result<PathBuf> {
                let to = dir.join(name);
                fs::rename(&from, &to).or_else(|_| fs::copy(&from, &to).map(drop))?;
                Ok(to)
            };
            let base_tar = keep(cx.diff_to_file("base", None).await?, "base.tar")?;
            let child_tar = keep(cx.diff_to_file("child", Some("base")).await?, "child.tar")?;
            let flat_tar = keep(cx.diff_to_file("child", None).await?, "flat.tar")?;
            let child_view = cx.manifest("child").await?;
            *slot.lock().expect("slot") = Some(Made {
                base_tar,
                child_tar,
                flat_tar,
                child_view,
            });
            Ok(Outcome::Pass)
        })
    })
    .await;
    let made = out.lock().ok().and_then(|mut m| m.take());
    (outcome, made)
}

async fn diff_bytes(cx: &Ctx, id: &str, parent: Option<&str>) -> Result<Vec<u8>> {
    let f = cx.diff_to_file(id, parent).await?;
    Ok(fs::read(f)?)
}

fn same_bytes(want: &[u8], got: &[u8], what: &str) -> Result<()> {
    match tarfile::first_difference(want, got) {
        None => Ok(()),
        Some(d) => anyhow::bail!("{what}: the re-made diff differs from the canonical tar: {d}"),
    }
}

/// Applies the source's canonical tars with this driver, diffs again and
/// compares bytes and trees.
async fn canonical(
    cx: Ctx,
    base_tar: PathBuf,
    child_tar: PathBuf,
    want: Manifest,
) -> Result<Outcome> {
    cx.create_with("b", None, &CreateOpts::ro()).await?;
    let n = cx.apply_file("b", None, &base_tar).await?;
    let size = cx.diff_size("b", None).await?;
    ensure!(
        n == size,
        "apply of the base tar returned {n}, diff_size is {size}"
    );
    same_bytes(
        &fs::read(&base_tar)?,
        &diff_bytes(&cx, "b", None).await?,
        "base",
    )?;
    cx.create_with("c", Some("b"), &CreateOpts::ro()).await?;
    let n = cx.apply_file("c", Some("b"), &child_tar).await?;
    let size = cx.diff_size("c", Some("b")).await?;
    ensure!(
        n == size,
        "apply of the child tar returned {n}, diff_size is {size}"
    );
    same_bytes(
        &fs::read(&child_tar)?,
        &diff_bytes(&cx, "c", Some("b")).await?,
        "child",
    )?;
    let got = cx.manifest("c").await?;
    tree::assert_equal_as(&want, &got, "source layer", "applied here")?;
    Ok(Outcome::Pass)
}

/// Applies another driver's flat diff with this driver and compares trees.
async fn trees(cx: Ctx, flat_tar: PathBuf, want: Manifest) -> Result<Outcome> {
    cx.create("dst", None).await?;
    cx.apply_file("dst", None, &flat_tar).await?;
    let got = cx.manifest("dst").await?;
    tree::assert_equal_as(&want, &got, "source layer", "applied here")?;
    Ok(Outcome::Pass)
}

/// Runs both cross-driver scenarios over `factories`.
pub(crate) async fn run(factories: &[&dyn Factory]) -> Report {
    let mut report = Report::default();
    let names: Vec<String> = factories.iter().map(|f| f.name()).collect();
    if factories.is_empty() {
        return report;
    }
    if !fixtures::is_root() {
        for n in NAMES {
            report.rows.push(row(
                n,
                names.join(","),
                Outcome::Skip("needs root".into()),
                Instant::now(),
                vec![],
            ));
        }
        return report;
    }
    let store = match tempfile::Builder::new().prefix("strata-cross-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            for n in NAMES {
                report.rows.push(row(
                    n,
                    names.join(","),
                    Outcome::Fail(format!("temp dir: {e}")),
                    Instant::now(),
                    vec![],
                ));
            }
            return report;
        }
    };
    // Every driver makes the same layers and its diffs.
    let mut made: Vec<Option<Made>> = Vec::new();
    let mut source_failures: Vec<Option<String>> = Vec::new();
    for (i, f) in factories.iter().enumerate() {
        let dir = store.path().join(format!("src{i}"));
        if let Err(e) = fs::create_dir(&dir) {
            made.push(None);
            source_failures.push(Some(format!("temp dir: {e}")));
            continue;
        }
        let (outcome, m) = make_source(*f, dir).await;
        source_failures.push(match &outcome {
            Outcome::Pass => None,
            o => Some(format!("making the source layers with {}: {o}", f.name())),
        });
        made.push(m);
    }

    // 1. The first driver's canonical tars through every driver.
    let first = &made[0];
    for f in factories {
        let start = Instant::now();
        let (outcome, notes) = match first {
            None => (
                Outcome::Fail(source_failures[0].clone().unwrap_or_default()),
                vec![],
            ),
            Some(m) => {
                let (bt, ct, want) = (
                    m.base_tar.clone(),
                    m.child_tar.clone(),
                    m.child_view.clone(),
                );
                run_on_fixture(*f, move |cx| Box::pin(canonical(cx, bt, ct, want))).await
            }
        };
        report.rows.push(row(
            NAMES[0],
            format!("{} -> {}", names[0], f.name()),
            outcome,
            start,
            notes,
        ));
    }
    // And every driver's own diffs are the same bytes as the first's.
    for (i, m) in made.iter().enumerate().skip(1) {
        let start = Instant::now();
        let outcome = match (first, m) {
            (Some(a), Some(b)) => match compare_tars(a, b) {
                Ok(()) => Outcome::Pass,
                Err(e) => Outcome::Fail(format!("{e:#}")),
            },
            _ => Outcome::Fail(
                source_failures[i]
                    .clone()
                    .or_else(|| source_failures[0].clone())
                    .unwrap_or_default(),
            ),
        };
        report.rows.push(row(
            NAMES[0],
            format!("{} == {}", names[i], names[0]),
            outcome,
            start,
            vec![],
        ));
    }

    // 2. Each driver's layer applied with every driver (itself included
    // when it is the only one).
    for (s, m) in made.iter().enumerate() {
        for (t, f) in factories.iter().enumerate() {
            if s == t && factories.len() > 1 {
                continue;
            }
            let start = Instant::now();
            let (outcome, notes) = match m {
                None => (
                    Outcome::Fail(source_failures[s].clone().unwrap_or_default()),
                    vec![],
                ),
                Some(m) => {
                    let (tar, want) = (m.flat_tar.clone(), m.child_view.clone());
                    run_on_fixture(*f, move |cx| Box::pin(trees(cx, tar, want))).await
                }
            };
            report.rows.push(row(
                NAMES[1],
                format!("{} -> {}", names[s], f.name()),
                outcome,
                start,
                notes,
            ));
        }
    }
    report
}

fn compare_tars(a: &Made, b: &Made) -> Result<()> {
    for (x, y, what) in [
        (&a.base_tar, &b.base_tar, "base diff"),
        (&a.child_tar, &b.child_tar, "child diff"),
        (&a.flat_tar, &b.flat_tar, "flat diff"),
    ] {
        let (x, y) = (fs::read(x)?, fs::read(y)?);
        if let Some(d) = tarfile::first_difference(&x, &y) {
            anyhow::bail!("{what} made by the two drivers differs: {d}");
        }
    }
    tree::assert_equal_as(&a.child_view, &b.child_view, "first driver", "this driver")
        .context("the same operations gave different trees")?;
    Ok(())
}
