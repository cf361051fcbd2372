//! `strata migrate`: moves the store to another driver (or root), or
//! imports a Docker AUFS store (see `strata_store::migrate`).

use crate::Cli;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use strata_driver_api::LayerId;
use strata_store::migrate::{self, docker_aufs, MigrateOpts, Progress};
use strata_store::Store;

/// The arguments of `strata migrate`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["to", "from_docker_aufs", "abort"])))]
pub struct Args {
    /// The driver to move every layer to.
    #[arg(long, value_name = "DRIVER")]
    pub to: Option<String>,
    /// Put the migrated store in this (new or empty) root instead of the
    /// current one.
    #[arg(long, value_name = "DIR", requires = "to")]
    pub to_root: Option<PathBuf>,
    /// Keep the source layers (a verified copy instead of a move).
    #[arg(long, requires = "to")]
    pub keep_source: bool,
    /// Import Docker's AUFS store at DIR (e.g. /var/lib/docker/aufs) into
    /// the configured driver.
    #[arg(long, value_name = "DIR", conflicts_with = "to")]
    pub from_docker_aufs: Option<PathBuf>,
    /// Abandon an interrupted migration while every layer still has its
    /// source copy: removes the copies made so far.
    #[arg(long, conflicts_with_all = ["to", "from_docker_aufs"])]
    pub abort: bool,
}

/// Progress on stderr: a bar (layers done, bytes, estimate) on a terminal,
/// one plain line per layer otherwise.
struct Bar {
    verb: &'static str,
    pb: Option<ProgressBar>,
    bytes: AtomicU64,
    done: AtomicU64,
    total: AtomicU64,
}

impl Bar {
    fn new(verb: &'static str) -> Bar {
        let pb = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} layers, {msg}, {elapsed} elapsed, eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb.set_prefix(verb);
            pb
        });
        Bar {
            verb,
            pb,
            bytes: AtomicU64::new(0),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
    fn finish(&self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: usize, already_done: usize) {
        self.total.store(total as u64, Ordering::Relaxed);
        self.done.store(already_done as u64, Ordering::Relaxed);
        match &self.pb {
            Some(pb) => {
                pb.set_length(total as u64);
                pb.set_position(already_done as u64);
                pb.reset_eta();
                pb.set_message("0 B");
            }
            None => eprintln!(
                "{}: {total} layers{}",
                self.verb,
                if already_done > 0 {
                    format!(", {already_done} done by an earlier run")
                } else {
                    String::new()
                }
            ),
        }
    }

    fn layer_done(&self, id: &LayerId, bytes: u64) {
        let all = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.pb {
            Some(pb) => {
                pb.inc(1);
                pb.set_message(indicatif::HumanBytes(all).to_string());
            }
            None => eprintln!(
                "{}: layer {done}/{} {id} ({bytes} bytes, {all} in all)",
                self.verb,
                self.total.load(Ordering::Relaxed)
            ),
        }
    }

    fn note(&self, msg: &str) {
        match &self.pb {
            Some(pb) => pb.println(format!("{}: {msg}", self.verb)),
            None => eprintln!("{}: {msg}", self.verb),
        }
    }
}

/// Runs `strata migrate`.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = crate::commands::config(cli)?;
    if let Some(dir) = &args.from_docker_aufs {
        let store = Store::open(&cfg).await?;
        let bar = Bar::new("import");
        let res = docker_aufs::import(&store, dir, &bar).await;
        bar.finish();
        let report = res?;
        if cli.json {
            crate::commands::print_json(&report)?;
        } else {
            println!(
                "imported {} of {} layers from {} into driver {} ({} already there, {} bytes)",
                report.imported,
                report.layers,
                report.from.display(),
                report.driver,
                report.skipped,
                report.bytes
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.abort {
        let bar = Bar::new("abort");
        let report = migrate::abort(&cfg, &bar).await?;
        if cli.json {
            crate::commands::print_json(&report)?;
        } else {
            println!(
                "aborted the migration to {}: removed {} copies; the store keeps driver {}",
                report.to, report.removed, report.driver
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(to) = &args.to else {
        bail!("name the target driver with --to DRIVER");
    };
    let opts = MigrateOpts {
        to: to.clone(),
        to_root: args.to_root.clone(),
        keep_source: args.keep_source,
    };
    let bar = Bar::new("migrate");
    let res = migrate::migrate(&cfg, &opts, &bar).await;
    bar.finish();
    let report = res?;
    if cli.json {
        crate::commands::print_json(&report)?;
    } else {
        println!(
            "migrated {} layers from {} to {} ({} copied by this run{}, {} bytes); root {}",
            report.layers,
            report.from,
            report.to,
            report.copied,
            if report.resumed {
                ", resuming an interrupted run"
            } else {
                ""
            },
            report.bytes,
            report.to_root.display()
        );
        if report.source_kept {
            println!(
                "the {} layers were kept (in {})",
                report.from,
                report.root.display()
            );
        }
    }
    // A configuration that names the old driver no longer opens the root.
    if cfg.driver != strata_store::config::AUTO && cfg.driver != report.to {
        eprintln!(
            "strata: note: the configuration sets driver = {:?} (from {}); \
             set it to {:?} or \"auto\" to open the migrated store",
            cfg.driver, cfg.driver_origin, report.to
        );
    }
    if report.to_root != report.root {
        eprintln!(
            "strata: note: the store now lives in {}; set root (or --root) to it",
            report.to_root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
