//! The store's error type: the driver contract's errors plus what only the
//! store can get wrong (configuration, the database, a root that belongs to
//! another driver, a layer another process is working on).

use std::path::PathBuf;

/// The result type of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the driver contract: a layer not found, busy, with
    /// children, an I/O error... (these name their layer or path).
    #[error(transparent)]
    Layer(#[from] strata_driver_api::Error),
    /// The configuration is wrong: names the source (a file, an environment
    /// variable or a flag), the key and the value.
    #[error("config {source_name}: {msg}")]
    Config {
        /// Where the configuration came from: a file path, `$STRATA_ROOT`,
        /// `--driver`...
        source_name: String,
        /// The key, the value and what is wrong with them.
        msg: String,
    },
    /// The layer database failed.
    #[error("database {}: {op}: {source}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database holds a record the store cannot read (a bad state or
    /// id), which means it was edited by hand or by a newer strata.
    #[error("database {}: {what}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The root already belongs to another driver.
    #[error("root {}: holds layers of driver {has}; it cannot be opened with driver {asked}", root.display())]
    DriverMismatch {
        /// The store's root.
        root: PathBuf,
        /// The driver that owns the root.
        has: String,
        /// The driver that was asked for.
        asked: String,
    },
    /// The root is being migrated to another driver (or was moved to
    /// another root) by `strata migrate`; it cannot be used meanwhile.
    #[error("root {}: {msg}", root.display())]
    Migration {
        /// The store's root.
        root: PathBuf,
        /// What is going on and what to run.
        msg: String,
    },
    /// The layer is in a state that forbids the operation (being created or
    /// removed by another process).
    #[error("layer {id}: {why}")]
    State {
        /// The layer.
        id: String,
        /// Its state and why that matters.
        why: String,
    },
}

impl Error {
    pub(crate) fn db<'a>(
        path: &'a std::path::Path,
        op: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
        move |source| Error::Db {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// The driver-contract error inside, if this is one.
    pub fn as_layer(&self) -> Option<&strata_driver_api::Error> {
        match self {
            Error::Layer(e) => Some(e),
            _ => None,
        }
    }
}
