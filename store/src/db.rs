//! The layer database: `<root>/strata.db`, SQLite with a rollback journal
//! (`journal_mode=PERSIST`).
//!
//! Not WAL: WAL's index (`strata.db-shm`) is a memory-mapped file, and on
//! a full copy-on-write filesystem (btrfs, where the btrfs driver's root
//! lives) a write through that mapping cannot get space and the kernel
//! kills the process with SIGBUS, so every command died (even the `rm`
//! that would free space) instead of reporting "database or disk is full".
//! A rollback journal uses plain writes, which fail with an error.
//!
//! A new database and its journal are made `NOCOW` where the filesystem
//! has it (btrfs): an update then rewrites the pages and the persistent
//! journal in place, needing no new data space, so a full filesystem can
//! still record the `rm` that frees it.
//!
//! ```plain
//! meta(key TEXT PRIMARY KEY, value TEXT)        driver, schema
//! layers(id TEXT PRIMARY KEY, parent TEXT, driver TEXT, state TEXT,
//!        read_only INTEGER, digest TEXT, size INTEGER, created INTEGER,
//!        labels TEXT (JSON object), mount_count INTEGER,
//!        mount_path TEXT, owner TEXT)
//! ```
//!
//! `owner` names the process (see [`crate::owner`]) working on a layer in
//! state `creating` or `removing`; it is NULL once the layer is `ready`.

use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_driver_api::LayerId;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a writer waits for another process's transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a layer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded, driver work not finished: rolled back if its owner dies.
    Creating,
    /// Complete and durable.
    Ready,
    /// Being removed: finished by whoever finds its owner dead.
    Removing,
}

impl State {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Ready => "ready",
            State::Removing => "removing",
        }
    }
    fn parse(s: &str) -> Option<State> {
        Some(match s {
            "creating" => State::Creating,
            "ready" => State::Ready,
            "removing" => State::Removing,
            _ => return None,
        })
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One layer's record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layer {
    /// The layer's id.
    pub id: LayerId,
    /// The layer it was created on.
    pub parent: Option<LayerId>,
    /// The driver that holds its data.
    pub driver: String,
    /// Where it is in its life.
    pub state: State,
    /// An image layer (read-only mounts) or a writable one.
    pub read_only: bool,
    /// `sha256:<hex>` of its canonical diff tar against its parent, when
    /// known (recorded by import and by a diff against the parent; cleared
    /// when a writable mount or an apply may change the layer).
    pub digest: Option<String>,
    /// Bytes of content of its diff against its parent, as last recorded.
    pub size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// Labels given at creation.
    pub labels: BTreeMap<String, String>,
    /// Persistent mount count across processes.
    pub mount_count: u64,
    /// Where it is mounted while `mount_count > 0`.
    pub mount_path: Option<PathBuf>,
    /// The process working on it while `creating` or `removing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

const COLUMNS: &str = "id, parent, driver, state, read_only, digest, size, created, labels, mount_count, mount_path, owner";

/// Opens (creating if needed) the database at `path` with a persistent
/// rollback journal (switching a WAL database over) and a busy timeout,
/// and makes sure the schema exists.
///
/// # Errors
/// [`Error::Db`]; [`Error::Corrupt`] for a schema newer than this build's.
pub fn open(path: &Path) -> Result<Connection> {
    let e = |op| Error::db(path, op);
    make_nocow(path);
    let conn = Connection::open(path).map_err(e("open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(e("set busy timeout"))?;
    // Setting the journal mode takes a lock other openers may hold for a
    // moment (leaving WAL, which databases of earlier builds are in, needs
    // the database to itself); the busy handler covers most of it, retry
    // the rest.
    let mut tries = 0;
    loop {
        match conn.query_row("PRAGMA journal_mode=PERSIST", [], |r| r.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("persist") => break,
            Ok(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(mode) => {
                return Err(e("set journal mode")(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some(format!(
                        "the journal mode stays {mode}: another process holds the database"
                    )),
                )))
            }
            Err(err) if tries < 100 && is_busy(&err) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => return Err(e("set journal mode")(err)),
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(e("set synchronous"))?;
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(e("set foreign_keys"))?;
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS layers (
             id TEXT PRIMARY KEY,
             parent TEXT,
             driver TEXT NOT NULL,
             state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
             read_only INTEGER NOT NULL,
             digest TEXT,
             size INTEGER NOT NULL DEFAULT 0,
             created INTEGER NOT NULL,
             labels TEXT NOT NULL DEFAULT '{}',
             mount_count INTEGER NOT NULL DEFAULT 0,
             mount_path TEXT,
             owner TEXT
         );
         CREATE INDEX IF NOT EXISTS layers_parent ON layers(parent);
         INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '1');
         COMMIT;",
    )
    .map_err(|err| {
        let _ = conn.execute_batch("ROLLBACK");
        e("create schema")(err)
    })?;
    let schema: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .map_err(e("read schema version"))?;
    if schema.parse::<i64>().ok() != Some(SCHEMA_VERSION) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("schema version {schema}, this strata reads version {SCHEMA_VERSION}"),
        });
    }
    Ok(conn)
}

