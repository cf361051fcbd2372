#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benches of the overlay driver on the shared workloads, each
//! with its reference measured in the same run, and the ratio printed:
//! import of the rootfs tar vs `tar -x` + `sync` (target: within 1.3x),
//! diff vs `tar -c` to a file (target: within 1.3x), a child diff after 100
//! small changes (vs the naive tree diff), and create+mount+write+unmount+
//! remove cycles.
//!
//! Runs on a loop-mounted ext4 (the references too): the host's own
//! filesystem under the temporary directory may be far slower at making
//! files than any real one. Each ratio line gives the median and the
//! spread of the per-iteration ratios.
//!
//! Needs root. Run: `cargo bench -p strata-benches --bench overlay`
//! (`STRATA_BENCH_SIZE=small|medium|large`, default medium: 6,000 files,
//! 160 MB).

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use strata_benches::harness::{need_root, print_ratio, size_from_env, time_of, Env};
use strata_benches::workloads::{Size, Workload};

fn bench_overlay(c: &mut Criterion) {
    if !need_root("overlay") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut env = Env::new(size_from_env(Size::Medium)).expect("inputs");
    let mut bench = env
        .bench(&rt, "overlay", "overlay", "ext4")
        .expect("overlay on a loop-mounted ext4");
    let mut g = c.benchmark_group("overlay");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(20));
    let mut figs = Vec::new();
    for (w, figure) in [
        (Workload::Import, "import"),
        (Workload::Diff, "diff"),
        (Workload::ChildDiff, "child-diff"),
        (Workload::Churn, "churn"),
    ] {
        g.bench_function(figure, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let f = rt.block_on(bench.run(w)).expect("workload");
                    total += time_of(&f, figure);
                    figs.extend(f);
                }
                total
            })
        });
    }
    g.finish();
    print_ratio("overlay", &figs, "import", "target <= 1.3x");
    print_ratio("overlay", &figs, "diff", "target <= 1.3x");
    print_ratio("overlay", &figs, "child-diff", "native diff vs naive");
    print_ratio("overlay", &figs, "churn", "one cycle");
    rt.block_on(bench.finish()).expect("cleanup");
    drop(bench);
    env.scratch.teardown().expect("teardown");
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_overlay
}
criterion_main!(benches);
