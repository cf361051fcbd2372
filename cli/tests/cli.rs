//! Every command against the VFS driver, through the real binary.

mod common;
use common::*;
use std::process::Stdio;

#[test]
fn create_chain_ls_and_random_ids() {
    if !need_root("create_chain_ls_and_random_ids") {
        return;
    }
    let r = Root::new();
    let base = r.ok(&["create", "base"]);
    assert_eq!(base, "base\n");
    let mid = r.ok(&["create", "--parent", "base", "--label", "k=v", "mid"]);
    assert_eq!(mid, "mid\n");
    let top = r.ok(&["create", "--parent", "mid", "--rw"]);
    let top = top.trim();
    assert_eq!(top.len(), 64, "{top}");
    assert!(top.bytes().all(|b| b.is_ascii_hexdigit()));
    let ls = r.ls();
    assert_eq!(ls.len(), 3);
    let m = r.layer("mid").unwrap();
    assert_eq!(m["parent"], "base");
    assert_eq!(m["state"], "ready");
    assert_eq!(m["read_only"], true);
    assert_eq!(m["labels"]["k"], "v");
    assert_eq!(r.layer(top).unwrap()["read_only"], false);
    let table = r.ok(&["ls"]);
    let head = table.lines().next().unwrap();
    for col in ["ID", "PARENT", "STATE", "SIZE", "DIGEST", "MOUNTS"] {
        assert!(head.contains(col), "{head}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");
    let j: serde_json::Value = serde_json::from_str(&r.ok(&["--json", "create", "x"])).unwrap();
    assert_eq!(j["id"], "x");
    let err = r.fails(&["create", "x"], 1);
    assert!(err.contains("already exists"), "{err}");
    let err = r.fails(&["create", "--parent", "nope", "y"], 1);
    assert!(err.contains("nope") && err.contains("not found"), "{err}");
    r.fsck_clean();
}

#[test]
fn import_plain_and_gzip_then_mount_shows_files() {
    if !need_root("import_plain_and_gzip_then_mount_shows_files") {
        return;
    }
    let r = Root::new();
    let src = r.path("src");
    small_tree(&src);
    let t = r.path("l.tar");
    make_tar(&src, &["a", "b", "dir"], &t, false);
    let out = r.ok(&["import", "--id", "plain", t.to_str().unwrap()]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("plain"));
    let digest = lines.next().unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let l = r.layer("plain").unwrap();
    assert_eq!(l["digest"], digest);
    assert_eq!(l["size"], 12);
    let tgz = r.path("l.tar.gz");
    make_tar(&src, &["a", "b", "dir"], &tgz, true);
    // Through stdin.
    let o = r
        .cmd(&["import", "--id", "gz", "-"])
        .stdin(std::fs::File::open(&tgz).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Same contents, same canonical digest.
    assert_eq!(r.layer("gz").unwrap()["digest"], digest);
    let path = r.ok(&["mount", "gz"]);
    let path = std::path::Path::new(path.trim());
    assert_eq!(std::fs::read_to_string(path.join("dir/c")).unwrap(), "ceee");
    r.ok(&["unmount", "gz"]);
    // A child on top sees its parent's files.
    let src2 = r.path("src2");
    std::fs::create_dir_all(&src2).unwrap();
    std::fs::write(src2.join("d"), "dee").unwrap();
    let t2 = r.path("l2.tar");
    make_tar(&src2, &["d"], &t2, false);
    r.ok(&[
        "import",
        "--parent",
        "plain",
        "--id",
        "child",
        t2.to_str().unwrap(),
    ]);
    let path = r.ok(&["mount", "child"]);
    let path = std::path::Path::new(path.trim());
    assert_eq!(std::fs::read_to_string(path.join("a")).unwrap(), "hello");
    assert_eq!(std::fs::read_to_string(path.join("d")).unwrap(), "dee");
    r.ok(&["unmount", "child"]);
    r.fsck_clean();
    let v: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "fsck", "--verify"])).unwrap();
    assert_eq!(v["clean"], true, "{v}");
}

