//! The allocator's arena cap, set once at start-up.
//!
//! glibc gives threads their own malloc arenas (up to 8 per core). strata
//! runs many short-lived threads (tokio's blocking pool, an in-process
//! FUSE session per aufs view), and memory freed in one arena is not
//! reused by another: `strata compare`'s aufs deep chain reached 126 MiB
//! of RSS that way (73 MiB for 161 layers alone; 25 MiB with one arena).
//! Two arenas keep the process inside its 64 MiB budget with no
//! measurable cost: the hot paths stream through fixed buffers.
#![allow(unsafe_code)] // mallopt is a libc call with no safe wrapper.

/// Caps glibc's malloc arenas at two. Call first thing in `main`.
pub fn cap_arenas() {
    // SAFETY: mallopt only changes the allocator's tunables; it takes the
    // allocator's own locks and touches no memory of ours. The return
    // value (0 when the option is refused) needs no action: the cap is an
    // optimisation.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
