//! devmapper driver: a thin-provisioned device per layer, a thin snapshot
//! per child (Docker's devicemapper graph driver, loop-lvm or direct-lvm).
//!
//! ```plain
//! <root>/devicemapper/
//!   data, metadata    sparse files behind the driver's own pool (loop
//!                     devices), unless [devmapper] pool names an existing one
//!   records           thin ids, parents, the pool's transaction id (records.rs)
//!   fs/<id>           the layer's filesystem, mounted while its device is
//!                     active (private to the driver: views read it)
//!   mnt/<id>          bind mount of fs/<id>/rootfs while the layer is mounted
//!   nodes/            device nodes made with mknod when /dev has none
//! ```
//!
//! Device-mapper names start with `strata-<hash of the root>-`, so two roots
//! never share a device: `<prefix>pool`, `<prefix>base`, `<prefix><thin id>`.
//!
//! - The base device (`[devmapper] base_size`, `fs = "ext4" | "xfs"`) is made
//!   once, with an empty `rootfs/` (mode 0755, root) at the top: a layer
//!   without parent is a snapshot of the base, a child a snapshot of its
//!   parent; the origin is suspended (its filesystem frozen) around the
//!   `create_snap` message, as the kernel requires for an active origin.
//!   Snapshots keep inode numbers and ctimes, so the naive differ's
//!   inode + ctime shortcut skips unchanged files.
//! - Every pool change is written in this order: the record in state
//!   `creating`/`removing` first, then the pool messages and
//!   `set_transaction_id <T> <T+1>`, then the record with transaction
//!   `T+1`. On open, a pool transaction of `T` or `T+1` is consistent (the
//!   unfinished records are rolled back or finished); anything else is
//!   reported as an error and the driver does not open.
//! - Remove unmounts and deactivates the device, then deletes the thin id.
//!   A device still held open (after the device-mapper library's retries)
//!   is handed to the kernel's deferred removal and its record stays in
//!   state `removing`: the next create, remove, open or cleanup deletes the
//!   thin id once the kernel has removed the device.
//! - `[devmapper] min_free_space` (percent, default 10) refuses a create when
//!   the pool's free data or metadata space is below it.
//! - `[devmapper] discard` mounts the layers' filesystems with `discard`, so
//!   blocks freed by deletes go back to the pool at once.

mod dm;
mod records;

use crate::mounts::{self, BindOptions};
use crate::{fsutil, mountinfo};
use async_trait::async_trait;
use dm::{Dm, PoolStatus};
use nix::fcntl::Flock;
use nix::mount::MsFlags;
use records::{Layer, Records, State};
use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use strata_driver_api::{
    join_error, Capabilities, CreateOpts, Driver, Error, IoContext, LayerId, MountOpts, MountSpec,
    Result, Status, View,
};

const NAME: &str = "devmapper";
/// Thin pool data block size in sectors (64 KiB, as Docker used).
const BLOCK_SECTORS: u64 = 128;

/// Options of the `[devmapper]` configuration table.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DevmapperOptions {
    /// Size in bytes of the sparse data file of the driver's own pool.
    pub data_size: u64,
    /// Size in bytes of the sparse metadata file of the driver's own pool.
    pub metadata_size: u64,
    /// Size in bytes of every layer's device (the base and its snapshots).
    pub base_size: u64,
    /// The layers' filesystem: `ext4` or `xfs`.
    pub fs: String,
    /// An existing thin pool's device-mapper name to use instead of the
    /// driver's own loop-backed pool.
    pub pool: Option<String>,
    /// Mount the layers' filesystems with `discard`.
    pub discard: bool,
    /// The least free pool space (percent of data and of metadata) a create
    /// leaves; below it, create fails.
    pub min_free_space: u8,
}

impl Default for DevmapperOptions {
    fn default() -> Self {
        DevmapperOptions {
            data_size: 100 << 30,
            metadata_size: 2 << 30,
            base_size: 10 << 30,
            fs: "ext4".into(),
            pool: None,
            discard: false,
            min_free_space: 10,
        }
    }
}

/// The devmapper driver.
#[derive(Clone, Debug)]
pub struct Devmapper {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    home: PathBuf,
    opts: DevmapperOptions,
    prefix: String,
    pool: String,
    own_pool: bool,
    dm: Dm,
    /// The records as last read; see [`Inner::state`].
    state: Mutex<Records>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The records, held for one operation: this process's mutex and, across
/// the processes sharing the root, an exclusive `flock` on `<home>/lock`.
/// Every operation that reads or changes the records or the pool holds it
/// from start to end, so no process sees another's half-done create or
/// remove (only a dead process's, which [`Inner::reconcile`] finishes), and
/// thin ids and transaction ids are never handed out twice.
struct Locked<'a> {
    st: MutexGuard<'a, Records>,
    _flock: Flock<File>,
}

