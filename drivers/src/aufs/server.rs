//! The FUSE server process of the aufs driver, and how the driver starts,
//! finds and stops it.
//!
//! A mount made by `strata mount` must outlive the command, and a library
//! in a multithreaded process cannot fork safely, so the server is an
//! exec'd program: the `strata` binary's hidden subcommand
//!
//! ```plain
//! strata aufs-fuse-server --mountpoint <dir> [--read-only] [--threads N] -- <branch>...
//! ```
//!
//! which calls [`main`]. It starts a new session (`setsid`), mounts the
//! union, prints `ready` on stdout (or `error: ...` and exits 1), and
//! serves until the mount goes away. The driver ([`start`]) waits for that
//! line, records the server's pid in `run/<id>.pid`, and [`stop`] unmounts
//! (detaching) and waits for the process to end.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strata_driver_api::{Error, IoContext, Result};

/// The hidden subcommand of the `strata` binary that runs a server.
pub const SUBCOMMAND: &str = "aufs-fuse-server";
/// Environment variable naming the `strata` executable to run servers with.
pub const EXE_ENV: &str = "STRATA_EXE";
/// Server threads serving FUSE requests.
pub const DEFAULT_THREADS: usize = 4;

/// The arguments of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerArgs {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Refuse every change (`EROFS`) and mount read-only.
    pub read_only: bool,
    /// Threads serving requests.
    pub threads: usize,
    /// Branch directories, top (the writable one) first.
    pub branches: Vec<PathBuf>,
}

impl ServerArgs {
    /// The command-line form (after the subcommand).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--mountpoint".into(), self.mountpoint.clone().into()];
        if self.read_only {
            v.push("--read-only".into());
        }
        v.push("--threads".into());
        v.push(self.threads.to_string().into());
        v.push("--".into());
        v.extend(self.branches.iter().map(|b| b.clone().into_os_string()));
        v
    }

    /// Parses the command-line form.
    ///
    /// # Errors
    /// A message naming the bad or missing argument.
    pub fn parse(args: &[OsString]) -> std::result::Result<Self, String> {
        let mut mountpoint = None;
        let mut read_only = false;
        let mut threads = DEFAULT_THREADS;
        let mut it = args.iter();
        let mut branches = Vec::new();
        while let Some(a) = it.next() {
            match a.to_str() {
                Some("--mountpoint") => {
                    mountpoint = Some(PathBuf::from(
                        it.next().ok_or("--mountpoint needs a value")?,
                    ))
                }
                Some("--read-only") => read_only = true,
                Some("--threads") => {
                    threads = it
                        .next()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.parse().ok())
                        .ok_or("--threads needs a number")?
                }
                Some("--") => {
                    branches.extend(it.by_ref().map(PathBuf::from));
                }
                _ => return Err(format!("unexpected argument {a:?}")),
            }
        }
        let mountpoint = mountpoint.ok_or("--mountpoint is missing")?;
        if branches.is_empty() {
            return Err("no branches after --".into());
        }
        Ok(ServerArgs {
            mountpoint,
            read_only,
            threads,
            branches,
        })
    }
}

/// Runs a server in the foreground (the hidden subcommand's body): returns
/// the process exit status. Prints `ready` on stdout once mounted, or
/// `error: <why>` when the mount fails.
pub fn main(args: &[OsString]) -> i32 {
    let _ = nix::unistd::setsid();
    let mut out = std::io::stdout();
    let a = match ServerArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(out, "error: {SUBCOMMAND}: {e}");
            return 2;
        }
    };
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let cfg = super::union::mount_config(a.read_only, "strata-aufs", a.threads);
    let fs = super::union::Union::new(a.branches.clone(), !a.read_only);
    let session = match fuser::Session::new(fs, &a.mountpoint, &cfg) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "error: mount {}: {e}", a.mountpoint.display());
            let _ = out.flush();
            return 1;
        }
    };
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    // Nobody reads stdout after "ready": point it at /dev/null so a closed
    // pipe can never hurt the server.
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    match session.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata aufs-fuse-server: {}: {e}", a.mountpoint.display());
            1
        }
    }
}

