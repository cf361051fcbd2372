//! `strata migrate`: moves every layer of a store from its driver to
//! another one (in place, or into a new root), and imports Docker's AUFS
//! layout ([`docker_aufs`]).
//!
//! For each layer, parents first, the source driver's canonical diff is
//! streamed (through a pipe, never held in memory) into a new layer of the
//! target driver with the same id, parent, read-only flag and labels. The
//! source's diff must have the layer's recorded digest (when there is
//! one), and the target's own diff of the new layer must have the digest
//! of the source's diff, before anything else happens; only then is the
//! layer recorded as migrated, and only after that is the source layer
//! removed (unless `keep_source`).
//!
//! One exception to equal digests: the same tree can have two canonical
//! diffs. Overlay keeps an opaque directory as such (`.wh..wh..opq`),
//! while drivers that store full trees (vfs, btrfs) can only show it as a
//! whiteout per hidden name. Then the copy is accepted only if the tree
//! comparisons of both drivers (the naive differ over each driver's views)
//! give the same tar, i.e. the layer's tree is the same; the recorded
//! digest becomes the target's, and the report lists the layer
//! ([`MigrateReport::redigested`]).
//! A source layer is removed as soon as all of its children are migrated
//! and removed, so the data held twice stays small.
//!
//! Progress is kept in the store's database, so a migration killed at any
//! point continues when it is run again:
//!
//! ```plain
//! meta    migrate_from, migrate_to, migrate_to_root, migrate_keep_source
//!         (present while a migration runs: any other open of the root is
//!         refused with an error saying what to run)
//! migration(id TEXT PRIMARY KEY, step TEXT, digest TEXT)
//!   (no row)  pending: the layer is in the source driver only
//!   copying   the target may hold a partial layer: removed and redone
//!   copied    verified in the target, still in the source
//!   done      removed from the source
//! ```
//!
//! At no point is a layer in neither driver: the source copy goes only
//! after the target copy was verified and recorded. When every layer is
//! copied (and, without `keep_source`, removed from the source) the store
//! records the target as its driver:
//!
//! - in place (no `to_root`, or the same root): `meta.driver` becomes the
//!   target, so `driver = "auto"` opens the store with it and a
//!   configuration naming the old driver is refused with an error naming
//!   both (as for any root that belongs to another driver); the empty
//!   `<root>/<source>/` directory is removed;
//! - into `to_root`: a new database there holds the records and the target
//!   driver; the old root's records are deleted and it is marked as moved,
//!   so opening it says where the store went. With `keep_source` the old
//!   store stays as it was and usable: the migration is a verified copy.
//!
//! [`abort`] abandons a migration while every layer still has its source
//! copy (for example after a copy failed verification).

pub mod docker_aufs;

use crate::config::AUTO;
use crate::db::{self, Layer, State};
use crate::error::{Error, Result};
use crate::stream::{CountingReader, HashingWriter};
use crate::{crash, fsinfo, Config, Store, DB_FILE};
use rusqlite::{params, Connection};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_driver_api::{CreateOpts, Driver, Error as DError, IoContext, LayerId, TarSink};
use strata_drivers::registry;

const META_FROM: &str = "migrate_from";
const META_TO: &str = "migrate_to";
const META_TO_ROOT: &str = "migrate_to_root";
const META_KEEP: &str = "migrate_keep_source";
/// Set on a root whose store was moved to another root.
const META_MOVED_TO: &str = "moved_to";

/// What to migrate to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateOpts {
    /// The target driver's name.
    pub to: String,
    /// The root of the migrated store (default: the same root).
    pub to_root: Option<PathBuf>,
    /// Keep the source layers (a verified copy instead of a move).
    pub keep_source: bool,
}

/// Receives progress of a migration or an import. Called from the
/// migrating task; must be cheap.
pub trait Progress: Send + Sync {
    /// Once, before the first layer: the layers in all, and how many an
    /// earlier, interrupted run already finished.
    fn start(&self, total: usize, already_done: usize);
    /// After each layer: its id and the bytes of content it carried.
    fn layer_done(&self, id: &LayerId, bytes: u64);
    /// A line worth telling the user (resuming, skipping, cleaning up).
    fn note(&self, msg: &str);
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: usize, _: usize) {}
    fn layer_done(&self, _: &LayerId, _: u64) {}
    fn note(&self, _: &str) {}
}

