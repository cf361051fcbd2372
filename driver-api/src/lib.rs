//! The contract every strata storage driver implements.
//!
//! A driver keeps layers: directory trees stacked on a parent, read-only
//! (committed image layers) or read-write (a container's writable layer),
//! shared between many children through copy-on-write. The [`Driver`] trait
//! is the one interface the store, the command line and the conformance
//! suite use; the five backends (vfs, overlay, aufs, btrfs, devmapper)
//! implement it.
//!
//! Beside the trait this crate holds what every driver shares:
//! - [`archive`]: the one diff format, an uncompressed OCI layer tar, written
//!   from a change list and applied into a directory with a chosen whiteout
//!   format;
//! - [`naive`]: a differ that compares two trees, used by drivers without a
//!   native diff and by the trait's default methods;
//! - [`copy`]: tree copy with reflink, `copy_file_range` or read/write.

pub mod archive;
pub mod copy;
mod error;
mod id;
pub mod naive;

pub use error::{Error, IoContext, Result};
pub use id::LayerId;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where a tar stream is written: owned, so it can move to a blocking thread.
pub type TarSink = Box<dyn Write + Send>;
/// Where a tar stream is read from: owned, so it can move to a blocking thread.
pub type TarSource = Box<dyn Read + Send>;

/// Options of [`Driver::create`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOpts {
    /// A read-only layer (an image layer) or a read-write one (a container's
    /// writable layer). Read-only layers still accept
    /// [`Driver::apply_diff`]; their mounts refuse writes where the driver
    /// can mount read-only.
    pub read_only: bool,
    /// A size limit in bytes for the layer's own data, where the driver has
    /// quotas ([`Capabilities::quota`]); `None` for no limit.
    pub size: Option<u64>,
    /// Free-form labels; the store persists them, a driver may read them.
    pub labels: BTreeMap<String, String>,
}

impl CreateOpts {
    /// Options for a read-write layer without quota or labels.
    pub fn rw() -> Self {
        CreateOpts {
            read_only: false,
            ..Default::default()
        }
    }
    /// Options for a read-only layer without quota or labels.
    pub fn ro() -> Self {
        CreateOpts {
            read_only: true,
            ..Default::default()
        }
    }
}

/// Options of [`Driver::mount`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOpts {
    /// Mount read-only even if the layer is read-write.
    pub read_only: bool,
    /// Extra filesystem options passed to the kernel, where the driver
    /// passes options through (for example an SELinux `context=`).
    pub options: Vec<String>,
}

/// One mount an external mounter (containerd, a runtime) performs itself,
/// as `mount -t <fs_type> -o <options> <source> <target>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MountSpec {
    /// The filesystem type: `overlay`, `bind`, `btrfs`, `ext4`, ...
    pub fs_type: String,
    /// The source: a device, a directory, or the type for virtual filesystems.
    pub source: PathBuf,
    /// Mount options, in order, as the kernel takes them.
    pub options: Vec<String>,
}

/// What kind of change a [`Change`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum ChangeKind {
    /// The path exists in the layer and not in the parent.
    Added,
    /// The path exists in both and differs (contents, type or metadata).
    Modified,
    /// The path exists in the parent and not in the layer.
    Deleted,
}

impl ChangeKind {
    /// The one-letter form used by `docker diff`: `A`, `C` or `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One change of a layer against its parent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Change {
    /// The path inside the layer, absolute (`/etc/passwd`); may be non-UTF-8.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// What a driver can do. Scenarios of the conformance suite that depend on a
/// capability are reported as not applicable when it is missing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Diff and apply read and write the layer's own storage directly,
    /// without comparing trees.
    pub native_diff: bool,
    /// [`CreateOpts::size`] is enforced.
    pub quota: bool,
    /// Files are shared between a parent and a child by reflink or snapshot,
    /// not copied.
    pub reflink: bool,
    /// The deepest chain of layers this driver can mount (a base and its
    /// descendants), as configured on this host.
    pub max_depth: usize,
    /// [`Driver::mount_spec`] describes mounts an external mounter can make.
    pub mount_spec: bool,
    /// Mounts of read-only layers refuse writes with `EROFS`.
    pub read_only_mounts: bool,
    /// The names of a hard-linked file of a lower layer stay one file when
    /// a layer above changes it or links it again: a write through one
    /// name shows through all. False for overlay without `index=on`, where
    /// the name written to is copied up alone and the others keep the old
    /// file (a kernel behaviour, not a driver bug).
    pub copy_up_keeps_links: bool,
}

