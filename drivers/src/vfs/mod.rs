//! VFS driver: each layer a complete copy of its parent's tree.
//!
//! A child is made by copying the parent's directory with
//! [`copy_tree_with`]: by default (`[vfs] copy = "auto"`) file data is
//! cloned with `FICLONE` where the backing filesystem shares blocks (btrfs,
//! xfs with `reflink=1`), so children cost little there; elsewhere every
//! file is copied. [`CopyMode`] picks one method instead. Mounting is a bind mount of the layer's directory; diffs come
//! from the naive differ (the trait's defaults), and a tar is applied
//! straight into the layer's directory. It works on any filesystem and is
//! the fallback of `driver = "auto"`.
//!
//! The layout under `<root>/vfs/` and how interrupted operations are
//! finished is described in `layout.rs`: `dir/<id>` holds the tree,
//! `meta/<id>` the record (parent, read-only flag) whose presence means
//! the layer exists, `mnt/<id>` the mount point, `tmp/` staging and
//! removal.
//!
//! Concurrency: operations on different layers run in parallel. Within one
//! driver instance, a create and a remove of the same id, or a remove of a
//! layer while a child of it is being created, exclude each other (the
//! later one fails), and mounts and unmounts are serialised. Across
//! processes, the store's locking orders operations on one layer; the
//! driver only guarantees that processes sharing a root never delete each
//! other's in-progress work.
//!
//! Chains are unbounded ([`Capabilities::max_depth`] is `usize::MAX`):
//! every layer is a self-contained tree, whatever its depth.

mod layout;

use crate::fstype;
use crate::fsutil;
use crate::mountinfo;
use crate::mounts::{self, BindOptions};
use async_trait::async_trait;
use layout::{Layout, Meta, Owner, TmpKind};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use strata_driver_api::copy::{copy_tree_with, probe_reflink, CopyChoice, CopyMethod};
use strata_driver_api::{
    archive, join_error, Capabilities, CreateOpts, Driver, Error, IoContext, LayerId, MountOpts,
    MountSpec, Result, Status, TarSource, View,
};

/// The driver's name.
pub const NAME: &str = "vfs";

/// How a child layer's files are made from its parent's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// Reflink where the filesystem can, copy otherwise.
    #[default]
    Auto,
    /// Reflink only: opening fails with [`Error::Unsupported`] where
    /// `FICLONE` does not work, and a create fails where a file could not
    /// be cloned.
    Reflink,
    /// Full copies, no block shared with the parent: read/write where the
    /// filesystem can clone (there `copy_file_range` clones too), else the
    /// `auto` chain (which then never clones).
    Copy,
    /// `copy_file_range` only (which clones on btrfs and reflink xfs); a
    /// create fails where it is refused.
    #[serde(rename = "copy_file_range")]
    CopyFileRange,
    /// `read`/`write` only: always unshared, always the slowest.
    #[serde(rename = "read-write")]
    ReadWrite,
}

impl CopyMode {
    fn as_str(self) -> &'static str {
        match self {
            CopyMode::Auto => "auto",
            CopyMode::Reflink => "reflink",
            CopyMode::Copy => "copy",
            CopyMode::CopyFileRange => "copy_file_range",
            CopyMode::ReadWrite => "read-write",
        }
    }

    /// The tree copy's choice for this mode on a filesystem that can
    /// (`reflink`) or cannot clone files.
    fn choice(self, reflink: bool) -> CopyChoice {
        match self {
            CopyMode::Auto => CopyChoice::Auto,
            CopyMode::Reflink => CopyChoice::Only(CopyMethod::Reflink),
            CopyMode::Copy if reflink => CopyChoice::Only(CopyMethod::ReadWrite),
            CopyMode::Copy => CopyChoice::Auto,
            CopyMode::CopyFileRange => CopyChoice::Only(CopyMethod::CopyFileRange),
            CopyMode::ReadWrite => CopyChoice::Only(CopyMethod::ReadWrite),
        }
    }
}

/// Options of the `[vfs]` configuration table.
///
/// ```plain
/// [vfs]
/// copy = "auto"  # "auto" | "reflink" | "copy" | "copy_file_range" | "read-write"
/// ```
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VfsOptions {
    /// How a child's files are made from its parent's; default `auto`.
    #[serde(default)]
    pub copy: CopyMode,
}

/// What one in-flight create or remove holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Create { parent: Option<LayerId> },
    Remove,
}

