//! One function per command.

use crate::{progress, Cli, Cmd};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use strata_driver_api::{CreateOpts, LayerId, MountOpts, TarSink, TarSource};
use strata_store::{fsinfo, Config, Overrides, Store};

/// Loads the configuration as the global flags say.
pub fn config(cli: &Cli) -> Result<Config> {
    Ok(Config::load(&Overrides {
        config: cli.config.clone(),
        root: cli.root.clone(),
        driver: cli.driver.first().cloned(),
    })?)
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).context("write JSON")?;
    writeln!(out).context("write stdout")?;
    Ok(())
}

fn random_id() -> LayerId {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    LayerId::new(hex).expect("64 hex digits are a valid id")
}

/// Opens `file` (`None` or `-`: stdin) as a tar source with a progress bar.
fn tar_source(
    file: Option<&Path>,
    msg: &'static str,
) -> Result<(TarSource, indicatif::ProgressBar)> {
    match file {
        None => stdin_source(msg),
        Some(p) if p == Path::new("-") => stdin_source(msg),
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            let pb = progress::bytes(len, msg);
            Ok((Box::new(pb.wrap_read(f)), pb))
        }
    }
}

fn stdin_source(msg: &'static str) -> Result<(TarSource, indicatif::ProgressBar)> {
    if std::io::stdin().is_terminal() {
        bail!("no tar given: name a FILE, or pipe one into stdin");
    }
    let pb = progress::bytes(None, msg);
    let stdin: Box<dyn Read + Send> = Box::new(std::io::stdin());
    Ok((Box::new(pb.wrap_read(stdin)), pb))
}

