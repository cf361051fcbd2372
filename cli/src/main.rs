//! The `strata` command line: parses, opens the store, calls it, prints.
//!
//! Errors are one line on stderr (`strata: ...`) and exit status 1; usage
//! errors exit 2. `RUST_LOG` sets the log filter (default `warn`).

mod check;
mod commands;
mod compare;
mod malloc;
mod migrate;
mod progress;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use strata_driver_api::LayerId;

/// strata: layered container filesystems with pluggable storage drivers.
#[derive(Parser, Debug)]
#[command(name = "strata", version, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (default: $STRATA_CONFIG, else /etc/strata/strata.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Root directory of the store (overrides $STRATA_ROOT and the config).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Driver: `auto` or a name (overrides $STRATA_DRIVER and the config).
    /// `check` takes it several times.
    #[arg(long, global = true, value_name = "NAME")]
    pub driver: Vec<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Driver, root, backing filesystem, capabilities, driver status, and
    /// why other drivers were not picked.
    Info,
    /// Create a new empty layer (read-only unless --rw) on PARENT.
    Create {
        /// The parent layer.
        #[arg(long, value_name = "P")]
        parent: Option<LayerId>,
        /// A read-write layer (a container's writable layer).
        #[arg(long)]
        rw: bool,
        /// Size limit in bytes, where the driver has quotas.
        #[arg(long, value_name = "BYTES")]
        size: Option<u64>,
        /// A label (repeatable).
        #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The new layer's id (default: random 64 hex digits).
        id: Option<LayerId>,
    },
    /// Create a read-only layer from a layer tar (plain, gzip or zstd).
    Import {
        /// The parent layer.
        #[arg(long, value_name = "P")]
        parent: Option<LayerId>,
        /// The new layer's id (default: random 64 hex digits).
        #[arg(long, value_name = "ID")]
        id: Option<LayerId>,
        /// The tar file, or `-` for stdin (the default).
        file: Option<PathBuf>,
    },
    /// Apply a layer tar into an existing (unmounted) layer.
    Apply {
        /// The layer.
        id: LayerId,
        /// The tar file, or `-` for stdin (the default).
        file: Option<PathBuf>,
    },
    /// Mount a layer (refcounted across processes); prints the path.
    Mount {
        /// The layer.
        id: LayerId,
    },
    /// Drop one mount of a layer; the last one unmounts it.
    Unmount {
        /// Unmount whatever the mount count is.
        #[arg(long)]
        force: bool,
        /// The layer.
        id: LayerId,
    },
    /// Write a layer's OCI layer tar against P (default: its parent).
    Diff {
        /// The layer to diff against.
        #[arg(long, value_name = "P")]
        parent: Option<LayerId>,
        /// Write the tar here instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// The layer.
        id: LayerId,
    },
    /// List changes against P (default: its parent): `A|C|D /path` lines.
    Changes {
        /// The layer to compare with.
        #[arg(long, value_name = "P")]
        parent: Option<LayerId>,
        /// The layer.
        id: LayerId,
    },
    /// Bytes of content of the diff against P (default: its parent).
    DiffSize {
        /// The layer to compare with.
        #[arg(long, value_name = "P")]
        parent: Option<LayerId>,
        /// The layer.
        id: LayerId,
    },
    /// Remove a layer; refuses one with children, or mounted unless --force.
    Rm {
        /// Unmount it first if mounted.
        #[arg(long)]
        force: bool,
        /// The layer.
        id: LayerId,
    },
    /// List every layer.
    Ls,
    /// Run the conformance suite with the configured driver (or each --driver).
    Check {
        /// Run only scenarios whose name contains this.
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
    },
    /// Measure every driver this host can run on the same workloads,
    /// against references measured in the same run; writes a table, JSON,
    /// SVG charts and a Markdown report.
    Compare(compare::CompareArgs),
    /// Move every layer to another driver (or root), verified and
    /// resumable; or import a Docker AUFS store.
    Migrate(migrate::Args),
    /// Serve the store as a containerd snapshotter (a `snapshot` proxy
    /// plugin) on a unix socket, until SIGTERM.
    Serve(serve::Args),
    /// Check the store's consistency.
    Fsck {
        /// Mend what can be mended.
        #[arg(long)]
        repair: bool,
        /// Also take the diff of every read-only layer and compare digests.
        #[arg(long)]
        verify: bool,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// The error and its causes on one line, each cause only if the text so
/// far does not already say it (library errors often print their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace('\n', " ")
}

fn main() -> ExitCode {
    malloc::cap_arenas();
    // Hidden: `strata aufs-fuse-server ...` runs an aufs FUSE server in the
    // foreground (the aufs driver execs it; not for users).
    #[cfg(feature = "aufs")]
    {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if args
            .get(1)
            .is_some_and(|a| a == strata_drivers::aufs::server::SUBCOMMAND)
        {
            let code = strata_drivers::aufs::server::main(&args[2..]);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
    }
    let cli = Cli::parse();
    if cli.driver.len() > 1 && !matches!(cli.cmd, Cmd::Check { .. }) {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--driver may be given more than once only for `check`",
            )
            .exit();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}
