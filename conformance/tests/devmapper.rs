//! The devmapper driver in a VM: the whole conformance suite, cross-driver
//! identity with vfs, and the driver's own guarantees (free-space guard,
//! deferred removal of a busy device, consistency after SIGKILL in a
//! create, no blocks leaked when a thin id's delete is refused).
//!
//! The host kernel of the build machines has no device-mapper, so these
//! tests run only inside the VM, where `conformance/vm/run` sets
//! `STRATA_IN_VM=1`:
//!
//! ```sh
//! conformance/vm/run-suites devmapper    # everything, one boot (what CI runs)
//! conformance/vm/run --features vm-tests --cargo-test strata-conformance devmapper [FILTER]
//! ```
//!
//! The target exists only with the `vm-tests` feature; run outside the VM
//! (without `STRATA_IN_VM=1`) every test fails and says where it runs.
//! Inside the VM a missing device-mapper is a failure.

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;
use strata_conformance::fixtures::{Backing, VfsFactory};
use strata_conformance::{run_cross, run_named, Factory, Fixture};
use strata_driver_api::{CreateOpts, Driver, LayerId, MountOpts};
use strata_drivers::devmapper::{Devmapper, DevmapperOptions};

/// Whether this process runs inside the VM of `conformance/vm/run`. This
/// target is built only for the VM (feature `vm-tests`); run anywhere else
/// its tests fail, saying where they run, rather than pass untried.
fn in_vm(test: &str) -> bool {
    assert!(
        std::env::var("STRATA_IN_VM").is_ok_and(|v| v == "1"),
        "devmapper {test}: runs only in the VM (needs device-mapper, which the build \
         hosts' kernel lacks): conformance/vm/run-suites devmapper (sets STRATA_IN_VM=1)"
    );
    true
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Small pools: the VM's scratch disk is sparse, its CPU emulated.
fn small(fs: &str) -> DevmapperOptions {
    DevmapperOptions {
        data_size: 6 << 30,
        metadata_size: 64 << 20,
        base_size: 2 << 30,
        fs: fs.into(),
        ..Default::default()
    }
}

async fn open(root: &Path, opts: DevmapperOptions) -> Result<Devmapper> {
    Devmapper::open(root, opts)
        .await
        .with_context(|| format!("open devmapper on {}", root.display()))
}

/// A fresh devmapper driver with its own loop-backed pool per fixture.
struct DmFactory {
    fs: &'static str,
}

#[async_trait]
impl Factory for DmFactory {
    fn name(&self) -> String {
        format!("devmapper-{}", self.fs)
    }

    async fn make(&self) -> Result<Fixture> {
        let tmp = tempfile::Builder::new()
            .prefix("strata-dm-")
            .tempdir()
            .context("temp dir for the driver root")?;
        let root = tmp.path().join("root");
        let d = open(&root, small(self.fs)).await?;
        Ok(Fixture::new(Arc::new(d), root, tmp))
    }
}

fn run(test: &str, fs: &'static str) {
    if !in_vm(test) {
        return;
    }
    let name = test.replace('_', "-");
    let report = rt().block_on(run_named(&DmFactory { fs }, &name));
    report.print();
    report.assert_ok();
}

/// Expands `$m!(names...)` with every scenario's test name. The VM run
/// (conformance/vm/run-suites) scales two scenarios for the emulated CPU,
/// and their rows say so: `deep_chain_max` with `STRATA_DEEP_CAP=100` (a
/// 100-layer chain instead of 500: thin snapshots are flat, and each
/// layer's mount costs seconds under emulation) and the many-files ones
/// with `STRATA_MANY_FILES=10000` (3 and 6 minutes there).
macro_rules! each_scenario {
    ($m:ident) => {
        $m!(
            empty_layer,
            base_modes_owners,
            chain_views,
            create_twice,
            read_only_mount,
            remove_order,
            recreate_removed,
            mount_refcount,
            exists_list,
            delete_stays_deleted,
            opaque_dir,
            rename,
            hardlink_move,
            update_five_times,
            chown_nested,
            permission_churn,
            deep_chain_20,
            deep_chain_max,
            changes_exact,
            diff_apply,
            xattrs,
            sparse_files,
            hardlinks,
            sockets_fifos,
            device_nodes,
            long_names,
            non_utf8_names,
            wh_lookalikes,
            tar_whiteouts,
            hostile_archives,
            symlinks_stay_inside,
            many_files_wide,
            many_files_deep
        );
    };
}

macro_rules! ext4_tests {
    ($($t:ident),*) => {
        /// devmapper with ext4 layer filesystems (the default).
        mod ext4 {
            $(
                #[test]
                fn $t() {
                    super::run(stringify!($t), "ext4")
                }
            )*
        }
    };
}

each_scenario!(ext4_tests);

/// A few scenarios again on xfs (mounted with `nouuid`).
mod xfs {
    #[test]
    fn chain_views() {
        super::run("chain_views", "xfs")
    }
    #[test]
    fn diff_apply() {
        super::run("diff_apply", "xfs")
    }
    #[test]
    fn xattrs() {
        super::run("xattrs", "xfs")
    }
}

/// Cross-driver identity: the same operations give the same trees and
/// tars on devmapper as on vfs.
#[test]
fn cross_with_vfs() {
    if !in_vm("cross_with_vfs") {
        return;
    }
    let vfs = VfsFactory::new(Backing::Plain);
    let dm = DmFactory { fs: "ext4" };
    let factories: Vec<&dyn Factory> = vec![&vfs, &dm];
    let report = rt().block_on(run_cross(&factories));
    report.print();
    report.assert_ok();
}

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// Writes `mib` MiB of data into the layer.
async fn fill(d: &Devmapper, l: &LayerId, name: &str, mib: usize) -> Result<()> {
    let p = d.mount(l, &MountOpts::default()).await?;
    let f = p.join(name);
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::io::Write;
        let mut out = std::fs::File::create(&f)?;
        // The pool neither compresses nor dedupes: one MiB of nonzero
        // bytes written again and again takes as many blocks as any data.
        let buf = vec![0x5au8; 1 << 20];
        for _ in 0..mib {
            out.write_all(&buf)?;
        }
        out.sync_all()?;
        Ok(())
    })
    .await??;
    d.unmount(l).await?;
    Ok(())
}