impl Deref for Locked<'_> {
    type Target = Records;
    fn deref(&self) -> &Records {
        &self.st
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Records {
        &mut self.st
    }
}

fn not_found(id: &LayerId) -> Error {
    Error::NotFound { id: id.to_string() }
}

fn drv(msg: String) -> Error {
    Error::Driver {
        driver: NAME.into(),
        msg,
    }
}

/// FNV-1a of the root's path: a short, stable name prefix.
fn prefix_of(root: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("strata-{:012x}-", h & 0xffff_ffff_ffff)
}

impl Devmapper {
    /// Whether the devmapper driver can work here: `/dev/mapper/control`
    /// and the `thin-pool` and `thin` targets (after `modprobe
    /// dm-thin-pool`). Creates nothing.
    ///
    /// # Errors
    /// [`Error::Unsupported`] saying what is missing.
    pub fn probe(_root: &Path) -> Result<()> {
        if !Path::new("/dev/mapper/control").exists() {
            dm::modprobe("dm-mod");
        }
        if !Path::new("/dev/mapper/control").exists() {
            return Err(Error::Unsupported {
                driver: NAME.into(),
                why: "/dev/mapper/control does not exist: this kernel has no device-mapper \
                      (dm-mod)"
                    .into(),
            });
        }
        let d = Dm::open()?;
        let mut t = d.targets()?;
        if !t.iter().any(|x| x == "thin-pool") {
            dm::modprobe("dm-thin-pool");
            t = d.targets()?;
        }
        if !t.iter().any(|x| x == "thin-pool") || !t.iter().any(|x| x == "thin") {
            return Err(Error::Unsupported {
                driver: NAME.into(),
                why: "the kernel has no thin-pool target (modprobe dm-thin-pool failed)".into(),
            });
        }
        Ok(())
    }

    /// Opens the driver on `root` (created if missing): attaches the pool
    /// (makes it the first time), checks the records against the pool's
    /// transaction id, finishes interrupted creates and removes, and makes
    /// the base device once.
    ///
    /// # Errors
    /// As [`Devmapper::probe`]; [`Error::InvalidArgument`] for bad options;
    /// [`Error::Driver`] when records and pool disagree beyond repair;
    /// [`Error::Io`] from files, loops, mkfs.
    pub async fn open(root: &Path, opts: DevmapperOptions) -> Result<Self> {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&root, opts))
            .await
            .map_err(join_error)?
    }

    fn open_blocking(root: &Path, opts: DevmapperOptions) -> Result<Self> {
        Self::probe(root)?;
        if opts.fs != "ext4" && opts.fs != "xfs" {
            return Err(Error::InvalidArgument {
                what: format!("[devmapper] fs = {:?}", opts.fs),
                why: "must be \"ext4\" or \"xfs\"".into(),
            });
        }
        if opts.min_free_space > 99 {
            return Err(Error::InvalidArgument {
                what: format!("[devmapper] min_free_space = {}", opts.min_free_space),
                why: "a percentage from 0 to 99".into(),
            });
        }
        if opts.base_size < (64 << 20) || opts.base_size % 512 != 0 {
            return Err(Error::InvalidArgument {
                what: format!("[devmapper] base_size = {}", opts.base_size),
                why: "at least 64 MiB, a multiple of 512".into(),
            });
        }
        std::fs::create_dir_all(root).ctx("create dir", root)?;
        let root = std::fs::canonicalize(root).ctx("canonicalize", root)?;
        let home = root.join(NAME);
        for d in ["fs", "mnt", "nodes", "users"] {
            let p = home.join(d);
            std::fs::create_dir_all(&p).ctx("create dir", &p)?;
        }
        let prefix = prefix_of(&root);
        let (pool, own_pool) = match &opts.pool {
            Some(p) => (p.clone(), false),
            None => (format!("{prefix}pool"), true),
        };
        let inner = Inner {
            dm: Dm::open()?,
            root,
            home,
            prefix,
            pool,
            own_pool,
            opts,
            state: Mutex::new(Records::default()),
        };
        {
            let mut st = inner.state()?;
            inner.ensure_base(&mut st)?;
        }
        Ok(Devmapper {
            inner: Arc::new(inner),
        })
    }

    /// The block device node of layer `id`'s thin device, activating it if
    /// needed (for tests and diagnostics).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Driver`] from device-mapper.
    pub async fn device_node(&self, id: &LayerId) -> Result<PathBuf> {
        let id = id.clone();
        self.run(move |i| {
            let st = i.state()?;
            let l = i.layer(&st, &id)?;
            i.activate(l.thin)
        })
        .await
    }

    /// The pool's device-mapper name.
    pub fn pool_name(&self) -> &str {
        &self.inner.pool
    }

    /// The pool's current status (usage, transaction id).
    ///
    /// # Errors
    /// [`Error::Driver`] from device-mapper.
    pub async fn pool_status(&self) -> Result<PoolStatusView> {
        self.run(|i| {
            let st = i.state()?;
            let s = i.dm.pool_status(&i.pool)?;
            Ok(PoolStatusView {
                pool_transaction: s.transaction,
                recorded_transaction: st.transaction,
                data_used: s.data_used * s.data_block_bytes,
                data_total: s.data_total * s.data_block_bytes,
                meta_used: s.meta_used * dm::META_BLOCK_BYTES,
                meta_total: s.meta_total * dm::META_BLOCK_BYTES,
                pending_removals: st
                    .layers
                    .values()
                    .filter(|l| l.state == State::Removing)
                    .count(),
            })
        })
        .await
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

/// The pool's usage and the records' view of it, from
/// [`Devmapper::pool_status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatusView {
    /// The transaction id the pool holds.
    pub pool_transaction: u64,
    /// The transaction id the records hold (equal after every completed
    /// operation).
    pub recorded_transaction: u64,
    /// Data bytes used.
    pub data_used: u64,
    /// Data bytes in all.
    pub data_total: u64,
    /// Metadata bytes used.
    pub meta_used: u64,
    /// Metadata bytes in all.
    pub meta_total: u64,
    /// Removals waiting for the kernel's deferred removal of a busy device.
    pub pending_removals: usize,
}

