//! The hostile-archive corpus ([`strata_conformance::hostile`]) against the
//! archive module alone, in each whiteout format: `Plain` into a copy of
//! the base layer's tree (with its symlinks out of the target), `Overlay`
//! and `Aufs` into an empty directory, as an upper directory or branch is.
//! Every archive: the expected outcome, and the canary next to the target
//! untouched. The driver-level run is the `hostile-archives` scenario.
//!
//! Needs root (mknod, chown, trusted.* xattrs): without it the test prints
//! why and skips, except under `CI=true`, where it fails.

use std::io::Write as _;
use strata_conformance::hostile::{self, Expect};
use strata_conformance::ops;
use strata_driver_api::archive::{self, WhiteoutFormat};

#[test]
fn corpus_against_the_archive_module() {
    if !strata_conformance::fixtures::root_or_skip(
        "hostile_corpus",
        "mknod, chown, trusted.* xattrs",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let canary = tmp.path().join("canary");
    hostile::make_canary(&canary).unwrap();
    let before = hostile::snapshot(&canary).unwrap();
    let corpus = hostile::corpus(&canary);
    let mut failures = Vec::new();
    for format in [
        WhiteoutFormat::Plain,
        WhiteoutFormat::Overlay,
        WhiteoutFormat::Aufs,
    ] {
        let (mut rejected, mut accepted) = (0, 0);
        for (i, case) in corpus.iter().enumerate() {
            let target = tmp.path().join(format!("t-{format:?}-{i}"));
            if format == WhiteoutFormat::Plain {
                ops::reference_root(&target).unwrap();
                ops::apply(&target, &hostile::base_ops(&canary)).unwrap();
            } else {
                std::fs::create_dir(&target).unwrap();
            }
            let r = archive::apply(case.tar.as_slice(), &target, format);
            let what = format!("{format:?} {}", case.name);
            match (r, case.expect) {
                (Err(_), Expect::Reject | Expect::NoEscape) => rejected += 1,
                (Err(e), Expect::Accept(_)) => failures.push(format!("{what}: rejected: {e}")),
                (Ok(_), Expect::Reject) => failures.push(format!("{what}: accepted")),
                (Ok(_), Expect::NoEscape) => accepted += 1,
                (Ok(_), Expect::Accept(check)) => {
                    accepted += 1;
                    if format == WhiteoutFormat::Plain {
                        if let Err(e) = check(&target) {
                            failures.push(format!("{what}: applied, but {e:#}"));
                        }
                    }
                }
            }
            if hostile::snapshot(&canary).unwrap() != before {
                failures.push(format!("{what}: the canary changed"));
                hostile::make_canary(&canary).unwrap();
            }
            std::fs::remove_dir_all(&target).unwrap();
        }
        let _ = writeln!(
            std::io::stderr(),
            "hostile corpus, archive module, {format:?}: {} archives, {rejected} rejected, {accepted} applied",
            corpus.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
