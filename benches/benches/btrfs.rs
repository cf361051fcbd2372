#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benches of the btrfs driver on a loop-mounted btrfs:
//! - creating a child of a 10 MB and of a 500 MB parent in one run (a
//!   snapshot: the time should not grow with the parent's size); prints
//!   the ratio 500 MB / 10 MB of the medians of alternating creates;
//! - a child diff after 10 changed files in the 500 MB layer (btrfs: the
//!   naive differ with the inode-number + ctime shortcut a snapshot allows)
//!   against VFS's diff of the same tree and changes in VFS layers on the
//!   same filesystem (copies: no shortcut); prints the ratio.
//!
//! Needs root. Run: `cargo bench -p strata-benches --bench btrfs`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_benches::harness::{need_root, Env};
use strata_benches::workloads::Size;
use strata_benches::{generate_rootfs, small_changes, RootfsSpec};
use strata_driver_api::{CreateOpts, Driver, LayerId, MountOpts};

/// Creates per parent for the printed ratio.
const CREATE_ROUNDS: usize = 30;

/// The parents: name, bytes, files.
const PARENTS: [(&str, u64, usize); 2] = [("p10", 10 << 20, 200), ("p500", 500 << 20, 6_000)];

fn id(s: &str) -> LayerId {
    LayerId::new(s).expect("valid id")
}

/// Opens driver `name` on `root`.
fn open(rt: &tokio::runtime::Runtime, name: &str, root: &Path) -> Arc<dyn Driver> {
    rt.block_on(strata_drivers::registry::open(
        name,
        root,
        &Default::default(),
    ))
    .unwrap_or_else(|e| panic!("open {name} on {}: {e}", root.display()))
}

/// Creates layer `l` without a parent in `d` and fills it with a generated
/// tree of `bytes` in `files` files (the same tree for the same sizes).
fn make_parent(
    rt: &tokio::runtime::Runtime,
    d: &Arc<dyn Driver>,
    l: &LayerId,
    bytes: u64,
    files: usize,
) {
    rt.block_on(async {
        d.create(l, None, &CreateOpts::rw()).await.unwrap();
        let v = d.view(l, true).await.unwrap();
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
    let driver = open(&rt, "btrfs", &dir.join("root"));
    let parents = PARENTS;
    for (name, bytes, files) in parents {
        make_parent(&rt, &driver, &id(name), bytes, files);
    }

    // Write the generated parents back first: a snapshot commits the
    // filesystem's transaction, and the first one measured would pay for
    // writing out all 510 MB.
    let synced = std::process::Command::new("sync")
        .arg("-f")
        .arg(&dir)
        .status()
        .expect("sync -f");
    assert!(synced.success(), "sync -f {}: {synced}", dir.display());

    // Removing a snapshot leaves the kernel's cleaner dropping its tree in
    // the background, work that grows with the parent's metadata and that
    // the next create's transaction commit would wait for: children are
    // removed only after a batch is timed, then the cleaner is waited for.
    let settle = |children: &mut Vec<LayerId>| {
        for ch in children.drain(..) {
            rt.block_on(driver.remove(&ch)).unwrap();
        }
        // A commit wakes the cleaner (else it waits for the 30 s commit
        // interval); `subvolume sync` waits until it is done.
        for args in [&["filesystem", "sync"][..], &["subvolume", "sync"]] {
            let st = std::process::Command::new("btrfs")
                .args(args)
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("btrfs");
            assert!(st.success(), "btrfs {args:?}: {st}");
        }
    };

    // The ratio: creates of a child of each parent, alternating between
    // the two so that any drift hits both alike; medians.
    let mut n = 0u64;
    let mut samples = [Vec::new(), Vec::new()];
    let mut children = Vec::new();
    for _ in 0..CREATE_ROUNDS {
        for (k, (name, _, _)) in parents.iter().enumerate() {
            n += 1;
            let ch = id(&format!("child{n}"));
            let t = Instant::now();
            rt.block_on(driver.create(&ch, Some(&id(name)), &CreateOpts::rw()))
                .unwrap();
            samples[k].push(t.elapsed().as_secs_f64());
            children.push(ch);
        }
    }
    settle(&mut children);
    let medians = samples.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });

    let mut g = c.benchmark_group("btrfs");
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(200));
    g.measurement_time(Duration::from_secs(5));
    for (name, _, _) in parents {
        let p = id(name);
        g.bench_function(format!("create-child-of-{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let ch = id(&format!("child{n}"));
                    let t = Instant::now();
                    rt.block_on(driver.create(&ch, Some(&p), &CreateOpts::rw()))
                        .unwrap();
                    total += t.elapsed();
                    children.push(ch);
                }
                settle(&mut children);
                total
            })
        });
    }

    // 10 changed files in a child of the 500 MB layer; the same tree and
    // changes in VFS layers (plain copies) on the same filesystem, for the
    // naive differ without the inode shortcut (a copy keeps no inode
    // numbers).
    let (big_name, big_bytes, big_files) = PARENTS[1];
    let big = id(big_name);
    let child = id("changed");
    let vfs = open(&rt, "vfs", &dir.join("vfs-root"));
    make_parent(&rt, &vfs, &big, big_bytes, big_files);
    for d in [&driver, &vfs] {
        rt.block_on(async {
            d.create(&child, Some(&big), &CreateOpts::rw())
                .await
                .unwrap();
            let m = d.mount(&child, &MountOpts::default()).await.unwrap();
            tokio::task::spawn_blocking(move || small_changes(&m, 10, 9))
                .await
                .unwrap()
                .unwrap();
            d.unmount(&child).await.unwrap();
        });
    }
    let mut diff_means = Vec::new();
    for (d, label) in [(&driver, "child-diff-btrfs"), (&vfs, "child-diff-vfs")] {
        let (mut sum, mut count) = (0.0f64, 0u64);
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    rt.block_on(d.diff(&child, Some(&big), Box::new(std::io::sink())))
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
        "btrfs: create child: 10 MB parent {:.2} ms, 500 MB parent {:.2} ms (medians of {CREATE_ROUNDS} alternating creates each): ratio {:.2}x (target: ~1, size-independent)",
        medians[0] * 1e3,
        medians[1] * 1e3,
        medians[1] / medians[0].max(1e-12)
    );
    println!(
        "btrfs: child diff after 10 changes in a 500 MB layer: btrfs (naive differ, inode shortcut) {:.2} ms vs vfs (naive differ on copies) {:.2} ms: ratio {:.3}x",
        diff_means[0] * 1e3,
        diff_means[1] * 1e3,
        diff_means[0] / diff_means[1].max(1e-12)
    );
    rt.block_on(async {
        for d in [&vfs, &driver] {
            d.remove(&child).await.unwrap();
        }
        vfs.remove(&big).await.unwrap();
        vfs.cleanup().await.unwrap();
        for (name, _, _) in parents {
            driver.remove(&id(name)).await.unwrap();
        }
        driver.cleanup().await.unwrap();
    });
    drop(vfs);
    drop(driver);
    env.scratch.teardown().expect("teardown");
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_btrfs
}
criterion_main!(benches);