/// For a database not made yet: creates the database file and its
/// journal empty and sets `FS_NOCOW_FL` on them (only an empty file takes
/// it). Best effort: filesystems without the flag refuse it, and an
/// existing database stays as it is.
fn make_nocow(path: &Path) {
    if path.exists() {
        return;
    }
    let mut journal = path.as_os_str().to_owned();
    journal.push("-journal");
    for p in [path.as_os_str(), journal.as_os_str()] {
        let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
        else {
            continue;
        };
        use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
        let flags = ioctl_getflags(&f).unwrap_or(IFlags::empty());
        if let Err(err) = ioctl_setflags(&f, flags | IFlags::NOCOW) {
            tracing::debug!(file = ?p, "no NOCOW for the database: {err}");
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Reads a meta value.
pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Sets a meta value.
pub fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
    .map(drop)
}

/// A raw row, before validation.
struct RawRow {
    id: String,
    parent: Option<String>,
    driver: String,
    state: String,
    read_only: bool,
    digest: Option<String>,
    size: i64,
    created: i64,
    labels: String,
    mount_count: i64,
    mount_path: Option<String>,
    owner: Option<String>,
}

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        parent: r.get(1)?,
        driver: r.get(2)?,
        state: r.get(3)?,
        read_only: r.get(4)?,
        digest: r.get(5)?,
        size: r.get(6)?,
        created: r.get(7)?,
        labels: r.get(8)?,
        mount_count: r.get(9)?,
        mount_path: r.get(10)?,
        owner: r.get(11)?,
    })
}

fn cook(db: &Path, r: RawRow) -> Result<Layer> {
    let bad = |what: String| Error::Corrupt {
        path: db.to_path_buf(),
        what,
    };
    let id = LayerId::new(r.id.clone()).map_err(|e| bad(format!("record {:?}: {e}", r.id)))?;
    let parent = r
        .parent
        .map(LayerId::new)
        .transpose()
        .map_err(|e| bad(format!("record {id}: parent: {e}")))?;
    let state =
        State::parse(&r.state).ok_or_else(|| bad(format!("record {id}: state {:?}", r.state)))?;
    let labels = serde_json::from_str(&r.labels)
        .map_err(|e| bad(format!("record {id}: labels {:?}: {e}", r.labels)))?;
    Ok(Layer {
        id,
        parent,
        driver: r.driver,
        state,
        read_only: r.read_only,
        digest: r.digest,
        size: r.size.max(0) as u64,
        created: r.created,
        labels,
        mount_count: r.mount_count.max(0) as u64,
        mount_path: r.mount_path.map(PathBuf::from),
        owner: r.owner,
    })
}

/// The record of `id`, if there is one.
///
/// # Errors
/// [`Error::Db`], [`Error::Corrupt`].
pub fn get(conn: &Connection, db: &Path, id: &LayerId) -> Result<Option<Layer>> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM layers WHERE id = ?1"),
            [id.as_str()],
            raw,
        )
        .optional()
        .map_err(Error::db(db, "read layer"))?;
    row.map(|r| cook(db, r)).transpose()
}

/// Every record, sorted by id.
///
/// # Errors
/// [`Error::Db`], [`Error::Corrupt`].
pub fn all(conn: &Connection, db: &Path) -> Result<Vec<Layer>> {
    let mut st = conn
        .prepare(&format!("SELECT {COLUMNS} FROM layers ORDER BY id"))
        .map_err(Error::db(db, "list layers"))?;
    let rows = st
        .query_map([], raw)
        .map_err(Error::db(db, "list layers"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::db(db, "list layers"))?;
    rows.into_iter().map(|r| cook(db, r)).collect()
}

/// The ids of the records whose parent is `id`.
///
/// # Errors
/// [`Error::Db`].
pub fn children(conn: &Connection, db: &Path, id: &LayerId) -> Result<Vec<String>> {
    let mut st = conn
        .prepare("SELECT id FROM layers WHERE parent = ?1 ORDER BY id")
        .map_err(Error::db(db, "list children"))?;
    let ids = st
        .query_map([id.as_str()], |r| r.get(0))
        .map_err(Error::db(db, "list children"))?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(Error::db(db, "list children"))?;
    Ok(ids)
}

/// Inserts a new record in state `creating`, owned by `owner`.
///
/// # Errors
/// [`Error::Db`].
pub fn insert_creating(tx: &Transaction<'_>, db: &Path, layer: &Layer, owner: &str) -> Result<()> {
    let labels = serde_json::to_string(&layer.labels).unwrap_or_else(|_| "{}".into());
    tx.execute(
        "INSERT INTO layers (id, parent, driver, state, read_only, digest, size, created, labels, mount_count, mount_path, owner)
         VALUES (?1, ?2, ?3, 'creating', ?4, NULL, 0, ?5, ?6, 0, NULL, ?7)",
        params![
            layer.id.as_str(),
            layer.parent.as_ref().map(LayerId::as_str),
            layer.driver,
            layer.read_only,
            layer.created,
            labels,
            owner
        ],
    )
    .map_err(Error::db(db, "insert layer"))?;
    Ok(())
}

/// Runs an UPDATE or DELETE and returns the rows it changed.
///
/// # Errors
/// [`Error::Db`].
pub fn exec(
    conn: &Connection,
    db: &Path,
    op: &'static str,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<usize> {
    conn.execute(sql, p).map_err(Error::db(db, op))
}
