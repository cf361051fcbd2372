//! The snapshotter's errors: what containerd's snapshot model forbids
//! (unknown keys, taken keys, parents that are not committed, snapshots
//! with children) plus the store's own errors, each mapped to the gRPC code
//! containerd turns back into its `errdefs` (`NotFound`, `AlreadyExists`,
//! `FailedPrecondition`, `InvalidArgument`).

use std::path::PathBuf;
use strata_driver_api::Error as DError;

/// The result type of the snapshotter.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong serving snapshots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot has this key or name.
    #[error("snapshot {key:?}: not found")]
    NotFound {
        /// The key or name asked for.
        key: String,
    },
    /// The key or name is taken (active keys and committed names share one
    /// key space).
    #[error("snapshot {key:?}: already exists")]
    AlreadyExists {
        /// The key or name that is taken.
        key: String,
    },
    /// The snapshot is in a state that forbids the operation (committing a
    /// view or a committed snapshot, removing one with children).
    #[error("snapshot {key:?}: {why}")]
    FailedPrecondition {
        /// The snapshot.
        key: String,
        /// What forbids it.
        why: String,
    },
    /// A request argument is not acceptable (an empty key, a parent that is
    /// not committed, an unknown field path, a malformed filter).
    #[error("invalid argument: {what}: {why}")]
    InvalidArgument {
        /// The argument and its value.
        what: String,
        /// Why it was refused.
        why: String,
    },
    /// The layer store (or the driver under it) failed.
    #[error(transparent)]
    Store(#[from] strata_store::Error),
    /// The snapshot table in the store's database failed.
    #[error("database {}: {op}: {source}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database holds a snapshot record that cannot be read.
    #[error("database {}: snapshot {key:?}: {why}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The snapshot.
        key: String,
        /// What is wrong with its record.
        why: String,
    },
    /// The socket could not be set up.
    #[error("socket {}: {op}: {source}", path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server on {}: {source}", path.display())]
    Transport {
        /// The socket's path.
        path: PathBuf,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
}

impl From<DError> for Error {
    fn from(e: DError) -> Self {
        Error::Store(e.into())
    }
}

impl Error {
    pub(crate) fn db(
        path: &std::path::Path,
        op: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Db { path, op, source }
    }

    /// The gRPC code containerd maps back to its error kinds.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Store(e) => match e {
                strata_store::Error::Layer(d) => match d {
                    DError::NotFound { .. } => Code::NotFound,
                    DError::AlreadyExists { .. } => Code::AlreadyExists,
                    DError::HasChildren { .. } | DError::Busy { .. } => Code::FailedPrecondition,
                    DError::InvalidArgument { .. } | DError::InvalidId { .. } => {
                        Code::InvalidArgument
                    }
                    DError::Unsupported { .. } => Code::Unimplemented,
                    _ => Code::Internal,
                },
                strata_store::Error::State { .. } => Code::FailedPrecondition,
                _ => Code::Internal,
            },
            _ => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}
