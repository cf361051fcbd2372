//! Typed errors of the driver contract. Every variant names what it is about:
//! the layer, the path, the device or the tar entry.

use std::path::PathBuf;

/// The result type of every driver-api operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a driver operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The layer does not exist in this driver's root.
    #[error("layer {id}: not found")]
    NotFound {
        /// The layer asked for.
        id: String,
    },
    /// A layer with this id already exists.
    #[error("layer {id}: already exists")]
    AlreadyExists {
        /// The id that is taken.
        id: String,
    },
    /// The layer cannot be removed because other layers are built on it.
    #[error("layer {id}: has children ({children})")]
    HasChildren {
        /// The layer that was to be removed.
        id: String,
        /// Its children, comma separated.
        children: String,
    },
    /// The layer or device is in use (mounted, held open).
    #[error("layer {id}: busy: {why}")]
    Busy {
        /// The layer (or device) that is busy.
        id: String,
        /// What holds it.
        why: String,
    },
    /// The driver cannot work here, or does not have this feature.
    #[error("driver {driver}: unsupported: {why}")]
    Unsupported {
        /// The driver's name.
        driver: String,
        /// Why: the missing kernel feature, filesystem or tool.
        why: String,
    },
    /// A layer id failed validation.
    #[error("invalid layer id {id:?}: {why}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Which rule it broke.
        why: &'static str,
    },
    /// An argument or option is not acceptable.
    #[error("invalid argument: {what}: {why}")]
    InvalidArgument {
        /// The argument or option (and its value).
        what: String,
        /// Why it was refused.
        why: String,
    },
    /// A tar entry was rejected or could not be applied.
    #[error("archive entry {entry:?}: {why}")]
    Archive {
        /// The entry's name as it stands in the tar (lossy UTF-8).
        entry: String,
        /// What was wrong with it.
        why: String,
    },
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation (`open`, `mount`, `mknod`, ...).
        op: &'static str,
        /// The path (or device) it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A failure inside a driver that fits no other variant.
    #[error("driver {driver}: {msg}")]
    Driver {
        /// The driver's name.
        driver: String,
        /// What happened, with its context.
        msg: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`] from an operation, a path and an OS error.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Io`] from a `nix` errno.
    pub fn nix(op: &'static str, path: impl Into<PathBuf>, errno: nix::errno::Errno) -> Self {
        Self::io(op, path, std::io::Error::from(errno))
    }

    /// Builds an [`Error::Archive`].
    pub fn archive(entry: impl AsRef<[u8]>, why: impl Into<String>) -> Self {
        Error::Archive {
            entry: String::from_utf8_lossy(entry.as_ref()).into_owned(),
            why: why.into(),
        }
    }

    /// The raw OS error number behind this error, if there is one
    /// (`ENOSPC`, `EROFS`, `EDQUOT`, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Adds an operation and a path to a `std::io::Result`.
pub trait IoContext<T> {
    /// Maps the error to [`Error::Io`] with `op` and `path`.
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::nix(op, path, e))
    }
}
