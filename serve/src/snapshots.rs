//! [`Snapshots`]: containerd's snapshot model over the layer store.
//!
//! Every snapshot (active, view or committed) is one layer of the store;
//! the snapshot table (`snapshots` in the store's `strata.db`) maps its key
//! to the layer and keeps what the store does not: the kind, the parent's
//! name, labels and times.
//!
//! ```plain
//! snapshots(key TEXT PRIMARY KEY,   active key or committed name (one key space)
//!           layer TEXT UNIQUE,      the store's layer id (random, 64 hex digits)
//!           kind TEXT,              active | view | committed
//!           parent TEXT,            the parent's name, NULL for none
//!           labels TEXT,            JSON object
//!           created INTEGER, updated INTEGER)   nanoseconds since the epoch
//! ```
//!
//! Prepare/View create the layer (read-write for active, read-only for a
//! view) on the parent's layer, then insert the row; Commit renames the row
//! in one statement (the layer stays); Remove removes the layer, then the
//! row. A crash between the two steps leaves a layer without a row (labelled
//! [`KEY_LABEL`]) that opening and Cleanup remove, or a row whose layer is
//! gone, which opening deletes: the table and the store always agree again
//! on the next start.

use crate::error::{Error, Result};
use crate::filter::{Filters, SnapshotFields};
use rusqlite::{params, Connection};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_driver_api::{CreateOpts, LayerId, MountOpts, MountSpec};
use strata_store::Store;

/// The label every layer made for a snapshot carries: the snapshot key it
/// was created under (which a commit later renames).
pub const KEY_LABEL: &str = "strata.serve.key";

/// What a snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A read-write snapshot being prepared (a container's or an unpack's).
    Active,
    /// A read-only view of a committed snapshot.
    View,
    /// An immutable snapshot other snapshots may be prepared on.
    Committed,
}

impl Kind {
    /// The name used in the table and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "active" => Kind::Active,
            "view" => Kind::View,
            "committed" => Kind::Committed,
            _ => return None,
        })
    }
}

/// One snapshot's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Its key (active, view) or name (committed).
    pub key: String,
    /// The store layer holding its data.
    pub layer: LayerId,
    /// What it is.
    pub kind: Kind,
    /// Its parent's name (a committed snapshot), if any.
    pub parent: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created (for a committed one: committed).
    pub created: SystemTime,
    /// When it was last changed.
    pub updated: SystemTime,
}

/// A snapshot's own resource use: its layer's diff against its parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of added or changed non-directories (hard links once).
    pub size: u64,
    /// Added or changed entries.
    pub inodes: u64,
}

/// How a field-masked update changes a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// The snapshot's key or name.
    pub key: String,
    /// The labels sent with the update.
    pub labels: BTreeMap<String, String>,
    /// The field paths to change: `labels` (all of them) or `labels.<key>`;
    /// empty: the labels are replaced.
    pub fieldpaths: Vec<String>,
}

/// containerd's snapshot model on a store. `Send + Sync`; mutations are
/// serialised, reads run concurrently.
pub struct Snapshots {
    store: Arc<Store>,
    conn: Mutex<Connection>,
    db_path: PathBuf,
    write: tokio::sync::Mutex<()>,
    /// The driver's mounts are made by strata itself and handed out as a
    /// bind of its mount point (aufs: a FUSE server must run; drivers that
    /// cannot describe their mounts).
    own_mounts: bool,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("store", &self.store)
            .field("own_mounts", &self.own_mounts)
            .finish()
    }
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn time_of(n: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n.max(0) as u64)
}

fn random_id() -> LayerId {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    LayerId::new(hex).expect("64 hex digits are a valid id")
}

const COLUMNS: &str = "key, layer, kind, parent, labels, created, updated";