/// Runs the command; `Ok` carries the exit status for commands that report
/// findings without failing (fsck, check).
pub async fn run(cli: Cli) -> Result<ExitCode> {
    if let Cmd::Check { filter } = &cli.cmd {
        return crate::check::run(&cli, filter.as_deref()).await;
    }
    if let Cmd::Compare(args) = &cli.cmd {
        return crate::compare::run(args, cli.json).await;
    }
    if let Cmd::Migrate(args) = &cli.cmd {
        return crate::migrate::run(&cli, args).await;
    }
    if let Cmd::Diff { output: None, .. } = &cli.cmd {
        if cli.json {
            use clap::CommandFactory;
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "`diff --json` needs -o FILE (the tar goes to stdout otherwise)",
                )
                .exit();
        }
        if std::io::stdout().is_terminal() {
            bail!("refusing to write a tar to a terminal: use -o FILE or redirect stdout");
        }
    }
    let cfg = config(&cli)?;
    let store = Store::open(&cfg).await?;
    for line in store.recovered() {
        tracing::info!("{line}");
    }
    if let Cmd::Serve(args) = &cli.cmd {
        crate::serve::run(store, args).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let json = cli.json;
    match cli.cmd {
        Cmd::Info => info(&store, &cfg, json).await?,
        Cmd::Create {
            parent,
            rw,
            size,
            labels,
            id,
        } => {
            let id = id.unwrap_or_else(random_id);
            let opts = CreateOpts {
                read_only: !rw,
                size,
                labels: labels.into_iter().collect(),
            };
            let layer = store.create(&id, parent.as_ref(), &opts).await?;
            if json {
                print_json(&layer)?;
            } else {
                println!("{id}");
            }
        }
        Cmd::Import { parent, id, file } => {
            let id = id.unwrap_or_else(random_id);
            let (tar, pb) = tar_source(file.as_deref(), "import")?;
            let res = store
                .import(&id, parent.as_ref(), &BTreeMap::new(), tar)
                .await;
            pb.finish_and_clear();
            let layer = res?;
            if json {
                print_json(&layer)?;
            } else {
                println!("{id}");
                if let Some(d) = &layer.digest {
                    println!("{d}");
                }
            }
        }
        Cmd::Apply { id, file } => {
            let (tar, pb) = tar_source(file.as_deref(), "apply")?;
            let res = store.apply(&id, tar).await;
            pb.finish_and_clear();
            let bytes = res?;
            if json {
                let layer = store.get(&id)?;
                print_json(&json!({"id": id, "bytes": bytes, "digest": layer.digest}))?;
            } else {
                println!("{bytes}");
            }
        }
        Cmd::Mount { id } => {
            let path = store.mount(&id, &MountOpts::default()).await?;
            if json {
                let layer = store.get(&id)?;
                print_json(&json!({"id": id, "path": path, "mount_count": layer.mount_count}))?;
            } else {
                std::io::stdout()
                    .write_all(path.as_os_str().as_bytes())
                    .and_then(|_| std::io::stdout().write_all(b"\n"))
                    .context("write stdout")?;
            }
        }
        Cmd::Unmount { force, id } => {
            store.unmount(&id, force).await?;
        }
        Cmd::Diff { parent, output, id } => diff(&store, parent, output, id, json).await?,
        Cmd::Changes { parent, id } => {
            let changes = store.changes(&id, parent.as_ref()).await?;
            if json {
                let v: Vec<_> = changes
                    .iter()
                    .map(|c| {
                        json!({"kind": c.kind.letter().to_string(), "path": c.path.to_string_lossy()})
                    })
                    .collect();
                print_json(&v)?;
            } else {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for c in &changes {
                    let mut line = vec![c.kind.letter() as u8, b' '];
                    if !c.path.starts_with("/") {
                        line.push(b'/');
                    }
                    line.extend_from_slice(c.path.as_os_str().as_bytes());
                    line.push(b'\n');
                    out.write_all(&line).context("write stdout")?;
                }
                out.flush().context("write stdout")?;
            }
        }
        Cmd::DiffSize { parent, id } => {
            let size = store.diff_size(&id, parent.as_ref()).await?;
            if json {
                print_json(&json!({"id": id, "size": size}))?;
            } else {
                println!("{size}");
            }
        }
        Cmd::Rm { force, id } => store.remove(&id, force).await?,
        Cmd::Ls => {
            let layers = store.list()?;
            if json {
                print_json(&layers)?;
            } else {
                let rows: Vec<[String; 6]> = layers
                    .iter()
                    .map(|l| {
                        [
                            l.id.to_string(),
                            l.parent.as_ref().map_or("-".into(), |p| p.to_string()),
                            l.state.to_string(),
                            l.size.to_string(),
                            l.digest.clone().unwrap_or_else(|| "-".into()),
                            l.mount_count.to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "PARENT", "STATE", "SIZE", "DIGEST", "MOUNTS"],
                    &rows,
                );
            }
        }
        Cmd::Fsck { repair, verify } => {
            let report = store.fsck(repair, verify).await?;
            let ok = report.all_repaired();
            if json {
                print_json(&json!({
                    "clean": report.is_clean(),
                    "recovered_at_open": store.recovered(),
                    "report": report,
                }))?;
            } else {
                for line in store.recovered() {
                    println!("recovered at open: {line}");
                }
                for f in &report.findings {
                    println!(
                        "{} {}: {}{}",
                        f.kind.as_str(),
                        f.id,
                        f.detail,
                        if f.repaired { " [repaired]" } else { "" }
                    );
                }
                for id in &report.in_progress {
                    println!("in progress (another process): {id}");
                }
                if report.is_clean() {
                    println!(
                        "clean: {} records, {} driver layers",
                        report.records, report.driver_layers
                    );
                } else {
                    let repaired = report.findings.iter().filter(|f| f.repaired).count();
                    println!("{} findings, {} repaired", report.findings.len(), repaired);
                }
            }
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Check { .. } | Cmd::Compare(_) | Cmd::Migrate(_) | Cmd::Serve(_) => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints rows in columns separated by two spaces.
pub fn print_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut width = head.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

async fn info(store: &Store, cfg: &Config, json: bool) -> Result<()> {
    let driver = store.driver();
    let caps = driver.capabilities();
    let status = driver.status().await?;
    let backing = fsinfo::backing_fs(store.root())?;
    let sel = store.selection();
    let layers = store.list()?.len();
    if json {
        let status: Vec<_> = status
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        return print_json(&json!({
            "driver": driver.name(),
            "root": store.root(),
            "config": cfg.file,
            "root_from": cfg.root_origin.to_string(),
            "driver_from": cfg.driver_origin.to_string(),
            "backing_fs": backing,
            "capabilities": caps,
            "status": status,
            "selected_because": sel.reason,
            "not_picked": sel.others,
            "layers": layers,
        }));
    }
    println!("driver: {}", driver.name());
    println!("root: {}", store.root().display());
    println!(
        "config: {}",
        cfg.file
            .as_ref()
            .map_or("(built-in defaults)".into(), |f| f.display().to_string())
    );
    println!("root from: {}", cfg.root_origin);
    println!("driver from: {}", cfg.driver_origin);
    println!("backing filesystem: {backing}");
    println!("selected because: {}", sel.reason);
    println!("layers: {layers}");
    println!(
        "capabilities: native_diff={} quota={} reflink={} max_depth={} mount_spec={} read_only_mounts={}",
        caps.native_diff, caps.quota, caps.reflink, caps.max_depth, caps.mount_spec, caps.read_only_mounts
    );
    for (k, v) in &status {
        println!("status {k}: {v}");
    }
    for r in &sel.others {
        println!("not picked {}: {}", r.driver, r.why);
    }
    Ok(())
}

async fn diff(
    store: &Store,
    parent: Option<LayerId>,
    output: Option<PathBuf>,
    id: LayerId,
    json: bool,
) -> Result<()> {
    let pb = progress::bytes(None, "diff");
    let sink: TarSink = match &output {
        Some(p) => {
            let f = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
            Box::new(pb.wrap_write(std::io::BufWriter::with_capacity(1 << 18, f)))
        }
        None => Box::new(pb.wrap_write(std::io::BufWriter::with_capacity(
            1 << 18,
            std::io::stdout(),
        ))),
    };
    let res = store.diff(&id, parent.as_ref(), sink).await;
    pb.finish_and_clear();
    let outcome = match res {
        Ok(o) => o,
        Err(e) => {
            if let Some(p) = &output {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    };
    if json {
        print_json(&json!({
            "id": id,
            "parent": outcome.parent,
            "digest": outcome.digest,
            "bytes": outcome.bytes,
            "recorded": outcome.recorded,
            "output": output,
        }))?;
    }
    Ok(())
}
