//! Workloads shared by the criterion benches and `strata compare`: the
//! rootfs generator here, the workloads in [`workloads`], scratch space with
//! loop filesystems and a leak-proof teardown in [`scratch`].
//!
//! Every workload is deterministic: the same spec gives the same tree, so
//! figures from different drivers, runs and machines describe the same work.

pub mod harness;
pub mod scratch;
pub mod workloads;

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// A small, fast, seedable generator (splitmix64): stable across versions,
/// unlike a library RNG whose stream may change.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The shape of a generated root filesystem.
#[derive(Clone, Copy, Debug)]
pub struct RootfsSpec {
    /// Number of regular files.
    pub files: usize,
    /// Number of directories they are spread over.
    pub dirs: usize,
    /// Total bytes of file data to aim for.
    pub bytes: u64,
    /// Seed of the generator.
    pub seed: u64,
}

impl RootfsSpec {
    /// A few MB: for quick checks and CI.
    pub const SMALL: RootfsSpec = RootfsSpec {
        files: 2_000,
        dirs: 200,
        bytes: 24 << 20,
        seed: 1,
    };
    /// A rootfs-sized tree: 6,000 files, 160 MB.
    pub const MEDIUM: RootfsSpec = RootfsSpec {
        files: 6_000,
        dirs: 500,
        bytes: 160 << 20,
        seed: 1,
    };
}

/// What [`generate_rootfs`] made.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeStats {
    /// Regular files written.
    pub files: usize,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Fills `dir` (which must exist and be empty) with a tree shaped like a
/// distribution's `/usr`: nested dirs (`bin`, `lib/<pkg>`, `share/doc/<pkg>`),
/// file sizes from a few bytes to a few MB with most files small, a few
/// symlinks and hard links, executable modes.
pub fn generate_rootfs(dir: &Path, spec: RootfsSpec) -> Result<TreeStats> {
    let mut rng = Rng::new(spec.seed);
    let tops = [
        "bin",
        "lib",
        "share/doc",
        "share/man/man1",
        "include",
        "libexec",
    ];
    let mut dirs = Vec::with_capacity(spec.dirs);
    for i in 0..spec.dirs.max(1) {
        let top = tops[i % tops.len()];
        let d = dir.join(format!("usr/{top}/pkg{:04}", i / tops.len()));
        fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        dirs.push(d);
    }
    // Sizes: a long-tailed distribution scaled to the byte budget.
    let mut weights = Vec::with_capacity(spec.files);
    for _ in 0..spec.files {
        let class = rng.below(100);
        let w = match class {
            0..=59 => 64 + rng.below(4_000),
            60..=89 => 4_096 + rng.below(60_000),
            90..=98 => 65_536 + rng.below(1_000_000),
            _ => 1_000_000 + rng.below(8_000_000),
        };
        weights.push(w);
    }
    let total: u64 = weights.iter().sum::<u64>().max(1);
    let mut buf = vec![0u8; 1 << 16];
    let mut stats = TreeStats::default();
    for (i, w) in weights.iter().enumerate() {
        let size = (u128::from(*w) * u128::from(spec.bytes) / u128::from(total)) as u64;
        let d = &dirs[i % dirs.len()];
        let p = d.join(format!("file{i:06}"));
        let mut f = fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            // Compressible-ish data: runs of a random byte with random noise,
            // like binaries and text, not all zeros (no accidental holes).
            for chunk in buf[..n].chunks_mut(64) {
                let v = rng.next_u64();
                chunk.fill((v & 0xff) as u8);
                chunk[0] = (v >> 8) as u8;
            }
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        if i % 7 == 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        }
        if i % 97 == 0 && i > 0 {
            symlink(format!("file{i:06}"), d.join(format!("link{i:06}")))?;
        }
        if i % 211 == 0 && i > 0 {
            fs::hard_link(&p, d.join(format!("hard{i:06}")))?;
        }
        stats.files += 1;
        stats.bytes += size;
    }
    Ok(stats)
}

/// Writes the canonical layer tar of the whole tree at `dir` to `out`.
pub fn tar_of_tree(dir: &Path, out: &Path) -> Result<()> {
    let changes = strata_driver_api::naive::changes(dir, None)?;
    let f = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut w = strata_driver_api::archive::write_changes(dir, &changes, w)?;
    w.flush()?;
    Ok(())
}

/// Makes `n` small changes under a layer's mounted tree `dir` that holds a
/// [`generate_rootfs`] tree: rewrites, chmods, deletes and new files, spread
/// over the tree, deterministic for a given seed. Each change is on a
/// different file (at most one change per file of the tree).
pub fn small_changes(dir: &Path, n: usize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut files = Vec::new();
    for entry in walk_files(dir)? {
        files.push(entry);
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!("no files under {}", dir.display());
    }
    // Distinct files (a partial Fisher-Yates shuffle), so no change touches
    // a file an earlier one deleted.
    let n = n.min(files.len());
    for i in 0..n {
        let j = i + rng.below((files.len() - i) as u64) as usize;
        files.swap(i, j);
        let p = &files[i];
        match i % 4 {
            0 => fs::write(p, format!("changed {i}\n"))?,
            1 => fs::set_permissions(p, fs::Permissions::from_mode(0o600))?,
            2 => {
                let _ = fs::remove_file(p);
            }
            _ => fs::write(p.with_extension(format!("new{i}")), b"new file\n")?,
        }
    }
    Ok(())
}

fn walk_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("readdir {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_stable() {
        let mut r = Rng::new(1);
        let a: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut r = Rng::new(1);
        let b: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn rootfs_is_deterministic_and_sized() {
        let spec = RootfsSpec {
            files: 300,
            dirs: 20,
            bytes: 2 << 20,
            seed: 7,
        };
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = generate_rootfs(a.path(), spec).unwrap();
        let sb = generate_rootfs(b.path(), spec).unwrap();
        assert_eq!(sa.files, 300);
        assert_eq!(sa.bytes, sb.bytes);
        // within rounding of the budget
        assert!(
            sa.bytes <= 2 << 20 && sa.bytes > (2 << 20) - 300,
            "{}",
            sa.bytes
        );
        let fa = fs::read(a.path().join("usr/bin/pkg0000/file000000")).unwrap();
        let fb = fs::read(b.path().join("usr/bin/pkg0000/file000000")).unwrap();
        assert_eq!(fa, fb);
    }
}