/// What [`migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    /// The source driver.
    pub from: String,
    /// The target driver.
    pub to: String,
    /// The source root.
    pub root: PathBuf,
    /// The root of the migrated store.
    pub to_root: PathBuf,
    /// Layers in the store.
    pub layers: usize,
    /// Layers copied by this run (the rest were copied by an earlier,
    /// interrupted run).
    pub copied: usize,
    /// Bytes of content copied by this run.
    pub bytes: u64,
    /// This run continued an interrupted migration.
    pub resumed: bool,
    /// The source layers were kept.
    pub source_kept: bool,
    /// Layers (copied by this run) whose diff in the target driver is
    /// another tar than in the source, for the same tree: overlay's opaque
    /// directories become explicit whiteouts in drivers without opaque
    /// directories (vfs, btrfs). Their trees were proven equal (the tree
    /// comparisons of both drivers give the same tar) and their recorded
    /// digest is now the target's.
    pub redigested: Vec<Redigest>,
}

/// A layer whose recorded digest changed with the driver (see
/// [`MigrateReport::redigested`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Redigest {
    /// The layer.
    pub id: LayerId,
    /// Its diff's digest in the source driver.
    pub from: String,
    /// Its diff's digest in the target driver (recorded now).
    pub to: String,
}

/// The migration recorded in a store's database.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    from: String,
    to: String,
    to_root: PathBuf,
    keep: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Copying,
    Copied,
    Done,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Copying => "copying",
            Step::Copied => "copied",
            Step::Done => "done",
        }
    }
    fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "copying" => Step::Copying,
            "copied" => Step::Copied,
            "done" => Step::Done,
            _ => return None,
        })
    }
}

fn meta(conn: &Connection, db: &Path, key: &str) -> Result<Option<String>> {
    db::meta(conn, key).map_err(Error::db(db, "read migration state"))
}

/// Refuses a root that a migration is moving or that was moved away: the
/// error says what to run. Called by every open except the migration's.
///
/// # Errors
/// [`Error::Migration`]; [`Error::Db`].
pub fn refuse_if_migrating(conn: &Connection, root: &Path) -> Result<()> {
    let db = root.join(DB_FILE);
    if let Some(to) = meta(conn, &db, META_TO)? {
        let from = meta(conn, &db, META_FROM)?.unwrap_or_else(|| "?".into());
        let to_root = meta(conn, &db, META_TO_ROOT)?.unwrap_or_default();
        let root_arg = if Path::new(&to_root) == root {
            String::new()
        } else {
            format!(" --to-root {to_root}")
        };
        return Err(Error::Migration {
            root: root.to_path_buf(),
            msg: format!(
                "a migration from driver {from} to driver {to} is in progress or was interrupted; \
                 run `strata migrate --to {to}{root_arg}` to finish it \
                 (or `strata migrate --abort` to abandon it)"
            ),
        });
    }
    if let Some(dir) = meta(conn, &db, META_MOVED_TO)? {
        return Err(Error::Migration {
            root: root.to_path_buf(),
            msg: format!("this store was moved to {dir} by `strata migrate`; use --root {dir}"),
        });
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .ctx("read the current directory", p)?
            .join(p)
    };
    Ok(std::fs::canonicalize(&p).unwrap_or(p))
}

fn read_plan(store: &Store) -> Result<Option<Plan>> {
    let conn = store.conn();
    let db = store.db_path();
    let Some(to) = meta(&conn, db, META_TO)? else {
        return Ok(None);
    };
    Ok(Some(Plan {
        from: meta(&conn, db, META_FROM)?.unwrap_or_default(),
        to,
        to_root: PathBuf::from(meta(&conn, db, META_TO_ROOT)?.unwrap_or_default()),
        keep: meta(&conn, db, META_KEEP)?.as_deref() == Some("1"),
    }))
}

