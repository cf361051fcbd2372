//! A testing aid: named crash points.
//!
//! When the environment variable `STRATA_TEST_CRASH_AT` equals the name of a
//! step (`import:after-record`, `import:mid-apply`, `rm:after-mark`, ...),
//! the process kills itself with `SIGKILL` when it reaches that step, so
//! tests can show exactly what a crash there leaves behind and that the next
//! open of the store recovers it. Unset (the normal case), nothing happens.
//!
//! Steps: `create:after-record`, `create:after-driver`,
//! `create:before-ready`, `import:after-record`, `import:after-create`,
//! `import:mid-apply`, `import:after-apply`, `import:after-digest`,
//! `import:before-ready`, `import:after-ready`, `apply:after-apply`,
//! `mount:after-driver`, `unmount:after-driver`, `rm:after-mark`,
//! `rm:after-driver`, and for `strata migrate`: `migrate:after-begin`,
//! `migrate:after-mark`, `migrate:mid-copy`, `migrate:after-apply`,
//! `migrate:after-copied`, `migrate:after-source-remove`,
//! `migrate:before-finish`, `migrate:after-finish-target`,
//! `aufs-import:after-layer`.
//!
//! A step may carry an occurrence, `<step>#<n>`: the process then dies the
//! n-th time it reaches the step (so a test can kill a migration half-way
//! through its layers). Without it, the first time.

/// The environment variable that names the step to crash at.
pub const ENV: &str = "STRATA_TEST_CRASH_AT";

/// Every step name [`point`] is called with.
pub const STEPS: &[&str] = &[
    "create:after-record",
    "create:after-driver",
    "create:before-ready",
    "import:after-record",
    "import:after-create",
    "import:mid-apply",
    "import:after-apply",
    "import:after-digest",
    "import:before-ready",
    "import:after-ready",
    "apply:after-apply",
    "mount:after-driver",
    "unmount:after-driver",
    "rm:after-mark",
    "rm:after-driver",
    "migrate:after-begin",
    "migrate:after-mark",
    "migrate:mid-copy",
    "migrate:after-apply",
    "migrate:after-copied",
    "migrate:after-source-remove",
    "migrate:before-finish",
    "migrate:after-finish-target",
    "aufs-import:after-layer",
];

/// How often each step was reached in this process (for `<step>#<n>`).
static HITS: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

/// Whether `$STRATA_TEST_CRASH_AT` asks to die at this arrival at `step`.
fn armed(step: &str) -> bool {
    let Some(v) = std::env::var_os(ENV) else {
        return false;
    };
    let v = v.to_string_lossy();
    let (name, nth) = match v.split_once('#') {
        Some((n, k)) => (n, k.parse::<u64>().unwrap_or(1)),
        None => (&*v, 1),
    };
    if name != step {
        return false;
    }
    let mut hits = HITS.lock().unwrap_or_else(|p| p.into_inner());
    let count = match hits.iter_mut().find(|(s, _)| s == step) {
        Some((_, c)) => {
            *c += 1;
            *c
        }
        None => {
            hits.push((step.to_string(), 1));
            1
        }
    };
    count == nth
}

/// Kills this process with `SIGKILL` if `$STRATA_TEST_CRASH_AT` is `step`
/// (or `step#n` and this is the n-th arrival).
pub fn point(step: &str) {
    debug_assert!(STEPS.contains(&step), "unlisted crash step {step}");
    if armed(step) {
        tracing::warn!(step, "{ENV}: killing this process");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        // SIGKILL cannot be caught; wait for it to land.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
