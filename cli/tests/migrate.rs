//! `strata migrate` through the real binary: a store of 50 layers
//! (deletions, opaque directories, hard links, xattrs, devices, symlinks,
//! read-write layers, labels) moved between every pair of drivers this
//! build has (taken from the registry, so new drivers join by themselves),
//! checking equal records and digests of every layer and the mounted trees
//! of the leaves (every layer's in the resume test); a migration killed
//! with SIGKILL at several steps and resumed; `--to-root` with
//! `--keep-source`; and a hand-made Docker AUFS store imported.
//!
//! Every store lives on a fresh loop-mounted btrfs, where every driver of
//! this build can work (btrfs needs it; vfs and overlay work on it too).

mod common;
use common::{mounts_under, need_root, sha256_file, strata};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;
use strata_conformance::fixtures::{LoopFs, SkipReason};
use strata_drivers::registry;

/// Layers in the migrated store.
const LAYERS: usize = 50;

/// The drivers this build has, in the registry's order.
fn built() -> Vec<&'static str> {
    registry::NAMES
        .iter()
        .copied()
        .filter(|n| registry::is_built(n).is_ok())
        .collect()
}

/// A fresh loop btrfs, or `None` (printed; a failure under CI=true).
fn loop_btrfs(test: &str) -> Option<LoopFs> {
    match LoopFs::new("btrfs", 2 << 30) {
        Ok(l) => Some(l),
        Err(e) if e.downcast_ref::<SkipReason>().is_some() => {
            let why = format!("{test}: skipped: {e}");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why}, and CI=true requires every condition");
            }
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{why}");
            None
        }
        Err(e) => panic!("{test}: loop btrfs: {e:#}"),
    }
}

/// Whether driver `name` can work on `root`; prints why not (a failure
/// under CI=true).
fn usable(test: &str, name: &str, root: &Path) -> bool {
    match registry::probe(name, root) {
        Ok(()) => true,
        Err(e) => {
            let why = format!("{test}: driver {name} skipped: {e}");
            // Device-mapper is not in the build hosts' kernels: CI checks it
            // in the VM (conformance/vm/run-suites), where this file's
            // devmapper pairs can be run with `--ignored`.
            if name == "devmapper" && std::env::var_os("STRATA_IN_VM").is_none() {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "{why} (device-mapper runs in the VM only)"
                );
                return false;
            }
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why}, and CI=true requires every condition");
            }
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{why}");
            false
        }
    }
}

/// A store root with its own empty config; unmounts what is left under
/// its directory on drop.
struct St {
    dir: PathBuf,
    root: PathBuf,
    config: PathBuf,
}

impl St {
    fn new(parent: &Path, name: &str) -> St {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("strata.toml");
        std::fs::write(&config, "").unwrap();
        St {
            root: dir.join("root"),
            dir,
            config,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(strata());
        c.arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env_remove("STRATA_CONFIG")
            .env_remove("STRATA_ROOT")
            .env_remove("STRATA_DRIVER")
            .env_remove("STRATA_TEST_CRASH_AT")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `strata --json ls`, as records keyed by id, without what a
    /// migration may change (driver) or what is not part of a layer.
    fn records(&self) -> BTreeMap<String, serde_json::Value> {
        let v: Vec<serde_json::Value> = serde_json::from_str(&self.ok(&["--json", "ls"])).unwrap();
        v.into_iter()
            .map(|mut l| {
                let o = l.as_object_mut().unwrap();
                o.remove("driver");
                (o["id"].as_str().unwrap().to_string(), l)
            })
            .collect()
    }

    fn driver(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["--json", "info"])).unwrap();
        v["driver"].as_str().unwrap().to_string()
    }

    /// Mounts every layer in turn and takes its manifest. A writable mount
    /// clears a read-write layer's digest: a diff records it again.
    fn trees(&self, ids: &[String]) -> BTreeMap<String, Vec<String>> {
        let recs = self.records();
        let tar = self.dir.join("trees.tar");
        ids.iter()
            .map(|id| {
                let path = self.ok(&["mount", id]);
                let m = manifest(Path::new(path.trim_end()), true);
                self.ok(&["unmount", id]);
                if recs[id]["read_only"] == false {
                    self.ok(&["diff", "-o", tar.to_str().unwrap(), id]);
                }
                (id.clone(), m)
            })
            .collect()
    }

