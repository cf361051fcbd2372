#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benches of the VFS driver on the shared workloads: import of a
//! generated rootfs tar, diff of that layer, a child diff after 100 small
//! changes, and create+mount+unmount+remove churn.
//!
//! Needs root (bind mounts). Run: `cargo bench -p strata-benches --bench vfs`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::sync::Arc;
use strata_benches::{generate_rootfs, small_changes, tar_of_tree, RootfsSpec};
use strata_driver_api::{CreateOpts, Driver, LayerId, MountOpts};

fn id(s: &str) -> LayerId {
    LayerId::new(s).expect("valid id")
}

fn bench_vfs(c: &mut Criterion) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("vfs bench skipped: needs root for bind mounts");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    generate_rootfs(&src, RootfsSpec::SMALL).expect("generate");
    let tar = work.path().join("rootfs.tar");
    tar_of_tree(&src, &tar).expect("tar");
    let root = work.path().join("root");
    let driver: Arc<dyn Driver> = rt
        .block_on(strata_drivers::registry::open(
            "vfs",
            &root,
            &Default::default(),
        ))
        .expect("open vfs");

    let mut g = c.benchmark_group("vfs");
    g.sample_size(10);
    let mut n = 0u64;
    g.bench_function("import-small-rootfs", |b| {
        b.iter(|| {
            n += 1;
            let lid = id(&format!("imp{n}"));
            rt.block_on(async {
                driver.create(&lid, None, &CreateOpts::ro()).await.unwrap();
                let f = std::fs::File::open(&tar).unwrap();
                driver.apply_diff(&lid, None, Box::new(f)).await.unwrap();
                driver.remove(&lid).await.unwrap();
            })
        })
    });

    let base = id("base");
    rt.block_on(async {
        driver.create(&base, None, &CreateOpts::ro()).await.unwrap();
        let f = std::fs::File::open(&tar).unwrap();
        driver.apply_diff(&base, None, Box::new(f)).await.unwrap();
    });
    g.bench_function("diff-small-rootfs", |b| {
        b.iter(|| {
            rt.block_on(driver.diff(&base, None, Box::new(std::io::sink())))
                .unwrap();
        })
    });

    let child = id("child");
    rt.block_on(async {
        driver
            .create(&child, Some(&base), &CreateOpts::rw())
            .await
            .unwrap();
        let view = driver.view(&child, true).await.unwrap();
        small_changes(view.path(), 100, 3).unwrap();
    });
    g.bench_function("child-diff-100-changes", |b| {
        b.iter(|| {
            rt.block_on(driver.diff(&child, Some(&base), Box::new(std::io::sink())))
                .unwrap();
        })
    });

    g.bench_function("churn-create-mount-write-unmount-remove", |b| {
        b.iter(|| {
            n += 1;
            let lid = id(&format!("churn{n}"));
            rt.block_on(async {
                driver
                    .create(&lid, Some(&base), &CreateOpts::rw())
                    .await
                    .unwrap();
                let p = driver.mount(&lid, &MountOpts::default()).await.unwrap();
                std::fs::write(Path::new(&p).join("hello"), b"hi").unwrap();
                driver.unmount(&lid).await.unwrap();
                driver.remove(&lid).await.unwrap();
            })
        })
    });
    g.finish();
    rt.block_on(async {
        driver.remove(&child).await.unwrap();
        driver.remove(&base).await.unwrap();
        driver.cleanup().await.unwrap();
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_vfs
}
criterion_main!(benches);
