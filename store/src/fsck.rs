//! `fsck`: compares the records with the driver and the mount table.
//!
//! ```plain
//! unfinished        creating/removing record whose owner died      repair: roll back / finish
//! missing-data      ready record, the driver has no such layer     repair: delete the record
//! missing-parent    record whose parent has no record              not repairable
//! no-record         driver layer without a record                  repair: remove it (unmount first)
//! stale-mount-count mount count > 0, nothing mounted               repair: count = 0
//! unrecorded-mount  mounted, mount count 0                         repair: adopt (count = 1)
//! digest-mismatch   (--verify) read-only layer's diff != digest    not repairable: re-import it
//! ```

use crate::db::{Layer, State};
use crate::error::Result;
use crate::{owner, Store};
use rusqlite::params;
use std::collections::BTreeSet;
use strata_driver_api::{Error as DError, LayerId, MountOpts};

/// What kind of inconsistency a [`Finding`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A `creating`/`removing` record whose process died.
    Unfinished,
    /// A `ready` record whose layer the driver does not have.
    MissingData,
    /// A record whose parent has no record.
    MissingParent,
    /// A layer the driver has without a record.
    NoRecord,
    /// A mount count that no mount backs.
    StaleMountCount,
    /// A mounted layer with mount count 0.
    UnrecordedMount,
    /// A read-only layer whose diff no longer has its recorded digest.
    DigestMismatch,
}

impl FindingKind {
    /// The kebab-case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Unfinished => "unfinished",
            FindingKind::MissingData => "missing-data",
            FindingKind::MissingParent => "missing-parent",
            FindingKind::NoRecord => "no-record",
            FindingKind::StaleMountCount => "stale-mount-count",
            FindingKind::UnrecordedMount => "unrecorded-mount",
            FindingKind::DigestMismatch => "digest-mismatch",
        }
    }
}

/// One inconsistency.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The layer.
    pub id: String,
    /// Details.
    pub detail: String,
    /// Whether `--repair` mended it.
    pub repaired: bool,
}

/// What [`Store::fsck`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FsckReport {
    /// Every finding, in the order found.
    pub findings: Vec<Finding>,
    /// Layers checked (records).
    pub records: usize,
    /// Layers the driver has.
    pub driver_layers: usize,
    /// Records skipped because a live process is working on them.
    pub in_progress: Vec<String>,
}

impl FsckReport {
    /// No findings at all.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
    /// Every finding was repaired.
    pub fn all_repaired(&self) -> bool {
        self.findings.iter().all(|f| f.repaired)
    }
}

