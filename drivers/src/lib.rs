//! The storage backends of strata, each behind a cargo feature.
#[cfg(feature = "vfs")]
pub mod vfs;
