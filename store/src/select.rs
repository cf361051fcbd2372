//! Which driver a root gets: the one it already belongs to, the configured
//! one, or for `auto` the first in priority order whose probe passes.

use crate::config::{Config, AUTO};
use crate::error::{Error, Result};
use std::path::Path;
use strata_drivers::registry;

/// A driver that was not picked, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// The driver's name.
    pub driver: String,
    /// Why it was not picked.
    pub why: String,
}

/// The outcome of driver selection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Selection {
    /// The driver picked.
    pub driver: String,
    /// Why it was picked.
    pub reason: String,
    /// Every other known driver and why it was not picked.
    pub others: Vec<Rejected>,
}

/// Where the driver that already owns a root was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The driver's name.
    pub driver: String,
    /// `the store database` or `the directory <root>/<name>`.
    pub evidence: String,
}

/// The driver a root already belongs to: the database's record, else a
/// non-empty `<root>/<name>` directory of a known driver.
pub fn existing_owner(root: &Path, db_driver: Option<String>) -> Option<Owner> {
    if let Some(driver) = db_driver {
        return Some(Owner {
            driver,
            evidence: "the store database records it".into(),
        });
    }
    registry::NAMES.iter().find_map(|name| {
        let dir = root.join(name);
        let non_empty = std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        non_empty.then(|| Owner {
            driver: name.to_string(),
            evidence: format!("{} holds its data", dir.display()),
        })
    })
}

/// Picks the driver for `cfg.root`. `owner` is the driver the root already
/// belongs to (see [`existing_owner`]).
///
/// # Errors
/// [`Error::DriverMismatch`] when the root belongs to a driver other than
/// the configured one; [`Error::Layer`] (`Unsupported`) when the configured
/// driver cannot work here; [`Error::Config`] when `auto` finds none.
pub fn select(cfg: &Config, owner: Option<&Owner>) -> Result<Selection> {
    let root = &cfg.root;
    if let Some(owner) = owner {
        if cfg.driver != AUTO && cfg.driver != owner.driver {
            return Err(Error::DriverMismatch {
                root: root.clone(),
                has: owner.driver.clone(),
                asked: format!("{} (from {})", cfg.driver, cfg.driver_origin),
            });
        }
        return Ok(Selection {
            driver: owner.driver.clone(),
            reason: format!("the root already belongs to it ({})", owner.evidence),
            others: others(&owner.driver, |_| {
                format!("the root belongs to {}", owner.driver)
            }),
        });
    }
    if cfg.driver != AUTO {
        registry::probe(&cfg.driver, root)?;
        return Ok(Selection {
            driver: cfg.driver.clone(),
            reason: format!(
                "configured (driver = {:?}, from {})",
                cfg.driver, cfg.driver_origin
            ),
            others: others(&cfg.driver, |_| {
                format!("driver {} is configured", cfg.driver)
            }),
        });
    }
    let mut tried: Vec<Rejected> = Vec::new();
    let mut picked: Option<(String, usize)> = None;
    for (i, name) in cfg.driver_priority.iter().enumerate() {
        match registry::probe(name, root) {
            Ok(()) if picked.is_none() => picked = Some((name.clone(), i)),
            Ok(()) => tried.push(Rejected {
                driver: name.clone(),
                why: format!(
                    "works here, but {} comes first in driver_priority",
                    picked.as_ref().map(|p| p.0.as_str()).unwrap_or("?")
                ),
            }),
            Err(e) => tried.push(Rejected {
                driver: name.clone(),
                why: e.to_string(),
            }),
        }
    }
    let Some((driver, pos)) = picked else {
        let why: Vec<String> = tried
            .iter()
            .map(|r| format!("{}: {}", r.driver, r.why))
            .collect();
        return Err(Error::Config {
            source_name: cfg.driver_origin.to_string(),
            msg: format!(
                "driver = auto: no driver in driver_priority works on {} ({})",
                root.display(),
                why.join("; ")
            ),
        });
    };
    for name in registry::NAMES {
        if !cfg.driver_priority.iter().any(|p| p == name) {
            tried.push(Rejected {
                driver: name.to_string(),
                why: "not listed in driver_priority".into(),
            });
        }
    }
    Ok(Selection {
        reason: format!(
            "driver = auto: first in driver_priority whose probe passes (position {})",
            pos + 1
        ),
        driver,
        others: tried,
    })
}

fn others(picked: &str, why: impl Fn(&str) -> String) -> Vec<Rejected> {
    registry::NAMES
        .iter()
        .filter(|n| **n != picked)
        .map(|n| Rejected {
            driver: n.to_string(),
            why: why(n),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_vfs_when_nothing_else_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        let sel = select(&cfg, None).unwrap();
        // Only vfs is built in this tree so far; any other built driver that
        // probes fine here also is a correct pick.
        assert!(registry::probe(&sel.driver, dir.path()).is_ok());
        assert_eq!(sel.others.len(), registry::NAMES.len() - 1);
    }

    #[test]
    fn owner_wins_and_mismatch_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Owner {
            driver: "vfs".into(),
            evidence: "test".into(),
        };
        let mut cfg = Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        assert_eq!(select(&cfg, Some(&owner)).unwrap().driver, "vfs");
        cfg.driver = "overlay".into();
        let e = select(&cfg, Some(&owner)).unwrap_err().to_string();
        assert!(e.contains("vfs") && e.contains("overlay"), "{e}");
    }

    #[test]
    fn driver_dir_marks_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(existing_owner(dir.path(), None), None);
        std::fs::create_dir_all(dir.path().join("btrfs/x")).unwrap();
        assert_eq!(existing_owner(dir.path(), None).unwrap().driver, "btrfs");
        assert_eq!(
            existing_owner(dir.path(), Some("vfs".into()))
                .unwrap()
                .driver,
            "vfs"
        );
    }
}
