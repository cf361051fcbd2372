//! `strata check`: the conformance suite through the real binary.

mod common;
use common::*;

#[test]
fn check_runs_the_suite_and_reports_each_driver() {
    if !need_root("check_runs_the_suite_and_reports_each_driver") {
        return;
    }
    let r = Root::new();
    let out = r.ok(&["--driver", "vfs", "check", "--filter", "exists-list"]);
    assert!(out.contains("exists-list"), "{out}");
    assert!(out.contains(" vfs ") && out.contains("pass"), "{out}");

    let json = r.ok(&[
        "--json",
        "--driver",
        "vfs",
        "check",
        "--filter",
        "empty-layer",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["ok"], true, "{json}");
    assert_eq!(v["rows"][0]["scenario"], "empty-layer", "{json}");
    assert_eq!(v["rows"][0]["result"], "pass", "{json}");

    let bad = r.fails(&["--driver", "nosuch", "check"], 1);
    assert!(bad.contains("nosuch"), "{bad}");
}