fn read_steps(store: &Store) -> Result<HashMap<String, (Step, Option<String>)>> {
    let conn = store.conn();
    let db = store.db_path();
    let mut st = conn
        .prepare("SELECT id, step, digest FROM migration")
        .map_err(Error::db(db, "read migration steps"))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(Error::db(db, "read migration steps"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::db(db, "read migration steps"))?;
    let mut out = HashMap::new();
    for (id, step, digest) in rows {
        let step = Step::parse(&step).ok_or_else(|| Error::Corrupt {
            path: db.to_path_buf(),
            what: format!("migration step {step:?} of layer {id}"),
        })?;
        out.insert(id, (step, digest));
    }
    Ok(out)
}

fn set_step(store: &Store, id: &LayerId, step: Step, digest: Option<&str>) -> Result<()> {
    store.exec(
        "record migration step",
        "INSERT INTO migration (id, step, digest) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET step = excluded.step, digest = excluded.digest",
        params![id.as_str(), step.as_str(), digest],
    )?;
    Ok(())
}

/// The layers, parents before children (depth first, so that a chain is
/// finished, and its source released, before the next one starts).
fn parent_first(layers: &[Layer], db: &Path) -> Result<Vec<LayerId>> {
    let ids: BTreeMap<&str, &Layer> = layers.iter().map(|l| (l.id.as_str(), l)).collect();
    let mut children: BTreeMap<&str, Vec<&LayerId>> = BTreeMap::new();
    let mut roots = Vec::new();
    for l in layers {
        match &l.parent {
            None => roots.push(&l.id),
            Some(p) if ids.contains_key(p.as_str()) => {
                children.entry(p.as_str()).or_default().push(&l.id)
            }
            Some(p) => {
                return Err(Error::Corrupt {
                    path: db.to_path_buf(),
                    what: format!(
                        "layer {}: parent {p} has no record (`strata fsck` reports it); \
                         cannot migrate",
                        l.id
                    ),
                })
            }
        }
    }
    let mut order = Vec::with_capacity(layers.len());
    let mut stack: Vec<&LayerId> = roots.into_iter().rev().collect();
    while let Some(id) = stack.pop() {
        order.push(id.clone());
        if let Some(c) = children.get(id.as_str()) {
            stack.extend(c.iter().rev());
        }
    }
    Ok(order)
}

/// Unmounts (if mounted) and removes layer `id` from `driver`, if it has it.
async fn remove_from(driver: &Arc<dyn Driver>, id: &LayerId) -> Result<()> {
    if !driver.exists(id).await? {
        return Ok(());
    }
    if driver.is_mounted(id).await.unwrap_or(false) {
        driver.unmount(id).await?;
    }
    match driver.remove(id).await {
        Ok(()) => Ok(()),
        Err(e) if crate::store::names_missing(&e, id) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A pipe: the read end and the write end as files.
pub(crate) fn pipe(what: &str) -> Result<(std::fs::File, std::fs::File)> {
    let (r, w) = nix::unistd::pipe().map_err(|e| DError::nix("pipe", Path::new(what), e))?;
    Ok((std::fs::File::from(r), std::fs::File::from(w)))
}

/// Migrates the store `cfg` describes to `opts.to` (see the module
/// documentation). The store's own driver is whatever its root records
/// (the configured driver is not consulted: `auto` is used). Holds the
/// root lock throughout. Idempotent in effect: run again after an
/// interruption, it continues; run after completion, the root already
/// has the target driver and there is nothing to do (an error).
///
/// # Errors
/// [`Error::Migration`] when a different migration is recorded;
/// `InvalidArgument` when the store already uses `opts.to` on that root,
/// or `to_root` holds another store; `Unsupported` when the target is not
/// built or cannot work on the target root; `Busy` listing every mounted
/// layer (and [`Error::State`] listing layers another process works on);
/// `Io`/`Archive` from copying; [`Error::Migration`] naming the layer when
/// the source's diff is not its recorded digest, or when the copy's tree
/// differs from the source's (the copy is removed, the source stays, and
/// the migration stays recorded: finish it after fixing the layer, or
/// [`abort`] it).
pub async fn migrate(
    cfg: &Config,
    opts: &MigrateOpts,
    progress: &dyn Progress,
) -> Result<MigrateReport> {
    let mut cfg = cfg.clone();
    cfg.driver = AUTO.into();
    let store = Store::open_inner(&cfg, true).await?;
    let root = absolute(store.root())?;
    let from = store.driver().name().to_string();
    let _lock = store.lock().await?;
    let (plan, resumed) = match read_plan(&store)? {
        Some(plan) => {
            let asked_root = match &opts.to_root {
                Some(p) => absolute(p)?,
                None => plan.to_root.clone(),
            };
            if plan.to != opts.to || plan.to_root != asked_root || plan.keep != opts.keep_source {
                return Err(Error::Migration {
                    root: root.clone(),
                    msg: format!(
                        "an interrupted migration to driver {} (root {}{}) must be finished first: \
                         run `strata migrate --to {}{}{}`",
                        plan.to,
                        plan.to_root.display(),
                        if plan.keep { ", keeping the source" } else { "" },
                        plan.to,
                        if plan.to_root == root {
                            String::new()
                        } else {
                            format!(" --to-root {}", plan.to_root.display())
                        },
                        if plan.keep { " --keep-source" } else { "" },
                    ),
                });
            }
            progress.note(&format!(
                "resuming the interrupted migration from {} to {}",
                plan.from, plan.to
            ));
            (plan, true)
        }
        None => (begin(&store, &root, &from, opts).await?, false),
    };
    let in_place = plan.to_root == root;
    if !in_place {
        std::fs::create_dir_all(&plan.to_root).ctx("create the target root", &plan.to_root)?;
    }
    let target = registry::open(&plan.to, &plan.to_root, &cfg.drivers).await?;
    let layers = store.list()?;
    let order = parent_first(&layers, store.db_path())?;
    let by_id: HashMap<&str, &Layer> = layers.iter().map(|l| (l.id.as_str(), l)).collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for l in &layers {
        if let Some(p) = &l.parent {
            children.entry(p.as_str()).or_default().push(l.id.as_str());
        }
    }
    let mut steps = read_steps(&store)?;
    purge_leftovers(&target, &steps, progress).await?;
    let already = steps.values().filter(|(s, _)| *s != Step::Copying).count();
    progress.start(order.len(), already);
    let mut report = MigrateReport {
        from: plan.from.clone(),
        to: plan.to.clone(),
        root: root.clone(),
        to_root: plan.to_root.clone(),
        layers: order.len(),
        copied: 0,
        bytes: 0,
        resumed,
        source_kept: plan.keep,
        redigested: Vec::new(),
    };
    for id in &order {
        let l = by_id[id.as_str()];
        let step = steps.get(id.as_str()).map(|s| s.0);
        if matches!(step, None | Some(Step::Copying)) {
            if step.is_some() {
                progress.note(&format!("layer {id}: redoing an interrupted copy"));
            }
            let (bytes, digest, redigest) = copy_one(&store, &target, l, &plan, in_place).await?;
            steps.insert(id.to_string(), (Step::Copied, Some(digest)));
            if let Some(r) = redigest {
                progress.note(&format!(
                    "layer {id}: same tree, another diff in {}: digest {} is now {}",
                    plan.to, r.from, r.to
                ));
                report.redigested.push(r);
            }
            report.copied += 1;
            report.bytes += bytes;
            progress.layer_done(id, bytes);
        }
        if !plan.keep {
            // Release this layer's source copy, and its ancestors' once all
            // of their children are released.
            let mut cur = Some(id.as_str());
            while let Some(c) = cur {
                let ready = steps.get(c).map(|s| s.0) == Some(Step::Copied)
                    && children.get(c).is_none_or(|cs| {
                        cs.iter()
                            .all(|k| steps.get(*k).map(|s| s.0) == Some(Step::Done))
                    });
                if !ready {
                    break;
                }
                let cid = &by_id[c].id;
                remove_from(store.driver(), cid).await?;
                crash::point("migrate:after-source-remove");
                let digest = steps.get(c).and_then(|s| s.1.clone());
                set_step(&store, cid, Step::Done, digest.as_deref())?;
                steps.insert(c.to_string(), (Step::Done, digest));
                cur = by_id[c].parent.as_ref().map(LayerId::as_str);
            }
        }
    }
    crash::point("migrate:before-finish");
    finish(&store, &target, &plan, &layers, &steps, in_place, progress).await?;
    Ok(report)
}

/// What [`abort`] undid.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AbortReport {
    /// The driver the store keeps.
    pub driver: String,
    /// The driver the aborted migration was going to.
    pub to: String,
    /// Copies removed from the target driver.
    pub removed: usize,
}

/// Abandons an interrupted (or failed) migration of the store `cfg`
/// describes, while every layer still has its source copy: removes the
/// target driver's copies and forgets the migration, so the store is as
/// before it started. Idempotent in effect (a second call finds nothing to
/// abort: an error).
///
/// # Errors
/// [`Error::Migration`] when no migration is recorded, or when some source
/// layers are already removed (then only finishing it keeps every layer:
/// the error says how); driver errors removing copies; [`Error::Db`].
pub async fn abort(cfg: &Config, progress: &dyn Progress) -> Result<AbortReport> {
    let mut cfg = cfg.clone();
    cfg.driver = AUTO.into();
    let store = Store::open_inner(&cfg, true).await?;
    let root = absolute(store.root())?;
    let _lock = store.lock().await?;
    let Some(plan) = read_plan(&store)? else {
        return Err(Error::Migration {
            root,
            msg: "no migration to abort".into(),
        });
    };
    let steps = read_steps(&store)?;
    // A source copy may be gone before its step says so (killed between
    // the removal and the record): ask the driver.
    let mut gone = 0;
    for (id, (step, _)) in &steps {
        if *step != Step::Copying {
            let lid = LayerId::new(id.clone())?;
            if !store.driver().exists(&lid).await? {
                gone += 1;
            }
        }
    }
    if gone > 0 {
        return Err(Error::Migration {
            root,
            msg: format!(
                "cannot abort: {gone} layers are already only in driver {}; finish the \
                 migration with `strata migrate --to {}` (it resumes)",
                plan.to, plan.to
            ),
        });
    }
    let target = registry::open(&plan.to, &plan.to_root, &cfg.drivers).await?;
    let removed = target.list().await?.len();
    purge_leftovers(&target, &HashMap::new(), progress).await?;
    let db_path = store.db_path().to_path_buf();
    store.write("abort migration", |tx| {
        let e = || Error::db(&db_path, "abort migration");
        tx.execute("UPDATE layers SET driver = ?1", [&plan.from])
            .map_err(e())?;
        tx.execute(
            "DELETE FROM meta WHERE key IN (?1, ?2, ?3, ?4)",
            params![META_FROM, META_TO, META_TO_ROOT, META_KEEP],
        )
        .map_err(e())?;
        tx.execute("DELETE FROM migration", []).map_err(e())?;
        Ok(())
    })?;
    if let Err(e) = target.cleanup().await {
        tracing::warn!("cleanup of driver {}: {e}", target.name());
    }
    let dir = plan.to_root.join(&plan.to);
    if std::fs::remove_dir_all(&dir).is_ok() && plan.to_root != root {
        let _ = std::fs::remove_dir(&plan.to_root);
    }
    Ok(AbortReport {
        driver: plan.from,
        to: plan.to,
        removed,
    })
}

/// Removes the target driver's layers that this migration has not copied
/// yet: a partial copy of an interrupted run, or layers an earlier
/// `--keep-source` migration left in `<root>/<target>/` (no record names
/// them). Children first.
async fn purge_leftovers(
    target: &Arc<dyn Driver>,
    steps: &HashMap<String, (Step, Option<String>)>,
    progress: &dyn Progress,
) -> Result<()> {
    let mut left: Vec<LayerId> = target
        .list()
        .await?
        .into_iter()
        .filter(|id| {
            !matches!(
                steps.get(id.as_str()).map(|s| s.0),
                Some(Step::Copied | Step::Done)
            )
        })
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    progress.note(&format!(
        "removing {} layers of driver {} not (yet) migrated, left by an earlier run",
        left.len(),
        target.name()
    ));
    for _pass in 0..=left.len() {
        let mut again = Vec::new();
        for id in left {
            match remove_from(target, &id).await {
                Ok(()) => {}
                Err(Error::Layer(DError::HasChildren { .. })) => again.push(id),
                Err(e) => return Err(e),
            }
        }
        left = again;
        if left.is_empty() {
            return Ok(());
        }
    }
    Err(DError::Busy {
        id: left
            .iter()
            .map(LayerId::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        why: format!(
            "leftover layers of driver {} could not be removed",
            target.name()
        ),
    }
    .into())
}

/// Checks that the migration can start and records it.
async fn begin(store: &Store, root: &Path, from: &str, opts: &MigrateOpts) -> Result<Plan> {
    registry::is_built(&opts.to)?;
    let to_root = match &opts.to_root {
        Some(p) => absolute(p)?,
        None => root.to_path_buf(),
    };
    if to_root == root && from == opts.to {
        return Err(DError::InvalidArgument {
            what: format!("migrate --to {}", opts.to),
            why: format!("the store at {} already uses driver {from}", root.display()),
        }
        .into());
    }
    if to_root != root {
        if to_root.starts_with(root) || root.starts_with(&to_root) {
            return Err(DError::InvalidArgument {
                what: format!("--to-root {}", to_root.display()),
                why: format!(
                    "must not be inside the store's root {} or hold it",
                    root.display()
                ),
            }
            .into());
        }
        let db = to_root.join(DB_FILE);
        let busy = std::fs::read_dir(&to_root)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if db.exists() || busy {
            return Err(DError::InvalidArgument {
                what: format!("--to-root {}", to_root.display()),
                why: "not empty (it may hold another store); name a new or empty directory".into(),
            }
            .into());
        }
    }
    registry::probe(&opts.to, &to_root)?;
    let layers = store.list()?;
    let mut working = Vec::new();
    let mut mounted = Vec::new();
    for l in &layers {
        if l.state != State::Ready {
            working.push(format!("{} ({})", l.id, l.state));
            continue;
        }
        if l.mount_count > 0 || store.driver().is_mounted(&l.id).await? {
            mounted.push(format!(
                "{} ({}, mount count {})",
                l.id,
                if l.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                l.mount_count
            ));
        }
    }
    if !working.is_empty() {
        return Err(Error::State {
            id: working.join(", "),
            why: "being created or removed; let that finish (or run `strata fsck --repair`) before migrating".into(),
        });
    }
    if !mounted.is_empty() {
        return Err(DError::Busy {
            id: mounted.join(", "),
            why: "mounted; unmount these layers (stop their containers) before migrating".into(),
        }
        .into());
    }
    let plan = Plan {
        from: from.to_string(),
        to: opts.to.clone(),
        to_root,
        keep: opts.keep_source,
    };
    let db_path = store.db_path().to_path_buf();
    store.write("begin migration", |tx| {
        let e = Error::db(&db_path, "begin migration");
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS migration (
                 id TEXT PRIMARY KEY, step TEXT NOT NULL, digest TEXT);
             DELETE FROM migration;",
        )
        .map_err(e)?;
        let to_root = plan.to_root.to_string_lossy();
        for (k, v) in [
            (META_FROM, plan.from.as_str()),
            (META_TO, plan.to.as_str()),
            (META_TO_ROOT, &to_root),
            (META_KEEP, if plan.keep { "1" } else { "0" }),
        ] {
            db::set_meta(tx, k, v).map_err(Error::db(&db_path, "begin migration"))?;
        }
        Ok(())
    })?;
    crash::point("migrate:after-begin");
    Ok(plan)
}

/// Copies one layer into the target and verifies it; records it `copied`.
/// Returns the bytes of content applied and the verified digest. On error
/// the target's copy is removed and the layer is pending again.
async fn copy_one(
    store: &Store,
    target: &Arc<dyn Driver>,
    l: &Layer,
    plan: &Plan,
    in_place: bool,
) -> Result<(u64, String, Option<Redigest>)> {
    let id = &l.id;
    // What an interrupted copy (or an earlier --keep-source run) left.
    remove_from(target, id).await?;
    set_step(store, id, Step::Copying, None)?;
    crash::point("migrate:after-mark");
    let res = copy_verified(store, target, l).await;
    let (bytes, src_digest, digest) = match res {
        Ok(v) => v,
        Err(e) => {
            if let Err(e2) = remove_from(target, id).await {
                tracing::warn!(layer = %id, "could not remove a failed copy: {e2}");
            } else {
                let _ = store.exec(
                    "undo migration step",
                    "DELETE FROM migration WHERE id = ?1",
                    [id.as_str()],
                );
            }
            return Err(e);
        }
    };
    let db_path = store.db_path().to_path_buf();
    let to = plan.to.clone();
    store.write("record migrated layer", |tx| {
        let e = || Error::db(&db_path, "record migrated layer");
        tx.execute(
            "UPDATE migration SET step = 'copied', digest = ?1 WHERE id = ?2",
            params![digest, id.as_str()],
        )
        .map_err(e())?;
        if in_place {
            // A recorded digest follows the copy's own diff (they differ
            // only where the trees were proven equal, see copy_verified).
            tx.execute(
                "UPDATE layers SET driver = ?1,
                     digest = CASE WHEN digest IS NULL THEN NULL ELSE ?2 END
                 WHERE id = ?3",
                params![to, digest, id.as_str()],
            )
            .map_err(e())?;
        }
        Ok(())
    })?;
    crash::point("migrate:after-copied");
    let redigest = (src_digest != digest).then(|| Redigest {
        id: id.clone(),
        from: src_digest,
        to: digest.clone(),
    });
    Ok((bytes, digest, redigest))
}

/// Copies one layer and verifies the copy; returns the bytes of content,
/// the source's diff digest and the copy's.
async fn copy_verified(
    store: &Store,
    target: &Arc<dyn Driver>,
    l: &Layer,
) -> Result<(u64, String, String)> {
    let id = &l.id;
    let parent = l.parent.as_ref();
    target
        .create(
            id,
            parent,
            &CreateOpts {
                read_only: l.read_only,
                size: None,
                labels: l.labels.clone(),
            },
        )
        .await?;
    let (r, w) = pipe(id.as_str())?;
    let (hw, hashed) = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 16, w));
    let source = store.driver().clone();
    let (sid, sparent) = (id.clone(), parent.cloned());
    // Its own task: the diff writes the pipe while the apply reads it.
    let diff = tokio::spawn(async move {
        source
            .diff(&sid, sparent.as_ref(), Box::new(hw))
            .await
            .map(drop)
    });
    let reader = CountingReader::new(r, Some("migrate:mid-copy"));
    let applied = target.apply_diff(id, parent, Box::new(reader)).await;
    let diffed = diff.await.map_err(strata_driver_api::join_error)?;
    diffed?;
    let bytes = applied?;
    crash::point("migrate:after-apply");
    let (src_digest, _) = hashed.finish();
    if let Some(recorded) = &l.digest {
        if *recorded != src_digest {
            return Err(Error::Migration {
                root: store.root().to_path_buf(),
                msg: format!(
                    "layer {id}: the source diff is {src_digest}, its recorded digest \
                     {recorded} (`strata fsck --verify` tells more); not migrated"
                ),
            });
        }
    }
    let new_digest = digest_of(|out| target.diff(id, parent, out)).await?;
    if new_digest != src_digest {
        // Another representation of the same change (overlay's opaque
        // directory is explicit whiteouts in a driver without opaque
        // directories): then both drivers' tree comparisons must agree.
        let source = store.driver();
        let a = digest_of(|out| strata_driver_api::naive_diff(&**source, id, parent, out)).await?;
        let b = digest_of(|out| strata_driver_api::naive_diff(&**target, id, parent, out)).await?;
        if a != b {
            return Err(Error::Migration {
                root: store.root().to_path_buf(),
                msg: format!(
                    "layer {id}: the {} copy's diff is {new_digest}, the {} source's \
                     {src_digest}, and their trees differ ({b} against {a}); not migrated \
                     (the copy was removed)",
                    target.name(),
                    store.driver().name()
                ),
            });
        }
    }
    let dir = target.root().to_path_buf();
    tokio::task::spawn_blocking(move || fsinfo::syncfs(&dir))
        .await
        .map_err(strata_driver_api::join_error)??;
    Ok((bytes, src_digest, new_digest))
}

