//! The conformance suite against the vfs driver: on a loop-mounted ext4
//! (plain copies; a fresh filesystem rather than the host's own, whose
//! speed and free space vary), and on a loop-mounted btrfs (reflink
//! copies). One test per
//! scenario and backing, each printing its report row.
//!
//! Run: `cargo test -p strata-conformance --test vfs -- --nocapture`.
//! Most scenarios need root; without it they report "skip" (a failure
//! when `CI=true`).

use strata_conformance::fixtures::{Backing, VfsFactory};

strata_conformance::scenario_tests!(ext4, VfsFactory::new(Backing::Ext4));
strata_conformance::scenario_tests!(btrfs, VfsFactory::new(Backing::Btrfs));
