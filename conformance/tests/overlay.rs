//! The conformance suite against the overlay driver: on a plain temporary
//! directory with the mount API this kernel offers (the new one on 6.8+),
//! and forced to classic `mount(2)`, the path older kernels take. One test
//! per scenario and mount path, each printing its report row.
//!
//! Run: `cargo test -p strata-conformance --test overlay -- --nocapture`.
//! Most scenarios need root; without it they report "skip" (a failure
//! when `CI=true`).

use anyhow::Context;
use async_trait::async_trait;
use strata_conformance::fixtures::SkipReason;
use strata_conformance::{run_named, scenarios, Factory, Fixture};
use strata_drivers::overlay::{MountApiChoice, OverlayOptions};
use strata_drivers::registry::{self, DriverOptions};

/// Makes a fresh overlay driver on a fresh temporary root.
struct OverlayFactory {
    api: MountApiChoice,
}

#[async_trait]
impl Factory for OverlayFactory {
    fn name(&self) -> String {
        match self.api {
            MountApiChoice::Classic => "overlay-classic-mount".into(),
            _ => "overlay".into(),
        }
    }

    async fn make(&self) -> anyhow::Result<Fixture> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SkipReason("overlay mounts need root".into()).into());
        }
        let tmp = tempfile::Builder::new()
            .prefix("strata-conf-")
            .tempdir()
            .context("temp dir for the driver root")?;
        let root = tmp.path().join("root");
        let options = DriverOptions {
            overlay: OverlayOptions {
                mount_api: self.api,
                ..Default::default()
            },
            ..Default::default()
        };
        let driver = registry::open("overlay", &root, &options)
            .await
            .with_context(|| format!("open overlay on {}", root.display()))?;
        Ok(Fixture::new(driver, root, tmp))
    }
}

fn run(test: &str, api: MountApiChoice) {
    let name = test.replace('_', "-");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run_named(&OverlayFactory { api }, &name));
    report.print();
    report.assert_ok();
}

/// Expands `$m!(names...)` with every scenario's test name.
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
            tar_whiteouts
        );
    };
}

macro_rules! auto_tests {
    ($($t:ident),*) => {
        /// overlay with the mount API the kernel offers.
        mod auto {
            $(
                #[test]
                fn $t() {
                    super::run(stringify!($t), super::MountApiChoice::Auto)
                }
            )*
        }
    };
}

macro_rules! classic_tests {
    ($($t:ident),*) => {
        /// overlay forced to classic mount(2) (older kernels' path).
        mod classic {
            $(
                #[test]
                fn $t() {
                    super::run(stringify!($t), super::MountApiChoice::Classic)
                }
            )*
        }
    };
}

macro_rules! names {
    ($($t:ident),*) => {
        fn listed() -> Vec<String> {
            vec![$(stringify!($t).replace('_', "-")),*]
        }
    };
}

each_scenario!(auto_tests);
each_scenario!(classic_tests);
each_scenario!(names);

#[test]
fn every_scenario_has_a_test() {
    let mut want: Vec<String> = scenarios().iter().map(|s| s.name.to_string()).collect();
    let mut got = listed();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "tests/overlay.rs must list every scenario exactly once"
    );
}