/// A read-only (or, where asked, writable) path to a layer's complete tree,
/// independent of [`Driver::mount`]. Whatever the driver set up for it (a
/// private mount, an activated device) is released when the view is
/// dropped.
pub struct View {
    path: PathBuf,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl View {
    /// A view of a directory that needs no release (vfs, btrfs).
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        View {
            path: path.into(),
            release: None,
        }
    }
    /// A view whose `release` runs (once, blocking) when it is dropped, for
    /// example to unmount a private mount.
    pub fn with_release(path: impl Into<PathBuf>, release: impl FnOnce() + Send + 'static) -> Self {
        View {
            path: path.into(),
            release: Some(Box::new(release)),
        }
    }
    /// The root of the layer's tree.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("path", &self.path).finish()
    }
}

/// Key/value lines describing a driver's state on this host (backing
/// filesystem, copy method, pool usage, mount mode...), in display order.
pub type Status = Vec<(String, String)>;

/// A storage driver: keeps layers under its root and mounts them.
///
/// The trait is object safe (`Arc<dyn Driver>`). Methods that do blocking
/// filesystem work run it on `tokio::task::spawn_blocking`; dropping the
/// future of such a method (cancellation) does not stop the blocking work,
/// which runs to its end or its first error, so a cancelled operation leaves
/// the same state as one that completed or failed. Callers that need to know
/// which must ask [`Driver::exists`].
///
/// Mount refcounting across processes is the store's job: it calls
/// [`Driver::mount`] on a 0 -> 1 transition and [`Driver::unmount`] on
/// 1 -> 0. Within the driver, both are idempotent.
///
/// The default `diff`, `changes`, `diff_size` and `apply_diff` come from the
/// [`naive`] differ over [`Driver::view`]; drivers with a native diff
/// override them.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The driver's name as used in configuration: `vfs`, `overlay`, ...
    fn name(&self) -> &'static str;

    /// The root directory this driver keeps its layers under.
    fn root(&self) -> &Path;

    /// What this driver can do on this host.
    fn capabilities(&self) -> Capabilities;

    /// Key/value lines about the driver's state. Read-only; idempotent.
    ///
    /// # Errors
    /// [`Error::Io`] when the backing filesystem or pool cannot be queried.
    async fn status(&self) -> Result<Status>;

    /// Creates layer `id` on `parent` (or empty when `None`): after success
    /// its tree equals the parent's tree (or is an empty root directory of
    /// mode 0755 owned by root).
    ///
    /// Not idempotent: creating an existing id fails. A failed create leaves
    /// nothing behind. Cancellation: see the trait documentation.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`]; [`Error::NotFound`] for a missing parent;
    /// [`Error::Unsupported`] for a quota the driver cannot enforce;
    /// [`Error::InvalidArgument`] for a quota below the driver's minimum;
    /// [`Error::Io`] (for example `ENOSPC`).
    async fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts)
        -> Result<()>;

    /// Removes layer `id` and everything the driver keeps for it (files,
    /// mounts, devices, quota groups).
    ///
    /// Precondition: the layer is not mounted and has no children.
    /// Not idempotent: removing a missing layer is [`Error::NotFound`]. An
    /// interrupted remove is finished by the next [`Driver::cleanup`] or
    /// start-up; it never leaves a half-removed layer that [`Driver::exists`]
    /// reports.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::HasChildren`], [`Error::Busy`] (mounted),
    /// [`Error::Io`].
    async fn remove(&self, id: &LayerId) -> Result<()>;

    /// Whether layer `id` exists (completely created, not being removed).
    ///
    /// # Errors
    /// [`Error::Io`] when the driver's state cannot be read.
    async fn exists(&self, id: &LayerId) -> Result<bool>;

    /// Every layer that exists, sorted by id.
    ///
    /// # Errors
    /// [`Error::Io`] when the driver's state cannot be read.
    async fn list(&self) -> Result<Vec<LayerId>>;

    /// The parent the layer was created on.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`].
    async fn parent(&self, id: &LayerId) -> Result<Option<LayerId>>;

    /// Mounts the layer's full tree (its parents' contents under its own)
    /// and returns the path. Idempotent: mounting a mounted layer returns the
    /// same path without mounting again. A read-only layer (or
    /// `opts.read_only`) mounts read-only where
    /// [`Capabilities::read_only_mounts`].
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`] from the mount.
    async fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf>;

    /// Unmounts the layer. Idempotent: unmounting a layer that is not mounted
    /// succeeds. Mounts of the layer held in other mount namespaces do not
    /// make it fail (the driver detaches).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`] from the unmount.
    async fn unmount(&self, id: &LayerId) -> Result<()>;

    /// Whether the layer is mounted now (by any process), as the mount table
    /// says.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`].
    async fn is_mounted(&self, id: &LayerId) -> Result<bool>;

    /// The mounts an external mounter would make to mount this layer, where
    /// [`Capabilities::mount_spec`]. Read-only; idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Unsupported`] where the driver cannot
    /// describe its mounts.
    async fn mount_spec(&self, id: &LayerId, opts: &MountOpts) -> Result<Vec<MountSpec>>;

    /// A path to the layer's complete tree for the naive differ (read-only
    /// use unless `writable`), independent of [`Driver::mount`]: works whether
    /// or not the layer is mounted. Released on drop.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`].
    async fn view(&self, id: &LayerId, writable: bool) -> Result<View>;

    /// Writes the layer's diff against `parent` to `out` as a canonical OCI
    /// layer tar, and returns `out` after flushing it. `None` means "against
    /// the empty tree" (the layer's own parent is not assumed: the store
    /// passes it).
    ///
    /// Read-only; the same layer gives the same bytes. Cancellation: see the
    /// trait documentation (the tar may be cut short).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`] (including errors writing `out`).
    async fn diff(&self, id: &LayerId, parent: Option<&LayerId>, out: TarSink) -> Result<TarSink> {
        naive_diff(self, id, parent, out).await
    }

    /// The changes of the layer against `parent` (`None`: the empty tree),
    /// sorted by path. Read-only.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`].
    async fn changes(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<Vec<Change>> {
        naive_changes(self, id, parent).await
    }

    /// The size of the diff against `parent`: bytes of added or modified
    /// non-directories, hard links counted once. Equals what
    /// [`Driver::apply_diff`] returns for that diff. Read-only.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Io`].
    async fn diff_size(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<u64> {
        naive_diff_size(self, id, parent).await
    }

    /// Applies a layer tar (plain, gzip or zstd) on top of the layer's
    /// current contents and returns the bytes of content applied. `parent`
    /// is the layer the tar was made against (normally the layer's parent).
    ///
    /// Precondition: the layer is not mounted (the store guarantees it).
    /// Not idempotent. A rejected tar (hostile or malformed) fails with an
    /// error naming the entry; the layer may then hold part of the tar and
    /// the caller removes it (the store does).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Archive`], [`Error::Io`].
    async fn apply_diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: TarSource,
    ) -> Result<u64> {
        let _ = parent;
        let layer = self.view(id, true).await?;
        tokio::task::spawn_blocking(move || {
            archive::apply(tar, layer.path(), archive::WhiteoutFormat::Plain).map(|s| s.bytes)
        })
        .await
        .map_err(join_error)?
    }

    /// Unmounts everything this driver mounted and releases what it holds
    /// (pools, loop devices, servers); finishes interrupted removals.
    /// Idempotent; the driver can be used again afterwards only by opening
    /// it anew.
    ///
    /// # Errors
    /// [`Error::Io`] from unmounts or device teardown (all are tried; the
    /// first error is returned).
    async fn cleanup(&self) -> Result<()>;
}