    fn fsck_verify_clean(&self) {
        let out = self.ok(&["fsck", "--verify"]);
        assert!(out.contains("clean"), "fsck: {out}");
    }
}

impl Drop for St {
    fn drop(&mut self) {
        for p in mounts_under(&self.dir) {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Asserts two maps are equal, showing only the entries that differ.
fn assert_same<V: PartialEq + std::fmt::Debug>(
    got: &BTreeMap<String, V>,
    want: &BTreeMap<String, V>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for k in got.keys().chain(want.keys()) {
        if got.get(k) != want.get(k) && !diffs.iter().any(|(d, _, _)| d == k) {
            diffs.push((k.clone(), got.get(k), want.get(k)));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} entries differ: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(3)]
    );
}

/// One line per entry under `dir` (not the root itself), sorted: path,
/// type, mode, owner, content hash or link target or device number,
/// `user.*` xattrs, hard-link group, and (with `times`) the mtime of
/// non-directories.
fn manifest(dir: &Path, times: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&abs)
            .unwrap_or_else(|e| panic!("read {}: {e}", abs.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = dir.join(&r);
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            use std::os::unix::fs::FileTypeExt;
            let what = if ft.is_dir() {
                stack.push(r.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("symlink {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                let key = (md.dev(), md.ino());
                let link = if md.nlink() > 1 {
                    match inodes.get(&key) {
                        Some(first) => format!(" hardlink-of {first}"),
                        None => {
                            inodes.insert(key, r.display().to_string());
                            String::new()
                        }
                    }
                } else {
                    String::new()
                };
                format!("file {} {}{link}", md.len(), sha256_file(&p))
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("dev {}", md.rdev())
            } else if ft.is_fifo() {
                "fifo".into()
            } else {
                "other".into()
            };
            let xattrs: Vec<String> = if ft.is_symlink() {
                Vec::new()
            } else {
                let mut v: Vec<String> = xattr::list(&p)
                    .unwrap()
                    .filter(|k| k.to_string_lossy().starts_with("user."))
                    .map(|k| {
                        let val = xattr::get(&p, &k).unwrap().unwrap_or_default();
                        format!("{}={}", k.to_string_lossy(), String::from_utf8_lossy(&val))
                    })
                    .collect();
                v.sort();
                v
            };
            let mtime = if times && !ft.is_dir() {
                format!(" mtime={}.{}", md.mtime(), md.mtime_nsec())
            } else {
                String::new()
            };
            out.push(format!(
                "{} {what} mode={:o} {}:{} xattrs={xattrs:?}{mtime}",
                r.display(),
                md.permissions().mode() & 0o7777,
                md.uid(),
                md.gid()
            ));
        }
    }
    out.sort();
    out
}

fn write(p: &Path, body: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, body).unwrap();
}

fn tar_dir(src: &Path, out: &Path) {
    let o = Command::new("tar")
        .args(["--format=pax", "--numeric-owner", "--xattrs"])
        .arg("--xattrs-include=user.*")
        .arg("-C")
        .arg(src)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .output()
        .expect("the tar command");
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The parent of layer `i` of the generated store: a tree with branches.
fn parent_of(i: usize) -> Option<usize> {
    match i {
        0 => None,
        i if i % 7 == 0 => Some(i / 2),
        i => Some(i - 1),
    }
}

/// The layers of the generated store that have no children.
fn leaves(ids: &[String]) -> Vec<String> {
    (0..ids.len())
        .filter(|i| !(0..ids.len()).any(|c| parent_of(c) == Some(*i)))
        .map(|i| ids[i].clone())
        .collect()
}

/// Builds the generated store of [`LAYERS`] layers on `st` with `driver`;
/// returns the ids in creation order.
fn build_store(st: &St, driver: &str, scratch: &Path) -> Vec<String> {
    st.ok(&["--driver", driver, "info"]);
    let mut ids = Vec::new();
    for i in 0..LAYERS {
        let id = format!("l{i:02}");
        let parent = parent_of(i).map(|p| format!("l{p:02}"));
        let src = scratch.join(format!("src-{i}"));
        std::fs::create_dir_all(&src).unwrap();
        if i == 0 {
            for d in 0..5 {
                write(&src.join(format!("d{d}/base")), &format!("base {d}\n"));
            }
            std::os::unix::fs::symlink("d0/base", src.join("link")).unwrap();
        }
        let d = src.join(format!("d{}", i % 5));
        std::fs::create_dir_all(&d).unwrap();
        // Opaque: the directory's earlier contents are hidden.
        if i % 4 == 0 && i % 3 != 0 && i > 0 {
            write(&d.join(".wh..wh..opq"), "");
        }
        let f = d.join(format!("f{i}"));
        write(&f, &format!("layer {i}\n").repeat(i + 1));
        xattr::set(&f, "user.layer", format!("v{i}").as_bytes()).unwrap();
        std::fs::hard_link(&f, d.join(format!("h{i}"))).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        if i % 6 == 0 {
            nix::sys::stat::mknod(
                &src.join(format!("dev{i}")),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
        }
        // Deletion of what the parent added (a name with a hard link left).
        if let Some(p) = parent_of(i) {
            if i % 3 == 0 {
                let pd = src.join(format!("d{}", p % 5));
                std::fs::create_dir_all(&pd).unwrap();
                write(&pd.join(format!(".wh.f{p}")), "");
            }
        }
        let tar = scratch.join(format!("l{i}.tar"));
        tar_dir(&src, &tar);
        match i {
            // A read-write layer made by create + apply, with labels.
            i if i % 10 == 9 => {
                let mut args = vec!["create", "--rw", "--label", "role=container"];
                let lab = format!("n={i}");
                args.extend(["--label", lab.as_str()]);
                if let Some(p) = &parent {
                    args.extend(["--parent", p.as_str()]);
                }
                args.push(&id);
                st.ok(&args);
                st.ok(&["apply", &id, tar.to_str().unwrap()]);
            }
            _ => {
                let mut args = vec!["import", "--id", id.as_str()];
                if let Some(p) = &parent {
                    args.extend(["--parent", p.as_str()]);
                }
                args.push(tar.to_str().unwrap());
                st.ok(&args);
            }
        }
        ids.push(id);
    }
    // Every layer has its digest recorded (the rw ones by a diff).
    for id in ids.iter().skip(9).step_by(10) {
        st.ok(&["diff", "-o", scratch.join("d.tar").to_str().unwrap(), id]);
    }
    for (id, rec) in st.records() {
        assert!(rec["digest"].is_string(), "{id}: {rec}");
    }
    ids
}

/// Builds a store with `from`, migrates it to `to`, checks records,
/// digests, trees, fsck, and that the source driver's data is gone.
fn pair(test: &str, lfs: &LoopFs, from: &str, to: &str) {
    let t0 = Instant::now();
    let st = St::new(lfs.path(), &format!("{from}-to-{to}"));
    let scratch = st.dir.join("scratch");
    let ids = build_store(&st, from, &scratch);
    // Every layer's digest is compared; the mounted trees of the leaves,
    // which show the net effect of every layer below them (and keep the
    // test short as drivers are added).
    let leaves = leaves(&ids);
    let before = st.records();
    let trees = st.trees(&leaves);
    let t1 = Instant::now();
    let report: serde_json::Value =
        serde_json::from_str(&st.ok(&["--json", "migrate", "--to", to])).unwrap();
    let migrated = t1.elapsed();
    assert_eq!(st.driver(), to);
    assert_eq!(report["copied"], LAYERS, "{report}");
    // The same tree may be another tar in the target (overlay's opaque
    // directories are explicit whiteouts elsewhere): the report names those
    // layers, whose trees are compared below like every other.
    let mut want = before.clone();
    let redigested = report["redigested"].as_array().unwrap();
    for r in redigested {
        let rec = want.get_mut(r["id"].as_str().unwrap()).unwrap();
        assert_eq!(rec["digest"], r["from"], "{from} -> {to}: {r}");
        rec["digest"] = r["to"].clone();
    }
    assert_same(&st.records(), &want, &format!("{from} -> {to}: records"));
    assert_same(
        &st.trees(&leaves),
        &trees,
        &format!("{from} -> {to}: trees"),
    );
    st.fsck_verify_clean();
    assert!(
        !st.root.join(from).exists(),
        "{from} -> {to}: the source driver's data is still there"
    );
    // The old driver no longer opens the root, the new one does.
    let o = st.run(&["--driver", from, "ls"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(from) && err.contains(to), "{err}");
    eprintln!(
        "{test}: {from} -> {to}: {LAYERS} layers migrated in {:.1}s ({:.1}s with checks), \
         {} with another diff for the same tree",
        migrated.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        redigested.len()
    );
}

/// Migrates from `from` to every other built driver, one fresh store each.
fn pairs_from(test: &str, from: &str) {
    if registry::is_built(from).is_err() {
        eprintln!("{test}: driver {from} is not in this build: nothing to migrate from");
        return;
    }
    if !need_root(test) {
        return;
    }
    let Some(lfs) = loop_btrfs(test) else { return };
    if !usable(test, from, lfs.path()) {
        return;
    }
    for to in built() {
        if to != from && usable(test, to, lfs.path()) {
            pair(test, &lfs, from, to);
        }
    }
}

#[test]
fn pairs_from_vfs() {
    pairs_from("pairs_from_vfs", "vfs");
}

#[test]
fn pairs_from_overlay() {
    pairs_from("pairs_from_overlay", "overlay");
}

#[test]
fn pairs_from_btrfs() {
    pairs_from("pairs_from_btrfs", "btrfs");
}

#[test]
fn pairs_from_aufs() {
    pairs_from("pairs_from_aufs", "aufs");
}

#[test]
#[ignore = "needs dm-thin: run in the VM (conformance/vm/run --cargo-test strata migrate -- --ignored)"]
fn pairs_from_devmapper() {
    pairs_from("pairs_from_devmapper", "devmapper");
}

/// Which of `ids` each driver has, by looking through the registry.
fn present(root: &Path, driver: &str, ids: &[String]) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = registry::open(driver, root, &Default::default())
            .await
            .unwrap();
        let mut out = Vec::new();
        for id in ids {
            let lid = id.parse().unwrap();
            if d.exists(&lid).await.unwrap() {
                out.push(id.clone());
            }
        }
        out
    })
}

#[test]
fn killed_half_way_and_resumed() {
    let test = "killed_half_way_and_resumed";
    if !need_root(test) {
        return;
    }
    let Some(lfs) = loop_btrfs(test) else { return };
    let drivers = built();
    let (from, to) = (
        "vfs",
        *drivers.iter().find(|d| **d != "vfs").unwrap_or(&"vfs"),
    );
    if from == to {
        panic!("{test}: needs two drivers in the build, has {drivers:?}");
    }
    let st = St::new(lfs.path(), "killed");
    let scratch = st.dir.join("scratch");
    let ids = build_store(&st, from, &scratch);
    let before = st.records();
    let trees = st.trees(&ids);
    // Killed at several points, each run getting further; every time the
    // root refuses other commands and each layer is in one driver at least.
    for step in [
        "migrate:after-copied#20",
        "migrate:mid-copy#4",
        "migrate:after-source-remove#3",
        "migrate:after-apply#2",
        "migrate:after-mark#3",
        "migrate:after-copied#5",
        "migrate:before-finish",
    ] {
        let o = st
            .cmd(&["migrate", "--to", to])
            .env("STRATA_TEST_CRASH_AT", step)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            o.status.signal(),
            Some(9),
            "{step}: not killed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let ls = st.run(&["ls"]);
        assert_eq!(ls.status.code(), Some(1), "{step}: ls opened the root");
        let err = String::from_utf8_lossy(&ls.stderr);
        assert!(err.contains("strata migrate --to"), "{step}: {err}");
        let mut have = present(&st.root, from, &ids);
        have.extend(present(&st.root, to, &ids));
        for id in &ids {
            assert!(have.contains(id), "{step}: layer {id} is in neither driver");
        }
    }
    // A different migration is refused while this one is unfinished.
    let other = st.run(&["migrate", "--to", from]);
    assert_eq!(other.status.code(), Some(1));
    let out = st.ok(&["migrate", "--to", to]);
    assert!(out.contains("resuming"), "{out}");
    assert_eq!(st.driver(), to);
    assert_same(&st.records(), &before, "records after resuming");
    assert_same(&st.trees(&ids), &trees, "trees after resuming");
    st.fsck_verify_clean();
    assert!(present(&st.root, from, &ids).is_empty());
}

#[test]
fn to_root_keeping_the_source_and_refusing_mounted_layers() {
    let test = "to_root_keeping_the_source_and_refusing_mounted_layers";
    if !need_root(test) {
        return;
    }
    let Some(lfs) = loop_btrfs(test) else { return };
    let st = St::new(lfs.path(), "keep");
    let scratch = st.dir.join("scratch");
    std::fs::create_dir_all(scratch.join("t")).unwrap();
    write(&scratch.join("t/a"), "a\n");
    tar_dir(&scratch.join("t"), &scratch.join("t.tar"));
    st.ok(&[
        "--driver",
        "vfs",
        "import",
        "--id",
        "base",
        scratch.join("t.tar").to_str().unwrap(),
    ]);
    st.ok(&["create", "--rw", "--parent", "base", "ctr"]);
    st.ok(&["mount", "ctr"]);
    let to = built().into_iter().find(|d| *d != "vfs").unwrap_or("vfs");
    let o = st.run(&["migrate", "--to", to]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ctr") && err.contains("mounted"), "{err}");
    // Refused before anything was recorded: the store works as before.
    st.ok(&["unmount", "ctr"]);
    let trees = st.trees(&["base".to_string(), "ctr".to_string()]);
    let before = st.records();
    let new_root = st.dir.join("new-root");
    let out = st.ok(&[
        "migrate",
        "--to",
        to,
        "--to-root",
        new_root.to_str().unwrap(),
        "--keep-source",
    ]);
    assert!(out.contains("kept"), "{out}");
    // The old store is untouched and usable...
    assert_eq!(st.driver(), "vfs");
    assert_same(&st.records(), &before, "the kept store");
    st.fsck_verify_clean();
    // ... and the new one has the same layers with the target driver.
    std::fs::create_dir_all(st.dir.join("moved")).unwrap();
    let moved = St {
        dir: st.dir.join("moved"),
        root: new_root.clone(),
        config: st.config.clone(),
    };
    assert_eq!(moved.driver(), to);
    let mut after = moved.records();
    for v in after.values_mut() {
        v.as_object_mut().unwrap().remove("mount_path");
    }
    let mut want = before.clone();
    for v in want.values_mut() {
        v.as_object_mut().unwrap().remove("mount_path");
    }
    assert_same(&after, &want, "the new store");
    assert_eq!(moved.trees(&["base".to_string(), "ctr".to_string()]), trees);
    moved.fsck_verify_clean();
    // Moving (no --keep-source) into a non-empty root is refused.
    let o = st.run(&[
        "migrate",
        "--to",
        to,
        "--to-root",
        new_root.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    // A move: the old root then says where the store went.
    let third = st.dir.join("third-root");
    st.ok(&["migrate", "--to", to, "--to-root", third.to_str().unwrap()]);
    let o = st.run(&["ls"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("moved to"));
    assert!(!st.root.join("vfs").exists());
    for p in mounts_under(&new_root) {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn abort_while_every_source_is_there() {
    let test = "abort_while_every_source_is_there";
    if !need_root(test) {
        return;
    }
    let Some(lfs) = loop_btrfs(test) else { return };
    let to = built().into_iter().find(|d| *d != "vfs").unwrap_or("vfs");
    let st = St::new(lfs.path(), "abort");
    let scratch = st.dir.join("scratch");
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let src = scratch.join(id);
        write(&src.join(format!("f{i}")), id);
        tar_dir(&src, &scratch.join(format!("{id}.tar")));
        let mut args = vec!["--driver", "vfs", "import", "--id", id];
        let parent = ["a", "b"].get(i.wrapping_sub(1)).copied();
        if let Some(p) = parent {
            args.extend(["--parent", p]);
        }
        let tar = scratch.join(format!("{id}.tar"));
        args.push(tar.to_str().unwrap());
        st.ok(&args);
    }
    let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let trees = st.trees(&ids);
    let before = st.records();
    use std::os::unix::process::ExitStatusExt;
    // Killed after copying two layers, none of the sources removed yet.
    let o = st
        .cmd(&["migrate", "--to", to])
        .env("STRATA_TEST_CRASH_AT", "migrate:after-copied#2")
        .output()
        .unwrap();
    assert_eq!(o.status.signal(), Some(9));
    let out = st.ok(&["migrate", "--abort"]);
    assert!(out.contains("removed 2 copies"), "{out}");
    assert_eq!(st.driver(), "vfs");
    assert_same(&st.records(), &before, "records after abort");
    assert_same(&st.trees(&ids), &trees, "trees after abort");
    st.fsck_verify_clean();
    assert!(present(&st.root, to, &ids).is_empty());
    // Nothing left to abort.
    assert_eq!(st.run(&["migrate", "--abort"]).status.code(), Some(1));
    // Once a source layer is gone, abort is refused and finishing works.
    let o = st
        .cmd(&["migrate", "--to", to])
        .env("STRATA_TEST_CRASH_AT", "migrate:after-source-remove#1")
        .output()
        .unwrap();
    assert_eq!(o.status.signal(), Some(9));
    let o = st.run(&["migrate", "--abort"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot abort"));
    st.ok(&["migrate", "--to", to]);
    assert_eq!(st.driver(), to);
    assert_same(&st.trees(&ids), &trees, "trees after finishing");
    st.fsck_verify_clean();
}

/// Docker's 64-hex ids for the hand-made AUFS store.
fn hex_id(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// Builds a Docker AUFS store by hand (the documented layout) under `dir`
/// and the expected full tree of each layer under `expect`; returns the
/// layer ids, parents first.
fn docker_aufs_store(dir: &Path, expect: &Path) -> Vec<String> {
    let (a, b) = (hex_id('a'), hex_id('b'));
    let c = format!("{}-init", hex_id('c'));
    let diff = |id: &str| dir.join("diff").join(id);
    std::fs::create_dir_all(dir.join("layers")).unwrap();
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    // Base layer.
    let da = diff(&a);
    write(&da.join("etc/passwd"), "root:x:0:0\n");
    write(&da.join("etc/group"), "root:x:0:\n");
    write(&da.join("bin/sh"), "#!sh\n");
    write(&da.join("usr/lib/libx.so"), "libx\n");
    std::fs::hard_link(da.join("usr/lib/libx.so"), da.join("usr/lib/libx.so.1")).unwrap();
    xattr::set(da.join("bin/sh"), "user.cap", b"x").unwrap();
    std::os::unix::fs::symlink("usr/lib", da.join("lib")).unwrap();
    nix::sys::stat::mknod(
        &da.join("etc/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    // aufs's own metadata, never layer content.
    write(&da.join(".wh..wh.aufs"), "");
    write(&da.join(".wh..wh.plnk/12.34"), "pseudo link");
    std::fs::create_dir_all(da.join(".wh..wh.orph")).unwrap();
    std::fs::write(dir.join("layers").join(&a), "").unwrap();
    // Child: a deletion, an opaque directory, a changed file.
    let db = diff(&b);
    write(&db.join("etc/.wh.group"), "");
    write(&db.join("etc/passwd"), "root:x:0:0\nuser:x:1000:1000\n");
    write(&db.join("usr/lib/.wh..wh..opq"), "");
    write(&db.join("usr/lib/new.so"), "new\n");
    write(&db.join(".wh..wh.plnk/99.1"), "pseudo link");
    std::fs::write(dir.join("layers").join(&b), format!("{a}\n")).unwrap();
    // Grandchild (an -init layer): a deleted directory, a new file.
    let dc = diff(&c);
    write(&dc.join(".wh.bin"), "");
    write(&dc.join("etc/hostname"), "box\n");
    std::fs::write(dir.join("layers").join(&c), format!("{b}\n{a}\n")).unwrap();
    // An unfinished Docker removal: ignored.
    write(&dir.join("diff/dead-removing/x"), "x");
    write(&dir.join("layers/dead-removing"), "");

    // The expected trees: copies of what each layer shows.
    let ea = expect.join(&a);
    write(&ea.join("etc/passwd"), "root:x:0:0\n");
    write(&ea.join("etc/group"), "root:x:0:\n");
    write(&ea.join("bin/sh"), "#!sh\n");
    write(&ea.join("usr/lib/libx.so"), "libx\n");
    std::fs::hard_link(ea.join("usr/lib/libx.so"), ea.join("usr/lib/libx.so.1")).unwrap();
    xattr::set(ea.join("bin/sh"), "user.cap", b"x").unwrap();
    std::os::unix::fs::symlink("usr/lib", ea.join("lib")).unwrap();
    nix::sys::stat::mknod(
        &ea.join("etc/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let eb = expect.join(&b);
    write(&eb.join("etc/passwd"), "root:x:0:0\nuser:x:1000:1000\n");
    write(&eb.join("bin/sh"), "#!sh\n");
    xattr::set(eb.join("bin/sh"), "user.cap", b"x").unwrap();
    write(&eb.join("usr/lib/new.so"), "new\n");
    std::os::unix::fs::symlink("usr/lib", eb.join("lib")).unwrap();
    nix::sys::stat::mknod(
        &eb.join("etc/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let ec = expect.join(&c);
    write(&ec.join("etc/passwd"), "root:x:0:0\nuser:x:1000:1000\n");
    write(&ec.join("etc/hostname"), "box\n");
    write(&ec.join("usr/lib/new.so"), "new\n");
    std::os::unix::fs::symlink("usr/lib", ec.join("lib")).unwrap();
    nix::sys::stat::mknod(
        &ec.join("etc/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    vec![a, b, c]
}

#[test]
fn docker_aufs_store_is_imported() {
    let test = "docker_aufs_store_is_imported";
    if !need_root(test) {
        return;
    }
    let Some(lfs) = loop_btrfs(test) else { return };
    let work = lfs.path().join("docker");
    let ids = docker_aufs_store(&work.join("aufs"), &work.join("expect"));
    let aufs = work.join("aufs");
    for driver in built() {
        if !usable(test, driver, lfs.path()) {
            continue;
        }
        let st = St::new(lfs.path(), &format!("into-{driver}"));
        // Killed after the first layer, then run again: it continues.
        let o = st
            .cmd(&[
                "--driver",
                driver,
                "migrate",
                "--from-docker-aufs",
                aufs.to_str().unwrap(),
            ])
            .env("STRATA_TEST_CRASH_AT", "aufs-import:after-layer#1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "{driver}: not killed");
        let out = st.ok(&[
            "--driver",
            driver,
            "migrate",
            "--from-docker-aufs",
            aufs.to_str().unwrap(),
        ]);
        assert!(out.contains("imported 2 of 3"), "{driver}: {out}");
        let recs = st.records();
        assert_eq!(recs.keys().cloned().collect::<Vec<_>>(), {
            let mut v = ids.clone();
            v.sort();
            v
        });
        assert_eq!(recs[&ids[0]]["parent"], serde_json::Value::Null);
        assert_eq!(recs[&ids[1]]["parent"], ids[0].as_str());
        assert_eq!(recs[&ids[2]]["parent"], ids[1].as_str());
        for id in &ids {
            assert!(recs[id]["digest"].as_str().unwrap().starts_with("sha256:"));
            let path = st.ok(&["--driver", driver, "mount", id]);
            let got = manifest(Path::new(path.trim_end()), false);
            st.ok(&["--driver", driver, "unmount", id]);
            let want = manifest(&work.join("expect").join(id), false);
            assert_eq!(got, want, "{driver}: layer {id}");
        }
        st.fsck_verify_clean();
        // Run again: nothing to do.
        let out = st.ok(&[
            "--driver",
            driver,
            "migrate",
            "--from-docker-aufs",
            aufs.to_str().unwrap(),
        ]);
        assert!(out.contains("imported 0 of 3"), "{driver}: {out}");
    }
    // A malformed store is refused naming the file.
    std::fs::write(
        aufs.join("layers").join(hex_id('d')),
        format!("{}\n", hex_id('e')),
    )
    .unwrap();
    std::fs::create_dir_all(aufs.join("diff").join(hex_id('d'))).unwrap();
    let st = St::new(lfs.path(), "bad");
    let o = st.run(&[
        "--driver",
        "vfs",
        "migrate",
        "--from-docker-aufs",
        aufs.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&hex_id('e')), "{err}");
}