#[test]
fn mount_twice_from_two_processes() {
    if !need_root("mount_twice_from_two_processes") {
        return;
    }
    let r = Root::new();
    r.ok(&["create", "--rw", "l"]);
    let a = r
        .cmd(&["mount", "l"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let b = r
        .cmd(&["mount", "l"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pa = a.wait_with_output().unwrap();
    let pb = b.wait_with_output().unwrap();
    assert!(pa.status.success() && pb.status.success());
    assert_eq!(pa.stdout, pb.stdout);
    let path = std::path::PathBuf::from(String::from_utf8(pa.stdout).unwrap().trim());
    assert!(path.is_dir());
    assert_eq!(r.layer("l").unwrap()["mount_count"], 2);
    let count = |p: &std::path::Path| mounts_under(p).iter().filter(|m| *m == p).count();
    let mounted = count(&path);
    assert!(mounted <= 1, "mounted {mounted} times");
    r.ok(&["unmount", "l"]);
    assert_eq!(r.layer("l").unwrap()["mount_count"], 1);
    assert_eq!(count(&path), mounted);
    r.ok(&["unmount", "l"]);
    assert_eq!(r.layer("l").unwrap()["mount_count"], 0);
    assert_eq!(count(&path), 0);
    let err = r.fails(&["unmount", "l"], 1);
    assert!(err.contains("not mounted"), "{err}");
    // --force goes to 0 from any count.
    for _ in 0..3 {
        r.ok(&["mount", "l"]);
    }
    r.ok(&["unmount", "--force", "l"]);
    assert_eq!(r.layer("l").unwrap()["mount_count"], 0);
    assert!(mounts_under(&r.root).is_empty());
    r.fsck_clean();
}

/// A rw layer on a base, changed through its mount.
fn changed_child(r: &Root) {
    let src = r.path("src");
    small_tree(&src);
    let t = r.path("base.tar");
    make_tar(&src, &["a", "b", "dir"], &t, false);
    r.ok(&["import", "--id", "base", t.to_str().unwrap()]);
    r.ok(&["create", "--rw", "--parent", "base", "child"]);
    let p = r.ok(&["mount", "child"]);
    let p = std::path::Path::new(p.trim());
    std::fs::remove_file(p.join("a")).unwrap();
    std::fs::write(p.join("b"), "bumble").unwrap();
    std::fs::write(p.join("d"), "new!").unwrap();
    r.ok(&["unmount", "child"]);
}

#[test]
fn changes_and_diff_size() {
    if !need_root("changes_and_diff_size") {
        return;
    }
    let r = Root::new();
    changed_child(&r);
    let out = r.ok(&["changes", "child"]);
    let lines: Vec<&str> = out.lines().collect();
    for l in &lines {
        assert!(
            l.len() > 2 && "ACD".contains(&l[..1]) && &l[1..3] == " /",
            "bad line {l:?}"
        );
    }
    let paths: Vec<&str> = lines.iter().map(|l| &l[2..]).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "not sorted by path");
    for want in ["D /a", "C /b", "A /d"] {
        assert!(lines.contains(&want), "{want} missing in {out}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "changes", "child"])).unwrap();
    assert_eq!(j.as_array().unwrap().len(), lines.len());
    assert_eq!(r.ok(&["diff-size", "child"]).trim(), "10");
    // Against the empty tree... there is no such flag; against base's own
    // parent (none) base is all added.
    assert_eq!(r.ok(&["diff-size", "base"]).trim(), "12");
    assert_eq!(r.ok(&["diff-size", "--parent", "base", "base"]).trim(), "0");
    let j: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "diff-size", "child"])).unwrap();
    assert_eq!(j["size"], 10);
}

#[test]
fn diff_apply_round_trip() {
    if !need_root("diff_apply_round_trip") {
        return;
    }
    let r = Root::new();
    changed_child(&r);
    let t1 = r.path("child.tar");
    r.ok(&["diff", "-o", t1.to_str().unwrap(), "child"]);
    let d1 = sha256_file(&t1);
    assert_eq!(r.layer("child").unwrap()["digest"], d1.as_str());
    // To stdout: the same bytes.
    let o = r.cmd(&["diff", "child"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(&t1).unwrap());
    // Apply into a fresh layer on the same base: same diff.
    r.ok(&["create", "--rw", "--parent", "base", "copy"]);
    let bytes = r.ok(&["apply", "copy", t1.to_str().unwrap()]);
    assert_eq!(bytes.trim(), r.ok(&["diff-size", "child"]).trim());
    let t2 = r.path("copy.tar");
    let j: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "diff", "-o", t2.to_str().unwrap(), "copy"]))
            .unwrap();
    assert_eq!(sha256_file(&t2), d1);
    assert_eq!(j["digest"], d1.as_str());
    assert_eq!(r.layer("copy").unwrap()["digest"], d1.as_str());
    // Import of the canonical tar gives the same digest, and apply refuses
    // a mounted layer.
    r.ok(&[
        "import",
        "--parent",
        "base",
        "--id",
        "imp",
        t1.to_str().unwrap(),
    ]);
    assert_eq!(r.layer("imp").unwrap()["digest"], d1.as_str());
    r.ok(&["mount", "copy"]);
    let err = r.fails(&["apply", "copy", t1.to_str().unwrap()], 1);
    assert!(err.contains("busy") || err.contains("mounted"), "{err}");
    r.ok(&["unmount", "copy"]);
    // --json without -o is a usage error.
    assert_eq!(r.run(&["--json", "diff", "copy"]).status.code(), Some(2));
    r.fsck_clean();
}

