//! Driver names, probes and constructors: how a host's configuration becomes
//! an `Arc<dyn Driver>`.
//!
//! ```plain
//! names()            every driver strata knows, built or not
//! DEFAULT_PRIORITY   the order `driver = "auto"` tries them in
//! probe(name, root)  Ok(()) if the driver can work on `root` here, else
//!                    Error::Unsupported saying why not
//! open(name, root, &DriverOptions)
//! ```

use std::path::Path;
use std::sync::Arc;
use strata_driver_api::{Driver, Error, Result};

/// Every driver strata knows, in no particular order.
pub const NAMES: [&str; 5] = ["vfs", "overlay", "aufs", "btrfs", "devmapper"];

/// The order `driver = "auto"` tries drivers in when the configuration gives
/// no `driver_priority`: the specialised filesystems first (a btrfs root gets
/// btrfs), then overlay, which most hosts have, and vfs, which always works.
pub const DEFAULT_PRIORITY: [&str; 5] = ["btrfs", "overlay", "devmapper", "aufs", "vfs"];

/// Per-driver options, one field per configuration table (`[vfs]`, ...).
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriverOptions {
    /// `[vfs]`.
    #[cfg(feature = "vfs")]
    #[serde(default)]
    pub vfs: crate::vfs::VfsOptions,
    /// `[overlay]`.
    #[cfg(feature = "overlay")]
    #[serde(default)]
    pub overlay: crate::overlay::OverlayOptions,
    /// `[aufs]`.
    #[cfg(feature = "aufs")]
    #[serde(default)]
    pub aufs: crate::aufs::AufsOptions,
    /// `[btrfs]`.
    #[cfg(feature = "btrfs")]
    #[serde(default)]
    pub btrfs: crate::btrfs::BtrfsOptions,
    /// `[devmapper]`.
    #[cfg(feature = "devmapper")]
    #[serde(default)]
    pub devmapper: crate::devmapper::DevmapperOptions,
}

/// Whether driver `name` is compiled into this build.
///
/// # Errors
/// [`Error::Unsupported`] when it is known but not built;
/// [`Error::InvalidArgument`] when it is unknown.
pub fn is_built(name: &str) -> Result<()> {
    match name {
        #[cfg(feature = "vfs")]
        "vfs" => Ok(()),
        #[cfg(feature = "overlay")]
        "overlay" => Ok(()),
        #[cfg(feature = "btrfs")]
        "btrfs" => Ok(()),
        #[cfg(feature = "aufs")]
        "aufs" => Ok(()),
        #[cfg(feature = "devmapper")]
        "devmapper" => Ok(()),
        n if is_known(n) => Err(not_built(n)),
        n => Err(unknown(n)),
    }
}

/// Whether `name` is a driver strata knows.
pub fn is_known(name: &str) -> bool {
    NAMES.contains(&name)
}

fn unknown(name: &str) -> Error {
    Error::InvalidArgument {
        what: format!("driver {name:?}"),
        why: format!("unknown driver; known drivers: {}", NAMES.join(", ")),
    }
}

fn not_built(name: &str) -> Error {
    Error::Unsupported {
        driver: name.to_string(),
        why: "not available in this build of strata".into(),
    }
}

/// Whether driver `name` can work with its layers under `root` on this host.
///
/// Cheap and read-only: looks at the kernel (`/proc/filesystems`, devices)
/// and at `root`'s backing filesystem; creates nothing. `root` need not
/// exist yet: the nearest existing ancestor's filesystem is probed.
///
/// # Errors
/// [`Error::Unsupported`] saying why not; [`Error::InvalidArgument`] for an
/// unknown name.
pub fn probe(name: &str, root: &Path) -> Result<()> {
    match name {
        #[cfg(feature = "vfs")]
        "vfs" => crate::vfs::Vfs::probe(root),
        #[cfg(feature = "overlay")]
        "overlay" => crate::overlay::Overlay::probe(root),
        #[cfg(feature = "btrfs")]
        "btrfs" => crate::btrfs::Btrfs::probe(root),
        #[cfg(feature = "aufs")]
        "aufs" => crate::aufs::Aufs::probe(root),
        #[cfg(feature = "devmapper")]
        "devmapper" => crate::devmapper::Devmapper::probe(root),
        n if is_known(n) => Err(not_built(n)),
        n => Err(unknown(n)),
    }
}

/// Opens driver `name` on `root` (created if missing) with `options`.
/// Opening finishes what an interrupted process left (half-created or
/// half-removed layers).
///
/// # Errors
/// As [`probe`], plus [`Error::Io`] from setting up the root.
pub async fn open(name: &str, root: &Path, options: &DriverOptions) -> Result<Arc<dyn Driver>> {
    match name {
        #[cfg(feature = "vfs")]
        "vfs" => crate::vfs::open_driver(root, options.vfs.clone()).await,
        #[cfg(feature = "overlay")]
        "overlay" => crate::overlay::open_driver(root, options.overlay.clone()).await,
        #[cfg(feature = "btrfs")]
        "btrfs" => crate::btrfs::open_driver(root, options.btrfs.clone()).await,
        #[cfg(feature = "aufs")]
        "aufs" => crate::aufs::open_driver(root, options.aufs.clone()).await,
        #[cfg(feature = "devmapper")]
        "devmapper" => crate::devmapper::open_driver(root, options.devmapper.clone()).await,
        n if is_known(n) => Err(not_built(n)),
        n => Err(unknown(n)),
    }
}
