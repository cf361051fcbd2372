//! The conformance suite against the btrfs driver, on a fresh loop-mounted
//! btrfs per fixture (made by [`RegistryFactory`]). One test per scenario,
//! each printing its report row.
//!
//! Run: `cargo test -p strata-conformance --test btrfs -- --nocapture`.
//! The scenarios need root, `mkfs.btrfs` and loop devices; without them
//! they report "skip" (a failure when `CI=true`).

use strata_conformance::fixtures::RegistryFactory;

strata_conformance::scenario_tests!(btrfs, RegistryFactory::new("btrfs"));