/// Read-only views of a layer and of the layer it is compared with, for the
/// naive default methods.
async fn layer_views<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<(View, Option<View>)> {
    let layer = driver.view(id, false).await?;
    let base = match parent {
        Some(p) => Some(driver.view(p, false).await?),
        None => None,
    };
    Ok((layer, base))
}

/// The naive [`Driver::diff`]: compares the layer's [`Driver::view`] with
/// `parent`'s and writes the canonical tar. The trait's default, and the
/// fallback of drivers whose native diff does not apply.
///
/// # Errors
/// As [`Driver::diff`].
pub async fn naive_diff<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
    out: TarSink,
) -> Result<TarSink> {
    let (layer, base) = layer_views(driver, id, parent).await?;
    tokio::task::spawn_blocking(move || {
        let changes = naive::changes(layer.path(), base.as_ref().map(View::path))?;
        archive::write_changes(layer.path(), &changes, out)
    })
    .await
    .map_err(join_error)?
}

/// The naive [`Driver::changes`] (see [`naive_diff`]).
///
/// # Errors
/// As [`Driver::changes`].
pub async fn naive_changes<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<Vec<Change>> {
    let (layer, base) = layer_views(driver, id, parent).await?;
    tokio::task::spawn_blocking(move || naive::changes(layer.path(), base.as_ref().map(View::path)))
        .await
        .map_err(join_error)?
}

/// The naive [`Driver::diff_size`] (see [`naive_diff`]).
///
/// # Errors
/// As [`Driver::diff_size`].
pub async fn naive_diff_size<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<u64> {
    let (layer, base) = layer_views(driver, id, parent).await?;
    tokio::task::spawn_blocking(move || {
        let changes = naive::changes(layer.path(), base.as_ref().map(View::path))?;
        naive::changes_size(layer.path(), &changes)
    })
    .await
    .map_err(join_error)?
}

/// Maps a failed `spawn_blocking` join (a panic in the blocking task) to an
/// error.
pub fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Driver {
        driver: "blocking task".into(),
        msg: e.to_string(),
    }
}
