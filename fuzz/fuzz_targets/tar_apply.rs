//! Fuzzes `strata_driver_api::archive::apply`: any input must give `Ok` or
//! an error, never a panic, and never a change outside the target.
//!
//! Input: the first byte picks the whiteout format (bits 0-1) and whether
//! the harness repairs the header checksums of the rest before applying it
//! (bit 2; without this almost every mutation dies at the checksum check).
//! The rest is the layer tar (plain, gzip or zstd).
//!
//! Each run applies into `<sandbox>/target`, seeded with a directory, a file
//! and symlinks leading out of it (`up` -> `../outside`, `abs` -> the
//! absolute path of `outside`, `root` -> `/`), next to `<sandbox>/outside`,
//! a canary tree. After the run the canary tree and the sandbox's listing
//! must be exactly as before. Sandboxes live under `$STRATA_FUZZ_DIR`
//! (default `/dev/shm`, a tmpfs: file creation on a disk is far slower).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use strata_driver_api::archive::{self, WhiteoutFormat};

fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let parent = std::env::var_os("STRATA_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/dev/shm"));
        let b = parent.join(format!("strata-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&b);
        fs::create_dir_all(&b).expect("fuzz base dir");
        b
    })
}

/// Everything under `dir` (not following symlinks): one line per entry.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&d)
            .expect("read_dir")
            .map(|e| e.expect("dirent").path())
            .collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).expect("lstat");
            let mut line = format!(
                "{} mode={:o} uid={} gid={} size={} mtime={}.{}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            );
            if m.file_type().is_symlink() {
                line.push_str(&format!(" -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_file() {
                line.push_str(&format!(" data={:?}", fs::read(&p).unwrap()));
            } else if m.is_dir() {
                stack.push(p.clone());
            }
            out.push(line);
        }
    }
    out
}

fn lenient_octal(f: &[u8]) -> u64 {
    let mut v: u64 = 0;
    for &b in f {
        if (b'0'..=b'7').contains(&b) {
            v = v.saturating_mul(8).saturating_add(u64::from(b - b'0'));
        } else if b != b' ' {
            break;
        }
    }
    v
}

/// Recomputes the checksum of each header block, walking the archive the
/// way a reader would (header, then its data rounded up to 512 bytes).
fn fix_checksums(tar: &mut [u8]) {
    let mut o = 0usize;
    while o + 512 <= tar.len() {
        let h = &mut tar[o..o + 512];
        if h.iter().all(|&b| b == 0) {
            o += 512;
            continue;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{:06o}\0 ", sum);
        h[148..156].copy_from_slice(s.as_bytes());
        let size = if h[124] & 0x80 != 0 {
            u64::MAX
        } else {
            lenient_octal(&h[124..136])
        };
        let data = size.saturating_add(511) / 512 * 512;
        o = match usize::try_from(data)
            .ok()
            .and_then(|d| (o + 512).checked_add(d))
        {
            Some(n) => n,
            None => break,
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let format = match flags & 3 {
        0 => WhiteoutFormat::Plain,
        1 => WhiteoutFormat::Overlay,
        _ => WhiteoutFormat::Aufs,
    };
    let mut tar = rest.to_vec();
    if flags & 4 != 0 {
        fix_checksums(&mut tar);
    }

    let sb = tempfile::Builder::new()
        .prefix("sb")
        .tempdir_in(base())
        .expect("sandbox");
    let target = sb.path().join("target");
    let outside = sb.path().join("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("sentinel"), b"sentinel").unwrap();
    fs::write(outside.join("dir/inner"), b"inner").unwrap();
    fs::create_dir_all(target.join("d/e")).unwrap();
    fs::write(target.join("d/f"), b"f").unwrap();
    fs::write(target.join("f"), b"f").unwrap();
    std::os::unix::fs::symlink("../outside", target.join("up")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("abs")).unwrap();
    std::os::unix::fs::symlink("/", target.join("root")).unwrap();
    std::os::unix::fs::symlink("../../outside/sentinel", target.join("d/s")).unwrap();
    let before = snapshot(&outside);
    let sandbox_before: Vec<_> = fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let _ = archive::apply(tar.as_slice(), &target, format);

    assert_eq!(
        snapshot(&outside),
        before,
        "the canary tree next to the target changed"
    );
    let mut sandbox_after: Vec<_> = fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut sb_before = sandbox_before;
    sb_before.sort();
    sandbox_after.sort();
    assert_eq!(
        sandbox_after, sb_before,
        "an entry appeared next to the target"
    );
    assert!(
        fs::symlink_metadata(&target).unwrap().is_dir(),
        "the target is no longer a directory"
    );
    // Make everything removable (a tar may leave 0000 directories).
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    drop(sb);
});