impl Snapshots {
    /// Serves the snapshots of `store`: creates the snapshot table if
    /// needed and reconciles it with the store (see the module doc).
    /// Idempotent.
    ///
    /// # Errors
    /// [`Error::Db`], [`Error::Corrupt`], store errors from removing
    /// leftovers.
    pub async fn open(store: Store) -> Result<Snapshots> {
        let db_path = store.db_path().to_path_buf();
        let conn = strata_store::db::open(&db_path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS snapshots (
                 key TEXT PRIMARY KEY NOT NULL,
                 layer TEXT NOT NULL UNIQUE,
                 kind TEXT NOT NULL,
                 parent TEXT,
                 labels TEXT NOT NULL,
                 created INTEGER NOT NULL,
                 updated INTEGER NOT NULL)",
        )
        .map_err(Error::db(&db_path, "create the snapshot table"))?;
        let driver = store.driver();
        let own_mounts = driver.name() == "aufs" || !driver.capabilities().mount_spec;
        let s = Snapshots {
            store: Arc::new(store),
            conn: Mutex::new(conn),
            db_path,
            write: tokio::sync::Mutex::new(()),
            own_mounts,
        };
        s.reconcile().await?;
        Ok(s)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn row(&self, r: &rusqlite::Row<'_>) -> Result<Snapshot> {
        let get = |i: usize| r.get::<_, String>(i);
        let key: String = get(0).map_err(Error::db(&self.db_path, "read snapshot"))?;
        let corrupt = |why: String| Error::Corrupt {
            path: self.db_path.clone(),
            key: key.clone(),
            why,
        };
        let layer = LayerId::new(get(1).map_err(Error::db(&self.db_path, "read snapshot"))?)
            .map_err(|e| corrupt(e.to_string()))?;
        let kind_s = get(2).map_err(Error::db(&self.db_path, "read snapshot"))?;
        let kind = Kind::parse(&kind_s).ok_or_else(|| corrupt(format!("kind {kind_s:?}")))?;
        let parent: Option<String> = r
            .get(3)
            .map_err(Error::db(&self.db_path, "read snapshot"))?;
        let labels_s = get(4).map_err(Error::db(&self.db_path, "read snapshot"))?;
        let labels =
            serde_json::from_str(&labels_s).map_err(|e| corrupt(format!("labels: {e}")))?;
        let created: i64 = r
            .get(5)
            .map_err(Error::db(&self.db_path, "read snapshot"))?;
        let updated: i64 = r
            .get(6)
            .map_err(Error::db(&self.db_path, "read snapshot"))?;
        Ok(Snapshot {
            key: key.clone(),
            layer,
            kind,
            parent,
            labels,
            created: time_of(created),
            updated: time_of(updated),
        })
    }

    /// The snapshot with this key or name, if any.
    ///
    /// # Errors
    /// [`Error::Db`], [`Error::Corrupt`].
    pub fn get(&self, key: &str) -> Result<Option<Snapshot>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM snapshots WHERE key = ?1"))
            .map_err(Error::db(&self.db_path, "read snapshot"))?;
        let mut rows = st
            .query([key])
            .map_err(Error::db(&self.db_path, "read snapshot"))?;
        match rows
            .next()
            .map_err(Error::db(&self.db_path, "read snapshot"))?
        {
            Some(r) => Ok(Some(self.row(r)?)),
            None => Ok(None),
        }
    }

    fn need(&self, key: &str) -> Result<Snapshot> {
        self.get(key)?.ok_or_else(|| Error::NotFound {
            key: key.to_string(),
        })
    }

