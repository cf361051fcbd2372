//! [`Store`]: layer records in SQLite around a driver.
//!
//! Every multi-step operation records its state before the driver work and
//! finishes it after:
//!
//! ```plain
//! create/import:  insert `creating` (owner = this process)
//!                 -> driver create (+ apply, digest) -> syncfs -> `ready`
//! remove:         mark `removing` (owner = this process)
//!                 -> driver remove -> delete the record
//! open:           every `creating`/`removing` record whose owner died is
//!                 claimed and removed for good (driver data included)
//! mount:          [root lock] count 0 -> 1: driver mount; count + 1
//! unmount:        [root lock] count 1 -> 0: driver unmount; count - 1
//! ```

use crate::db::{self, Layer, State};
use crate::error::{Error, Result};
use crate::lock::{self, RootLock};
use crate::select::{self, Selection};
use crate::stream::{CountingReader, HashingWriter};
use crate::{crash, fsinfo, owner, Config};
use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use strata_driver_api::{
    Change, CreateOpts, Driver, Error as DError, IoContext, LayerId, MountOpts, TarSink, TarSource,
};
use strata_drivers::registry;

/// The database file under the root.
pub const DB_FILE: &str = "strata.db";
/// The lock file under the root.
pub const LOCK_FILE: &str = "strata.lock";

/// A layer store on one root with one driver. `Send + Sync`; many stores
/// (in one or many processes) may be open on the same root at once.
pub struct Store {
    root: PathBuf,
    db_path: PathBuf,
    lock_path: PathBuf,
    conn: Mutex<Connection>,
    driver: Arc<dyn Driver>,
    selection: Selection,
    recovered: Vec<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("driver", &self.driver.name())
            .finish()
    }
}

/// What [`Store::diff`] wrote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiffOutcome {
    /// `sha256:<hex>` of the tar written.
    pub digest: String,
    /// Bytes of tar written.
    pub bytes: u64,
    /// The layer the diff was taken against (`None`: the empty tree).
    pub parent: Option<LayerId>,
    /// Whether the digest was recorded as the layer's.
    pub recorded: bool,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn not_found(id: &LayerId) -> Error {
    Error::Layer(DError::NotFound { id: id.to_string() })
}

impl Store {
    /// Opens the store `cfg` describes: creates the root if needed, opens
    /// the database, selects the driver (see [`select::select`]), opens it,
    /// binds the root to it and recovers what interrupted processes left.
    ///
    /// # Errors
    /// [`Error::DriverMismatch`]; [`Error::Db`]; [`Error::Config`] when no
    /// driver works; driver errors from probing or opening.
    pub async fn open(cfg: &Config) -> Result<Store> {
        Self::open_inner(cfg, false).await
    }

    /// [`Store::open`]; with `migrating` a root that a migration is moving
    /// (see [`crate::migrate`]) opens too, instead of being refused.
    pub(crate) async fn open_inner(cfg: &Config, migrating: bool) -> Result<Store> {
        let root = cfg.root.clone();
        std::fs::create_dir_all(&root).ctx("create root", &root)?;
        let db_path = root.join(DB_FILE);
        let conn = db::open(&db_path)?;
        if !migrating {
            crate::migrate::refuse_if_migrating(&conn, &root)?;
        }
        let recorded = db::meta(&conn, "driver").map_err(Error::db(&db_path, "read driver"))?;
        let owner = select::existing_owner(&root, recorded);
        let selection = select::select(cfg, owner.as_ref())?;
        let driver = registry::open(&selection.driver, &root, &cfg.drivers).await?;
        Self::assemble(root, conn, driver, selection).await
    }

