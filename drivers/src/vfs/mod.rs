//! VFS driver: each layer a full copy of its parent.
//!
//! STUB: the interface below is fixed; the implementation is being written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_driver_api::Driver;
use strata_driver_api::{Error, Result};

/// Options of the `[vfs]` configuration table.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VfsOptions {}

/// The VFS driver.
#[derive(Debug)]
pub struct Vfs {
    root: PathBuf,
}

impl Vfs {
    /// Whether vfs works on `root` (it always does where the directory can be
    /// made).
    pub fn probe(root: &Path) -> Result<()> {
        let _ = root;
        Ok(())
    }

    /// Opens the driver with its layers under `<root>/vfs`.
    pub async fn open(root: &Path, opts: VfsOptions) -> Result<Self> {
        let _ = opts;
        Err(Error::Unsupported {
            driver: "vfs".into(),
            why: format!("not written yet ({})", root.display()),
        })
    }
}

/// Opens the vfs driver on `root` as an `Arc<dyn Driver>` (what the registry
/// hands out).
pub async fn open_driver(root: &Path, opts: VfsOptions) -> Result<Arc<dyn Driver>> {
    let _ = Vfs::open(root, opts).await?;
    unreachable!("stub")
}