impl Store {
    /// Checks the store (see the module documentation) and, with `repair`,
    /// mends what can be mended. With `verify` the diff of every read-only
    /// layer with a recorded digest is taken again and compared (reads all
    /// their data). Holds the root lock, so mount counts do not move meanwhile.
    ///
    /// # Errors
    /// [`crate::Error::Db`]; driver errors from listing or querying layers,
    /// and from repairs.
    pub async fn fsck(&self, repair: bool, verify: bool) -> Result<FsckReport> {
        let _lock = self.lock_root().await?;
        // The driver first: a layer's record is inserted before its data is
        // created, so data seen here has a record below unless it really
        // has none (or was removed meanwhile, which repair tolerates).
        let driver_ids = self.driver().list().await?;
        let records = self.list()?;
        let ids: BTreeSet<&str> = records.iter().map(|l| l.id.as_str()).collect();
        let mut report = FsckReport {
            records: records.len(),
            driver_layers: driver_ids.len(),
            ..Default::default()
        };
        let add = |report: &mut FsckReport, kind, id: &str, detail: String, repaired| {
            report.findings.push(Finding {
                kind,
                id: id.to_string(),
                detail,
                repaired,
            })
        };
        for l in &records {
            if l.state != State::Ready {
                if owner::alive(l.owner.as_deref()) {
                    report.in_progress.push(l.id.to_string());
                    continue;
                }
                let repaired = repair && self.recover_layer(l).await?.is_some();
                add(
                    &mut report,
                    FindingKind::Unfinished,
                    l.id.as_str(),
                    format!("state {} left by a process that died", l.state),
                    repaired,
                );
                continue;
            }
            if !self.driver().exists(&l.id).await? {
                let mut repaired = false;
                if repair {
                    repaired = self.execute(
                        "delete record",
                        "DELETE FROM layers WHERE id = ?1 AND state = 'ready'",
                        [l.id.as_str()],
                    )? > 0;
                }
                add(
                    &mut report,
                    FindingKind::MissingData,
                    l.id.as_str(),
                    format!("the {} driver has no data for this record", l.driver),
                    repaired,
                );
                continue;
            }
            if let Some(p) = &l.parent {
                if !ids.contains(p.as_str()) {
                    add(
                        &mut report,
                        FindingKind::MissingParent,
                        l.id.as_str(),
                        format!("parent {p} has no record (not repairable)"),
                        false,
                    );
                }
            }
            self.check_mounts(l, repair, &mut report).await?;
            if verify && l.read_only {
                if let Some(recorded) = &l.digest {
                    let now = self.digest_against_parent(l).await?;
                    if *recorded != now {
                        add(
                            &mut report,
                            FindingKind::DigestMismatch,
                            l.id.as_str(),
                            format!(
                                "recorded {recorded}, diff now {now} (not repairable: re-import the layer)"
                            ),
                            false,
                        );
                    }
                }
            }
        }
        // Driver layers without records; children before parents.
        let mut orphans: Vec<LayerId> = driver_ids
            .into_iter()
            .filter(|id| !ids.contains(id.as_str()))
            .collect();
        for id in &orphans {
            add(
                &mut report,
                FindingKind::NoRecord,
                id.as_str(),
                format!(
                    "the {} driver has this layer, the store has no record",
                    self.driver().name()
                ),
                false,
            );
        }
        if repair {
            for _pass in 0..=orphans.len() {
                let mut left = Vec::new();
                for id in orphans {
                    // A record may have appeared meanwhile (a create now in
                    // progress): then it is not an orphan.
                    if self.get(&id).is_ok() {
                        continue;
                    }
                    match self.remove_driver_data(&id).await {
                        Ok(()) => {
                            if let Some(f) = report
                                .findings
                                .iter_mut()
                                .find(|f| f.kind == FindingKind::NoRecord && f.id == id.as_str())
                            {
                                f.repaired = true;
                            }
                        }
                        Err(crate::Error::Layer(DError::HasChildren { .. })) => left.push(id),
                        Err(e) => return Err(e),
                    }
                }
                orphans = left;
                if orphans.is_empty() {
                    break;
                }
            }
        }
        Ok(report)
    }

    async fn check_mounts(&self, l: &Layer, repair: bool, report: &mut FsckReport) -> Result<()> {
        let mounted = self.driver().is_mounted(&l.id).await?;
        if l.mount_count > 0 && !mounted {
            let repaired = repair
                && self.execute(
                    "reset mount count",
                    "UPDATE layers SET mount_count = 0, mount_path = NULL WHERE id = ?1",
                    [l.id.as_str()],
                )? > 0;
            report.findings.push(Finding {
                kind: FindingKind::StaleMountCount,
                id: l.id.to_string(),
                detail: format!(
                    "mount count {}, but the layer is not mounted",
                    l.mount_count
                ),
                repaired,
            });
        } else if l.mount_count == 0 && mounted {
            let mut repaired = false;
            if repair {
                // Mount is idempotent: on a mounted layer it returns the path.
                let path = self
                    .driver()
                    .mount(
                        &l.id,
                        &MountOpts {
                            read_only: l.read_only,
                            options: Vec::new(),
                        },
                    )
                    .await?;
                repaired = self.execute(
                    "adopt mount",
                    "UPDATE layers SET mount_count = 1, mount_path = ?1 WHERE id = ?2",
                    params![path.to_string_lossy(), l.id.as_str()],
                )? > 0;
            }
            report.findings.push(Finding {
                kind: FindingKind::UnrecordedMount,
                id: l.id.to_string(),
                detail: "mounted, but the mount count is 0 (repair adopts it: count 1)".into(),
                repaired,
            });
        }
        Ok(())
    }
}
