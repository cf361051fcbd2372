//! What the criterion benches share: the root check, scratch space with a
//! driver opened on it, and collecting figures measured inside criterion
//! iterations into the ratio lines each bench prints.

use crate::scratch::{is_root, prepare_backing, Scratch};
use crate::workloads::{Bench, Cancel, Figure, Inputs, Size};
use anyhow::Result;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use strata_driver_api::Driver;

/// Whether a bench may run: as root. Prints why not; under `CI=true` a
/// missing condition panics instead.
pub fn need_root(bench: &str) -> bool {
    if is_root() {
        return true;
    }
    let why = format!("{bench} bench: not run: needs root (mounts, loop devices)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true requires every condition");
    }
    eprintln!("{why}");
    false
}

/// The size of a bench's work: `$STRATA_BENCH_SIZE` (tiny, small, medium,
/// large), else `default`.
///
/// # Panics
/// On an unknown size name.
pub fn size_from_env(default: Size) -> Size {
    match std::env::var("STRATA_BENCH_SIZE") {
        Ok(s) => Size::parse(&s).expect("STRATA_BENCH_SIZE"),
        Err(_) => default,
    }
}

/// A never-set cancellation flag (benches are stopped by killing them;
/// their [`Scratch`] is released on drop, or by the next run's teardown).
pub fn no_cancel() -> Cancel {
    Arc::new(AtomicBool::new(false))
}

/// Scratch space and the generated inputs of one bench run.
pub struct Env {
    /// The scratch space; released on drop.
    pub scratch: Scratch,
    /// The generated rootfs tar and parameters.
    pub inputs: Arc<Inputs>,
}

impl Env {
    /// Makes scratch space in the system's temporary directory and
    /// generates the inputs of `size`. Blocking.
    ///
    /// # Errors
    /// Making the directory or generating the tree.
    pub fn new(size: Size) -> Result<Env> {
        let scratch = Scratch::new(&std::env::temp_dir())?;
        let inputs = Arc::new(Inputs::prepare(
            &scratch.path().join("inputs"),
            size.params(),
        )?);
        Ok(Env { scratch, inputs })
    }

    /// Opens registry driver `driver` as target `name` on `backing` (see
    /// [`prepare_backing`]) and returns a [`Bench`] of it.
    ///
    /// # Errors
    /// The backing's setup, the probe, or the open (a driver not built
    /// says so).
    pub fn bench(
        &mut self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        driver: &str,
        backing: &str,
    ) -> Result<Bench> {
        strata_drivers::registry::is_built(driver)?;
        let bytes = self.inputs.params.scratch_bytes();
        let (dir, _) = prepare_backing(&mut self.scratch, name, driver, backing, bytes)?;
        let d: Arc<dyn Driver> = rt.block_on(strata_drivers::registry::open(
            driver,
            &dir.join("root"),
            &Default::default(),
        ))?;
        Bench::new(d, &dir.join("work"), self.inputs.clone(), no_cancel())
    }
}

/// The sum of the figures' times named `figure`, as a criterion duration.
pub fn time_of(figs: &[Figure], figure: &str) -> Duration {
    Duration::from_secs_f64(
        figs.iter()
            .filter(|f| f.figure == figure)
            .map(|f| f.seconds)
            .sum(),
    )
}

/// Mean time of the figures named `figure` and mean time of their
/// references (`None` without references).
pub fn means(figs: &[Figure], figure: &str) -> Option<(f64, Option<f64>)> {
    let v: Vec<_> = figs.iter().filter(|f| f.figure == figure).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let t = v.iter().map(|f| f.seconds).sum::<f64>() / n;
    let refs: Vec<f64> = v
        .iter()
        .filter_map(|f| f.reference.as_ref().map(|r| r.seconds))
        .collect();
    let r = (!refs.is_empty()).then(|| refs.iter().sum::<f64>() / refs.len() as f64);
    Some((t, r))
}

/// The median, lowest and highest of the per-run ratios (figure over its
/// own reference, measured in the same run) of the figures named `figure`.
pub fn ratio_spread(figs: &[Figure], figure: &str) -> Option<(f64, f64, f64)> {
    let mut r: Vec<f64> = figs
        .iter()
        .filter(|f| f.figure == figure)
        .filter_map(Figure::ratio)
        .collect();
    if r.is_empty() {
        return None;
    }
    r.sort_by(f64::total_cmp);
    let n = r.len();
    let median = if n % 2 == 1 {
        r[n / 2]
    } else {
        (r[n / 2 - 1] + r[n / 2]) / 2.0
    };
    Some((median, r[0], r[n - 1]))
}

/// Prints `<bench>: <figure>: <t> vs <reference> <r>: ratio <x> (target ...)`
/// from the figures collected during the criterion iterations: mean times,
/// and the median (lowest-highest) of the per-run ratios, each run's figure
/// over the reference measured in that same run.
pub fn print_ratio(bench: &str, figs: &[Figure], figure: &str, target: &str) {
    let Some((t, r)) = means(figs, figure) else {
        println!("{bench}: {figure}: no measurement");
        return;
    };
    let name = figs
        .iter()
        .filter(|f| f.figure == figure)
        .find_map(|f| f.reference.as_ref().map(|r| r.name.clone()))
        .unwrap_or_default();
    let n = figs.iter().filter(|f| f.figure == figure).count();
    match (r, ratio_spread(figs, figure)) {
        (Some(r), Some((med, lo, hi))) => println!(
            "{bench}: {figure}: {t:.4} s vs {name} {r:.4} s: ratio median {med:.2}x ({lo:.2}-{hi:.2}) ({target}; n={n})"
        ),
        _ => println!("{bench}: {figure}: {t:.4} s ({target}; n={n})"),
    }
}
