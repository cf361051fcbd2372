//! The hostile-archive corpus ([`crate::hostile`]) against the driver's
//! `apply_diff`: every tar applied to a fresh child of one base layer.

use super::scenario;
use crate::hostile::{self, Expect};
use crate::{tree, Ctx, Outcome, Scenario};
use anyhow::{Context, Result};
use std::fs;
use std::time::Duration;
use strata_driver_api::Error;

pub(crate) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario!("hostile-archives", "hostile", root: true, hostile_archives,
            "the hostile tar corpus: each rejected with an error (or applied harmlessly), nothing written outside the root, the base layer and the layer list unchanged"),
        scenario!("symlinks-stay-inside", "hostile", root: true, symlinks_stay_inside,
            "symlinks out of a layer (and a dir replaced by one) are never followed by create, changes, diff, diff-size or remove"),
    ]
}

/// The canary directory next to the driver's root, made afresh.
fn canary_of(cx: &Ctx) -> Result<std::path::PathBuf> {
    let parent = cx
        .root
        .parent()
        .context("the driver root has no parent directory for the canary")?;
    let canary = parent.join("strata-hostile-canary");
    let _ = fs::remove_dir_all(&canary);
    hostile::make_canary(&canary)?;
    Ok(canary)
}

async fn symlinks_stay_inside(cx: Ctx) -> Result<Outcome> {
    let canary = canary_of(&cx)?;
    let result = symlinks(&cx, &canary).await;
    let _ = fs::remove_dir_all(&canary);
    result
}

async fn symlinks(cx: &Ctx, canary: &std::path::Path) -> Result<Outcome> {
    use crate::ops;
    use crate::tree::Kind;
    use std::os::unix::ffi::OsStrExt;
    let before = hostile::snapshot(canary)?;
    let cab = canary.as_os_str().as_bytes();
    let sentinel = canary.join("sentinel");
    cx.build(
        "sbase",
        None,
        vec![
            ops::mkdir("d"),
            ops::write("d/f", "f"),
            ops::write("x", "x"),
            ops::symlink(cab, "abs"),
            ops::symlink([b"../".repeat(40).as_slice(), &cab[1..]].concat(), "deep"),
        ],
    )
    .await?;
    // The child swaps a directory and a file of its parent for symlinks
    // out of the layer: a differ that followed them would see the canary's
    // files as the layer's.
    cx.build(
        "schild",
        Some("sbase"),
        vec![
            ops::rm("d"),
            ops::symlink(cab, "d"),
            ops::rm("x"),
            ops::symlink(sentinel.as_os_str().as_bytes(), "x"),
            ops::symlink(cab, "new"),
        ],
    )
    .await?;
    cx.create("sgrand", Some("schild")).await?;
    let mut problems = Vec::new();
    // Paths below a symlink out of the layer: in the base only `abs` and
    // `deep` are symlinks, in the child also `d`, `x` and `new`.
    let base_links: &[&str] = &["/abs/", "/deep/"];
    let child_links: &[&str] = &["/d/", "/abs/", "/deep/", "/new/", "/x/"];
    let below = |p: &[u8], links: &[&str]| links.iter().any(|pre| p.starts_with(pre.as_bytes()));
    let outside = |p: &[u8]| below(p, child_links);
    let changes = cx.changes("schild", Some("sbase")).await?;
    for c in &changes {
        if outside(c.path.as_os_str().as_bytes()) {
            problems.push(format!(
                "changes lists {} (through a symlink)",
                c.path.display()
            ));
        }
    }
    for (id, parent, links) in [
        ("schild", Some("sbase"), child_links),
        ("sbase", None, base_links),
        ("sgrand", Some("sbase"), child_links),
    ] {
        let tar = cx.diff_to_file(id, parent).await?;
        let bytes = fs::read(&tar)?;
        let _ = fs::remove_file(&tar);
        for e in crate::tarfile::list(&bytes) {
            let mut name = b"/".to_vec();
            name.extend_from_slice(e.name.strip_prefix(b"./").unwrap_or(&e.name));
            if below(&name, links) {
                problems.push(format!(
                    "the diff of {id} holds {} (through a symlink)",
                    String::from_utf8_lossy(&name)
                ));
            }
        }
        // `dir/inner` of the canary holds "inner"; no name or link
        // target of these layers does.
        if bytes.windows(5).any(|w| w == b"inner") {
            problems.push(format!("the diff of {id} holds the canary's data"));
        }
    }
    let size = cx.diff_size("schild", Some("sbase")).await?;
    if size >= 8 {
        problems.push(format!(
            "diff_size of the child is {size}: more than its symlinks, as if the canary's files were counted"
        ));
    }
    for id in ["schild", "sgrand"] {
        let m = cx.manifest(id).await?;
        for (path, want) in [
            ("/d", Kind::Symlink),
            ("/x", Kind::Symlink),
            ("/abs", Kind::Symlink),
        ] {
            match m.get(path) {
                Some(e) if e.kind == want => {}
                other => problems.push(format!(
                    "{id}: {path} is {:?}, expected a symlink",
                    other.map(|e| e.kind)
                )),
            }
        }
        if let Some(e) = m.entries.iter().find(|e| outside(&e.path)) {
            problems.push(format!(
                "{id} shows {} (a symlink followed on create)",
                String::from_utf8_lossy(&e.path)
            ));
        }
    }
    for id in ["sgrand", "schild", "sbase"] {
        cx.driver.remove(&crate::ctx::lid(id)?).await?;
    }
    if hostile::snapshot(canary)? != before {
        problems.push("the canary next to the root changed".into());
    }
    if problems.is_empty() {
        Ok(Outcome::Pass)
    } else {
        Ok(Outcome::Fail(problems.join("\n")))
    }
}

