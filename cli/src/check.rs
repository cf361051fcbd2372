//! `strata check`: the conformance suite on this host.
//!
//! Each driver runs the whole suite on scratch roots the suite makes itself
//! (a loop-mounted btrfs for btrfs, temporary directories otherwise), never
//! on the configured store's root.

use crate::Cli;
use anyhow::Result;
use std::process::ExitCode;
use strata_conformance::fixtures::RegistryFactory;
use strata_conformance::{run_suite, Outcome, Report};
use strata_drivers::registry;

/// Runs the conformance suite for each `--driver`, or, without one (or with
/// `auto`), for every driver whose probe passes on this host; drivers that
/// cannot run here are listed with the reason.
pub async fn run(cli: &Cli, filter: Option<&str>) -> Result<ExitCode> {
    let asked: Vec<String> = cli
        .driver
        .iter()
        .filter(|d| d.as_str() != "auto")
        .cloned()
        .collect();
    let scratch = std::env::temp_dir();
    let mut picked = Vec::new();
    let mut not_run = Vec::new();
    if asked.is_empty() {
        for name in registry::NAMES {
            // btrfs gets a loop-mounted btrfs from the suite's fixture, so
            // its probe against the temp dir's filesystem does not apply.
            let probe = if name == "btrfs" {
                registry::is_built(name)
            } else {
                registry::probe(name, &scratch)
            };
            match probe {
                Ok(()) => picked.push(name.to_string()),
                Err(e) => not_run.push((name.to_string(), e.to_string())),
            }
        }
    } else {
        for name in asked {
            if !registry::is_known(&name) {
                anyhow::bail!(
                    "check: unknown driver {name:?}; known drivers: {}",
                    registry::NAMES.join(", ")
                );
            }
            picked.push(name);
        }
    }
    let mut report = Report::default();
    for name in &picked {
        if !cli.json {
            eprintln!("strata check: running the suite on {name}...");
        }
        report.extend(run_suite(&RegistryFactory::new(name.clone()), filter).await);
    }
    let failed = !report.failures().is_empty();
    if cli.json {
        let rows: Vec<_> = report
            .rows
            .iter()
            .map(|r| {
                let (result, detail) = match &r.outcome {
                    Outcome::Pass => ("pass", r.notes.join("; ")),
                    Outcome::Fail(d) => ("fail", d.clone()),
                    Outcome::Skip(d) => ("skip", d.clone()),
                    Outcome::NotApplicable(d) => ("n/a", d.clone()),
                };
                serde_json::json!({
                    "driver": r.driver,
                    "group": r.group,
                    "scenario": r.scenario,
                    "result": result,
                    "detail": detail,
                    "seconds": r.elapsed.as_secs_f64(),
                })
            })
            .collect();
        let not_run: Vec<_> = not_run
            .iter()
            .map(|(d, why)| serde_json::json!({ "driver": d, "why": why }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "rows": rows,
                "not_run": not_run,
                "ok": !failed,
            }))?
        );
    } else {
        report.print();
        for (d, why) in &not_run {
            println!("not run: {d}: {why}");
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
