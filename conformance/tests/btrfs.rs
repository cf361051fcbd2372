//! The conformance suite against the btrfs driver, on a fresh loop-mounted
//! btrfs per fixture (made by [`RegistryFactory`]). One test per scenario,
//! each printing its report row.
//!
//! Run: `cargo test -p strata-conformance --test btrfs -- --nocapture`.
//! The scenarios need root, `mkfs.btrfs` and loop devices; without them
//! they report "skip" (a failure when `CI=true`).

use strata_conformance::fixtures::RegistryFactory;
use strata_conformance::{each_scenario, run_named, scenarios};

fn run(test: &str) {
    let name = test.replace('_', "-");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run_named(&RegistryFactory::new("btrfs"), &name));
    report.print();
    report.assert_ok();
}

macro_rules! scenario_tests {
    ($($t:ident),*) => {
        $(
            #[test]
            fn $t() {
                run(stringify!($t))
            }
        )*
    };
}

macro_rules! names {
    ($($t:ident),*) => {
        fn listed() -> Vec<String> {
            vec![$(stringify!($t).replace('_', "-")),*]
        }
    };
}

each_scenario!(scenario_tests);
each_scenario!(names);

#[test]
fn every_scenario_has_a_test() {
    let mut want: Vec<String> = scenarios().iter().map(|s| s.name.to_string()).collect();
    let mut got = listed();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "tests/btrfs.rs must list every scenario exactly once"
    );
}