/// `sha256:` of the tar `diff` writes, which is not kept.
async fn digest_of<F, Fut>(diff: F) -> Result<String>
where
    F: FnOnce(TarSink) -> Fut,
    Fut: std::future::Future<Output = strata_driver_api::Result<TarSink>>,
{
    let (w, st) = HashingWriter::new(std::io::sink());
    drop(diff(Box::new(w)).await?);
    Ok(st.finish().0)
}

/// Records the target as the store's driver (see the module docs).
async fn finish(
    store: &Store,
    target: &Arc<dyn Driver>,
    plan: &Plan,
    layers: &[Layer],
    steps: &HashMap<String, (Step, Option<String>)>,
    in_place: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let db_path = store.db_path().to_path_buf();
    let clear = |tx: &rusqlite::Transaction<'_>| -> Result<()> {
        let e = || Error::db(&db_path, "finish migration");
        tx.execute(
            "DELETE FROM meta WHERE key IN (?1, ?2, ?3, ?4)",
            params![META_FROM, META_TO, META_TO_ROOT, META_KEEP],
        )
        .map_err(e())?;
        tx.execute("DELETE FROM migration", []).map_err(e())?;
        Ok(())
    };
    if in_place {
        store.write("finish migration", |tx| {
            db::set_meta(tx, "driver", &plan.to)
                .map_err(Error::db(&db_path, "finish migration"))?;
            tx.execute("UPDATE layers SET driver = ?1", [&plan.to])
                .map_err(Error::db(&db_path, "finish migration"))?;
            clear(tx)
        })?;
    } else {
        let tdb = plan.to_root.join(DB_FILE);
        let mut conn = db::open(&tdb)?;
        let tx = conn
            .transaction()
            .map_err(Error::db(&tdb, "write migrated records"))?;
        for l in layers {
            // A recorded digest follows the copy's own diff.
            let digest = l
                .digest
                .as_ref()
                .and(steps.get(l.id.as_str()).and_then(|s| s.1.clone()))
                .or_else(|| l.digest.clone());
            let labels = serde_json::to_string(&l.labels).unwrap_or_else(|_| "{}".into());
            tx.execute(
                "INSERT OR REPLACE INTO layers (id, parent, driver, state, read_only, digest, size,
                     created, labels, mount_count, mount_path, owner)
                 VALUES (?1, ?2, ?3, 'ready', ?4, ?5, ?6, ?7, ?8, 0, NULL, NULL)",
                params![
                    l.id.as_str(),
                    l.parent.as_ref().map(LayerId::as_str),
                    plan.to,
                    l.read_only,
                    digest,
                    l.size as i64,
                    l.created,
                    labels
                ],
            )
            .map_err(Error::db(&tdb, "write migrated records"))?;
        }
        db::set_meta(&tx, "driver", &plan.to).map_err(Error::db(&tdb, "write migrated records"))?;
        db::set_meta(&tx, "migrated_from", &store.root().to_string_lossy())
            .map_err(Error::db(&tdb, "write migrated records"))?;
        tx.commit()
            .map_err(Error::db(&tdb, "write migrated records"))?;
        crash::point("migrate:after-finish-target");
        let to_root = plan.to_root.to_string_lossy().into_owned();
        store.write("finish migration", |tx| {
            if !plan.keep {
                let e = || Error::db(&db_path, "finish migration");
                tx.execute("DELETE FROM layers", []).map_err(e())?;
                db::set_meta(tx, META_MOVED_TO, &to_root).map_err(e())?;
            }
            clear(tx)
        })?;
    }
    if !plan.keep {
        let source = store.driver();
        if let Err(e) = source.cleanup().await {
            tracing::warn!("cleanup of driver {}: {e}", source.name());
        }
        // Every driver keeps its data in `<root>/<name>/`.
        let dir = store.root().join(source.name());
        if source.list().await.map(|l| l.is_empty()).unwrap_or(false) && dir != target.root() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => progress.note(&format!("removed the empty {}", dir.display())),
                Err(e) => progress.note(&format!("could not remove {}: {e}", dir.display())),
            }
        }
    }
    Ok(())
}
