//! btrfs driver: a subvolume per layer, a snapshot per child.
//!
//! ```plain
//! <root>/btrfs/
//!   subvolumes/<id>    the layer's subvolume (a snapshot of its parent's)
//!   meta/<id>          "parent=<id>\nread_only=<bool>\n"; written last:
//!                      its presence is what "the layer exists" means
//!   mnt/<id>           bind mount of the subvolume while mounted
//!   tmp/               staging: subvol-<id> while created, meta-<id> while
//!                      written; anything here is a leftover
//!   trash/<id>         a subvolume being removed
//!   qgroups-pending/<n> qgroup 0/<n> of a deleted subvolume the kernel
//!                      still refused to destroy; retried by the sweep
//! ```
//!
//! - Read-only layers carry btrfs's read-only property, so nothing can
//!   change a committed layer by accident. [`Driver::apply_diff`] (called
//!   right after create for imported layers) and a writable
//!   [`Driver::view`] clear it for the time they write and set it back
//!   afterwards (the view when dropped).
//! - Create is staged in `tmp/` and renamed into place; a failure deletes
//!   the half-made subvolume. Remove deletes `meta/<id>` first (the layer is
//!   gone), renames the subvolume into `trash/`, deletes the subvolumes
//!   nested in it (a container may have made some; found by root inode
//!   number 256, deepest first), the subvolume itself and their qgroups.
//!   Open and [`Driver::cleanup`] sweep `tmp/`, `trash/`, subvolumes
//!   without metadata and pending qgroups. Many processes share a root:
//!   creates and removes hold `busy.lock` shared while they work, and the
//!   sweep runs only when it gets that lock exclusively (skipped otherwise:
//!   the next open does it), so one process's open never sweeps away
//!   another's create or remove in progress. A crashed process's lock is
//!   gone with it, so its leftovers are swept.
//! - `mount` bind-mounts the subvolume at `mnt/<id>` (read-only bind for
//!   read-only layers), so unmount and cleanup work as for other drivers;
//!   unmount detaches (`MNT_DETACH`) and removes the mount point.
//!   [`MountOpts::options`] are the bind mount's (`ro`, `nosuid`, `nodev`,
//!   `noexec`...); filesystem options are refused (see
//!   [`crate::mounts::BindOptions::with_options`]). [`Driver::mount_spec`]
//!   passes them through to the `btrfs` mount unchecked.
//! - Sizes are qgroup limits on the layer's *exclusive* bytes (its own
//!   data: what it shares with its parent does not count), so writing past
//!   `--size` fails with `EDQUOT`. Quotas are switched on for the
//!   filesystem the first time a size is asked for, never switched off; a
//!   snapshot's inherited limit is cleared when the child asks for none.
//!   `[btrfs] min_space` refuses smaller sizes. Details in `quota.rs`.
//! - Diffs are the naive differ's; a snapshot keeps its parent's inode
//!   numbers and ctimes, so the differ's inode shortcut skips unchanged
//!   entries without reading them.
//!
//! libbtrfsutil (through the `btrfsutil` crate) does the subvolume work;
//! the quota ioctls it lacks are in a small unsafe module (`sys`).

mod quota;
mod subvol;
mod sys;

use crate::mounts::{self, BindOptions};
use crate::{fstype, fsutil, mountinfo};
use async_trait::async_trait;
use nix::fcntl::Flock;
use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use strata_driver_api::{
    archive, join_error, Capabilities, CreateOpts, Driver, Error, IoContext, LayerId, MountOpts,
    MountSpec, Result, Status, TarSource, View,
};

const NAME: &str = "btrfs";

/// Options of the `[btrfs]` configuration table.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BtrfsOptions {
    /// The smallest `--size` (bytes) a layer may be created with; a smaller
    /// one is refused with [`Error::InvalidArgument`]. `None`: any size
    /// above zero.
    #[serde(default)]
    pub min_space: Option<u64>,
}

/// The btrfs driver. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct Btrfs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    home: PathBuf,
    opts: BtrfsOptions,
    /// Serialises turning quotas on.
    quota_lock: Mutex<()>,
    /// Serialises mount and unmount (the mount table check and the mount).
    mount_lock: Mutex<()>,
    /// Names in `tmp/` and `trash/` that a create or remove of this process
    /// is using now: the sweep leaves them alone.
    in_use: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a name in `tmp/` or `trash/` as in use while it lives.
