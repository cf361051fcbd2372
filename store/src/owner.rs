//! Which process owns an unfinished operation, and whether it still runs.
//!
//! An owner is `<boot id>:<pid>:<start time>`: the start time (in clock
//! ticks since boot, `/proc/<pid>/stat` field 22) tells a live owner from a
//! later process that reused its pid, the boot id tells this boot from an
//! earlier one. All processes sharing a root are assumed to share a pid
//! namespace.

use std::sync::OnceLock;

fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown-boot".into())
    })
}

/// The start time of process `pid`, if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything:
    // fields are counted after the last ')'. Field 3 is the first after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// This process as an owner string.
pub fn me() -> String {
    static ME: OnceLock<String> = OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        format!("{}:{}:{}", boot_id(), pid, start_time(pid).unwrap_or(0))
    })
    .clone()
}

/// Whether the process `owner` names is still running. A malformed or
/// missing owner counts as dead.
pub fn alive(owner: Option<&str>) -> bool {
    let Some(owner) = owner else { return false };
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(boot)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if boot != boot_id() {
        return false;
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_is_alive_and_others_are_not() {
        assert!(alive(Some(&me())));
        assert!(!alive(None));
        assert!(!alive(Some("garbage")));
        assert!(!alive(Some(&format!(
            "{}:{}:1",
            boot_id(),
            std::process::id()
        ))));
        assert!(!alive(Some(&format!(
            "other-boot:{}:{}",
            std::process::id(),
            start_time(std::process::id()).unwrap()
        ))));
    }
}
