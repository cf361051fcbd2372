//! `strata import` (and create, rm) killed with SIGKILL at every named step
//! and at random moments: the next command finds the complete layer or
//! none, and fsck reports clean.

mod common;
use common::*;
use std::os::unix::process::ExitStatusExt;

/// A tar of a few hundred files, big enough that a kill can land mid-apply.
fn big_tar(r: &Root, name: &str, files: usize, size: usize) -> std::path::PathBuf {
    let src = r.path(&format!("{name}-src"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..files {
        let body: Vec<u8> = (0..size).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        std::fs::write(src.join(format!("d/f{i:04}")), body).unwrap();
    }
    let t = r.path(&format!("{name}.tar"));
    make_tar(&src, &["d"], &t, false);
    t
}

/// After a crash: `id` is either absent, or ready with the digest of a
/// fresh diff; and fsck is clean.
fn complete_or_absent(r: &Root, id: &str, expect_present: Option<bool>) -> bool {
    let layer = r.layer(id);
    let present = layer.is_some();
    if let Some(want) = expect_present {
        assert_eq!(layer.is_some(), want, "{id}: {layer:?}");
    }
    // The vfs layout: `dir/<id>` the tree, `meta/<id>` the record.
    let vfs = r.root.join("vfs");
    match layer {
        None => {
            assert!(!vfs.join("dir").join(id).exists(), "{id}: tree left");
            assert!(!vfs.join("meta").join(id).exists(), "{id}: meta left");
        }
        Some(l) => {
            assert_eq!(l["state"], "ready", "{l}");
            let out = r.path(&format!("{id}.check.tar"));
            r.ok(&["diff", "-o", out.to_str().unwrap(), id]);
            if !l["digest"].is_null() {
                assert_eq!(l["digest"], sha256_file(&out).as_str(), "{id}");
            }
        }
    }
    r.fsck_clean();
    present
}

fn crash_at(r: &Root, step: &str, args: &[&str]) -> std::process::Output {
    r.cmd(args)
        .env("STRATA_TEST_CRASH_AT", step)
        .output()
        .unwrap()
}

#[test]
fn import_killed_at_every_step() {
    if !need_root("import_killed_at_every_step") {
        return;
    }
    let r = Root::new();
    let t = big_tar(&r, "t", 40, 20_000);
    r.ok(&["import", "--id", "base", t.to_str().unwrap()]);
    let steps = [
        ("import:after-record", false),
        ("import:after-create", false),
        ("import:mid-apply", false),
        ("import:after-apply", false),
        ("import:after-digest", false),
        ("import:before-ready", false),
        ("import:after-ready", true),
    ];
    for (i, (step, present)) in steps.iter().enumerate() {
        let id = format!("k{i}");
        let o = crash_at(
            &r,
            step,
            &[
                "import",
                "--parent",
                "base",
                "--id",
                &id,
                t.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.signal(), Some(9), "{step}: not killed: {o:?}");
        complete_or_absent(&r, &id, Some(*present));
    }
}

#[test]
fn create_and_rm_killed() {
    if !need_root("create_and_rm_killed") {
        return;
    }
    let r = Root::new();
    for (i, step) in [
        "create:after-record",
        "create:after-driver",
        "create:before-ready",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("c{i}");
        let o = crash_at(&r, step, &["create", &id]);
        assert_eq!(o.status.signal(), Some(9), "{step}");
        complete_or_absent(&r, &id, Some(false));
    }
    for step in ["rm:after-mark", "rm:after-driver"] {
        r.ok(&["create", "victim"]);
        let o = crash_at(&r, step, &["rm", "victim"]);
        assert_eq!(o.status.signal(), Some(9), "{step}");
        complete_or_absent(&r, "victim", Some(false));
    }
    // A mount killed after the driver mounted: fsck finds the mount with
    // count 0 and --repair adopts it.
    r.ok(&["create", "--rw", "m"]);
    let o = crash_at(&r, "mount:after-driver", &["mount", "m"]);
    assert_eq!(o.status.signal(), Some(9));
    let o = r.run(&["fsck"]);
    let out = String::from_utf8_lossy(&o.stdout);
    if r.layer("m").unwrap()["mount_count"] == 0 && !mounts_under(&r.root).is_empty() {
        assert!(out.contains("unrecorded-mount"), "{out}");
        r.ok(&["fsck", "--repair"]);
        assert_eq!(r.layer("m").unwrap()["mount_count"], 1);
    }
    r.fsck_clean();
    r.ok(&["unmount", "--force", "m"]);
    assert!(mounts_under(&r.root).is_empty());
}

#[test]
fn import_killed_at_random_moments() {
    if !need_root("import_killed_at_random_moments") {
        return;
    }
    let r = Root::new();
    let t = big_tar(&r, "t", 200, 100_000);
    // How long an import takes here, to spread the kills over it.
    // (The quicker of two runs: the first one warms the caches.)
    let mut full = std::time::Duration::MAX;
    for _ in 0..2 {
        let start = std::time::Instant::now();
        r.ok(&["import", "--id", "timing", t.to_str().unwrap()]);
        full = full.min(start.elapsed());
        r.ok(&["rm", "timing"]);
    }
    for i in 0..6u32 {
        let id = format!("r{i}");
        let mut child = r
            .cmd(&["import", "--id", &id, t.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full * (i + 1) / 7);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGKILL,
        );
        let status = child.wait().unwrap();
        let present = complete_or_absent(&r, &id, None);
        eprintln!(
            "kill after {:?}: {status}, layer present: {present}",
            full * (i + 1) / 7
        );
    }
}
