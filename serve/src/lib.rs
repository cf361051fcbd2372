//! strata as a containerd snapshotter.
//!
//! containerd loads external snapshotters as proxy plugins: a unix socket
//! speaking its `containerd.services.snapshots.v1.Snapshots` gRPC service.
//! This crate serves that service over a strata [`Store`] and whichever
//! driver the store opened, so containerd, `ctr` and nerdctl can keep
//! images and containers on any strata backend:
//!
//! ```toml
//! # containerd's config.toml
//! [proxy_plugins.strata]
//!   type = "snapshot"
//!   address = "/run/strata/snapshotter.sock"
//! ```
//!
//! [`Snapshots`] is containerd's snapshot model on the store (see
//! [`snapshots`] for how snapshots map to layers); [`serve`] runs the gRPC
//! server on a socket until a shutdown future resolves, finishing the
//! requests in flight.

mod error;
pub mod filter;
mod grpc;
pub mod snapshots;

pub use error::{Error, Result};
pub use snapshots::{Kind, Snapshot, Snapshots, Update, Usage, KEY_LABEL};

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use strata_store::Store;

/// Serves `store` as a containerd snapshotter on the unix socket `address`
/// until `shutdown` resolves, then stops accepting, lets the requests in
/// flight finish and removes the socket.
///
/// The socket's directory is created if missing. A socket file left by a
/// server that is gone is replaced; a socket some process still listens on
/// is an error.
///
/// # Errors
/// [`Error::Socket`] (the socket is in use or cannot be made),
/// [`Error::Transport`]; errors of [`Snapshots::open`].
pub async fn serve(
    store: Store,
    address: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let snapshots = Arc::new(Snapshots::open(store).await?);
    serve_snapshots(snapshots, address, shutdown).await
}

/// [`serve`] with snapshots already opened.
///
/// # Errors
/// As [`serve`].
pub async fn serve_snapshots(
    snapshots: Arc<Snapshots>,
    address: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let sock_err = |op, source| Error::Socket {
        path: address.to_path_buf(),
        op,
        source,
    };
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(|e| sock_err("create its directory", e))?;
    }
    if std::fs::symlink_metadata(address).is_ok() {
        match std::os::unix::net::UnixStream::connect(address) {
            Ok(_) => {
                return Err(sock_err(
                    "bind",
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another server listens on it",
                    ),
                ))
            }
            Err(_) => {
                std::fs::remove_file(address).map_err(|e| sock_err("remove a stale socket", e))?
            }
        }
    }
    let listener = tokio::net::UnixListener::bind(address).map_err(|e| sock_err("bind", e))?;
    tracing::info!(address = %address.display(), driver = snapshots.store().driver().name(), "serving snapshots");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let r = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(grpc::Service(
            snapshots,
        ))))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(address);
    r.map_err(|source| Error::Transport {
        path: address.to_path_buf(),
        source,
    })
}