    /// Every snapshot, sorted by key.
    ///
    /// # Errors
    /// [`Error::Db`], [`Error::Corrupt`].
    pub fn all(&self) -> Result<Vec<Snapshot>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM snapshots ORDER BY key"))
            .map_err(Error::db(&self.db_path, "list snapshots"))?;
        let mut rows = st
            .query([])
            .map_err(Error::db(&self.db_path, "list snapshots"))?;
        let mut out = Vec::new();
        while let Some(r) = rows
            .next()
            .map_err(Error::db(&self.db_path, "list snapshots"))?
        {
            out.push(self.row(r)?);
        }
        Ok(out)
    }

    fn exec(&self, op: &'static str, sql: &str, p: impl rusqlite::Params) -> Result<usize> {
        self.conn()
            .execute(sql, p)
            .map_err(Error::db(&self.db_path, op))
    }

    // ---- the operations ----------------------------------------------------

    /// Creates an active snapshot `key` on the committed snapshot `parent`
    /// (`""`: empty) and returns its mounts. Not idempotent.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`]; [`Error::NotFound`] for the parent;
    /// [`Error::InvalidArgument`] for an empty key or a parent that is not
    /// committed; store errors.
    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        self.create(key, parent, labels, Kind::Active).await
    }

    /// Creates a read-only view `key` of the committed snapshot `parent`
    /// (`""`: an empty tree) and returns its (read-only) mounts. Not
    /// idempotent.
    ///
    /// # Errors
    /// As [`Snapshots::prepare`].
    pub async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        self.create(key, parent, labels, Kind::View).await
    }

    async fn create(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<MountSpec>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument {
                what: "key \"\"".into(),
                why: "a snapshot key cannot be empty".into(),
            });
        }
        let _w = self.write.lock().await;
        if self.get(key)?.is_some() {
            return Err(Error::AlreadyExists { key: key.into() });
        }
        let parent_snap = if parent.is_empty() {
            None
        } else {
            let p = self.need(parent)?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument {
                    what: format!("parent {parent:?}"),
                    why: format!(
                        "is a {} snapshot; only committed snapshots can be parents",
                        p.kind.as_str()
                    ),
                });
            }
            Some(p)
        };
        let layer = random_id();
        let mut layer_labels = BTreeMap::new();
        layer_labels.insert(KEY_LABEL.to_string(), key.to_string());
        let opts = CreateOpts {
            read_only: kind == Kind::View,
            size: None,
            labels: layer_labels,
        };
        self.store
            .create(&layer, parent_snap.as_ref().map(|p| &p.layer), &opts)
            .await?;
        let now = nanos(SystemTime::now());
        let labels_json = serde_json::to_string(&labels).expect("string maps serialise");
        let inserted = self.exec(
            "insert snapshot",
            "INSERT INTO snapshots (key, layer, kind, parent, labels, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                key,
                layer.as_str(),
                kind.as_str(),
                parent_snap.as_ref().map(|p| p.key.as_str()),
                labels_json,
                now
            ],
        );
        if let Err(e) = inserted {
            self.drop_layer(&layer).await;
            return Err(e);
        }
        let snap = self.need(key)?;
        match self.mounts_of(&snap).await {
            Ok(m) => Ok(m),
            Err(e) => {
                let _ = self.exec(
                    "delete snapshot",
                    "DELETE FROM snapshots WHERE key = ?1",
                    [key],
                );
                self.drop_layer(&layer).await;
                Err(e)
            }
        }
    }

    /// Removes a layer this server made (rolling back a failed step),
    /// logging what cannot be removed: opening or Cleanup finish it.
    async fn drop_layer(&self, layer: &LayerId) {
        if let Err(e) = self.store.remove(layer, true).await {
            tracing::warn!(%layer, "could not remove a snapshot layer (Cleanup retries): {e}");
        }
    }

    /// The mounts of snapshot `key` (any kind; views and committed
    /// snapshots mount read-only). Read-only, idempotent (for drivers whose
    /// mounts strata makes itself, mounts the layer if it is not mounted).
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub async fn mounts(&self, key: &str) -> Result<Vec<MountSpec>> {
        let snap = self.need(key)?;
        self.mounts_of(&snap).await
    }

    async fn mounts_of(&self, snap: &Snapshot) -> Result<Vec<MountSpec>> {
        let ro = snap.kind != Kind::Active;
        if self.own_mounts {
            let path = self.own_mount(&snap.layer, ro).await?;
            return Ok(vec![MountSpec {
                fs_type: "bind".into(),
                source: path,
                options: vec!["rbind".into(), if ro { "ro" } else { "rw" }.into()],
            }]);
        }
        let opts = MountOpts {
            read_only: ro,
            options: Vec::new(),
        };
        Ok(self.store.driver().mount_spec(&snap.layer, &opts).await?)
    }

    /// The path of strata's own mount of `layer`, mounting it (counted in
    /// the store) when it is not mounted.
    async fn own_mount(&self, layer: &LayerId, ro: bool) -> Result<PathBuf> {
        let l = self.store.get_ready(layer)?;
        if l.mount_count > 0 {
            if let Some(p) = &l.mount_path {
                if self.store.driver().is_mounted(layer).await? {
                    return Ok(p.clone());
                }
            }
            // Counted but gone (a reboot): start the count again.
            self.store.unmount(layer, true).await?;
        }
        let opts = MountOpts {
            read_only: ro,
            options: Vec::new(),
        };
        Ok(self.store.mount(layer, &opts).await?)
    }

    /// Commits the active snapshot `key` as `name` with `labels`: the
    /// layer stays, the key is freed and `name` becomes a committed
    /// snapshot others may be prepared on. The layer's data is synced
    /// first. Not idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`] for the key; [`Error::AlreadyExists`] for the
    /// name; [`Error::FailedPrecondition`] when `key` is not active.
    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument {
                what: "name \"\"".into(),
                why: "a snapshot name cannot be empty".into(),
            });
        }
        let _w = self.write.lock().await;
        let snap = self.need(key)?;
        if snap.kind != Kind::Active {
            return Err(Error::FailedPrecondition {
                key: key.into(),
                why: format!(
                    "is a {} snapshot; only active ones can be committed",
                    snap.kind.as_str()
                ),
            });
        }
        if self.get(name)?.is_some() {
            return Err(Error::AlreadyExists { key: name.into() });
        }
        if self.own_mounts && self.store.get(&snap.layer)?.mount_count > 0 {
            self.store.unmount(&snap.layer, true).await?;
        }
        let dir = self.store.driver().root().to_path_buf();
        tokio::task::spawn_blocking(move || strata_store::fsinfo::syncfs(&dir))
            .await
            .map_err(strata_driver_api::join_error)??;
        let now = nanos(SystemTime::now());
        let labels_json = serde_json::to_string(&labels).expect("string maps serialise");
        let n = self.exec(
            "commit snapshot",
            "UPDATE snapshots SET key = ?1, kind = 'committed', labels = ?2, created = ?3, updated = ?3
             WHERE key = ?4 AND kind = 'active'",
            params![name, labels_json, now, key],
        )?;
        if n == 0 {
            return Err(Error::NotFound { key: key.into() });
        }
        Ok(())
    }

    /// Removes snapshot `key` (any kind) and its layer. Not idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::FailedPrecondition`] when other
    /// snapshots are built on it; store errors (a layer still mounted by
    /// someone else).
    pub async fn remove(&self, key: &str) -> Result<()> {
        let _w = self.write.lock().await;
        let snap = self.need(key)?;
        let children: Vec<String> = {
            let conn = self.conn();
            let mut st = conn
                .prepare_cached("SELECT key FROM snapshots WHERE parent = ?1 ORDER BY key")
                .map_err(Error::db(&self.db_path, "list children"))?;
            let rows = st
                .query_map([key], |r| r.get(0))
                .map_err(Error::db(&self.db_path, "list children"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(Error::db(&self.db_path, "list children"))?
        };
        if !children.is_empty() {
            return Err(Error::FailedPrecondition {
                key: key.into(),
                why: format!("has children ({})", children.join(", ")),
            });
        }
        match self.store.remove(&snap.layer, true).await {
            Ok(()) => {}
            Err(strata_store::Error::Layer(strata_driver_api::Error::NotFound { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        self.exec(
            "delete snapshot",
            "DELETE FROM snapshots WHERE key = ?1",
            [key],
        )?;
        Ok(())
    }

    /// The record of snapshot `key`. Read-only.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Db`].
    pub fn stat(&self, key: &str) -> Result<Snapshot> {
        self.need(key)
    }

    /// Changes the labels of a snapshot as `u` says and returns the new
    /// record. Fields other than labels cannot change.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] for another field.
    pub async fn update(&self, u: Update) -> Result<Snapshot> {
        let _w = self.write.lock().await;
        let snap = self.need(&u.key)?;
        let mut labels = snap.labels.clone();
        if u.fieldpaths.is_empty() {
            labels = u.labels.clone();
        }
        for path in &u.fieldpaths {
            if path == "labels" {
                labels = u.labels.clone();
            } else if let Some(k) = path.strip_prefix("labels.") {
                match u.labels.get(k) {
                    Some(v) => labels.insert(k.to_string(), v.clone()),
                    None => labels.remove(k),
                };
            } else {
                return Err(Error::InvalidArgument {
                    what: format!("field path {path:?}"),
                    why: format!("snapshot {:?}: only labels can be updated", u.key),
                });
            }
        }
        let labels_json = serde_json::to_string(&labels).expect("string maps serialise");
        self.exec(
            "update snapshot",
            "UPDATE snapshots SET labels = ?1, updated = ?2 WHERE key = ?3",
            params![labels_json, nanos(SystemTime::now()), u.key],
        )?;
        self.need(&u.key)
    }

    /// The snapshot's own usage: its layer's diff against its parent's.
    /// Read-only; takes time proportional to the diff (a tree walk where
    /// the driver has no native diff).
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub async fn usage(&self, key: &str) -> Result<Usage> {
        let snap = self.need(key)?;
        let size = self.store.diff_size(&snap.layer, None).await?;
        let inodes = self
            .store
            .changes(&snap.layer, None)
            .await?
            .iter()
            .filter(|c| c.kind != strata_driver_api::ChangeKind::Deleted)
            .count() as u64;
        Ok(Usage { size, inodes })
    }

    /// The snapshots that match `filters` (containerd's syntax, see
    /// [`crate::filter`]), sorted by key. Read-only.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed filter; [`Error::Db`].
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Snapshot>> {
        let f = Filters::parse(filters)?;
        Ok(self
            .all()?
            .into_iter()
            .filter(|s| {
                f.matches(&SnapshotFields {
                    name: &s.key,
                    parent: s.parent.as_deref().unwrap_or(""),
                    kind: s.kind.as_str(),
                    labels: &s.labels,
                })
            })
            .collect())
    }

    /// Removes what interrupted operations left: layers made for snapshots
    /// that no snapshot names (children first). Idempotent. Returns the
    /// layers removed.
    ///
    /// # Errors
    /// Store errors from removing a layer.
    pub async fn cleanup(&self) -> Result<Vec<LayerId>> {
        let _w = self.write.lock().await;
        self.collect_orphans().await
    }

    async fn collect_orphans(&self) -> Result<Vec<LayerId>> {
        let used: BTreeSet<LayerId> = self.all()?.into_iter().map(|s| s.layer).collect();
        let mut orphans: Vec<strata_store::Layer> = self
            .store
            .list()?
            .into_iter()
            .filter(|l| l.labels.contains_key(KEY_LABEL) && !used.contains(&l.id))
            .collect();
        let mut removed = Vec::new();
        // Children before parents: remove those no other layer sits on.
        while !orphans.is_empty() {
            let all = self.store.list()?;
            let parents: BTreeSet<&LayerId> =
                all.iter().filter_map(|l| l.parent.as_ref()).collect();
            let (leaves, rest): (Vec<_>, Vec<_>) =
                orphans.into_iter().partition(|l| !parents.contains(&l.id));
            if leaves.is_empty() {
                tracing::warn!(
                    left = rest.len(),
                    "leftover snapshot layers still have children; not removed"
                );
                break;
            }
            for l in leaves {
                tracing::info!(layer = %l.id, key = ?l.labels.get(KEY_LABEL), "removing a leftover snapshot layer");
                self.store.remove(&l.id, true).await?;
                removed.push(l.id);
            }
            orphans = rest;
        }
        Ok(removed)
    }

    /// Opening: deletes rows whose layer is gone, removes layers without a
    /// row.
    async fn reconcile(&self) -> Result<()> {
        let layers: BTreeSet<LayerId> = self.store.list()?.into_iter().map(|l| l.id).collect();
        for s in self.all()? {
            if !layers.contains(&s.layer) {
                tracing::warn!(key = %s.key, layer = %s.layer, "a snapshot's layer is gone (an interrupted remove); forgetting the snapshot");
                self.exec(
                    "delete snapshot",
                    "DELETE FROM snapshots WHERE key = ?1",
                    [&s.key],
                )?;
            }
        }
        self.collect_orphans().await?;
        Ok(())
    }

    /// Whether `path` is the database this server keeps its table in.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }
}
