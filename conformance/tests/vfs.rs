//! The conformance suite against the vfs driver: on a plain temporary
//! directory, and on a loop-mounted btrfs (reflink copies). One test per
//! scenario and backing, each printing its report row.
//!
//! Run: `cargo test -p strata-conformance --test vfs -- --nocapture`.
//! Most scenarios need root; without it they report "skip" (a failure
//! when `CI=true`).

use strata_conformance::fixtures::{Backing, VfsFactory};
use strata_conformance::{each_scenario, run_named, scenarios};

fn run(test: &str, backing: Backing) {
    let name = test.replace('_', "-");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run_named(&VfsFactory::new(backing), &name));
    report.print();
    report.assert_ok();
}

macro_rules! plain_tests {
    ($($t:ident),*) => {
        /// vfs on a plain temporary directory.
        mod plain {
            $(
                #[test]
                fn $t() {
                    super::run(stringify!($t), super::Backing::Plain)
                }
            )*
        }
    };
}

macro_rules! btrfs_tests {
    ($($t:ident),*) => {
        /// vfs on a loop-mounted btrfs: copies are reflinks.
        mod btrfs {
            $(
                #[test]
                fn $t() {
                    super::run(stringify!($t), super::Backing::Btrfs)
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

each_scenario!(plain_tests);
each_scenario!(btrfs_tests);
each_scenario!(names);

#[test]
fn every_scenario_has_a_test() {
    let mut want: Vec<String> = scenarios().iter().map(|s| s.name.to_string()).collect();
    let mut got = listed();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "tests/vfs.rs must list every scenario exactly once"
    );
}