#[derive(Debug, Default)]
struct State {
    /// Ids being created or removed by this instance.
    inflight: HashMap<LayerId, Op>,
    /// This instance's `tmp/` entries in use (not to be swept).
    tmp_in_use: HashSet<String>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    layout: Layout,
    opts: VfsOptions,
    reflink: bool,
    backing_fs: String,
    /// The least sharing copy method children made by this instance used,
    /// `None` before the first child with a file.
    used: Mutex<Option<CopyMethod>>,
    owner: Owner,
    state: Mutex<State>,
    /// Serialises mount-table checks with mounting, unmounting and the
    /// removal of records.
    mount_lock: Mutex<()>,
}

/// The VFS driver. Cheap to clone (shares its state).
#[derive(Clone, Debug)]
pub struct Vfs {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(join_error)?
}

/// Marks an id as being created or removed; released on drop.
struct OpGuard<'a> {
    inner: &'a Inner,
    id: LayerId,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.state).inflight.remove(&self.id);
    }
}

/// A `tmp/` entry in use; its name is released on drop (the entry itself
/// is removed by whoever is responsible for it).
struct TmpGuard<'a> {
    inner: &'a Inner,
    name: String,
    path: PathBuf,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.state).tmp_in_use.remove(&self.name);
    }
}

impl Vfs {
    /// Whether vfs works on `root`: it does wherever a directory can hold
    /// it, so this only checks that the nearest existing ancestor of `root`
    /// is a directory. Read-only; creates nothing.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when that ancestor is not a directory.
    pub fn probe(root: &Path) -> Result<()> {
        let at = fstype::nearest_existing(root);
        match std::fs::metadata(&at) {
            Ok(md) if md.is_dir() => Ok(()),
            Ok(_) => Err(Error::Unsupported {
                driver: NAME.into(),
                why: format!("{} is not a directory", at.display()),
            }),
            Err(e) => Err(Error::Unsupported {
                driver: NAME.into(),
                why: format!("{}: {e}", at.display()),
            }),
        }
    }

    /// Opens the driver with its layers under `<root>/vfs` (created, mode
    /// 0700, if missing), and finishes what interrupted processes left:
    /// staged trees, half-removed layers, trees without a record.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for `copy = "reflink"` where `FICLONE` does
    /// not work (naming the filesystem); [`Error::Io`] from setting up the
    /// directories or from sweeping.
    pub async fn open(root: &Path, opts: VfsOptions) -> Result<Self> {
        let root = root.to_path_buf();
        blocking(move || Vfs::open_blocking(root, opts)).await
    }

    fn open_blocking(root: PathBuf, opts: VfsOptions) -> Result<Self> {
        let home = root.join("vfs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home)
            .ctx("mkdir", &home)?;
        let home = std::fs::canonicalize(&home).ctx("canonicalize", &home)?;
        let layout = Layout { home };
        for d in [layout.dirs(), layout.metas(), layout.mnts(), layout.tmp()] {
            match std::fs::DirBuilder::new().mode(0o700).create(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::io("mkdir", d, e))
                }
                _ => {}
            }
        }
        let backing_fs = fstype::name(&layout.home)?;
        // Probed in the home directory, next to dir/ on the same
        // filesystem: probe files inside dir/ could be taken for layers.
        let reflink = probe_reflink(&layout.home);
        if opts.copy == CopyMode::Reflink && !reflink {
            return Err(Error::Unsupported {
                driver: NAME.into(),
                why: format!(
                    "copy = \"reflink\", but {} cannot clone files (FICLONE) in {}",
                    backing_fs,
                    layout.home.display()
                ),
            });
        }
        let owner = Owner::take(&layout.tmp())?;
        let swept = layout::sweep(&layout, &owner, &|_| false)?;
        tracing::debug!(home = %layout.home.display(), %backing_fs, reflink, ?swept, "vfs opened");
        Ok(Vfs {
            inner: Arc::new(Inner {
                root,
                layout,
                opts,
                reflink,
                backing_fs,
                used: Mutex::new(None),
                owner,
                state: Mutex::default(),
                mount_lock: Mutex::new(()),
            }),
        })
    }
}

/// Opens the vfs driver on `root` as an `Arc<dyn Driver>` (what the registry
/// hands out). See [`Vfs::open`].
///
/// # Errors
/// As [`Vfs::open`].
pub async fn open_driver(root: &Path, opts: VfsOptions) -> Result<Arc<dyn Driver>> {
    Ok(Arc::new(Vfs::open(root, opts).await?))
}