struct InUse<'a> {
    set: &'a Mutex<HashSet<String>>,
    name: String,
}

impl<'a> InUse<'a> {
    fn new(set: &'a Mutex<HashSet<String>>, name: String) -> Self {
        lock(set).insert(name.clone());
        InUse { set, name }
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.name);
    }
}

/// What `meta/<id>` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta {
    parent: Option<LayerId>,
    read_only: bool,
}

impl Meta {
    fn encode(&self) -> String {
        format!(
            "parent={}\nread_only={}\n",
            self.parent.as_ref().map(LayerId::as_str).unwrap_or(""),
            self.read_only
        )
    }

    fn decode(id: &str, text: &str) -> Result<Meta> {
        let bad = |why: String| Error::Driver {
            driver: NAME.into(),
            msg: format!("layer {id}: metadata: {why}"),
        };
        let mut parent = None;
        let mut read_only = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("parent", "")) => parent = Some(None),
                Some(("parent", p)) => parent = Some(Some(LayerId::new(p)?)),
                Some(("read_only", v)) => {
                    read_only = Some(
                        v.parse::<bool>()
                            .map_err(|e| bad(format!("{line:?}: {e}")))?,
                    )
                }
                _ => return Err(bad(format!("unknown line {line:?}"))),
            }
        }
        Ok(Meta {
            parent: parent.ok_or_else(|| bad("no parent line".into()))?,
            read_only: read_only.ok_or_else(|| bad("no read_only line".into()))?,
        })
    }
}

impl Btrfs {
    /// Whether the btrfs driver works on `root`: `root` (or its nearest
    /// existing ancestor) must be on btrfs. Read-only, creates nothing.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the filesystem found; [`Error::Io`]
    /// when `statfs` fails.
    pub fn probe(root: &Path) -> Result<()> {
        let at = fstype::nearest_existing(root);
        // The magic number table is fstype's (btrfs is `BTRFS_SUPER_MAGIC`).
        let found = fstype::name(&at)?;
        if found == NAME {
            Ok(())
        } else {
            Err(Error::Unsupported {
                driver: NAME.into(),
                why: format!("{} is on {found}, not on btrfs", at.display()),
            })
        }
    }

    /// Opens the driver with its layers under `<root>/btrfs` (created if
    /// missing), and finishes what an interrupted process left: half-made
    /// and half-removed subvolumes, qgroups not yet destroyed.
    ///
    /// # Errors
    /// As [`Btrfs::probe`]; [`Error::Io`] from setting up the directories
    /// or the sweep.
    pub async fn open(root: &Path, opts: BtrfsOptions) -> Result<Self> {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || {
            Self::probe(&root)?;
            std::fs::create_dir_all(&root).ctx("create dir", &root)?;
            let root = std::fs::canonicalize(&root).ctx("canonicalize", &root)?;
            let home = root.join(NAME);
            for d in [
                "subvolumes",
                "meta",
                "mnt",
                "tmp",
                "trash",
                "qgroups-pending",
            ] {
                let p = home.join(d);
                std::fs::create_dir_all(&p).ctx("create dir", &p)?;
            }
            let inner = Inner {
                root,
                home,
                opts,
                quota_lock: Mutex::new(()),
                mount_lock: Mutex::new(()),
                in_use: Mutex::new(HashSet::new()),
            };
            inner.sweep()?;
            Ok(Btrfs {
                inner: Arc::new(inner),
            })
        })
        .await
        .map_err(join_error)?
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(join_error)?
    }
}

/// Opens the btrfs driver on `root` as an `Arc<dyn Driver>` (what the
/// registry hands out).
///
/// # Errors
/// As [`Btrfs::open`].
pub async fn open_driver(root: &Path, opts: BtrfsOptions) -> Result<Arc<dyn Driver>> {
    Ok(Arc::new(Btrfs::open(root, opts).await?))
}

fn not_found(id: &LayerId) -> Error {
    Error::NotFound { id: id.to_string() }
}

fn ignore_missing(r: std::io::Result<()>, op: &'static str, path: &Path) -> Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.ctx(op, path),
    }
}

