//! The conformance suite against the vfs driver: on a plain temporary
//! directory, and on a loop-mounted btrfs (reflink copies). One test per
//! scenario and backing, each printing its report row.
//!
//! Run: `cargo test -p strata-conformance --test vfs -- --nocapture`.
//! Most scenarios need root; without it they report "skip" (a failure
//! when `CI=true`).

use strata_conformance::fixtures::{Backing, VfsFactory};

strata_conformance::scenario_tests!(plain, VfsFactory::new(Backing::Plain));
strata_conformance::scenario_tests!(btrfs, VfsFactory::new(Backing::Btrfs));
