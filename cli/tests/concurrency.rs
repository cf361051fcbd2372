//! 8 processes at once on one root, each looping create / mount / unmount /
//! rm, plus mounts of one shared layer: every command succeeds, the store
//! ends consistent and nothing stays mounted.

mod common;
use common::*;

#[test]
fn eight_processes_loop_on_one_root() {
    if !need_root("eight_processes_loop_on_one_root") {
        return;
    }
    let r = Root::new();
    r.ok(&["create", "shared"]);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for w in 0..8 {
            let r = &r;
            handles.push(s.spawn(move || {
                for i in 0..20 {
                    let id = format!("w{w}-{i}");
                    r.ok(&["create", "--rw", "--parent", "shared", &id]);
                    r.ok(&["mount", &id]);
                    r.ok(&["mount", "shared"]);
                    r.ok(&["unmount", &id]);
                    r.ok(&["unmount", "shared"]);
                    r.ok(&["rm", &id]);
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    });
    let ls = r.ls();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["id"], "shared");
    assert_eq!(ls[0]["mount_count"], 0);
    r.fsck_clean();
    assert!(
        mounts_under(&r.root).is_empty(),
        "{:?}",
        mounts_under(&r.root)
    );
}
