//! The conformance suite against the overlay driver: on a fresh loop-mounted
//! ext4 with the mount API this kernel offers (the new one on 6.8+),
//! and forced to classic `mount(2)`, the path older kernels take. One test
//! per scenario and mount path, each printing its report row.
//!
//! Run: `cargo test -p strata-conformance --test overlay -- --nocapture`.
//! Most scenarios need root; without it they report "skip" (a failure
//! when `CI=true`).

use async_trait::async_trait;
use strata_conformance::fixtures::{open_with, Backing, SkipReason};
use strata_conformance::{Factory, Fixture};
use strata_drivers::overlay::{MountApiChoice, OverlayOptions};
use strata_drivers::registry::DriverOptions;

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
        let options = DriverOptions {
            overlay: OverlayOptions {
                mount_api: self.api,
                ..Default::default()
            },
            ..Default::default()
        };
        open_with("overlay", Backing::Ext4, &options).await
    }
}

strata_conformance::scenario_tests!(
    auto,
    OverlayFactory {
        api: MountApiChoice::Auto
    }
);
strata_conformance::scenario_tests!(
    classic,
    OverlayFactory {
        api: MountApiChoice::Classic
    }
);