impl Inner {
    fn subvol(&self, id: &LayerId) -> PathBuf {
        self.home.join("subvolumes").join(id.as_str())
    }
    fn meta_path(&self, id: &str) -> PathBuf {
        self.home.join("meta").join(id)
    }
    fn mnt(&self, id: &LayerId) -> PathBuf {
        self.home.join("mnt").join(id.as_str())
    }

    fn meta(&self, id: &LayerId) -> Result<Meta> {
        let p = self.meta_path(id.as_str());
        match std::fs::read_to_string(&p) {
            Ok(t) => Meta::decode(id.as_str(), &t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found(id)),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    fn exists(&self, id: &LayerId) -> Result<bool> {
        let p = self.meta_path(id.as_str());
        match std::fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat", p, e)),
        }
    }

    fn list(&self) -> Result<Vec<LayerId>> {
        let dir = self.home.join("meta");
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&dir).ctx("read dir", &dir)? {
            let e = e.ctx("read dir", &dir)?;
            if let Some(id) = e.file_name().to_str().and_then(|n| LayerId::new(n).ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn children(&self, id: &LayerId) -> Result<Vec<LayerId>> {
        let mut out = Vec::new();
        for c in self.list()? {
            match self.meta(&c) {
                Ok(m) if m.parent.as_ref() == Some(id) => out.push(c),
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Deletes a subvolume tree and its qgroups; qgroups the kernel still
    /// refuses after `wait` are recorded for a later sweep.
    fn delete_subvolume(&self, path: &Path, wait: Duration) -> Result<()> {
        let ids = subvol::delete_tree(path)?;
        let left = quota::destroy(&self.home, &ids, wait)?;
        for q in left {
            let p = self.home.join("qgroups-pending").join(q.to_string());
            std::fs::write(&p, b"").ctx("write", &p)?;
        }
        Ok(())
    }

    /// Takes `busy.lock` (see the module documentation and
    /// [`fsutil::busy_lock`]).
    fn busy_lock(&self, exclusive: bool) -> Result<Option<Flock<std::fs::File>>> {
        fsutil::busy_lock(&self.home.join("busy.lock"), exclusive)
    }

    /// [`Inner::sweep_now`] unless another process creates or removes a
    /// layer right now.
    fn sweep(&self) -> Result<()> {
        let Some(_lock) = self.busy_lock(true)? else {
            tracing::debug!("btrfs: a create or remove runs; sweep left for later");
            return Ok(());
        };
        self.sweep_now()
    }

    /// Removes leftovers of interrupted creates and removes. Idempotent.
    /// Holds the exclusive `busy.lock`.
    fn sweep_now(&self) -> Result<()> {
        for d in ["tmp", "trash"] {
            let dir = self.home.join(d);
            for e in std::fs::read_dir(&dir).ctx("read dir", &dir)? {
                let e = e.ctx("read dir", &dir)?;
                let key = format!("{d}/{}", e.file_name().to_string_lossy());
                if lock(&self.in_use).contains(&key) {
                    continue;
                }
                let p = e.path();
                let md = std::fs::symlink_metadata(&p).ctx("stat", &p)?;
                if md.is_dir() {
                    tracing::info!(path = %p.display(), "removing leftover");
                    self.delete_subvolume(&p, Duration::ZERO)?;
                } else {
                    ignore_missing(std::fs::remove_file(&p), "remove", &p)?;
                }
            }
        }
        let dir = self.home.join("subvolumes");
        for e in std::fs::read_dir(&dir).ctx("read dir", &dir)? {
            let e = e.ctx("read dir", &dir)?;
            let name = e.file_name();
            let known = name
                .to_str()
                .map(|n| self.meta_path(n).exists())
                .unwrap_or(false);
            if !known {
                tracing::info!(path = %e.path().display(), "removing subvolume without metadata");
                self.delete_subvolume(&e.path(), Duration::ZERO)?;
            }
        }
        let dir = self.home.join("qgroups-pending");
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&dir).ctx("read dir", &dir)? {
            let e = e.ctx("read dir", &dir)?;
            match e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                Some(q) => ids.push(q),
                None => ignore_missing(std::fs::remove_file(e.path()), "remove", &e.path())?,
            }
        }
        let left = quota::destroy(&self.home, &ids, Duration::ZERO)?;
        for q in ids.iter().filter(|q| !left.contains(q)) {
            let p = dir.join(q.to_string());
            ignore_missing(std::fs::remove_file(&p), "remove", &p)?;
        }
        Ok(())
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        let _busy = self.busy_lock(false)?;
        if self.exists(id)? {
            return Err(Error::AlreadyExists { id: id.to_string() });
        }
        if let Some(p) = parent {
            self.meta(p)?;
        }
        if let Some(size) = opts.size {
            let min = self.opts.min_space.unwrap_or(1);
            if size < min {
                return Err(Error::InvalidArgument {
                    what: format!("size {size} of layer {id}"),
                    why: format!("below the btrfs minimum of {min} bytes ([btrfs] min_space)"),
                });
            }
            let _guard = lock(&self.quota_lock);
            quota::ensure_enabled(&self.home)?;
        }
        // A subvolume without metadata under this id is a leftover.
        let dest = self.subvol(id);
        if std::fs::symlink_metadata(&dest).is_ok() {
            self.delete_subvolume(&dest, Duration::ZERO)?;
        }
        let _staged = InUse::new(&self.in_use, format!("tmp/subvol-{id}"));
        let _meta = InUse::new(&self.in_use, format!("tmp/meta-{id}"));
        let stage = self.home.join("tmp").join(format!("subvol-{id}"));
        self.delete_subvolume(&stage, Duration::ZERO)?;
        let made = self.create_staged(id, parent, opts, &stage, &dest);
        if let Err(e) = made {
            for p in [&stage, &dest] {
                if let Err(e2) = self.delete_subvolume(p, Duration::from_secs(2)) {
                    tracing::warn!(layer = %id, error = %e2, "cleaning up a failed create");
                }
            }
            let m = self.home.join("tmp").join(format!("meta-{id}"));
            let _ = std::fs::remove_file(m);
            return Err(e);
        }
        Ok(())
    }

    fn create_staged(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        opts: &CreateOpts,
        stage: &Path,
        dest: &Path,
    ) -> Result<()> {
        let subvolid = match parent {
            Some(p) => subvol::snapshot(&self.subvol(p), stage)?,
            None => {
                let sid = subvol::create(stage)?;
                std::fs::set_permissions(stage, std::fs::Permissions::from_mode(0o755))
                    .ctx("chmod", stage)?;
                std::os::unix::fs::chown(stage, Some(0), Some(0)).ctx("chown", stage)?;
                sid
            }
        };
        match opts.size {
            Some(size) => quota::limit(&self.home, subvolid, Some(size))?,
            // A snapshot inherits its parent's limits: clear them.
            None if parent.is_some() && quota::enabled(&self.home)? => {
                quota::limit(&self.home, subvolid, None)?
            }
            None => {}
        }
        std::fs::rename(stage, dest).ctx("rename", dest)?;
        if opts.read_only {
            subvol::set_read_only(dest, true)?;
        }
        let meta = Meta {
            parent: parent.cloned(),
            read_only: opts.read_only,
        };
        let tmp = self.home.join("tmp").join(format!("meta-{id}"));
        fsutil::write_atomic(&self.meta_path(id.as_str()), meta.encode().as_bytes(), &tmp)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _busy = self.busy_lock(false)?;
        self.meta(id)?;
        let mnt = self.mnt(id);
        if mountinfo::is_mount_point(&mnt)? {
            return Err(Error::Busy {
                id: id.to_string(),
                why: format!("mounted at {}", mnt.display()),
            });
        }
        let children = self.children(id)?;
        if !children.is_empty() {
            return Err(Error::HasChildren {
                id: id.to_string(),
                children: children
                    .iter()
                    .map(LayerId::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        let path = self.subvol(id);
        let present = std::fs::symlink_metadata(&path).is_ok();
        if present {
            // Moving the subvolume out needs no write inside it, but its
            // deletion does; fail here, before anything changed.
            subvol::set_read_only(&path, false)?;
        }
        let mp = self.meta_path(id.as_str());
        ignore_missing(std::fs::remove_file(&mp), "remove", &mp)?;
        fsutil::fsync_dir(&self.home.join("meta"))?;
        let _trash = InUse::new(&self.in_use, format!("trash/{id}"));
        let trash = self.home.join("trash").join(id.as_str());
        self.delete_subvolume(&trash, Duration::ZERO)?;
        if present {
            std::fs::rename(&path, &trash).ctx("rename", &trash)?;
            self.delete_subvolume(&trash, quota::DESTROY_WAIT)?;
        }
        match std::fs::remove_dir(&mnt) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %mnt.display(), error = %e, "removing mount point")
            }
            _ => {}
        }
        Ok(())
    }

    fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let _m = lock(&self.mount_lock);
        let meta = self.meta(id)?;
        let mut bind = BindOptions::default().with_options(&opts.options)?;
        bind.read_only |= meta.read_only || opts.read_only;
        let target = self.mnt(id);
        if mountinfo::is_mount_point(&target)? {
            return Ok(target);
        }
        match std::fs::DirBuilder::new().mode(0o755).create(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io("mkdir", target, e))
            }
            _ => {}
        }
        if let Err(e) = mounts::bind(&self.subvol(id), &target, &bind) {
            let _ = std::fs::remove_dir(&target);
            return Err(e);
        }
        Ok(target)
    }

    fn unmount(&self, id: &LayerId) -> Result<()> {
        let _m = lock(&self.mount_lock);
        self.meta(id)?;
        let target = self.mnt(id);
        mounts::unmount(&target)?;
        match std::fs::remove_dir(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, %id, "btrfs unmount: removing the mount point")
            }
            _ => {}
        }
        Ok(())
    }