#[test]
fn rm_refusals_and_force() {
    if !need_root("rm_refusals_and_force") {
        return;
    }
    let r = Root::new();
    r.ok(&["create", "base"]);
    r.ok(&["create", "--rw", "--parent", "base", "top"]);
    let err = r.fails(&["rm", "base"], 1);
    assert!(err.contains("children") && err.contains("top"), "{err}");
    let err = r.fails(&["rm", "--force", "base"], 1);
    assert!(err.contains("children"), "{err}");
    r.ok(&["mount", "top"]);
    let err = r.fails(&["rm", "top"], 1);
    assert!(err.contains("mounted"), "{err}");
    r.ok(&["rm", "--force", "top"]);
    assert!(mounts_under(&r.root).is_empty());
    r.ok(&["rm", "base"]);
    assert!(r.ls().is_empty());
    let err = r.fails(&["rm", "base"], 1);
    assert!(err.contains("not found"), "{err}");
    // A removed id can be created again.
    r.ok(&["create", "base"]);
    r.fsck_clean();
}

#[test]
fn bad_ids() {
    if !need_root("bad_ids") {
        return;
    }
    let r = Root::new();
    for cmd in [
        &["mount", "nope"][..],
        &["unmount", "nope"],
        &["rm", "nope"],
        &["diff-size", "nope"],
        &["changes", "nope"],
        &["apply", "nope", "/dev/null"],
    ] {
        let err = r.fails(cmd, 1);
        assert!(
            err.contains("nope") && err.contains("not found"),
            "{cmd:?}: {err}"
        );
    }
    let o = r
        .cmd(&["diff", "nope"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    for bad in ["a/b", "..", "", "a b"] {
        assert_eq!(r.run(&["mount", bad]).status.code(), Some(2), "{bad:?}");
        assert_eq!(r.run(&["create", bad]).status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn bad_tar_leaves_no_layer() {
    if !need_root("bad_tar_leaves_no_layer") {
        return;
    }
    let r = Root::new();
    let junk = r.path("junk.tar");
    std::fs::write(&junk, vec![0x5a; 5000]).unwrap();
    r.fails(&["import", "--id", "bad", junk.to_str().unwrap()], 1);
    // A tar cut in the middle of a file.
    let src = r.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), vec![7u8; 100_000]).unwrap();
    let t = r.path("t.tar");
    make_tar(&src, &["big"], &t, false);
    let cut = r.path("cut.tar");
    std::fs::write(&cut, &std::fs::read(&t).unwrap()[..50_000]).unwrap();
    r.fails(&["import", "--id", "cut", cut.to_str().unwrap()], 1);
    // A hostile tar: an entry climbing out of the layer.
    let hostile = r.path("hostile.tar");
    let o = std::process::Command::new("tar")
        .arg("--format=pax")
        .arg("-C")
        .arg(&src)
        .arg("-cPf")
        .arg(&hostile)
        .arg("--transform=s,^,../../escape-,")
        .arg("big")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    r.fails(&["import", "--id", "hostile", hostile.to_str().unwrap()], 1);
    assert!(r.ls().is_empty(), "{:?}", r.ls());
    let vfs = r.root.join("vfs");
    for id in ["bad", "cut", "hostile"] {
        assert!(!vfs.join("dir").join(id).exists(), "{id} left data");
        assert!(!vfs.join("meta").join(id).exists(), "{id} left data");
    }
    assert!(!r.dir.path().join("escape-big").exists());
    r.fsck_clean();
    let err = r.fails(&["import", "--id", "x", "/nonexistent.tar"], 1);
    assert!(err.contains("/nonexistent.tar"), "{err}");
}

#[test]
fn info_and_check_driver_lines() {
    if !need_root("info_and_check_driver_lines") {
        return;
    }
    let r = Root::new();
    let out = r.ok(&["info"]);
    for key in [
        "driver: vfs",
        "root: ",
        "backing filesystem: ",
        "capabilities: ",
        "not picked overlay: ",
    ] {
        assert!(out.contains(key), "{key} missing in {out}");
    }
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["--json", "info"])).unwrap();
    assert_eq!(v["driver"], "vfs");
    assert!(v["capabilities"]["max_depth"].is_number());
}