impl Inner {
    fn begin(&self, id: &LayerId, op: Op) -> Result<OpGuard<'_>> {
        let mut st = lock(&self.state);
        if let Some(other) = st.inflight.get(id) {
            return Err(match (&op, other) {
                (Op::Create { .. }, _) => Error::AlreadyExists { id: id.to_string() },
                (Op::Remove, Op::Create { .. }) => Error::Busy {
                    id: id.to_string(),
                    why: "being created".into(),
                },
                (Op::Remove, Op::Remove) => Error::Busy {
                    id: id.to_string(),
                    why: "being removed".into(),
                },
            });
        }
        match &op {
            Op::Create {
                parent: Some(parent),
            } if st.inflight.get(parent) == Some(&Op::Remove) => {
                return Err(Error::NotFound {
                    id: parent.to_string(),
                })
            }
            Op::Remove => {
                let creating: Vec<&str> = st
                    .inflight
                    .iter()
                    .filter(|(_, o)| matches!(o, Op::Create { parent: Some(p) } if p == id))
                    .map(|(c, _)| c.as_str())
                    .collect();
                if !creating.is_empty() {
                    return Err(Error::Busy {
                        id: id.to_string(),
                        why: format!("children being created: {}", creating.join(", ")),
                    });
                }
            }
            _ => {}
        }
        st.inflight.insert(id.clone(), op);
        Ok(OpGuard {
            inner: self,
            id: id.clone(),
        })
    }

    fn tmp_entry(&self, kind: TmpKind, id: &LayerId) -> TmpGuard<'_> {
        let name = self.owner.name(kind, id);
        lock(&self.state).tmp_in_use.insert(name.clone());
        TmpGuard {
            inner: self,
            path: self.layout.tmp().join(&name),
            name,
        }
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, read_only: bool) -> Result<()> {
        let _op = self.begin(
            id,
            Op::Create {
                parent: parent.cloned(),
            },
        )?;
        let l = &self.layout;
        if layout::read_meta(l, id)?.is_some() {
            return Err(Error::AlreadyExists { id: id.to_string() });
        }
        if let Some(p) = parent {
            layout::need_meta(l, p)?;
        }
        let marker = self.tmp_entry(TmpKind::Creating, id);
        std::fs::File::create(&marker.path).ctx("create", &marker.path)?;
        let stage = self.tmp_entry(TmpKind::Create, id);
        let mut placed = false;
        let res = self.create_steps(id, parent, read_only, &stage.path, &mut placed);
        if res.is_err() {
            if let Err(e) = fsutil::remove_tree(&stage.path) {
                tracing::warn!(error = %e, "vfs create: removing the staged tree");
            }
            if placed {
                // The tree is in place but has no record: take it back out.
                let back = self.tmp_entry(TmpKind::Removing, id);
                let r = std::fs::rename(l.dir(id), &back.path)
                    .ctx("rename", &back.path)
                    .and_then(|()| fsutil::remove_tree(&back.path));
                if let Err(e) = r {
                    tracing::warn!(error = %e, "vfs create: removing the unrecorded tree");
                }
            }
        }
        if let Err(e) = std::fs::remove_file(&marker.path) {
            tracing::warn!(error = %e, path = %marker.path.display(), "vfs create: removing marker");
        }
        res
    }

    fn create_steps(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        read_only: bool,
        stage: &Path,
        placed: &mut bool,
    ) -> Result<()> {
        let l = &self.layout;
        match parent {
            Some(p) => {
                let choice = self.opts.copy.choice(self.reflink);
                let stats = copy_tree_with(&l.dir(p), stage, choice).map_err(|e| {
                    if self.opts.copy == CopyMode::Reflink {
                        Error::Unsupported {
                            driver: NAME.into(),
                            why: format!(
                                "copy = \"reflink\", but files of layer {p} could not be \
                                 cloned: {e}"
                            ),
                        }
                    } else {
                        e
                    }
                })?;
                tracing::debug!(%id, parent = %p, ?stats, "vfs: copied parent tree");
                if let Some(worst) = stats.worst {
                    let mut used = lock(&self.used);
                    *used = (*used).max(Some(worst));
                }
                // The data must be durable before the record says the
                // layer exists.
                fsutil::syncfs(stage)?;
            }
            None => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(stage)
                    .ctx("mkdir", stage)?;
                std::fs::set_permissions(stage, std::fs::Permissions::from_mode(0o755))
                    .ctx("chmod", stage)?;
                if nix::unistd::geteuid().is_root() {
                    std::os::unix::fs::chown(stage, Some(0), Some(0)).ctx("chown", stage)?;
                }
                fsutil::fsync_dir(stage)?;
            }
        }
        fsutil::fsync_dir(&l.tmp())?;
        let dest = l.dir(id);
        match fsutil::rename_noreplace(stage, &dest) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // A tree without a record, left by a crash: ours to replace
                // (the in-flight check and the record check above rule out
                // a live owner in this instance; other processes' creates
                // of one id are the store's to order).
                tracing::info!(%id, "vfs create: replacing a tree without record");
                let old = self.tmp_entry(TmpKind::Removing, id);
                std::fs::rename(&dest, &old.path).ctx("rename", &old.path)?;
                fsutil::remove_tree(&old.path)?;
                fsutil::rename_noreplace(stage, &dest)?;
            }
            r => r?,
        }
        *placed = true;
        fsutil::fsync_dir(&l.dirs())?;
        let meta = Meta {
            parent: parent.cloned(),
            read_only,
        };
        let staging = self.tmp_entry(TmpKind::Meta, id);
        fsutil::write_atomic(&l.meta(id), meta.encode().as_bytes(), &staging.path)?;
        tracing::debug!(%id, ?parent, read_only, "vfs: created");
        Ok(())
    }

    fn children(&self, id: &LayerId) -> Result<Vec<LayerId>> {
        let mut out = Vec::new();
        for other in layout::list_ids(&self.layout)? {
            if let Some(m) = layout::read_meta(&self.layout, &other)? {
                if m.parent.as_ref() == Some(id) {
                    out.push(other);
                }
            }
        }
        Ok(out)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _op = self.begin(id, Op::Remove)?;
        let l = &self.layout;
        let meta_tmp = self.tmp_entry(TmpKind::Meta, id);
        {
            let _m = lock(&self.mount_lock);
            layout::need_meta(l, id)?;
            let table = mountinfo::read()?;
            let mnt = l.mnt(id);
            if table.iter().any(|m| m.mount_point == mnt) {
                return Err(Error::Busy {
                    id: id.to_string(),
                    why: format!("mounted at {}", mnt.display()),
                });
            }
            if let Some(m) = mountinfo::mounts_under(&table, &l.dir(id)).first() {
                return Err(Error::Busy {
                    id: id.to_string(),
                    why: format!("{} is mounted inside the layer", m.mount_point.display()),
                });
            }
            let children = self.children(id)?;
            if !children.is_empty() {
                let names: Vec<&str> = children.iter().map(LayerId::as_str).collect();
                return Err(Error::HasChildren {
                    id: id.to_string(),
                    children: names.join(", "),
                });
            }
            // From here on the layer does not exist.
            std::fs::rename(l.meta(id), &meta_tmp.path).ctx("rename", &meta_tmp.path)?;
            fsutil::fsync_dir(&l.metas())?;
        }
        let removing = self.tmp_entry(TmpKind::Removing, id);
        let finish = (|| {
            match std::fs::rename(l.dir(id), &removing.path) {
                Ok(()) => {}
                // Another sweeper took it already.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("rename", &removing.path, e)),
            }
            match std::fs::remove_dir(l.mnt(id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(error = %e, %id, "vfs remove: removing the mount point")
                }
                _ => {}
            }
            fsutil::remove_tree(&removing.path)?;
            std::fs::remove_file(&meta_tmp.path).ctx("remove", &meta_tmp.path)
        })();
        match finish {
            Ok(()) => tracing::debug!(%id, "vfs: removed"),
            // The layer is gone; what is left in tmp/ is swept by the next
            // cleanup or open.
            Err(e) => tracing::warn!(error = %e, %id, "vfs remove: leftovers stay in tmp/"),
        }
        Ok(())
    }

    fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let _m = lock(&self.mount_lock);
        let meta = layout::need_meta(&self.layout, id)?;
        let bind = self.bind_options(&meta, opts)?;
        let target = self.layout.mnt(id);
        if mountinfo::is_mount_point(&target)? {
            return Ok(target);
        }
        match std::fs::DirBuilder::new().mode(0o755).create(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io("mkdir", target, e))
            }
            _ => {}
        }
        if let Err(e) = mounts::bind(&self.layout.dir(id), &target, &bind) {
            let _ = std::fs::remove_dir(&target);
            return Err(e);
        }
        tracing::debug!(%id, target = %target.display(), ?bind, "vfs: mounted");
        Ok(target)
    }

    fn bind_options(&self, meta: &Meta, opts: &MountOpts) -> Result<BindOptions> {
        let mut b = BindOptions::default().with_options(&opts.options)?;
        b.read_only |= meta.read_only || opts.read_only;
        Ok(b)
    }

    fn unmount(&self, id: &LayerId) -> Result<()> {
        let _m = lock(&self.mount_lock);
        layout::need_meta(&self.layout, id)?;
        let target = self.layout.mnt(id);
        mounts::unmount(&target)?;
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Kernels before 3.18 refuse while another namespace holds a
            // copy of the mount: the directory stays; harmless.
            Err(e) => tracing::warn!(error = %e, %id, "vfs unmount: removing the mount point"),
        }
        Ok(())
    }

    fn cleanup(&self) -> Result<()> {
        let _m = lock(&self.mount_lock);
        let l = &self.layout;
        let mut first_err = None;
        if let Err(e) = mounts::unmount_under(&l.mnts()) {
            first_err.get_or_insert(e);
        }
        match std::fs::read_dir(l.mnts()) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let p = entry.path();
                    match std::fs::remove_dir(&p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            tracing::warn!(error = %e, path = %p.display(), "vfs cleanup: mount point")
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                first_err.get_or_insert(Error::io("read_dir", l.mnts(), e));
            }
        }
        let in_use = |name: &str| lock(&self.state).tmp_in_use.contains(name);
        if let Err(e) = layout::sweep(l, &self.owner, &in_use) {
            first_err.get_or_insert(e);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The method the first file of a child would be copied with.
    fn expected_method(&self) -> &'static str {
        match self.opts.copy.choice(self.reflink) {
            CopyChoice::Only(m) => m.as_str(),
            CopyChoice::Auto if self.reflink => CopyMethod::Reflink.as_str(),
            CopyChoice::Auto => "copy_file_range (read-write fallback)",
        }
    }

    fn status(&self) -> Result<Status> {
        let l = &self.layout;
        let layers = layout::list_ids(l)?.len();
        let table = mountinfo::read()?;
        let mut mounted: Vec<&Path> = mountinfo::mounts_under(&table, &l.mnts())
            .iter()
            .map(|m| m.mount_point.as_path())
            .filter(|p| p.parent() == Some(l.mnts().as_path()))
            .collect();
        mounted.sort();
        mounted.dedup();
        let method = match *lock(&self.used) {
            Some(m) => m.as_str().to_string(),
            None => format!("{} (expected; no file copied yet)", self.expected_method()),
        };
        Ok(vec![
            ("root".into(), l.home.display().to_string()),
            ("backing filesystem".into(), self.backing_fs.clone()),
            ("copy method".into(), method),
            ("copy option".into(), self.opts.copy.as_str().into()),
            ("layers".into(), layers.to_string()),
            ("mounted".into(), mounted.len().to_string()),
        ])
    }
}