    /// Opens a store on `root` around a driver the caller opened (embedding,
    /// tests). The driver's root should be `root` or inside it.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn with_driver(root: &Path, driver: Arc<dyn Driver>) -> Result<Store> {
        std::fs::create_dir_all(root).ctx("create root", root)?;
        let conn = db::open(&root.join(DB_FILE))?;
        let selection = Selection {
            driver: driver.name().to_string(),
            reason: "given by the caller".into(),
            others: Vec::new(),
        };
        Self::assemble(root.to_path_buf(), conn, driver, selection).await
    }

    async fn assemble(
        root: PathBuf,
        conn: Connection,
        driver: Arc<dyn Driver>,
        selection: Selection,
    ) -> Result<Store> {
        let mut store = Store {
            db_path: root.join(DB_FILE),
            lock_path: root.join(LOCK_FILE),
            root,
            conn: Mutex::new(conn),
            driver,
            selection,
            recovered: Vec::new(),
        };
        let name = store.driver.name();
        let root = store.root.clone();
        store.write("bind driver", |tx| {
            match tx
                .query_row("SELECT value FROM meta WHERE key = 'driver'", [], |r| {
                    r.get::<_, String>(0)
                })
                .ok()
            {
                Some(has) if has != name => Err(Error::DriverMismatch {
                    root: root.clone(),
                    has,
                    asked: name.to_string(),
                }),
                Some(_) => Ok(()),
                None => db::set_meta(tx, "driver", name)
                    .map_err(Error::db(&root.join(DB_FILE), "record driver")),
            }
        })?;
        store.recovered = store.recover().await?;
        Ok(store)
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// How the driver was selected.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// What opening the store recovered from interrupted processes, one
    /// line per layer.
    pub fn recovered(&self) -> &[String] {
        &self.recovered
    }

    // ---- database helpers ------------------------------------------------

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits it.
    pub(crate) fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::db(&self.db_path, op))?;
        let v = f(&tx)?;
        tx.commit().map_err(Error::db(&self.db_path, op))?;
        Ok(v)
    }

    pub(crate) fn exec(
        &self,
        op: &'static str,
        sql: &str,
        p: impl rusqlite::Params,
    ) -> Result<usize> {
        let conn = self.conn();
        db::exec(&conn, &self.db_path, op, sql, p)
    }

    /// The record of `id`, in any state.
    ///
    /// # Errors
    /// [`strata_driver_api::Error::NotFound`] (as [`Error::Layer`]),
    /// [`Error::Db`].
    pub fn get(&self, id: &LayerId) -> Result<Layer> {
        db::get(&self.conn(), &self.db_path, id)?.ok_or_else(|| not_found(id))
    }

    /// The record of `id`, which must be `ready`.
    ///
    /// # Errors
    /// As [`Store::get`], plus [`Error::State`] for a layer being created or
    /// removed.
    pub fn get_ready(&self, id: &LayerId) -> Result<Layer> {
        let l = self.get(id)?;
        check_ready(&l)?;
        Ok(l)
    }

    /// Every record, sorted by id.
    ///
    /// # Errors
    /// [`Error::Db`], [`Error::Corrupt`].
    pub fn list(&self) -> Result<Vec<Layer>> {
        db::all(&self.conn(), &self.db_path)
    }

    pub(crate) async fn lock(&self) -> Result<RootLock> {
        lock::lock(&self.lock_path).await
    }

    pub(crate) async fn sync(&self) -> Result<()> {
        let dir = self.driver.root().to_path_buf();
        tokio::task::spawn_blocking(move || fsinfo::syncfs(&dir))
            .await
            .map_err(strata_driver_api::join_error)??;
        Ok(())
    }

    // ---- recovery --------------------------------------------------------

    /// Claims every `creating`/`removing` record whose owner is dead and
    /// removes it for good. Returns a line per layer. A layer that cannot
    /// be recovered now (a full disk, say) is logged and left for the next
    /// open or `fsck --repair`: the store still opens, and the record,
    /// never `ready`, is not used.
    async fn recover(&self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for l in self.list()? {
            if l.state != State::Ready && !owner::alive(l.owner.as_deref()) {
                match self.recover_one(&l).await {
                    Ok(Some(line)) => done.push(line),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        layer = %l.id,
                        "could not recover an interrupted operation now (the next open retries): {e}"
                    ),
                }
            }
        }
        Ok(done)
    }

    /// Rolls back (a `creating` record) or finishes (a `removing` one) the
    /// operation of a dead owner: claims the record atomically, removes the
    /// driver's data if it exists, deletes the record. `None` when another
    /// process claimed it first.
    async fn recover_one(&self, l: &Layer) -> Result<Option<String>> {
        let me = owner::me();
        let claimed = self.exec(
            "claim layer",
            "UPDATE layers SET state = 'removing', owner = ?1
             WHERE id = ?2 AND state = ?3 AND owner IS ?4",
            params![me, l.id.as_str(), l.state.as_str(), l.owner],
        )?;
        if claimed == 0 {
            return Ok(None);
        }
        self.remove_data(&l.id).await?;
        self.exec(
            "delete layer",
            "DELETE FROM layers WHERE id = ?1 AND owner = ?2",
            params![l.id.as_str(), me],
        )?;
        let what = match l.state {
            State::Creating => "rolled back an interrupted create of",
            _ => "finished an interrupted remove of",
        };
        tracing::info!(layer = %l.id, "{what} the layer");
        Ok(Some(format!("{what} layer {}", l.id)))
    }

    /// Unmounts (if mounted) and removes the driver's data of `id`; a layer
    /// the driver does not have is fine.
    pub(crate) async fn remove_data(&self, id: &LayerId) -> Result<()> {
        if !self.driver.exists(id).await? {
            return Ok(());
        }
        if self.driver.is_mounted(id).await.unwrap_or(false) {
            self.driver.unmount(id).await?;
        }
        match self.driver.remove(id).await {
            Ok(()) => Ok(()),
            Err(e) if names_missing(&e, id) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    // ---- create / import -------------------------------------------------

    fn begin_create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        read_only: bool,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let db = self.db_path.clone();
        let layer = Layer {
            id: id.clone(),
            parent: parent.cloned(),
            driver: self.driver.name().to_string(),
            state: State::Creating,
            read_only,
            digest: None,
            size: 0,
            created: now(),
            labels: labels.clone(),
            mount_count: 0,
            mount_path: None,
            owner: None,
        };
        self.write("begin create", |tx| {
            if db::get(tx, &db, id)?.is_some() {
                return Err(DError::AlreadyExists { id: id.to_string() }.into());
            }
            if let Some(p) = parent {
                let pl = db::get(tx, &db, p)?.ok_or_else(|| not_found(p))?;
                check_ready(&pl)?;
            }
            db::insert_creating(tx, &db, &layer, &owner::me())
        })
    }

    fn finish_create(&self, id: &LayerId, digest: Option<&str>, size: u64) -> Result<()> {
        let n = self.exec(
            "finish create",
            "UPDATE layers SET state = 'ready', owner = NULL, digest = ?1, size = ?2
             WHERE id = ?3 AND state = 'creating' AND owner = ?4",
            params![digest, size as i64, id.as_str(), owner::me()],
        )?;
        if n == 0 {
            return Err(Error::State {
                id: id.to_string(),
                why: "its creation was rolled back by another process".into(),
            });
        }
        Ok(())
    }

    /// Undoes a failed create: removes the driver's data when
    /// `remove_data` (and it exists), then deletes the record. If the data
    /// cannot be removed, the record is left `removing` without an owner so
    /// that the next open finishes the job.
    async fn abort_create(&self, id: &LayerId, remove_data: bool) {
        let me = owner::me();
        if remove_data {
            if let Err(e) = self.remove_data(id).await {
                tracing::warn!(layer = %id, "could not remove a failed layer: {e}");
                let _ = self.exec(
                    "abort create",
                    "UPDATE layers SET state = 'removing', owner = NULL WHERE id = ?1 AND owner = ?2",
                    params![id.as_str(), me],
                );
                return;
            }
        }
        if let Err(e) = self.exec(
            "abort create",
            "DELETE FROM layers WHERE id = ?1 AND owner = ?2",
            params![id.as_str(), me],
        ) {
            tracing::warn!(layer = %id, "could not delete a failed layer's record: {e}");
        }
    }

    /// Creates an empty layer `id` on `parent` (which must be `ready`).
    /// Not idempotent. On failure nothing stays (no record, no data).
    ///
    /// # Errors
    /// `AlreadyExists` (a record, or driver data without a record);
    /// `NotFound` for the parent; [`Error::State`] for a parent being
    /// created or removed; driver errors.
    pub async fn create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        opts: &CreateOpts,
    ) -> Result<Layer> {
        self.begin_create(id, parent, opts.read_only, &opts.labels)?;
        crash::point("create:after-record");
        if let Err(e) = self.driver.create(id, parent, opts).await {
            let theirs = matches!(e, DError::AlreadyExists { .. });
            self.abort_create(id, !theirs).await;
            return Err(e.into());
        }
        crash::point("create:after-driver");
        if let Err(e) = self.sync().await {
            self.abort_create(id, true).await;
            return Err(e);
        }
        crash::point("create:before-ready");
        self.finish_create(id, None, 0)?;
        self.get(id)
    }

    /// Imports a layer tar (plain, gzip or zstd) as a new read-only layer
    /// `id` on `parent`, streaming it from `tar` into the driver, then takes
    /// the layer's canonical diff to record its digest. On any failure (a
    /// rejected tar included) the layer is removed and no record stays.
    ///
    /// # Errors
    /// As [`Store::create`], plus `Archive` for a rejected tar and `Io`.
    pub async fn import(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        labels: &BTreeMap<String, String>,
        tar: TarSource,
    ) -> Result<Layer> {
        self.begin_create(id, parent, true, labels)?;
        crash::point("import:after-record");
        let opts = CreateOpts {
            read_only: true,
            size: None,
            labels: labels.clone(),
        };
        if let Err(e) = self.driver.create(id, parent, &opts).await {
            let theirs = matches!(e, DError::AlreadyExists { .. });
            self.abort_create(id, !theirs).await;
            return Err(e.into());
        }
        crash::point("import:after-create");
        match self.import_data(id, parent, tar).await {
            Ok((digest, size)) => {
                crash::point("import:before-ready");
                self.finish_create(id, Some(&digest), size)?;
                crash::point("import:after-ready");
                self.get(id)
            }
            Err(e) => {
                self.abort_create(id, true).await;
                Err(e)
            }
        }
    }

    async fn import_data(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: TarSource,
    ) -> Result<(String, u64)> {
        let reader = CountingReader::new(tar, Some("import:mid-apply"));
        let bytes = self.driver.apply_diff(id, parent, Box::new(reader)).await?;
        crash::point("import:after-apply");
        let (digest, _) = self.digest_of(id, parent).await?;
        crash::point("import:after-digest");
        self.sync().await?;
        Ok((digest, bytes))
    }

    /// `sha256:` of the driver's diff of `id` against `parent`, streamed.
    pub(crate) async fn digest_of(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
    ) -> Result<(String, u64)> {
        let (w, state) = HashingWriter::new(std::io::sink());
        let sink = self.driver.diff(id, parent, Box::new(w)).await?;
        drop(sink);
        Ok(state.finish())
    }

    // ---- apply -----------------------------------------------------------

    /// Applies a layer tar on top of layer `id` (against its own parent),
    /// then records the layer's new digest and size. Holds the root lock
    /// throughout, so no process mounts the layer meanwhile. Returns the
    /// bytes of content applied.
    ///
    /// A failed apply may leave part of the tar in the layer; its digest
    /// then stays cleared.
    ///
    /// # Errors
    /// `NotFound`; `Busy` when mounted; [`Error::State`]; `Archive`; `Io`.
    pub async fn apply(&self, id: &LayerId, tar: TarSource) -> Result<u64> {
        let _lock = self.lock().await?;
        let layer = self.get_ready(id)?;
        if layer.mount_count > 0 || self.driver.is_mounted(id).await? {
            return Err(DError::Busy {
                id: id.to_string(),
                why: format!(
                    "mounted (mount count {}); unmount it before applying a diff",
                    layer.mount_count
                ),
            }
            .into());
        }
        self.exec(
            "clear digest",
            "UPDATE layers SET digest = NULL WHERE id = ?1",
            [id.as_str()],
        )?;
        let parent = layer.parent.as_ref();
        let reader = CountingReader::new(tar, None);
        let bytes = self.driver.apply_diff(id, parent, Box::new(reader)).await?;
        crash::point("apply:after-apply");
        let (digest, _) = self.digest_of(id, parent).await?;
        let size = self.driver.diff_size(id, parent).await?;
        self.sync().await?;
        self.exec(
            "record digest",
            "UPDATE layers SET digest = ?1, size = ?2 WHERE id = ?3",
            params![digest, size as i64, id.as_str()],
        )?;
        Ok(bytes)
    }

    // ---- mount -----------------------------------------------------------

    /// Mounts layer `id` (refcounted across processes) and returns the
    /// path. The driver mounts on the 0 -> 1 transition only (or when the
    /// recorded mount is gone, e.g. after a reboot). A writable mount of a
    /// writable layer clears its recorded digest.
    ///
    /// # Errors
    /// `NotFound`; [`Error::State`]; driver errors from mounting.
    pub async fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let _lock = self.lock().await?;
        let layer = self.get_ready(id)?;
        let path = match (&layer.mount_path, layer.mount_count) {
            (Some(p), n) if n > 0 && self.driver.is_mounted(id).await? => p.clone(),
            (_, n) => {
                if n > 0 {
                    tracing::warn!(layer = %id, count = n, "recorded mounts are gone; mounting again");
                }
                self.driver.mount(id, opts).await?
            }
        };
        crash::point("mount:after-driver");
        let writable = !layer.read_only && !opts.read_only;
        self.exec(
            "count mount",
            "UPDATE layers SET mount_count = mount_count + 1, mount_path = ?1,
                 digest = CASE WHEN ?2 THEN NULL ELSE digest END
             WHERE id = ?3",
            params![path.to_string_lossy(), writable, id.as_str()],
        )?;
        Ok(path)
    }

    /// Drops one mount of layer `id`; the driver unmounts on 1 -> 0. With
    /// `force` the count goes to 0 and the driver unmounts whatever the
    /// count was (also a mount the store did not count). Returns the count
    /// left.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` when the layer is not mounted (count
    /// 0) and not `force`; driver errors from unmounting.
    pub async fn unmount(&self, id: &LayerId, force: bool) -> Result<u64> {
        let _lock = self.lock().await?;
        let layer = self.get(id)?;
        if layer.mount_count == 0 && !force {
            return Err(DError::InvalidArgument {
                what: format!("unmount {id}"),
                why: "the layer is not mounted (mount count 0)".into(),
            }
            .into());
        }
        if force || layer.mount_count <= 1 {
            if self.driver.exists(id).await? {
                self.driver.unmount(id).await?;
            }
            crash::point("unmount:after-driver");
            self.exec(
                "count unmount",
                "UPDATE layers SET mount_count = 0, mount_path = NULL WHERE id = ?1",
                [id.as_str()],
            )?;
            Ok(0)
        } else {
            self.exec(
                "count unmount",
                "UPDATE layers SET mount_count = mount_count - 1 WHERE id = ?1",
                [id.as_str()],
            )?;
            Ok(layer.mount_count - 1)
        }
    }

    // ---- remove ----------------------------------------------------------

    /// Removes layer `id`: refuses one with children, and a mounted one
    /// unless `force` (which unmounts it first). A record left by a dead
    /// process is recovered instead.
    ///
    /// # Errors
    /// `NotFound`; `HasChildren`; `Busy`; [`Error::State`] while another
    /// live process creates or removes it; driver errors.
    pub async fn remove(&self, id: &LayerId, force: bool) -> Result<()> {
        let lock = self.lock().await?;
        let layer = self.get(id)?;
        if layer.state != State::Ready {
            if owner::alive(layer.owner.as_deref()) {
                check_ready(&layer)?;
            }
            self.recover_one(&layer).await?;
            return Ok(());
        }
        let db = self.db_path.clone();
        let has_children = |conn: &Connection| -> Result<()> {
            let children = db::children(conn, &db, id)?;
            if children.is_empty() {
                Ok(())
            } else {
                Err(DError::HasChildren {
                    id: id.to_string(),
                    children: children.join(", "),
                }
                .into())
            }
        };
        has_children(&self.conn())?;
        let mounted = layer.mount_count > 0 || self.driver.is_mounted(id).await?;
        if mounted {
            if !force {
                return Err(DError::Busy {
                    id: id.to_string(),
                    why: format!(
                        "mounted (mount count {}); unmount it or remove with --force",
                        layer.mount_count
                    ),
                }
                .into());
            }
            self.driver.unmount(id).await?;
            self.exec(
                "count unmount",
                "UPDATE layers SET mount_count = 0, mount_path = NULL WHERE id = ?1",
                [id.as_str()],
            )?;
        }
        let me = owner::me();
        self.write("mark removing", |tx| {
            has_children(tx)?;
            tx.execute(
                "UPDATE layers SET state = 'removing', owner = ?1 WHERE id = ?2 AND state = 'ready'",
                params![me, id.as_str()],
            )
            .map_err(Error::db(&db, "mark removing"))?;
            Ok(())
        })?;
        drop(lock);
        crash::point("rm:after-mark");
        match self.driver.remove(id).await {
            Ok(()) => {}
            Err(e) if names_missing(&e, id) => {}
            Err(e) => {
                // Still there: back to ready. Gone: the next open finishes.
                let back = if self.driver.exists(id).await.unwrap_or(true) {
                    "UPDATE layers SET state = 'ready', owner = NULL WHERE id = ?1 AND owner = ?2"
                } else {
                    "UPDATE layers SET owner = NULL WHERE id = ?1 AND owner = ?2"
                };
                let _ = self.exec("undo remove", back, params![id.as_str(), me]);
                return Err(e.into());
            }
        }
        crash::point("rm:after-driver");
        self.exec(
            "delete layer",
            "DELETE FROM layers WHERE id = ?1 AND owner = ?2",
            params![id.as_str(), me],
        )?;
        Ok(())
    }

    // ---- diffs -----------------------------------------------------------

    /// The base a diff of `layer` is taken against: `parent` if given (must
    /// be `ready`), else the layer's own parent.
    fn base(&self, layer: &Layer, parent: Option<&LayerId>) -> Result<Option<LayerId>> {
        match parent {
            Some(p) => {
                self.get_ready(p)?;
                Ok(Some(p.clone()))
            }
            None => Ok(layer.parent.clone()),
        }
    }

    /// Streams layer `id`'s canonical OCI layer tar against `parent`
    /// (default: its own parent) to `out`, hashing it on the way. Against
    /// its own parent the digest is recorded, unless the layer is mounted
    /// writable or it is a read-only layer whose recorded digest differs (a
    /// warning: `fsck --verify` reports that).
    ///
    /// # Errors
    /// `NotFound`; [`Error::State`]; `Io` (including writing `out`).
    pub async fn diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        out: TarSink,
    ) -> Result<DiffOutcome> {
        let layer = self.get_ready(id)?;
        let base = self.base(&layer, parent)?;
        let (w, state) = HashingWriter::new(out);
        let sink = self.driver.diff(id, base.as_ref(), Box::new(w)).await?;
        drop(sink);
        let (digest, bytes) = state.finish();
        let mut recorded = false;
        if base == layer.parent {
            if layer.read_only && layer.digest.as_ref().is_some_and(|d| *d != digest) {
                tracing::warn!(layer = %id, recorded = ?layer.digest, now = %digest,
                    "the diff of a read-only layer no longer matches its recorded digest");
            } else if layer.read_only || layer.mount_count == 0 {
                recorded = self.exec(
                    "record digest",
                    "UPDATE layers SET digest = ?1 WHERE id = ?2 AND state = 'ready'",
                    params![digest, id.as_str()],
                )? > 0;
            }
        }
        Ok(DiffOutcome {
            digest,
            bytes,
            parent: base,
            recorded,
        })
    }

    /// The changes of layer `id` against `parent` (default: its own parent),
    /// sorted by path.
    ///
    /// # Errors
    /// `NotFound`; [`Error::State`]; `Io`.
    pub async fn changes(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<Vec<Change>> {
        let layer = self.get_ready(id)?;
        let base = self.base(&layer, parent)?;
        let mut c = self.driver.changes(id, base.as_ref()).await?;
        c.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(c)
    }

    /// Bytes of the diff of layer `id` against `parent` (default: its own
    /// parent).
    ///
    /// # Errors
    /// `NotFound`; [`Error::State`]; `Io`.
    pub async fn diff_size(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<u64> {
        let layer = self.get_ready(id)?;
        let base = self.base(&layer, parent)?;
        Ok(self.driver.diff_size(id, base.as_ref()).await?)
    }

    pub(crate) async fn lock_root(&self) -> Result<RootLock> {
        self.lock().await
    }

    pub(crate) async fn digest_against_parent(&self, layer: &Layer) -> Result<String> {
        Ok(self.digest_of(&layer.id, layer.parent.as_ref()).await?.0)
    }

    pub(crate) async fn recover_layer(&self, layer: &Layer) -> Result<Option<String>> {
        self.recover_one(layer).await
    }

    pub(crate) async fn remove_driver_data(&self, id: &LayerId) -> Result<()> {
        self.remove_data(id).await
    }

    pub(crate) fn execute(
        &self,
        op: &'static str,
        sql: &str,
        p: impl rusqlite::Params,
    ) -> Result<usize> {
        self.exec(op, sql, p)
    }
}

fn check_ready(l: &Layer) -> Result<()> {
    match l.state {
        State::Ready => Ok(()),
        s => Err(Error::State {
            id: l.id.to_string(),
            why: format!(
                "is {s} (another process is working on it, or one was interrupted: `strata fsck` tells)"
            ),
        }),
    }
}

/// Whether `e` says that layer `id` itself does not exist (so removing it
/// is already done). A `NotFound` about another layer (a parent, or a
/// layer a concurrent process removed while the driver looked at it) is a
/// failure like any other: taking it for success would drop the record of
/// a layer whose data stays.
pub(crate) fn names_missing(e: &DError, id: &LayerId) -> bool {
    matches!(e, DError::NotFound { id: missing } if missing == id.as_str())
}