/// Finds the `strata` executable that runs servers: `configured`, else
/// `$STRATA_EXE`, else this process's executable if it is `strata`, else a
/// `strata` next to it or one directory up (a test binary in
/// `target/debug/deps` finds `target/debug/strata`), else `strata` in
/// `PATH`.
///
/// # Errors
/// [`Error::Unsupported`] listing every place tried.
pub fn find_exe(configured: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Some(c) = configured {
        cands.push(c.to_path_buf());
    }
    if let Some(e) = std::env::var_os(EXE_ENV).filter(|e| !e.is_empty()) {
        cands.push(PathBuf::from(e));
    }
    if let Ok(me) = std::env::current_exe() {
        if me.file_name().is_some_and(|n| n == "strata") {
            cands.push(me.clone());
        }
        if let Some(dir) = me.parent() {
            cands.push(dir.join("strata"));
            if let Some(up) = dir.parent() {
                cands.push(up.join("strata"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        cands.extend(std::env::split_paths(&path).map(|d| d.join("strata")));
    }
    for c in cands {
        match fs::metadata(&c) {
            Ok(m)
                if m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0 =>
            {
                return Ok(c)
            }
            _ => tried.push(c.display().to_string()),
        }
    }
    Err(Error::Unsupported {
        driver: "aufs".into(),
        why: format!(
            "FUSE mode needs the strata executable to run its server (`strata {SUBCOMMAND}`); \
             set [aufs] server_exe or ${EXE_ENV}; tried: {}",
            tried.join(", ")
        ),
    })
}

/// Starts a server for `args` with `exe`, waits until its mount is up, and
/// records its pid in `pidfile`; its stderr goes to `log`. Returns the pid.
///
/// # Errors
/// [`Error::Io`] when the program cannot be started; [`Error::Driver`] with
/// the server's own message when it fails to mount.
pub fn start(exe: &Path, args: &ServerArgs, pidfile: &Path, log: &Path) -> Result<u32> {
    let logf = fs::File::create(log).ctx("create", log)?;
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf))
        .spawn()
        .ctx("spawn", exe)?;
    let pid = child.id();
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    let r = BufReader::new(stdout).read_line(&mut line);
    if r.is_err() || line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        let msg = if line.trim().is_empty() {
            format!(
                "the server exited without mounting: {}",
                fs::read_to_string(log).unwrap_or_default().trim()
            )
        } else {
            line.trim().to_string()
        };
        return Err(Error::Driver {
            driver: "aufs".into(),
            msg: format!("FUSE server for {}: {msg}", args.mountpoint.display()),
        });
    }
    fs::write(pidfile, format!("{pid}\n")).ctx("write", pidfile)?;
    // Reap the server whenever it ends, while this process lives.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// The pid recorded in `pidfile` if that process is still a live server.
pub fn live_pid(pidfile: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    alive_server(pid).then_some(pid)
}

fn alive_server(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // State is the field after the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.windows(SUBCOMMAND.len())
                .any(|w| w == SUBCOMMAND.as_bytes())
        })
        .unwrap_or(false)
}

/// Whether `mountpoint` is a mount whose server is gone: `ENOTCONN`, or
/// `ECONNABORTED` when the kernel saw the connection aborted as the server
/// died (which of the two depends on the timing of its death).
pub fn is_stale(mountpoint: &Path) -> bool {
    matches!(
        fs::metadata(mountpoint),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
    )
}

/// Stops the server of `mountpoint`: detaches the mount, then waits (up to
/// `wait`) for the recorded process to end, and kills it after that.
/// Removes `pidfile`. Idempotent.
///
/// # Errors
/// [`Error::Io`] when the unmount fails.
pub fn stop(mountpoint: &Path, pidfile: &Path, wait: Duration) -> Result<()> {
    let pid = live_pid(pidfile);
    if crate::mountinfo::is_mount_point(mountpoint)? {
        crate::mounts::detach(mountpoint)?;
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + wait;
        let p = nix::unistd::Pid::from_raw(pid);
        while alive_server(pid) {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(50));
                break;
            }
            let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    match fs::remove_file(pidfile) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("unlink", pidfile, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_roundtrip() {
        let a = ServerArgs {
            mountpoint: "/m".into(),
            read_only: true,
            threads: 3,
            branches: vec!["/a".into(), "/--".into()],
        };
        assert_eq!(ServerArgs::parse(&a.to_args()).unwrap(), a);
        assert!(ServerArgs::parse(&["--mountpoint".into(), "/m".into()]).is_err());
    }
}
