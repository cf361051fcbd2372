//! Deep trees: the walks of the differ and the copy keep their own stacks,
//! so a deep tree fits a small thread stack (a first, recursive version
//! overflowed a 2 MiB stack at about 2000 levels in a debug build, about
//! 1 KiB per level; a hostile layer must not abort the daemon).

use std::path::PathBuf;
use strata_driver_api::copy::copy_tree;
use strata_driver_api::naive::changes;

#[test]
fn deep_tree_fits_a_small_stack() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s");
    let depth = 500;
    let mut p = src.clone();
    for _ in 0..depth {
        p.push("d");
    }
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("f"), b"x").unwrap();
    let dst: PathBuf = dir.path().join("c");
    let (s, d) = (src.clone(), dst.clone());
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            copy_tree(&s, &d).unwrap();
            let all = changes(&d, None).unwrap();
            assert_eq!(all.len(), depth + 1);
            std::fs::write(
                d.join(PathBuf::from("d/".repeat(depth))).join("f"),
                b"changed",
            )
            .unwrap();
            let diff = changes(&d, Some(&s)).unwrap();
            assert_eq!(diff.len(), depth + 1, "the file and every ancestor");
        })
        .unwrap()
        .join()
        .unwrap();
    eprintln!("depth {depth} copied and compared on a 256 KiB stack");
}
