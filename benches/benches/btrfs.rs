#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benches of the btrfs driver on a loop-mounted btrfs:
//! - creating a child of a 10 MB and of a 500 MB parent in one run (a
//!   snapshot: the time should not grow with the parent's size); prints
//!   the ratio 500 MB / 10 MB;
//! - a child diff after 10 changed files in the 500 MB layer, native
//!   (btrfs) against the naive tree diff vfs uses, on the same layers;
//!   prints the ratio.
//!
//! Needs root. Run: `cargo bench -p strata-benches --bench btrfs`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};
use strata_benches::harness::{need_root, Env};
use strata_benches::workloads::Size;
use strata_benches::{generate_rootfs, small_changes, RootfsSpec};
use strata_driver_api::{CreateOpts, Driver, LayerId, MountOpts};

fn id(s: &str) -> LayerId {
    LayerId::new(s).expect("valid id")
}

fn bench_btrfs(c: &mut Criterion) {
    if !need_root("btrfs") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut env = Env::new(Size::Tiny).expect("inputs");
    // Room for the 500 MB and 10 MB parents and their children.
    let dir = env
        .scratch
        .loop_fs("btrfs", "btrfs", 2 << 30)
        .expect("btrfs loop image");
    let driver: std::sync::Arc<dyn Driver> = rt
        .block_on(strata_drivers::registry::open(
            "btrfs",
            &dir.join("root"),
            &Default::default(),
        ))
        .expect("open btrfs");
    let parents = [("p10", 10u64 << 20, 200usize), ("p500", 500 << 20, 6_000)];
    for (name, bytes, files) in parents {
        let p = id(name);
        rt.block_on(async {
            driver.create(&p, None, &CreateOpts::rw()).await.unwrap();
            let v = driver.view(&p, true).await.unwrap();
            let spec = RootfsSpec {
                files,
                dirs: files / 20,
                bytes,
                seed: 5,
            };
            tokio::task::spawn_blocking(move || generate_rootfs(v.path(), spec).map(|_| ()))
                .await
                .unwrap()
                .unwrap();
        });
    }

    let mut g = c.benchmark_group("btrfs");
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(200));
    g.measurement_time(Duration::from_secs(5));
    let mut n = 0u64;
    let mut means = Vec::new();
    for (name, _, _) in parents {
        let p = id(name);
        let (mut sum, mut count) = (0.0f64, 0u64);
        g.bench_function(format!("create-child-of-{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let ch = id(&format!("child{n}"));
                    let t = Instant::now();
                    rt.block_on(driver.create(&ch, Some(&p), &CreateOpts::rw()))
                        .unwrap();
                    let e = t.elapsed();
                    total += e;
                    sum += e.as_secs_f64();
                    count += 1;
                    rt.block_on(driver.remove(&ch)).unwrap();
                }
                total
            })
        });
        means.push(sum / count.max(1) as f64);
    }

    // 10 changed files in a child of the 500 MB layer.
    let big = id("p500");
    let child = id("changed");
    rt.block_on(async {
        driver
            .create(&child, Some(&big), &CreateOpts::rw())
            .await
            .unwrap();
        let m = driver.mount(&child, &MountOpts::default()).await.unwrap();
        tokio::task::spawn_blocking(move || small_changes(&m, 10, 9))
            .await
            .unwrap()
            .unwrap();
        driver.unmount(&child).await.unwrap();
    });
    let mut diff_means = Vec::new();
    for native in [true, false] {
        let (mut sum, mut count) = (0.0f64, 0u64);
        let label = if native {
            "child-diff-native"
        } else {
            "child-diff-naive"
        };
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    rt.block_on(async {
                        if native {
                            driver
                                .diff(&child, Some(&big), Box::new(std::io::sink()))
                                .await
                        } else {
                            strata_driver_api::naive_diff(
                                &*driver,
                                &child,
                                Some(&big),
                                Box::new(std::io::sink()),
                            )
                            .await
                        }
                    })
                    .unwrap();
                    let e = t.elapsed();
                    total += e;
                    sum += e.as_secs_f64();
                    count += 1;
                }
                total
            })
        });
        diff_means.push(sum / count.max(1) as f64);
    }
    g.finish();
    println!(
        "btrfs: create child: 10 MB parent {:.2} ms, 500 MB parent {:.2} ms: ratio {:.2}x (target: ~1, size-independent)",
        means[0] * 1e3,
        means[1] * 1e3,
        means[1] / means[0].max(1e-12)
    );
    println!(
        "btrfs: child diff after 10 changes in a 500 MB layer: native {:.2} ms vs naive tree diff {:.2} ms: ratio {:.3}x",
        diff_means[0] * 1e3,
        diff_means[1] * 1e3,
        diff_means[0] / diff_means[1].max(1e-12)
    );
    rt.block_on(async {
        driver.remove(&child).await.unwrap();
        for (name, _, _) in parents {
            driver.remove(&id(name)).await.unwrap();
        }
        driver.cleanup().await.unwrap();
    });
    drop(driver);
    env.scratch.teardown().expect("teardown");
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_btrfs
}
criterion_main!(benches);