/// The guard refuses a create on a nearly full pool, saying how much is
/// left, and the pool works again once space is freed.
#[test]
fn free_space_guard() {
    if !in_vm("free_space_guard") {
        return;
    }
    rt().block_on(async {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let opts = DevmapperOptions {
            data_size: 256 << 20,
            metadata_size: 16 << 20,
            base_size: 512 << 20,
            min_free_space: 30,
            ..Default::default()
        };
        let d = open(&root, opts).await?;
        let res: Result<()> = async {
            d.create(&id("a"), None, &CreateOpts::rw()).await?;
            fill(&d, &id("a"), "big", 200).await?;
            let s = d.pool_status().await?;
            eprintln!("pool after fill: {s:?}");
            let e = match d.create(&id("b"), Some(&id("a")), &CreateOpts::rw()).await {
                Ok(()) => bail!(
                    "create on a {}% full pool succeeded",
                    s.data_used * 100 / s.data_total
                ),
                Err(e) => e.to_string(),
            };
            eprintln!("refused as expected: {e}");
            for want in ["MiB", "free", "min_free_space"] {
                if !e.contains(want) {
                    bail!("error {e:?} does not say {want:?}");
                }
            }
            if d.exists(&id("b")).await? {
                bail!("the refused layer exists");
            }
            d.remove(&id("a")).await?;
            d.create(&id("c"), None, &CreateOpts::rw()).await?;
            fill(&d, &id("c"), "small", 8).await?;
            let st = d.status().await?;
            eprintln!("status: {st:?}");
            if !st.iter().any(|(k, _)| k == "data space used") {
                bail!("status has no pool usage: {st:?}");
            }
            Ok(())
        }
        .await;
        d.cleanup().await?;
        res
    })
    .unwrap();
}

