//! The storage backends of strata, each behind a cargo feature, and the
//! [`registry`] that turns a configured name into a driver.

#[cfg(feature = "overlay")]
pub mod overlay;
pub mod registry;
#[cfg(feature = "vfs")]
pub mod vfs;