/// Opens the devmapper driver on `root` as an `Arc<dyn Driver>`.
///
/// # Errors
/// As [`Devmapper::open`].
pub async fn open_driver(root: &Path, opts: DevmapperOptions) -> Result<Arc<dyn Driver>> {
    Ok(Arc::new(Devmapper::open(root, opts).await?))
}

impl Inner {
    fn records_path(&self) -> PathBuf {
        self.home.join("records")
    }

    /// Takes the records for one operation (see [`Locked`]): waits for the
    /// other threads and processes, attaches the pool if another process's
    /// `cleanup` detached it, reads the records afresh and reconciles them
    /// with the pool (a process killed in the middle of an operation left
    /// its work unfinished).
    ///
    /// # Errors
    /// Opening or locking `<home>/lock`; as [`Inner::attach_pool`],
    /// [`Inner::load`], [`Inner::reconcile`].
    fn state(&self) -> Result<Locked<'_>> {
        let st = lock(&self.state);
        let flock = fsutil::lock_exclusive(&self.home.join("lock"))?;
        let mut st = Locked { st, _flock: flock };
        self.attach_pool()?;
        *st = self.load()?;
        self.reconcile(&mut st)?;
        Ok(st)
    }

    /// The lock file whose shared `flock`s count the users of layer `id`'s
    /// filesystem at `fs/<id>` (views, in any process; the mount at
    /// `mnt/<id>` counts by being there).
    fn users(&self, id: &LayerId) -> PathBuf {
        self.home.join("users").join(id.as_str())
    }

    fn load(&self) -> Result<Records> {
        let p = self.records_path();
        match std::fs::read_to_string(&p) {
            Ok(t) => Records::decode(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A new root: the pool's transaction id is where we start.
                let s = self.dm.pool_status(&self.pool)?;
                Ok(Records {
                    transaction: s.transaction,
                    ..Default::default()
                })
            }
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    fn save(&self, r: &Records) -> Result<()> {
        let staging = self.home.join("records.tmp");
        let _ = std::fs::remove_file(&staging);
        fsutil::write_atomic(&self.records_path(), r.encode().as_bytes(), &staging)
    }

    fn thin_name(&self, thin: u32) -> String {
        format!("{}{thin}", self.prefix)
    }

    fn fs_dir(&self, id: &LayerId) -> PathBuf {
        self.home.join("fs").join(id.as_str())
    }

    fn mnt(&self, id: &LayerId) -> PathBuf {
        self.home.join("mnt").join(id.as_str())
    }

    fn layer<'a>(&self, st: &'a Records, id: &LayerId) -> Result<&'a Layer> {
        match st.layers.get(id) {
            Some(l) if l.state == State::Ready => Ok(l),
            _ => Err(not_found(id)),
        }
    }

    fn sectors(&self) -> u64 {
        self.opts.base_size / 512
    }

    /// Attaches the thin pool if it is not active (own pool: loops + pool
    /// device, made the first time). Whether an active device is a usable
    /// thin pool, [`Inner::reconcile`] checks right after.
    fn attach_pool(&self) -> Result<()> {
        if self.dm.active(&self.pool)?.is_some() {
            return Ok(());
        }
        if !self.own_pool {
            return Err(drv(format!(
                "thin pool {:?} ([devmapper] pool) is not an active device-mapper device",
                self.pool
            )));
        }
        dm::modprobe("loop");
        let data = self.home.join("data");
        let meta = self.home.join("metadata");
        for (p, size) in [
            (&data, self.opts.data_size),
            (&meta, self.opts.metadata_size),
        ] {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p)
                .ctx("open", p)?;
            let len = f.metadata().ctx("stat", p)?.len();
            if len < size {
                f.set_len(size).ctx("truncate", p)?;
            }
        }
        let data_loop = dm::loop_attach(&data)?;
        let meta_loop = match dm::loop_attach(&meta) {
            Ok(l) => l,
            Err(e) => {
                let _ = dm::loop_detach(&data_loop);
                return Err(e);
            }
        };
        let data_len = std::fs::metadata(&data).ctx("stat", &data)?.len();
        let sectors = data_len / 512 / BLOCK_SECTORS * BLOCK_SECTORS;
        // `error_if_no_space`: a full pool fails writes instead of queueing
        // them forever. Block zeroing stays on: a new block never shows
        // another layer's freed data.
        let params = format!(
            "{} {} {BLOCK_SECTORS} {} 1 error_if_no_space",
            dm::devno(&meta_loop)?,
            dm::devno(&data_loop)?,
            // Low-water mark: the kernel's event threshold, in data blocks.
            (sectors / BLOCK_SECTORS / 100).max(1),
        );
        if let Err(e) = self.dm.create(&self.pool, sectors, "thin-pool", &params) {
            let _ = dm::loop_detach(&data_loop);
            let _ = dm::loop_detach(&meta_loop);
            return Err(e);
        }
        Ok(())
    }

    /// Moves the pool's transaction id from the recorded one to the next.
    fn bump(&self, st: &mut Records) -> Result<()> {
        let t = st.transaction;
        self.dm
            .message(&self.pool, &format!("set_transaction_id {t} {}", t + 1))?;
        st.transaction = t + 1;
        Ok(())
    }

    /// Deletes thin id `thin` from the pool; a missing id is fine.
    fn delete_thin(&self, thin: u32) -> Result<()> {
        if !self.dm.delete_thin(&self.pool, thin)? {
            tracing::debug!(thin, "thin id not in the pool: nothing to delete");
        }
        Ok(())
    }

    /// Checks the records against the pool and finishes what an interrupted
    /// process left.
    fn reconcile(&self, st: &mut Records) -> Result<()> {
        let s = self.dm.pool_status(&self.pool)?;
        if let Some(mode) = s.mode {
            return Err(drv(format!(
                "thin pool {} is {mode}; repair it (thin_check/thin_repair) first",
                self.pool
            )));
        }
        if s.transaction != st.transaction && s.transaction != st.transaction + 1 {
            return Err(drv(format!(
                "thin pool {} has transaction id {} but {} records {}: the pool and the \
                 records disagree (another tool changed the pool, or the records are from \
                 another pool); not opening",
                self.pool,
                s.transaction,
                self.records_path().display(),
                st.transaction
            )));
        }
        let changed = s.transaction != st.transaction;
        st.transaction = s.transaction;
        let pending: Vec<(LayerId, Layer)> = st
            .layers
            .iter()
            .filter(|(_, l)| l.state != State::Ready)
            .map(|(i, l)| (i.clone(), l.clone()))
            .collect();
        let base_pending = matches!(st.base, Some((_, st)) if st != State::Ready);
        if changed || !pending.is_empty() || base_pending {
            self.save(st)?;
        }
        for (id, l) in pending {
            // An unfinished create is rolled back; a remove finished (unless
            // the device is still held: then it stays pending).
            self.finish_pending(st, &id, &l);
        }
        if let Some((thin, State::Creating)) = st.base {
            let _ = self.dm.remove(&self.thin_name(thin), false);
            self.delete_thin(thin)?;
            self.bump(st)?;
            st.base = None;
            self.save(st)?;
        }
        Ok(())
    }

    /// Deactivates and deletes the thin device of a record not `Ready`.
    /// Returns whether it is gone (false: still busy, deferred).
    fn finish_removal(&self, st: &mut Records, id: &LayerId, l: &Layer) -> Result<bool> {
        let fsd = self.fs_dir(id);
        let _ = mounts::unmount(&self.mnt(id));
        let _ = std::fs::remove_dir(self.mnt(id));
        if mountinfo::is_mount_point(&fsd)? {
            mounts::unmount(&fsd)?;
        }
        let _ = std::fs::remove_dir(&fsd);
        let _ = std::fs::remove_file(self.users(id));
        let name = self.thin_name(l.thin);
        if let Some((_, open)) = self.dm.active(&name)? {
            if open > 0 || self.dm.remove(&name, false).is_err() {
                self.dm.remove(&name, true)?;
                if self.dm.active(&name)?.is_some() {
                    tracing::info!(layer = %id, device = name, "busy: removal deferred");
                    return Ok(false);
                }
            }
        }
        let _ = std::fs::remove_file(self.home.join("nodes").join(&name));
        self.delete_thin(l.thin)?;
        self.bump(st)?;
        st.layers.remove(id);
        self.save(st)?;
        Ok(true)
    }

    /// Finishes deferred removals whose devices the kernel has removed.
    fn finish_deferred(&self, st: &mut Records) -> Result<()> {
        let pending: Vec<(LayerId, Layer)> = st
            .layers
            .iter()
            .filter(|(_, l)| l.state == State::Removing)
            .map(|(i, l)| (i.clone(), l.clone()))
            .collect();
        for (id, l) in pending {
            self.finish_pending(st, &id, &l);
        }
        Ok(())
    }

    /// [`Inner::finish_removal`] for a record another operation left: a
    /// failure (the thin id still held by a device of another name, a pool
    /// refusing messages) leaves the record pending, to be retried by the
    /// next operation, and does not fail this one.
    fn finish_pending(&self, st: &mut Records, id: &LayerId, l: &Layer) {
        if let Err(e) = self.finish_removal(st, id, l) {
            tracing::warn!(layer = %id, error = %e, "devmapper: removal stays pending");
        }
    }

    fn fs_options(&self) -> String {
        let mut o = Vec::new();
        if self.opts.fs == "xfs" {
            o.push("nouuid");
        } else {
            o.push("noinit_itable");
        }
        if self.opts.discard {
            o.push("discard");
        }
        o.join(",")
    }

    /// Activates thin device `thin` (if not active) and returns its node.
    fn activate(&self, thin: u32) -> Result<PathBuf> {
        let name = self.thin_name(thin);
        let dev = match self.dm.active(&name)? {
            Some((d, _)) => d,
            None => {
                let pool_dev = self
                    .dm
                    .active(&self.pool)?
                    .ok_or_else(|| drv(format!("thin pool {} is not active", self.pool)))?;
                // `error_if_no_space`: a full pool fails writes instead of queueing
                // them forever. Block zeroing stays on: a new block never shows
                // another layer's freed data.
                let params = format!("{}:{} {thin}", pool_dev.0.major, pool_dev.0.minor);
                self.dm.create(&name, self.sectors(), "thin", &params)?
            }
        };
        dm::node(dev, &self.home.join("nodes"), &name)
    }

    /// Mounts `thin`'s filesystem at `at` (if not mounted there).
    fn mount_fs(&self, thin: u32, at: &Path) -> Result<()> {
        if mountinfo::is_mount_point(at)? {
            return Ok(());
        }
        let node = self.activate(thin)?;
        match std::fs::DirBuilder::new().mode(0o700).create(at) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io("mkdir", at, e))
            }
            _ => {}
        }
        nix::mount::mount(
            Some(&node),
            at,
            Some(self.opts.fs.as_str()),
            MsFlags::empty(),
            Some(self.fs_options().as_str()),
        )
        .map_err(|e| Error::nix("mount", at, e))?;
        let _ = nix::mount::mount(
            None::<&str>,
            at,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        );
        Ok(())
    }

    /// Takes a reference on the layer's filesystem, mounted at `fs/<id>`
    /// (with its device activated) if it is not: a shared `flock` on its
    /// users file, which the caller holds while it uses the tree. Returns
    /// the tree (`rootfs/`) and the lock. Called with the state held.
    fn acquire(&self, id: &LayerId, l: &Layer) -> Result<(PathBuf, Flock<File>)> {
        let at = self.fs_dir(id);
        self.mount_fs(l.thin, &at)?;
        let user = fsutil::busy_lock(&self.users(id), false)?
            .ok_or_else(|| drv(format!("no shared lock on {}", self.users(id).display())))?;
        Ok((at.join("rootfs"), user))
    }

    /// Drops a reference taken by [`Inner::acquire`] (`held`, or none for
    /// the mount at `mnt/<id>`); when no other user in any process holds
    /// one and the layer is not mounted at `mnt/<id>`, unmounts the
    /// filesystem and deactivates the device (errors are logged: the next
    /// remove or cleanup retries). Called with the state held.
    fn release(&self, id: &LayerId, thin: u32, held: Option<Flock<File>>) {
        drop(held);
        let users = self.users(id);
        let last = match fsutil::busy_lock(&users, true) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(layer = %id, error = %e, "devmapper: locking the layer's users");
                return;
            }
        };
        if mountinfo::is_mount_point(&self.mnt(id)).unwrap_or(true) {
            return;
        }
        let at = self.fs_dir(id);
        if mountinfo::is_mount_point(&at).unwrap_or(false) {
            if let Err(e) = mounts::unmount(&at) {
                tracing::warn!(layer = %id, error = %e, "devmapper: unmounting the layer's filesystem");
                return;
            }
        }
        let _ = std::fs::remove_dir(&at);
        // Every acquire holds the state, as this does: nobody waits on it.
        let _ = std::fs::remove_file(&users);
        drop(last);
        if self
            .dm
            .active(&self.thin_name(thin))
            .ok()
            .flatten()
            .is_some()
        {
            if let Err(e) = self.dm.remove(&self.thin_name(thin), false) {
                tracing::warn!(layer = %id, error = %e, "devmapper: deactivating the layer's device");
            }
        }
    }

    fn ensure_base(&self, st: &mut Records) -> Result<()> {
        if st.base.is_some() {
            return Ok(());
        }
        let thin = st.allocate()?;
        st.base = Some((thin, State::Creating));
        self.save(st)?;
        self.dm
            .message(&self.pool, &format!("create_thin {thin}"))?;
        self.bump(st)?;
        self.save(st)?;
        let node = self.activate(thin)?;
        dm::mkfs(&self.opts.fs, &node)?;
        let at = self.home.join("fs").join(".base");
        self.mount_fs(thin, &at)?;
        let made = (|| {
            let r = at.join("rootfs");
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&r)
                .ctx("mkdir", &r)?;
            std::fs::set_permissions(&r, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .ctx("chmod", &r)?;
            std::os::unix::fs::chown(&r, Some(0), Some(0)).ctx("chown", &r)?;
            fsutil::syncfs(&r)
        })();
        let un = mounts::unmount(&at);
        let _ = std::fs::remove_dir(&at);
        made?;
        un?;
        // The base stays inactive: snapshots of an inactive origin need no
        // suspend.
        self.dm.remove(&self.thin_name(thin), false)?;
        st.base = Some((thin, State::Ready));
        self.save(st)
    }

    fn check_space(&self) -> Result<()> {
        let s: PoolStatus = self.dm.pool_status(&self.pool)?;
        if let Some(mode) = s.mode {
            return Err(drv(format!("thin pool {} is {mode}", self.pool)));
        }
        let min = u64::from(self.opts.min_free_space);
        for (what, used, total, unit) in [
            ("data", s.data_used, s.data_total, s.data_block_bytes),
            ("metadata", s.meta_used, s.meta_total, dm::META_BLOCK_BYTES),
        ] {
            let free = total.saturating_sub(used);
            if total > 0 && free * 100 < min * total {
                return Err(Error::Io {
                    op: "create layer",
                    path: PathBuf::from(format!("/dev/mapper/{}", self.pool)),
                    source: std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "thin pool has {} MiB of {} MiB {what} space free ({}%), below \
                             [devmapper] min_free_space = {min}%",
                            (free * unit) >> 20,
                            (total * unit) >> 20,
                            free * 100 / total
                        ),
                    ),
                });
            }
        }
        Ok(())
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        let mut st = self.state()?;
        self.finish_deferred(&mut st)?;
        if st.layers.get(id).is_some_and(|l| l.state == State::Ready) {
            return Err(Error::AlreadyExists { id: id.to_string() });
        }
        if st.layers.contains_key(id) {
            return Err(Error::Busy {
                id: id.to_string(),
                why: "its earlier removal waits for its device to be closed".into(),
            });
        }
        if opts.size.is_some() {
            return Err(Error::Unsupported {
                driver: NAME.into(),
                why: format!(
                    "per-layer sizes (every device is [devmapper] base_size = {})",
                    self.opts.base_size
                ),
            });
        }
        let origin = match parent {
            Some(p) => {
                let l = self.layer(&st, p)?;
                (l.thin, Some(p.clone()))
            }
            None => (st.base.ok_or_else(|| drv("no base device".into()))?.0, None),
        };
        self.check_space()?;
        let thin = st.allocate()?;
        st.layers.insert(
            id.clone(),
            Layer {
                thin,
                parent: parent.cloned(),
                read_only: opts.read_only,
                state: State::Creating,
            },
        );
        self.save(&st)?;
        crash_point("devmapper-after-record");
        let origin_name = self.thin_name(origin.0);
        let active = self.dm.active(&origin_name)?.is_some();
        if active {
            self.dm.suspend(&origin_name, true)?;
        }
        let snap = self
            .dm
            .message(&self.pool, &format!("create_snap {thin} {}", origin.0));
        if active {
            self.dm.suspend(&origin_name, false)?;
        }
        let snap = snap.and_then(|_| {
            crash_point("devmapper-after-snap");
            self.bump(&mut st)
        });
        if let Err(e) = snap {
            let l = st.layers[id].clone();
            let _ = self.finish_removal(&mut st, id, &l);
            return Err(e);
        }
        crash_point("devmapper-after-bump");
        if let Some(l) = st.layers.get_mut(id) {
            l.state = State::Ready;
        }
        self.save(&st)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let mut st = self.state()?;
        let l = self.layer(&st, id)?.clone();
        let mnt = self.mnt(id);
        if mountinfo::is_mount_point(&mnt)? {
            return Err(Error::Busy {
                id: id.to_string(),
                why: format!("mounted at {}", mnt.display()),
            });
        }
        // Held to the end: no view can start (that needs the state), and
        // none is open now.
        let Some(_no_users) = fsutil::busy_lock(&self.users(id), true)? else {
            return Err(Error::Busy {
                id: id.to_string(),
                why: "a view of it is open (a diff or apply in some process)".into(),
            });
        };
        let children = st.children(id);
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
        if let Some(r) = st.layers.get_mut(id) {
            r.state = State::Removing;
        }
        self.save(&st)?;
        let mut l = l;
        l.state = State::Removing;
        self.finish_removal(&mut st, id, &l)?;
        self.finish_deferred(&mut st)
    }

    fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let st = self.state()?;
        let l = self.layer(&st, id)?.clone();
        let mut bind = BindOptions::default().with_options(&opts.options)?;
        bind.read_only |= l.read_only || opts.read_only;
        let target = self.mnt(id);
        if mountinfo::is_mount_point(&target)? {
            return Ok(target);
        }
        let (src, user) = self.acquire(id, &l)?;
        let made = match std::fs::DirBuilder::new().mode(0o755).create(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(Error::io("mkdir", &target, e))
            }
            _ => mounts::bind(&src, &target, &bind),
        };
        if let Err(e) = made {
            let _ = std::fs::remove_dir(&target);
            self.release(id, l.thin, Some(user));
            return Err(e);
        }
        // The mount at `mnt/<id>` is the user from now on.
        drop(user);
        drop(st);
        Ok(target)
    }

    fn unmount(&self, id: &LayerId) -> Result<()> {
        let st = self.state()?;
        let thin = self.layer(&st, id)?.thin;
        let target = self.mnt(id);
        if !mountinfo::is_mount_point(&target)? {
            return Ok(());
        }
        mounts::unmount(&target)?;
        self.release(id, thin, None);
        match std::fs::remove_dir(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, %id, "devmapper unmount: removing the mount point")
            }
            _ => {}
        }
        drop(st);
        Ok(())
    }

    fn view(self: &Arc<Self>, id: &LayerId) -> Result<View> {
        let st = self.state()?;
        let l = self.layer(&st, id)?.clone();
        let (path, user) = self.acquire(id, &l)?;
        drop(st);
        let me = Arc::clone(self);
        let id = id.clone();
        Ok(View::with_release(path, move || match me.state() {
            Ok(_st) => me.release(&id, l.thin, Some(user)),
            Err(e) => {
                // The filesystem stays mounted for the next remove or cleanup.
                drop(user);
                tracing::warn!(layer = %id, error = %e, "devmapper: releasing a view");
            }
        }))
    }

    fn status(&self) -> Result<Status> {
        let st = self.state()?;
        let s = self.dm.pool_status(&self.pool)?;
        let mib = |b: u64| format!("{} MiB", b >> 20);
        Ok(vec![
            ("root".into(), self.home.display().to_string()),
            (
                "pool".into(),
                format!(
                    "{} ({})",
                    self.pool,
                    if self.own_pool {
                        "loop files"
                    } else {
                        "existing"
                    }
                ),
            ),
            ("filesystem".into(), self.opts.fs.clone()),
            ("base size".into(), mib(self.opts.base_size)),
            (
                "data space used".into(),
                mib(s.data_used * s.data_block_bytes),
            ),
            (
                "data space total".into(),
                mib(s.data_total * s.data_block_bytes),
            ),
            (
                "metadata space used".into(),
                mib(s.meta_used * dm::META_BLOCK_BYTES),
            ),
            (
                "metadata space total".into(),
                mib(s.meta_total * dm::META_BLOCK_BYTES),
            ),
            ("transaction id".into(), s.transaction.to_string()),
            ("discard".into(), self.opts.discard.to_string()),
            (
                "min free space".into(),
                format!("{}%", self.opts.min_free_space),
            ),
            (
                "layers".into(),
                st.layers
                    .values()
                    .filter(|l| l.state == State::Ready)
                    .count()
                    .to_string(),
            ),
        ])
    }

    fn cleanup(&self) -> Result<()> {
        let mut st = self.state()?;
        let mut first: Option<Error> = None;
        for d in ["mnt", "fs"] {
            let dir = self.home.join(d);
            if let Err(e) = mounts::unmount_under(&dir) {
                first.get_or_insert(e);
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for p in entries.flatten().map(|e| e.path()) {
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
        if let Err(e) = self.finish_deferred(&mut st) {
            first.get_or_insert(e);
        }
        match self.dm.list(&self.prefix) {
            Ok(names) => {
                for n in names.iter().filter(|n| **n != self.pool) {
                    if let Err(e) = self.dm.remove(n, false) {
                        first.get_or_insert(e);
                    }
                }
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
        if self.own_pool {
            if let Err(e) = self.dm.remove(&self.pool, false) {
                first.get_or_insert(e);
            }
            for f in ["data", "metadata"] {
                match dm::loops_of(&self.home.join(f)) {
                    Ok(loops) => {
                        for l in loops {
                            if let Err(e) = dm::loop_detach(&l) {
                                first.get_or_insert(e);
                            }
                        }
                    }
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Kills this process with `SIGKILL` when `STRATA_TEST_CRASH_AT` names
/// `step` (crash-consistency tests only).
fn crash_point(step: &str) {
    if std::env::var("STRATA_TEST_CRASH_AT").is_ok_and(|v| v == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[async_trait]
impl Driver for Devmapper {
    fn name(&self) -> &'static str {
        NAME
    }

    fn root(&self) -> &Path {
        &self.inner.root
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_diff: false,
            quota: false,
            reflink: true,
            max_depth: usize::MAX,
            mount_spec: false,
            read_only_mounts: true,
            // A snapshot shares every inode: nothing is copied up.
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
        self.run(move |i| Ok(i.layer(&*i.state()?, &id).is_ok()))
            .await
    }

    async fn list(&self) -> Result<Vec<LayerId>> {
        self.run(|i| {
            Ok(i.state()?
                .layers
                .iter()
                .filter(|(_, l)| l.state == State::Ready)
                .map(|(id, _)| id.clone())
                .collect())
        })
        .await
    }

    async fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        let id = id.clone();
        self.run(move |i| Ok(i.layer(&*i.state()?, &id)?.parent.clone()))
            .await
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
            i.layer(&*i.state()?, &id)?;
            mountinfo::is_mount_point(&i.mnt(&id))
        })
        .await
    }

    /// Unsupported: a layer's tree is a subdirectory (`rootfs/`) of its
    /// device's filesystem, which one mount cannot describe.
    async fn mount_spec(&self, id: &LayerId, _opts: &MountOpts) -> Result<Vec<MountSpec>> {
        let id = id.clone();
        self.run(move |i| {
            i.layer(&*i.state()?, &id)?;
            Err(Error::Unsupported {
                driver: NAME.into(),
                why: "mount specs (a layer is the rootfs/ directory of its device)".into(),
            })
        })
        .await
    }

    async fn view(&self, id: &LayerId, _writable: bool) -> Result<View> {
        let id = id.clone();
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.view(&id))
            .await
            .map_err(join_error)?
    }

    async fn cleanup(&self) -> Result<()> {
        self.run(|i| i.cleanup()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_differ_by_root() {
        let a = prefix_of(Path::new("/a"));
        let b = prefix_of(Path::new("/b"));
        assert_ne!(a, b);
        assert!(a.starts_with("strata-") && a.len() < 40);
    }

    #[test]
    fn options_default() {
        let o: DevmapperOptions = toml_like_default();
        assert_eq!(o.min_free_space, 10);
        assert_eq!(o.fs, "ext4");
    }

    fn toml_like_default() -> DevmapperOptions {
        serde_json::from_str("{}").unwrap()
    }
}