#[async_trait]
impl Driver for Vfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn root(&self) -> &Path {
        &self.inner.root
    }

    /// No native diff and no quota; `reflink` when the backing filesystem
    /// clones files (probed at open); chains of any depth (`usize::MAX`:
    /// the conformance suite caps what it tests); bind mounts can be
    /// described and made read-only.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_diff: false,
            quota: false,
            reflink: self.inner.reflink,
            max_depth: usize::MAX,
            mount_spec: true,
            read_only_mounts: true,
            copy_up_keeps_links: true,
        }
    }

    /// `root`, `backing filesystem` (statfs name), `copy method` (the
    /// least sharing method children made by this instance used:
    /// `reflink`, `copy_file_range` or `read-write`; before the first, the
    /// expected one, marked so), `copy option`, `layers`,
    /// `mounted`.
    async fn status(&self) -> Result<Status> {
        let inner = self.inner.clone();
        blocking(move || inner.status()).await
    }

    /// Stages the tree in `tmp/` (a copy of the parent's, synced to disk,
    /// or an empty 0755 root-owned directory), renames it to `dir/<id>`,
    /// then writes the record atomically. On failure nothing is left.
    /// `opts.size` is [`Error::Unsupported`]; labels are not kept (the
    /// store keeps them).
    async fn create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        opts: &CreateOpts,
    ) -> Result<()> {
        if opts.size.is_some() {
            return Err(Error::Unsupported {
                driver: NAME.into(),
                why: format!("layer {id}: vfs has no quota (size limit asked)"),
            });
        }
        let inner = self.inner.clone();
        let (id, parent, ro) = (id.clone(), parent.cloned(), opts.read_only);
        blocking(move || inner.create(&id, parent.as_ref(), ro)).await
    }

    /// Checks (not mounted here, no children), removes the record, then
    /// moves the tree to `tmp/` and deletes it. Once the record is gone
    /// the remove succeeds: a tree that cannot be deleted stays in `tmp/`
    /// for the next cleanup or open (logged).
    async fn remove(&self, id: &LayerId) -> Result<()> {
        let inner = self.inner.clone();
        let id = id.clone();
        blocking(move || inner.remove(&id)).await
    }

    async fn exists(&self, id: &LayerId) -> Result<bool> {
        let inner = self.inner.clone();
        let id = id.clone();
        blocking(move || Ok(layout::read_meta(&inner.layout, &id)?.is_some())).await
    }

    async fn list(&self) -> Result<Vec<LayerId>> {
        let inner = self.inner.clone();
        blocking(move || layout::list_ids(&inner.layout)).await
    }

    async fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        let inner = self.inner.clone();
        let id = id.clone();
        blocking(move || Ok(layout::need_meta(&inner.layout, &id)?.parent)).await
    }

    /// Bind-mounts `dir/<id>` on `mnt/<id>`, private, read-only for a
    /// read-only layer or `opts.read_only`. `opts.options` may hold bind
    /// flags (`nosuid`, `nodev`, `noexec`, `ro`, ...); filesystem options
    /// are [`Error::InvalidArgument`]. An existing mount is returned as it
    /// is, whatever `opts`.
    async fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let inner = self.inner.clone();
        let (id, opts) = (id.clone(), opts.clone());
        blocking(move || inner.mount(&id, &opts)).await
    }

    /// Detaches every mount on `mnt/<id>` and removes the directory.
    async fn unmount(&self, id: &LayerId) -> Result<()> {
        let inner = self.inner.clone();
        let id = id.clone();
        blocking(move || inner.unmount(&id)).await
    }

    async fn is_mounted(&self, id: &LayerId) -> Result<bool> {
        let inner = self.inner.clone();
        let id = id.clone();
        blocking(move || {
            layout::need_meta(&inner.layout, &id)?;
            mountinfo::is_mount_point(&inner.layout.mnt(&id))
        })
        .await
    }

    /// One recursive bind mount of `dir/<id>`:
    ///
    /// ```plain
    /// mount -t bind -o rbind,ro <root>/vfs/dir/<id> <target>
    /// ```
    ///
    /// `ro` for a read-only layer or `opts.read_only`, `rw` otherwise, then
    /// the bind flags of `opts.options`.
    async fn mount_spec(&self, id: &LayerId, opts: &MountOpts) -> Result<Vec<MountSpec>> {
        let inner = self.inner.clone();
        let (id, opts) = (id.clone(), opts.clone());
        blocking(move || {
            let meta = layout::need_meta(&inner.layout, &id)?;
            let mut bind = inner.bind_options(&meta, &opts)?;
            bind.recursive = true;
            Ok(vec![MountSpec {
                fs_type: "bind".into(),
                source: inner.layout.dir(&id),
                options: bind.to_options(),
            }])
        })
        .await
    }

    /// `dir/<id>` itself: nothing to set up or release. A writable view
    /// writes into the layer.
    async fn view(&self, id: &LayerId, writable: bool) -> Result<View> {
        let _ = writable;
        let inner = self.inner.clone();
        let id = id.clone();
        blocking(move || {
            layout::need_meta(&inner.layout, &id)?;
            Ok(View::dir(inner.layout.dir(&id)))
        })
        .await
    }

    /// Applies the tar straight into `dir/<id>` (deletions carried out).
    /// Precondition (the store's): the layer is not mounted; a mount would
    /// see the changes as they are made. `parent` is not needed.
    async fn apply_diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: TarSource,
    ) -> Result<u64> {
        let _ = parent;
        let inner = self.inner.clone();
        let id = id.clone();
        blocking(move || {
            layout::need_meta(&inner.layout, &id)?;
            let dir = inner.layout.dir(&id);
            let stats = archive::apply(tar, &dir, archive::WhiteoutFormat::Plain)?;
            tracing::debug!(%id, ?stats, "vfs: applied diff");
            Ok(stats.bytes)
        })
        .await
    }

    /// Unmounts everything under `mnt/` and removes the mount points, then
    /// sweeps `tmp/` and trees without records.
    async fn cleanup(&self) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || inner.cleanup()).await
    }
}