    fn mount_spec(&self, id: &LayerId, opts: &MountOpts) -> Result<Vec<MountSpec>> {
        let meta = self.meta(id)?;
        let path = self.subvol(id);
        let m = mountinfo::mount_of(&path)?.ok_or_else(|| Error::Driver {
            driver: NAME.into(),
            msg: format!("no mount holds {}", path.display()),
        })?;
        if m.fs_type != NAME {
            return Err(Error::Driver {
                driver: NAME.into(),
                msg: format!("{} is on a {} mount, not btrfs", path.display(), m.fs_type),
            });
        }
        let inside = path.strip_prefix(&m.mount_point).unwrap_or(&path);
        let rel = m.root.join(inside);
        let rel = rel.strip_prefix("/").unwrap_or(&rel);
        let subvolid = subvol::id(&path)?;
        let mut options = vec![
            format!("subvol={}", rel.display()),
            format!("subvolid={subvolid}"),
        ];
        if meta.read_only || opts.read_only {
            options.push("ro".into());
        }
        crate::mounts::check_extra_options(
            "btrfs",
            &opts.options,
            &["subvol", "subvolid", "device"],
        )?;
        options.extend(opts.options.iter().cloned());
        Ok(vec![MountSpec {
            fs_type: NAME.into(),
            source: PathBuf::from(m.source),
            options,
        }])
    }

