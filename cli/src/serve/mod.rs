//! `strata serve`: the store as a containerd snapshotter on a unix socket
//! (see the strata-serve crate). Runs until SIGTERM or SIGINT, then
//! finishes the requests in flight and exits 0.

use anyhow::{Context, Result};
use std::path::PathBuf;
use strata_store::Store;

/// Arguments of `strata serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The unix socket to listen on (containerd's `[proxy_plugins.NAME]
    /// address`).
    #[arg(
        long,
        value_name = "SOCKET",
        default_value = "/run/strata/snapshotter.sock"
    )]
    pub address: PathBuf,
}

/// Resolves on the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot watch for SIGTERM/SIGINT ({e}); stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
    tracing::info!("stopping: finishing the requests in flight");
}

/// Serves `store` on `args.address` until a stop signal.
pub async fn run(store: Store, args: &Args) -> Result<()> {
    let driver = store.driver().name();
    let root = store.root().to_path_buf();
    eprintln!(
        "strata serve: driver {driver}, root {}, listening on {}",
        root.display(),
        args.address.display()
    );
    strata_serve::serve(store, &args.address, stop_signal())
        .await
        .with_context(|| format!("serve {}", args.address.display()))?;
    eprintln!("strata serve: stopped");
    Ok(())
}
