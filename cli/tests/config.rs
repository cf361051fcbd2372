//! Configuration errors and precedence, through the real binary.

mod common;
use common::Root;
use std::process::Command;

fn strata(args: &[&str]) -> Command {
    let mut c = Command::new(common::strata());
    c.args(args)
        .env_remove("STRATA_CONFIG")
        .env_remove("STRATA_ROOT")
        .env_remove("STRATA_DRIVER");
    c
}

fn one_line_error(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("strata: "), "{err}");
    err
}

#[test]
fn unknown_key_names_key_value_and_file() {
    let r = Root::new();
    let cfg = r.path("bad.toml");
    std::fs::write(&cfg, "root = \"/tmp/x\"\ndriverr = \"vfs\"\n").unwrap();
    let err = one_line_error(strata(&["--config", cfg.to_str().unwrap(), "ls"]).arg("--json"));
    assert!(err.contains("driverr"), "{err}");
    assert!(err.contains("\"vfs\""), "{err}");
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
}

#[test]
fn unknown_key_in_a_driver_table() {
    let r = Root::new();
    let cfg = r.path("bad.toml");
    std::fs::write(&cfg, "[overlay]\nmount_program = \"x\"\n").unwrap();
    let err = one_line_error(&mut strata(&["--config", cfg.to_str().unwrap(), "ls"]));
    assert!(err.contains("overlay.mount_program"), "{err}");
    assert!(err.contains("\"x\""), "{err}");
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
}

#[test]
fn bad_value_names_key_value_and_file() {
    let r = Root::new();
    let cfg = r.path("bad.toml");
    std::fs::write(&cfg, "root = 17\n").unwrap();
    let err = one_line_error(&mut strata(&["--config", cfg.to_str().unwrap(), "ls"]));
    assert!(err.contains("root") && err.contains("17"), "{err}");
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
}

#[test]
fn bad_driver_name_in_file_env_and_flag() {
    let r = Root::new();
    let cfg = r.path("bad.toml");
    std::fs::write(&cfg, "driver = \"zfs\"\n").unwrap();
    let err = one_line_error(&mut strata(&["--config", cfg.to_str().unwrap(), "ls"]));
    assert!(err.contains("driver") && err.contains("\"zfs\""), "{err}");
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
    let empty = r.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let err = one_line_error(
        strata(&["--config", empty.to_str().unwrap(), "ls"]).env("STRATA_DRIVER", "zfs"),
    );
    assert!(
        err.contains("$STRATA_DRIVER") && err.contains("zfs"),
        "{err}"
    );
    let err = one_line_error(&mut strata(&[
        "--config",
        empty.to_str().unwrap(),
        "--driver",
        "zfs",
        "ls",
    ]));
    assert!(err.contains("--driver") && err.contains("zfs"), "{err}");
}

#[test]
fn missing_config_file_is_an_error() {
    let err = one_line_error(&mut strata(&["--config", "/nonexistent/strata.toml", "ls"]));
    assert!(err.contains("/nonexistent/strata.toml"), "{err}");
    let err = one_line_error(strata(&["ls"]).env("STRATA_CONFIG", "/nonexistent/env.toml"));
    assert!(err.contains("/nonexistent/env.toml"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["mount"],
        &["mount", "a/b"],
        &["create", "--label", "novalue"],
        &["--driver", "vfs", "--driver", "vfs", "ls"],
    ] {
        let o = strata(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

/// flag > env > file, for root and driver, as `info --json` reports them.
#[test]
fn precedence_flag_env_file() {
    let r = Root::new();
    let file_root = r.path("file-root");
    let env_root = r.path("env-root");
    let flag_root = r.path("flag-root");
    let cfg = r.path("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = {:?}\ndriver = \"vfs\"\n",
            file_root.to_str().unwrap()
        ),
    )
    .unwrap();
    let info = |c: &mut Command| -> serde_json::Value {
        let o = c.arg("--json").arg("info").output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let v = info(strata(&[]).env("STRATA_CONFIG", &cfg));
    assert_eq!(v["root"], file_root.to_str().unwrap());
    assert_eq!(v["config"], cfg.to_str().unwrap());
    assert_eq!(v["driver"], "vfs");
    assert_eq!(v["driver_from"], cfg.to_str().unwrap());
    let v = info(
        strata(&[])
            .env("STRATA_CONFIG", &cfg)
            .env("STRATA_ROOT", &env_root)
            .env("STRATA_DRIVER", "vfs"),
    );
    assert_eq!(v["root"], env_root.to_str().unwrap());
    assert_eq!(v["driver_from"], "$STRATA_DRIVER");
    let v = info(
        strata(&["--root", flag_root.to_str().unwrap(), "--driver", "vfs"])
            .env("STRATA_CONFIG", &cfg)
            .env("STRATA_ROOT", &env_root)
            .env("STRATA_DRIVER", "vfs"),
    );
    assert_eq!(v["root"], flag_root.to_str().unwrap());
    assert_eq!(v["driver_from"], "--driver");
    // --config beats $STRATA_CONFIG.
    let other = r.path("o.toml");
    std::fs::write(
        &other,
        format!("root = {:?}\n", flag_root.join("x").to_str().unwrap()),
    )
    .unwrap();
    let v = info(strata(&["--config", other.to_str().unwrap()]).env("STRATA_CONFIG", &cfg));
    assert_eq!(v["root"], flag_root.join("x").to_str().unwrap());
}

#[test]
fn example_config_parses_in_the_binary() {
    let r = Root::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../strata.example.toml");
    let o = strata(&[
        "--config",
        example,
        "--root",
        r.root.to_str().unwrap(),
        "--json",
        "info",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"], example);
    assert!(v["driver"].is_string());
    assert!(v["not_picked"].as_array().unwrap().len() == 4, "{v}");
}

#[test]
fn root_keeps_its_driver() {
    let r = Root::new();
    let root = r.root.to_str().unwrap();
    let empty = r.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let cfgp = empty.to_str().unwrap();
    let o = strata(&["--config", cfgp, "--root", root, "--driver", "vfs", "ls"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = one_line_error(&mut strata(&[
        "--config", cfgp, "--root", root, "--driver", "overlay", "ls",
    ]));
    assert!(err.contains("vfs") && err.contains("overlay"), "{err}");
    let o = strata(&["--config", cfgp, "--root", root, "--json", "info"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["driver"], "vfs");
    assert!(
        v["selected_because"].as_str().unwrap().contains("already"),
        "{v}"
    );
}