    fn view(&self, id: &LayerId, writable: bool) -> Result<View> {
        let meta = self.meta(id)?;
        let path = self.subvol(id);
        if writable && meta.read_only {
            subvol::set_read_only(&path, false)?;
            let p = path.clone();
            let layer = id.to_string();
            return Ok(View::with_release(path, move || {
                if let Err(e) = subvol::set_read_only(&p, true) {
                    tracing::error!(layer, error = %e, "setting the read-only property back");
                }
            }));
        }
        Ok(View::dir(path))
    }

    fn apply(&self, id: &LayerId, tar: TarSource) -> Result<u64> {
        let meta = self.meta(id)?;
        let path = self.subvol(id);
        if meta.read_only {
            subvol::set_read_only(&path, false)?;
        }
        let applied = archive::apply(tar, &path, archive::WhiteoutFormat::Plain).map(|s| s.bytes);
        if meta.read_only {
            // Set back whatever the apply did; its error comes first.
            let back = subvol::set_read_only(&path, true);
            let bytes = applied?;
            back?;
            return Ok(bytes);
        }
        applied
    }

    fn status(&self) -> Result<Status> {
        let device = mountinfo::mount_of(&self.home)?
            .map(|m| m.source.to_string_lossy().into_owned())
            .unwrap_or_default();
        let quota = if quota::enabled(&self.home)? {
            "on"
        } else {
            "off"
        };
        Ok(vec![
            ("root".into(), self.home.display().to_string()),
            ("backing device".into(), device),
            ("quota".into(), quota.into()),
            ("layers".into(), self.list()?.len().to_string()),
        ])
    }

