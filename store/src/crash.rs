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
//! `rm:after-driver`.

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
];

/// Kills this process with `SIGKILL` if `$STRATA_TEST_CRASH_AT` is `step`.
pub fn point(step: &str) {
    debug_assert!(STEPS.contains(&step), "unlisted crash step {step}");
    if std::env::var_os(ENV).is_some_and(|v| v == step) {
        tracing::warn!(step, "{ENV}: killing this process");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        // SIGKILL cannot be caught; wait for it to land.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