/// A layer removed while its device is held open is deferred; it is gone
/// (device and thin id) after the holder closes it and cleanup runs.
#[test]
fn deferred_removal() {
    if !in_vm("deferred_removal") {
        return;
    }
    rt().block_on(async {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let d = open(&root, small("ext4")).await?;
        let res: Result<()> = async {
            d.create(&id("held"), None, &CreateOpts::rw()).await?;
            let node = d.device_node(&id("held")).await?;
            let holder =
                std::fs::File::open(&node).with_context(|| format!("open {}", node.display()))?;
            d.remove(&id("held")).await?;
            if d.exists(&id("held")).await? {
                bail!("removed layer still exists");
            }
            let s = d.pool_status().await?;
            if s.pending_removals != 1 {
                bail!("expected one pending removal, have {s:?}");
            }
            if d.create(&id("held"), None, &CreateOpts::rw()).await.is_ok() {
                bail!("re-created an id whose removal is pending");
            }
            drop(holder);
            d.cleanup().await?;
            let d2 = open(&root, small("ext4")).await?;
            let s = d2.pool_status().await?;
            if s.pending_removals != 0 || s.pool_transaction != s.recorded_transaction {
                bail!("after cleanup and reopen: {s:?}");
            }
            d2.create(&id("held"), None, &CreateOpts::rw()).await?;
            d2.cleanup().await?;
            Ok(())
        }
        .await;
        let _ = d.cleanup().await;
        res
    })
    .unwrap();
}