/// `s`, cut to 300 characters (errors may name paths of 5,000 bytes).
fn clip(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Longest one apply may take (a driver that opened a fifo would hang).
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

async fn hostile_archives(cx: Ctx) -> Result<Outcome> {
    let canary = canary_of(&cx)?;
    let result = run(&cx, &canary).await;
    let _ = fs::remove_dir_all(&canary);
    result
}

async fn run(cx: &Ctx, canary: &std::path::Path) -> Result<Outcome> {
    let canary_before = hostile::snapshot(canary)?;
    cx.build("hbase", None, hostile::base_ops(canary)).await?;
    let base_before = cx.manifest("hbase").await?;
    let mut ids_before = cx.driver.list().await.context("list")?;
    ids_before.sort();

    let corpus = hostile::corpus(canary);
    let (mut rejected, mut accepted, mut failures) = (0usize, 0usize, Vec::new());
    for (i, case) in corpus.iter().enumerate() {
        let id = format!("hcase{i}");
        cx.create(&id, Some("hbase")).await?;
        let file = cx.scratch_path("hostile.tar");
        fs::write(&file, &case.tar)?;
        let lid = crate::ctx::lid(&id)?;
        let base = crate::ctx::lid("hbase")?;
        let f = fs::File::open(&file)?;
        let applied = tokio::time::timeout(
            APPLY_TIMEOUT,
            cx.driver
                .apply_diff(&lid, Some(&base), Box::new(std::io::BufReader::new(f))),
        )
        .await;
        let _ = fs::remove_file(&file);
        let mut fail = |why: String| failures.push(format!("{}: {}", case.name, clip(&why)));
        match (applied, case.expect) {
            (Err(_), _) => fail(format!("apply did not finish in {APPLY_TIMEOUT:?}")),
            (Ok(Err(e)), Expect::Reject | Expect::NoEscape) => {
                rejected += 1;
                let clear = matches!(e, Error::Archive { .. } | Error::Io { .. })
                    && !e.to_string().is_empty();
                if !clear {
                    fail(format!("rejected with an unclear error: {e:?}"));
                }
            }
            (Ok(Err(e)), Expect::Accept(_)) => fail(format!("rejected: {e}")),
            (Ok(Ok(_)), Expect::Reject) => fail("accepted, expected a rejection".into()),
            (Ok(Ok(_)), Expect::NoEscape) => accepted += 1,
            (Ok(Ok(_)), Expect::Accept(check)) => {
                accepted += 1;
                let path = cx.mount(&id).await?;
                let checked = tokio::task::spawn_blocking(move || check(&path))
                    .await
                    .context("check task panicked")?;
                cx.unmount(&id).await?;
                if let Err(e) = checked {
                    fail(format!("applied, but {e:#}"));
                }
            }
        }
        match hostile::snapshot(canary) {
            Ok(now) if now == canary_before => {}
            Ok(now) => fail(format!(
                "the canary next to the root changed: {:?}",
                now.iter()
                    .filter(|l| !canary_before.contains(l))
                    .collect::<Vec<_>>()
            )),
            Err(e) => fail(format!("the canary: {e:#}")),
        }
        // A rejected tar may leave part of itself in the layer (the
        // driver contract): the layer is removed, as the store does.
        if let Err(e) = cx.driver.remove(&lid).await {
            fail(format!("removing the layer afterwards: {e}"));
        }
    }
    let mut ids_after = cx.driver.list().await.context("list")?;
    ids_after.sort();
    if ids_after != ids_before {
        failures.push(format!(
            "the layer list changed: before {ids_before:?}, after {ids_after:?}"
        ));
    }
    let base_after = cx.manifest("hbase").await?;
    if let Err(e) = tree::assert_equal_as(&base_before, &base_after, "before", "after the corpus") {
        failures.push(format!("the base layer changed: {e:#}"));
    }
    let summary = format!(
        "{} archives: {rejected} rejected, {accepted} applied harmlessly",
        corpus.len()
    );
    // Written past the test harness's capture: the counts per driver are
    // part of what the suite reports.
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "hostile-archives [{}]: {summary}",
            cx.factory
        );
    }
    cx.note(summary);
    if failures.is_empty() {
        Ok(Outcome::Pass)
    } else {
        Ok(Outcome::Fail(format!(
            "{} of {} archives misbehaved:\n{}",
            failures.len(),
            corpus.len(),
            failures.join("\n")
        )))
    }
}
