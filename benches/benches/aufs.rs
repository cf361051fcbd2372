//! The aufs driver (FUSE mode) against kernel overlay on the same layers,
//! in one run: sequential read of a 1 GiB lower file (target: at least
//! 0.8x of overlay's throughput), `stat` of 10,000 lower files (target:
//! within 3x of overlay), copy-up (append) of 1,000 small lower files; and
//! the FUSE server's peak RSS (`VmHWM`) after the read and after the stats.
//!
//! Each driver gets the same lower layer (`big.bin` and 10,000 small files
//! under `stat/`) on its own ext4 loop image (the host's root fs is far too
//! slow at creating files to compare anything on it). A round mounts a
//! fresh child of the lower layer per workload; rounds alternate which
//! driver goes first. Caches are not dropped (that would disturb everyone
//! else on the machine): every measured pass is preceded by the same
//! unmeasured pass on the same mount, for both drivers, so both are
//! measured warm. The stat figure is also given for the first pass on a
//! fresh mount (the union's lookups all reach its server), for reference.
//! Prints, per figure, the median of the rounds, their spread (min..max)
//! and the ratio aufs / overlay of the medians.
//!
//! Needs root and the `strata` executable beside the bench's directory (as
//! `cargo build --release -p strata-cli` leaves it) or in `$STRATA_EXE`,
//! for the FUSE server. Environment: `STRATA_BENCH_ROUNDS` (default 3),
//! `STRATA_BENCH_READ_MIB` (default 1024), `STRATA_BENCH_FILES` (stat
//! files, default 10000), `STRATA_BENCH_COPY_UP` (default 1000).
//! Run: `cargo bench -p strata-benches --bench aufs`.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use strata_benches::harness::need_root;
use strata_benches::scratch::{prepare_backing, Scratch};
use strata_driver_api::{CreateOpts, Driver, LayerId, MountOpts};

const DRIVERS: [&str; 2] = ["aufs", "overlay"];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Params {
    rounds: u64,
    read_bytes: u64,
    files: usize,
    copy_up: usize,
}

fn lid(s: &str) -> LayerId {
    LayerId::new(s).expect("valid layer id")
}

fn stat_rel(i: usize) -> PathBuf {
    PathBuf::from(format!("stat/d{:03}/f{i:05}", i / 100))
}