/// Two drivers open on one root, as two processes are: each sees what the
/// other made, thin ids and transaction ids are never handed out twice
/// (each open used to keep its own copy of the records), and a view held
/// through one keeps the layer's filesystem mounted while the other mounts
/// and unmounts the layer, and keeps the layer from being removed.
#[test]
fn two_opens_of_one_root() {
    if !in_vm("two_opens_of_one_root") {
        return;
    }
    rt().block_on(async {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let a = open(&root, small("ext4")).await?;
        let b = open(&root, small("ext4")).await?;
        let res: Result<()> = async {
            for n in 0..4 {
                let (d, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let parent = (n > 0).then(|| id(&format!("l{}", n - 1)));
                let l = id(&format!("l{n}"));
                d.create(&l, parent.as_ref(), &CreateOpts::rw())
                    .await
                    .with_context(|| format!("create {l} through open {}", n % 2))?;
                if !other.exists(&l).await? {
                    bail!("{l}, made through one open, is not seen through the other");
                }
            }
            let top = id("l3");
            let v = a.view(&top, false).await?;
            let m = b.mount(&top, &MountOpts::default()).await?;
            std::fs::write(m.join("f"), "x").context("write into the mount")?;
            b.unmount(&top).await?;
            let seen = std::fs::read_to_string(v.path().join("f"))
                .context("read through the view after the other open unmounted")?;
            if seen != "x" {
                bail!("the view reads {seen:?}");
            }
            if b.remove(&top).await.is_ok() {
                bail!("removed a layer while a view of it was open");
            }
            drop(v);
            b.remove(&top).await?;
            for n in (0..3).rev() {
                a.remove(&id(&format!("l{n}"))).await?;
            }
            let s = b.pool_status().await?;
            if s.pool_transaction != s.recorded_transaction || s.pending_removals != 0 {
                bail!("pool and records disagree: {s:?}");
            }
            Ok(())
        }
        .await;
        let _ = a.cleanup().await;
        let _ = b.cleanup().await;
        res
    })
    .unwrap();
}

/// The device-mapper name behind a device node (from sysfs).
fn dm_name_of(node: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let rdev = std::fs::metadata(node)
        .with_context(|| format!("stat {}", node.display()))?
        .rdev();
    let sys = format!(
        "/sys/dev/block/{}:{}/dm/name",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    Ok(std::fs::read_to_string(&sys)
        .with_context(|| format!("read {sys}"))?
        .trim()
        .to_string())
}

/// `dmsetup ARGS` (no udev in the VM), its stdout.
fn dmsetup(args: &[&str]) -> Result<String> {
    let o = std::process::Command::new("dmsetup")
        .args(args)
        .arg("--noudevsync")
        .output()
        .context("run dmsetup")?;
    if !o.status.success() {
        bail!(
            "dmsetup {args:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// What a process killed inside a device activation or a snapshot's
/// suspend/resume leaves, mended by the next operation (found by the
/// reliability suite's crash_devmapper: a layer's device left created
/// with no table read as 0 bytes, and its next mount failed with EIO):
/// - the layer's device exists with no table: `mount` removes and remakes
///   it, and the layer's file is there;
/// - the layer's device is left active and suspended: `mount` resumes it
///   (else the mount hangs on its first read).
#[test]
fn half_made_devices_are_mended() {
    if !in_vm("half_made_devices_are_mended") {
        return;
    }
    rt().block_on(async {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let d = open(&root, small("ext4")).await?;
        let res: Result<()> = async {
            let a = id("a");
            d.create(&a, None, &CreateOpts::rw()).await?;
            let m = d.mount(&a, &MountOpts::default()).await?;
            std::fs::write(m.join("f"), "kept").context("write f")?;
            let name = dm_name_of(&d.device_node(&a).await?)?;
            d.unmount(&a).await?;
            if dmsetup(&["info", "-c", "--noheadings", "-o", "name"])?
                .lines()
                .any(|l| l.trim() == name)
            {
                bail!("{name} still active after the last unmount");
            }
            // Killed between DM_DEV_CREATE and the table's load and resume.
            dmsetup(&["create", &name, "--notable"])?;
            let m = d
                .mount(&a, &MountOpts::default())
                .await
                .context("mount over a device left without a table")?;
            let f = std::fs::read_to_string(m.join("f")).context("read f")?;
            if f != "kept" {
                bail!("f reads {f:?}");
            }
            d.unmount(&a).await?;
            // Killed between the suspend and the resume around a snapshot:
            // the device stays active and suspended. A mount of it would
            // hang on its first read unless it is resumed first.
            let node = d.device_node(&a).await?;
            if dm_name_of(&node)? != name {
                bail!("layer a's device is no longer {name}");
            }
            dmsetup(&["suspend", &name])?;
            let m = d
                .mount(&a, &MountOpts::default())
                .await
                .context("mount of a layer whose device was left suspended")?;
            if !dmsetup(&["info", &name])?.contains("ACTIVE") {
                bail!("{name} is still suspended: {}", dmsetup(&["info", &name])?);
            }
            std::fs::write(m.join("g"), "written").context("write g after the resume")?;
            d.create(&id("b"), Some(&a), &CreateOpts::rw()).await?;
            d.unmount(&a).await?;
            d.remove(&id("b")).await?;
            d.remove(&a).await?;
            Ok(())
        }
        .await;
        let _ = d.cleanup().await;
        res
    })
    .unwrap();
}

/// A thin id still held when its layer is removed (a device of another
/// name maps it: a leftover of another tool, or a `dmsetup create` by
/// hand): the pool refuses the delete with EBUSY. `remove` says so and
/// keeps the removal pending, other operations go on, and once the holder
/// is gone the next operation finishes it and the blocks come back.
/// (The delete's failure was ignored before: the record went, the id's
/// blocks leaked for good.)
#[test]
fn held_thin_id_is_not_leaked() {
    if !in_vm("held_thin_id_is_not_leaked") {
        return;
    }
    const HOLDER: &str = "strata-test-holder";
    rt().block_on(async {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let d = open(&root, small("ext4")).await?;
        let res: Result<()> = async {
            let a = id("a");
            d.create(&a, None, &CreateOpts::rw()).await?;
            fill(&d, &a, "f", 8).await?;
            let with_a = d.pool_status().await?.data_used;
            // The layer's table ("0 LEN thin POOL ID"), then its device
            // deactivated again, as after any unmount.
            let name = dm_name_of(&d.device_node(&a).await?)?;
            let table = dmsetup(&["table", &name])?.trim().to_string();
            if !table.contains(" thin ") {
                bail!("{name}'s table is not a thin target: {table:?}");
            }
            dmsetup(&["remove", &name])?;
            dmsetup(&["create", HOLDER, "--table", &table])?;
            let err = match d.remove(&a).await {
                Ok(()) => bail!("removed layer a while its thin id is held by {HOLDER}"),
                Err(e) => e.to_string(),
            };
            if !err.contains("delete thin device") || !err.contains("busy") {
                bail!("remove's error does not say the delete was refused as busy: {err}");
            }
            if d.pool_status().await?.pending_removals != 1 {
                bail!("a's removal is not pending");
            }
            // Everything else goes on.
            let b = id("b");
            d.create(&b, None, &CreateOpts::rw())
                .await
                .context("create beside a pending removal")?;
            d.remove(&b).await?;
            dmsetup(&["remove", HOLDER])?;
            let s = d.pool_status().await?;
            if s.pending_removals != 0 || s.pool_transaction != s.recorded_transaction {
                bail!("the removal did not finish once the holder went: {s:?}");
            }
            if s.data_used + (6 << 20) > with_a {
                bail!(
                    "a's blocks did not come back: {} bytes used with a, {} after",
                    with_a,
                    s.data_used
                );
            }
            if d.exists(&a).await? {
                bail!("layer a still exists");
            }
            Ok(())
        }
        .await;
        let _ = dmsetup(&["remove", HOLDER]);
        let _ = d.cleanup().await;
        res
    })
    .unwrap();
}

/// Child half of [`sigkill_during_create`]: opens the driver on the root it
/// is given and creates a layer; the crash point kills it.
#[test]
fn crash_helper() {
    let Ok(root) = std::env::var("STRATA_DM_CRASH_ROOT") else {
        return; // Not a test of its own: run by sigkill_during_create.
    };
    rt().block_on(async {
        let d = open(Path::new(&root), small("ext4")).await?;
        d.create(&id("victim"), Some(&id("base1")), &CreateOpts::rw())
            .await?;
        Ok::<_, anyhow::Error>(())
    })
    .unwrap();
}

/// SIGKILL at each step of a create, then reopen: pool and records agree,
/// the half-made layer is gone or complete, everything else works.
#[test]
fn sigkill_during_create() {
    if !in_vm("sigkill_during_create") {
        return;
    }
    let steps = [
        "devmapper-after-record",
        "devmapper-after-snap",
        "devmapper-after-bump",
    ];
    rt().block_on(async {
        for step in steps {
            let tmp = tempfile::tempdir()?;
            let root = tmp.path().join("root");
            {
                let d = open(&root, small("ext4")).await?;
                d.create(&id("base1"), None, &CreateOpts::rw()).await?;
                fill(&d, &id("base1"), "f", 1).await?;
                // The child reattaches the pool itself; keep it active.
            }
            let st = std::process::Command::new(std::env::current_exe()?)
                .args(["--exact", "crash_helper", "--nocapture", "--test-threads=1"])
                .env("STRATA_DM_CRASH_ROOT", &root)
                .env("STRATA_TEST_CRASH_AT", step)
                .status()?;
            use std::os::unix::process::ExitStatusExt;
            if st.signal() != Some(9) {
                bail!("{step}: the helper was not killed: {st:?}");
            }
            let d = open(&root, small("ext4")).await.context(step)?;
            let res: Result<()> = async {
                let s = d.pool_status().await?;
                if s.pool_transaction != s.recorded_transaction || s.pending_removals != 0 {
                    bail!("{step}: after reopen: {s:?}");
                }
                let layers = d.list().await?;
                eprintln!("{step}: layers after reopen: {layers:?}");
                for l in &layers {
                    let p = d.mount(l, &MountOpts::default()).await?;
                    if !p.join("f").exists() {
                        bail!("{step}: layer {l} lost its parent's file");
                    }
                    d.unmount(l).await?;
                }
                if layers.contains(&id("victim")) {
                    d.remove(&id("victim")).await?;
                }
                d.create(&id("victim"), Some(&id("base1")), &CreateOpts::rw())
                    .await?;
                d.remove(&id("victim")).await?;
                d.remove(&id("base1")).await?;
                Ok(())
            }
            .await;
            d.cleanup().await?;
            res?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .unwrap();
}

/// Timings of the benchmark workloads for devmapper and vfs in the same VM
/// run: create of a snapshot layer, import of a tar (2,000 files of 4 KiB),
/// diff of a child after 100 small changes. A measurement, not a check, so
/// an ignored test: `conformance/vm/run --features vm-tests --cargo-test
/// strata-conformance devmapper -- --ignored figures --nocapture` prints
/// `FIGURE` lines.
#[test]
#[ignore = "a measurement, not a check: run with --ignored figures --nocapture"]
fn figures() {
    if !in_vm("figures") {
        return;
    }
    rt().block_on(async {
        let work = tempfile::tempdir()?;
        let src = work.path().join("src");
        for i in 0..2000 {
            let d = src.join(format!("d{}", i % 50));
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(format!("f{i}")), vec![(i % 251) as u8; 4096])?;
        }
        let tar = work.path().join("layer.tar");
        {
            let changes = strata_driver_api::naive::changes(&src, None)?;
            let out = std::fs::File::create(&tar)?;
            strata_driver_api::archive::write_changes(&src, &changes, Box::new(out))?;
        }
        for name in ["vfs", "devmapper"] {
            let root = work.path().join(format!("root-{name}"));
            let d: Arc<dyn Driver> = if name == "vfs" {
                strata_drivers::registry::open("vfs", &root, &Default::default()).await?
            } else {
                Arc::new(open(&root, small("ext4")).await?)
            };
            let res: Result<()> = async {
                let t = std::time::Instant::now();
                d.create(&id("base"), None, &CreateOpts::ro()).await?;
                let f = std::fs::File::open(&tar)?;
                d.apply_diff(&id("base"), None, Box::new(f)).await?;
                println!(
                    "FIGURE {name} import-2000-files {} ms",
                    t.elapsed().as_millis()
                );
                let mut total = 0u128;
                for i in 0..10 {
                    let t = std::time::Instant::now();
                    d.create(&id(&format!("c{i}")), Some(&id("base")), &CreateOpts::rw())
                        .await?;
                    total += t.elapsed().as_millis();
                }
                println!(
                    "FIGURE {name} create-snapshot-layer {} ms (mean of 10)",
                    total / 10
                );
                {
                    let v = d.view(&id("c0"), true).await?;
                    for i in 0..100 {
                        let p = v.path().join(format!("d{}", i % 50)).join(format!("f{i}"));
                        std::fs::write(p, b"changed")?;
                    }
                }
                let mut runs = Vec::new();
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    d.diff(&id("c0"), Some(&id("base")), Box::new(std::io::sink()))
                        .await?;
                    runs.push(t.elapsed().as_millis());
                }
                runs.sort();
                println!(
                    "FIGURE {name} child-diff-100-changes {} ms (median of 3)",
                    runs[1]
                );
                Ok(())
            }
            .await;
            d.cleanup().await?;
            res?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .unwrap();
}
