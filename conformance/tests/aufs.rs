//! The conformance suite against the aufs driver in FUSE mode, on a fresh
//! loop-mounted ext4. One test per scenario, each printing its report row.
//!
//! FUSE mounts are served by the `strata` binary (its hidden
//! `aufs-fuse-server` subcommand): build it first. `cargo test --workspace`
//! does (the cli package has the binary); alone, run
//! `cargo build -p strata && cargo test -p strata-conformance --test aufs -- --nocapture`.
//! The driver finds `target/debug/strata` one directory above this test's
//! executable, or `$STRATA_EXE`. Without the binary, /dev/fuse or root the
//! scenarios report "skip" (a failure when `CI=true`).

use anyhow::Context;
use std::path::PathBuf;
use strata_conformance::fixtures::{loop_fs, scratch_dir, Backing, SkipReason};
use strata_conformance::{run_named, scenarios, Factory, Fixture};
use strata_drivers::aufs::{server, Aufs, AufsMode, AufsOptions};

struct AufsFuse;

#[async_trait::async_trait]
impl Factory for AufsFuse {
    fn name(&self) -> String {
        "aufs-fuse".into()
    }

    async fn make(&self) -> anyhow::Result<Fixture> {
        if !std::path::Path::new("/dev/fuse").exists() {
            return Err(SkipReason("no /dev/fuse on this host".into()).into());
        }
        let exe: PathBuf = server::find_exe(None)
            .map_err(|e| SkipReason(format!("{e} (build it: cargo build -p strata)")))?;
        let lfs = loop_fs(Backing::Ext4).await?;
        let root = lfs.path().join("root");
        let opts = AufsOptions {
            mode: AufsMode::Fuse,
            server_exe: Some(exe),
            ..Default::default()
        };
        let driver = Aufs::open(&root, opts)
            .await
            .with_context(|| format!("open aufs on {}", root.display()))?;
        let scratch = scratch_dir(&lfs)?;
        Ok(Fixture::new(std::sync::Arc::new(driver), root, lfs).with_scratch_in(scratch))
    }
}

fn run(test: &str) {
    let name = test.replace('_', "-");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run_named(&AufsFuse, &name));
    report.print();
    report.assert_ok();
}

macro_rules! tests {
    ($($t:ident),*) => {
        $(
            #[test]
            fn $t() {
                run(stringify!($t))
            }
        )*
        fn listed() -> Vec<String> {
            vec![$(stringify!($t).replace('_', "-")),*]
        }
    };
}

tests!(
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
    many_files_wide,
    many_files_deep,
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
    symlinks_stay_inside
);

#[test]
fn every_scenario_has_a_test() {
    let mut want: Vec<String> = scenarios().iter().map(|s| s.name.to_string()).collect();
    let mut got = listed();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "tests/aufs.rs must list every scenario exactly once"
    );
}
