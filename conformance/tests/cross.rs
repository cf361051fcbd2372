//! Cross-driver identity over the drivers this build has, against vfs: vfs
//! on every backing that exercises a different copy mechanism (a plain
//! directory: copy_file_range or read/write; btrfs and xfs: reflink), then
//! every other built driver on its own backing (overlay on a plain
//! directory, btrfs on a loop-mounted btrfs).
//!
//! Run: `cargo test -p strata-conformance --test cross -- --nocapture`.

use strata_conformance::fixtures::{Backing, RegistryFactory, VfsFactory};
use strata_conformance::{run_cross, Factory};
use strata_drivers::registry;

#[test]
fn cross_driver_identity() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let plain = VfsFactory::new(Backing::Plain);
    let btrfs = VfsFactory::new(Backing::Btrfs);
    let xfs = VfsFactory::new(Backing::Xfs);
    let others: Vec<RegistryFactory> = ["overlay", "btrfs"]
        .into_iter()
        .filter(|name| match registry::is_built(name) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("cross: {name} left out: {e}");
                false
            }
        })
        .map(RegistryFactory::new)
        .collect();
    let mut factories: Vec<&dyn Factory> = vec![&plain, &btrfs, &xfs];
    factories.extend(others.iter().map(|f| f as &dyn Factory));
    let report = rt.block_on(run_cross(&factories));
    report.print();
    report.assert_ok();
}

/// aufs (FUSE mode here; its servers run from the `strata` binary, which
/// `cargo test --workspace` builds, or `cargo build -p strata`) against vfs
/// and overlay.
#[test]
fn cross_driver_identity_aufs() {
    use strata_conformance::fixtures::RegistryFactory;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let plain = VfsFactory::new(Backing::Plain);
    let overlay = RegistryFactory::new("overlay");
    let aufs = RegistryFactory::new("aufs");
    let factories: Vec<&dyn Factory> = vec![&plain, &overlay, &aufs];
    let report = rt.block_on(run_cross(&factories));
    report.print();
    report.assert_ok();
}
