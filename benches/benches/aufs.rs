#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benches of the aufs driver against kernel overlay on the same
//! layers (the same generated lower tree in each), in one run: sequential
//! read of a 1 GiB lower file (target: at least 0.8x of overlay's
//! throughput, i.e. time ratio <= 1.25), `stat` of 10,000 lower files
//! (target: within 3x of overlay), copy-up of 1,000 small files. Prints
//! each as a ratio aufs / overlay.
//!
//! aufs is opened through the registry as "aufs"; when it is not in this
//! build (or cannot run here) the bench says so and measures nothing.
//! Needs root. Run: `cargo bench -p strata-benches --bench aufs`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use strata_benches::harness::{means, need_root, size_from_env, time_of, Env};
use strata_benches::workloads::{Bench, Figure, Size, Workload};

fn measure(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    bench: &mut Bench,
    name: &str,
    figs: &mut Vec<Figure>,
) {
    for (w, figure) in [
        (Workload::Read, "read"),
        (Workload::Read, "stat"),
        (Workload::CopyUp, "copy-up"),
    ] {
        g.bench_function(format!("{name}-{figure}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let f = rt.block_on(bench.run(w)).expect("workload");
                    total += time_of(&f, figure);
                    figs.extend(f.into_iter().filter(|x| x.figure == figure));
                }
                total
            })
        });
    }
}

fn bench_aufs(c: &mut Criterion) {
    if !need_root("aufs") {
        return;
    }
    if let Err(e) = strata_drivers::registry::is_built("aufs") {
        println!("aufs bench: not run: {e}");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut env = Env::new(size_from_env(Size::Small)).expect("inputs");
    let mut aufs = match env.bench(&rt, "aufs", "aufs", "plain") {
        Ok(b) => b,
        Err(e) => {
            println!("aufs bench: not run: {e:#}");
            return;
        }
    };
    let mut overlay = env
        .bench(&rt, "overlay", "overlay", "plain")
        .expect("overlay on the scratch space");
    let mut g = c.benchmark_group("aufs-vs-overlay");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(20));
    let (mut fa, mut fo) = (Vec::new(), Vec::new());
    measure(&mut g, &rt, &mut aufs, "aufs", &mut fa);
    measure(&mut g, &rt, &mut overlay, "overlay", &mut fo);
    g.finish();
    let p = env.inputs.params;
    for (figure, target) in [
        (
            "read",
            format!(
                "{} MiB; target: time ratio <= 1.25 (>= 0.8x throughput)",
                p.read_bytes >> 20
            ),
        ),
        ("stat", format!("{} files; target <= 3x", p.stat_files)),
        ("copy-up", format!("{} files", p.copy_up_files)),
    ] {
        match (means(&fa, figure), means(&fo, figure)) {
            (Some((a, _)), Some((o, _))) if o > 0.0 => println!(
                "aufs: {figure}: aufs {a:.4} s vs overlay {o:.4} s: ratio {:.2}x ({target})",
                a / o
            ),
            _ => println!("aufs: {figure}: no measurement"),
        }
    }
    rt.block_on(aufs.finish()).expect("aufs cleanup");
    rt.block_on(overlay.finish()).expect("overlay cleanup");
    drop((aufs, overlay));
    env.scratch.teardown().expect("teardown");
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_aufs
}
criterion_main!(benches);