/// `big.bin` of `bytes` (pseudo-random) and `files` small files.
fn fill_lower(dir: &Path, bytes: u64, files: usize) -> Result<()> {
    let mut rng = strata_benches::Rng::new(42);
    let p = dir.join("big.bin");
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(&p).with_context(|| format!("create {}", p.display()))?,
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    for i in 0..files {
        let p = dir.join(stat_rel(i));
        if i % 100 == 0 {
            fs::create_dir_all(p.parent().expect("parent"))?;
        }
        fs::write(&p, format!("small file {i}\n").repeat(5))
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

fn read_all(path: &Path) -> Result<u64> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn stat_all(dir: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let p = dir.join(stat_rel(i));
        fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
    }
    Ok(())
}

fn append_all(dir: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let p = dir.join(stat_rel(i));
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(b"modified\n"))
            .with_context(|| format!("append to {}", p.display()))?;
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The pid of the aufs FUSE server serving `mnt`.
fn server_pid(mnt: &Path) -> Option<u32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.iter().any(|a| *a == b"aufs-fuse-server") && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// One driver on its own loop image, with the lower layer made.
struct Target {
    name: &'static str,
    driver: Arc<dyn Driver>,
    lower: LayerId,
    n: u32,
}

impl Target {
    async fn child(&mut self) -> Result<(LayerId, PathBuf)> {
        self.n += 1;
        let id = lid(&format!("bench-{}", self.n));
        self.driver
            .create(&id, Some(&self.lower), &CreateOpts::rw())
            .await?;
        let p = self.driver.mount(&id, &MountOpts::default()).await?;
        Ok((id, p))
    }

    async fn drop_child(&self, id: &LayerId) -> Result<()> {
        self.driver.unmount(id).await?;
        self.driver.remove(id).await?;
        Ok(())
    }
}

type Figures = BTreeMap<(&'static str, &'static str), Vec<f64>>;

async fn round(t: &mut Target, p: &Params, figs: &mut Figures) -> Result<()> {
    let (id, mnt) = t.child().await?;
    let big = mnt.join("big.bin");
    read_all(&big)?;
    let mut n = 0;
    let read = timed(|| {
        n = read_all(&big)?;
        Ok(())
    })?;
    if n != p.read_bytes {
        bail!("{}: read {n} bytes, expected {}", t.name, p.read_bytes);
    }
    let pid = (t.name == "aufs").then(|| server_pid(&mnt)).flatten();
    if let Some((hwm, rss)) = pid.and_then(rss_kib) {
        figs.entry((t.name, "server VmHWM after read (KiB)"))
            .or_default()
            .push(hwm as f64);
        figs.entry((t.name, "server VmRSS after read (KiB)"))
            .or_default()
            .push(rss as f64);
    }
    let stat_first = timed(|| stat_all(&mnt, p.files))?;
    let stat = timed(|| stat_all(&mnt, p.files))?;
    if let Some((hwm, rss)) = pid.and_then(rss_kib) {
        figs.entry((t.name, "server VmHWM after stat (KiB)"))
            .or_default()
            .push(hwm as f64);
        figs.entry((t.name, "server VmRSS after stat (KiB)"))
            .or_default()
            .push(rss as f64);
    }
    t.drop_child(&id).await?;
    let (id, mnt) = t.child().await?;
    let copy_up = timed(|| append_all(&mnt, p.copy_up))?;
    t.drop_child(&id).await?;
    let mib = p.read_bytes as f64 / f64::from(1 << 20);
    figs.entry((t.name, "read (s)")).or_default().push(read);
    figs.entry((t.name, "read (MiB/s)"))
        .or_default()
        .push(mib / read);
    figs.entry((t.name, "stat, warm (s)"))
        .or_default()
        .push(stat);
    figs.entry((t.name, "stat, first pass on a fresh mount (s)"))
        .or_default()
        .push(stat_first);
    figs.entry((t.name, "copy-up (s)"))
        .or_default()
        .push(copy_up);
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

fn report(figs: &Figures, p: &Params) {
    println!(
        "aufs bench: {} rounds; read {} MiB, stat {} files, copy-up {} files",
        p.rounds,
        p.read_bytes >> 20,
        p.files,
        p.copy_up
    );
    for ((drv, what), v) in figs {
        let (lo, hi) = spread(v);
        println!(
            "  {drv:8} {what:40} median {:>10.4}  spread {lo:.4}..{hi:.4}  ({:?})",
            median(v),
            v
        );
    }
    for (what, target) in [
        (
            "read (s)",
            "time ratio; target <= 1.25, i.e. >= 0.8x throughput",
        ),
        ("stat, warm (s)", "target <= 3"),
        ("stat, first pass on a fresh mount (s)", "for reference"),
        ("copy-up (s)", "no target"),
    ] {
        if let (Some(a), Some(o)) = (figs.get(&("aufs", what)), figs.get(&("overlay", what))) {
            println!(
                "aufs/overlay {what}: {:.2}x ({target})",
                median(a) / median(o)
            );
        }
    }
}

async fn open_target(scratch: &mut Scratch, name: &'static str, p: &Params) -> Result<Target> {
    let bytes = 3 * p.read_bytes + (1 << 30);
    let (dir, what) = prepare_backing(scratch, name, name, "ext4", bytes)?;
    println!("{name}: on {what}");
    let driver = strata_drivers::registry::open(name, &dir.join("root"), &Default::default())
        .await
        .with_context(|| format!("open {name}"))?;
    let lower = lid("bench-lower");
    driver.create(&lower, None, &CreateOpts::rw()).await?;
    let view = driver.view(&lower, true).await?;
    let (vp, rb, files) = (view.path().to_path_buf(), p.read_bytes, p.files);
    tokio::task::spawn_blocking(move || fill_lower(&vp, rb, files)).await??;
    drop(view);
    Ok(Target {
        name,
        driver,
        lower,
        n: 0,
    })
}

async fn run(scratch: &mut Scratch, p: &Params) -> Result<Figures> {
    let mut targets = Vec::new();
    for name in DRIVERS {
        targets.push(open_target(scratch, name, p).await?);
    }
    let mut figs = Figures::new();
    let mut result = Ok(());
    'rounds: for r in 0..p.rounds {
        let order: Vec<usize> = if r % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            if let Err(e) = round(&mut targets[i], p, &mut figs).await {
                result = Err(e);
                break 'rounds;
            }
        }
    }
    for t in &targets {
        let _ = t.driver.remove(&t.lower).await;
        let _ = t.driver.cleanup().await;
    }
    result.map(|()| figs)
}

fn main() -> Result<()> {
    if !need_root("aufs") {
        return Ok(());
    }
    if let Err(e) = strata_drivers::registry::is_built("aufs") {
        println!("aufs bench: not run: {e}");
        return Ok(());
    }
    let p = Params {
        rounds: env_num("STRATA_BENCH_ROUNDS", 3).max(1),
        read_bytes: env_num("STRATA_BENCH_READ_MIB", 1024) << 20,
        files: env_num("STRATA_BENCH_FILES", 10_000) as usize,
        copy_up: env_num("STRATA_BENCH_COPY_UP", 1_000) as usize,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let mut scratch = Scratch::new(&std::env::temp_dir())?;
    let r = rt.block_on(run(&mut scratch, &p));
    scratch.teardown()?;
    report(&r?, &p);
    Ok(())
}