    fn cleanup(&self) -> Result<()> {
        let mut first: Option<Error> = None;
        {
            let _m = lock(&self.mount_lock);
            let mnt = self.home.join("mnt");
            if let Err(e) = mounts::unmount_under(&mnt) {
                first.get_or_insert(e);
            }
            match std::fs::read_dir(&mnt) {
                Ok(entries) => {
                    for p in entries.flatten().map(|e| e.path()) {
                        match std::fs::remove_dir(&p) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                tracing::warn!(error = %e, path = %p.display(), "btrfs cleanup: mount point")
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    first.get_or_insert(Error::io("read dir", mnt, e));
                }
            }
        }
        if let Err(e) = self.sweep() {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Driver for Btrfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn root(&self) -> &Path {
        &self.inner.root
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_diff: false,
            quota: true,
            reflink: true,
            max_depth: usize::MAX,
            mount_spec: true,
            read_only_mounts: true,
            copy_up_keeps_links: true,
        }
    }

    async fn status(&self) -> Result<Status> {
        self.run(|i| i.status()).await
    }

    async fn create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        opts: &CreateOpts,
    ) -> Result<()> {
        let (id, parent, opts) = (id.clone(), parent.cloned(), opts.clone());
        self.run(move |i| i.create(&id, parent.as_ref(), &opts))
            .await
    }

    async fn remove(&self, id: &LayerId) -> Result<()> {
        let id = id.clone();
        self.run(move |i| i.remove(&id)).await
    }

    async fn exists(&self, id: &LayerId) -> Result<bool> {
        let id = id.clone();
        self.run(move |i| i.exists(&id)).await
    }

    async fn list(&self) -> Result<Vec<LayerId>> {
        self.run(|i| i.list()).await
    }

    async fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        let id = id.clone();
        self.run(move |i| i.meta(&id).map(|m| m.parent)).await
    }

    async fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let (id, opts) = (id.clone(), opts.clone());
        self.run(move |i| i.mount(&id, &opts)).await
    }

    async fn unmount(&self, id: &LayerId) -> Result<()> {
        let id = id.clone();
        self.run(move |i| i.unmount(&id)).await
    }

    async fn is_mounted(&self, id: &LayerId) -> Result<bool> {
        let id = id.clone();
        self.run(move |i| {
            i.meta(&id)?;
            mountinfo::is_mount_point(&i.mnt(&id))
        })
        .await
    }

    async fn mount_spec(&self, id: &LayerId, opts: &MountOpts) -> Result<Vec<MountSpec>> {
        let (id, opts) = (id.clone(), opts.clone());
        self.run(move |i| i.mount_spec(&id, &opts)).await
    }

    async fn view(&self, id: &LayerId, writable: bool) -> Result<View> {
        let id = id.clone();
        self.run(move |i| i.view(&id, writable)).await
    }

    /// Applies with the read-only property cleared for the time of the
    /// apply (read-only layers), then set back even when the apply failed.
    async fn apply_diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: TarSource,
    ) -> Result<u64> {
        let _ = parent;
        let id = id.clone();
        self.run(move |i| i.apply(&id, tar)).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.run(|i| i.cleanup()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip() {
        for m in [
            Meta {
                parent: None,
                read_only: false,
            },
            Meta {
                parent: Some(LayerId::new("p-1.x").unwrap()),
                read_only: true,
            },
        ] {
            assert_eq!(Meta::decode("x", &m.encode()).unwrap(), m);
        }
        assert!(Meta::decode("x", "parent=\n").is_err());
        assert!(Meta::decode("x", "parent=a/b\nread_only=true\n").is_err());
        assert!(Meta::decode("x", "junk\n").is_err());
    }

    #[test]
    fn probe_names_the_filesystem() {
        // /proc is never btrfs.
        let e = Btrfs::probe(Path::new("/proc/self/nonexistent/child")).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, Error::Unsupported { .. }), "{s}");
        assert!(s.contains("proc"), "{s}");
    }
}
