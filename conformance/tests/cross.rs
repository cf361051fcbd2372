//! Cross-driver identity over the drivers this build has, on every backing
//! that exercises a different copy mechanism: vfs on a plain directory
//! (copy_file_range or read/write), on btrfs and on xfs (reflink), and
//! overlay (native diff from its upper dirs) on a plain directory.
//!
//! Run: `cargo test -p strata-conformance --test cross -- --nocapture`.

use strata_conformance::fixtures::{Backing, RegistryFactory, VfsFactory};
use strata_conformance::{run_cross, Factory};

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
    let overlay = RegistryFactory::new("overlay");
    let factories: Vec<&dyn Factory> = vec![&plain, &btrfs, &xfs, &overlay];
    let report = rt.block_on(run_cross(&factories));
    report.print();
    report.assert_ok();
}
