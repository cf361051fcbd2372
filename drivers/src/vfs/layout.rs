//! The on-disk layout of the vfs driver and what makes it crash-safe.
//!
//! ```plain
//! <root>/vfs/
//!   dir/<id>     the layer's complete tree
//!   meta/<id>    its record: "parent=<id or nothing>\nread_only=<bool>\n";
//!                its presence is what "the layer exists" means
//!   mnt/<id>     mount point, present while the layer is mounted
//!   tmp/         staging and removal, one owner token per open driver:
//!     <token>.lock                  flock-ed by the driver instance while it is open
//!     <token>-<n>-create-<id>       a tree being staged
//!     <token>-<n>-creating-<id>     marker: <id> is being created (dir/<id> may lack meta)
//!     <token>-<n>-meta-<id>         a record being written, or the record of a removed layer
//!     <token>-<n>-removing-<id>     a tree being deleted
//! ```
//!
//! Temporary names are never built inside `dir/` or `meta/`, where any
//! name could be a layer id. Entries of `tmp/` belong to the instance named
//! by their token; an instance whose lock file is no longer locked has died
//! (or closed), and its entries are leftovers: [`sweep`] deletes them, and
//! the trees in `dir/` that have no record and no live `creating` marker
//! (an interrupted create or remove). So several processes can open one
//! root at once without deleting each other's work.

use crate::fsutil;
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use strata_driver_api::{Error, IoContext, LayerId, Result};

/// The paths of one driver root.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// `<root>/vfs`, canonical.
    pub home: PathBuf,
}

impl Layout {
    pub fn dirs(&self) -> PathBuf {
        self.home.join("dir")
    }
    pub fn metas(&self) -> PathBuf {
        self.home.join("meta")
    }
    pub fn mnts(&self) -> PathBuf {
        self.home.join("mnt")
    }
    pub fn tmp(&self) -> PathBuf {
        self.home.join("tmp")
    }
    pub fn dir(&self, id: &LayerId) -> PathBuf {
        self.dirs().join(id.as_str())
    }
    pub fn meta(&self, id: &LayerId) -> PathBuf {
        self.metas().join(id.as_str())
    }
    pub fn mnt(&self, id: &LayerId) -> PathBuf {
        self.mnts().join(id.as_str())
    }
}

/// A layer's record (`meta/<id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub parent: Option<LayerId>,
    pub read_only: bool,
}

impl Meta {
    pub fn encode(&self) -> String {
        format!(
            "parent={}\nread_only={}\n",
            self.parent.as_ref().map(LayerId::as_str).unwrap_or(""),
            self.read_only
        )
    }

    /// Parses a record; `path` names it in errors. Unknown keys are
    /// ignored (a newer strata may add some).
    pub fn decode(text: &str, path: &Path) -> Result<Meta> {
        let bad = |why: String| {
            Error::io(
                "parse layer record",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, why),
            )
        };
        let mut parent = None;
        let mut read_only = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line without '=': {line:?}")))?;
            match k {
                "parent" if v.is_empty() => parent = Some(None),
                "parent" => {
                    parent = Some(Some(
                        LayerId::new(v).map_err(|e| bad(format!("parent: {e}")))?,
                    ))
                }
                "read_only" => {
                    read_only = Some(
                        v.parse::<bool>()
                            .map_err(|_| bad(format!("read_only: {v:?}")))?,
                    )
                }
                _ => {}
            }
        }
        Ok(Meta {
            parent: parent.ok_or_else(|| bad("no parent line".into()))?,
            read_only: read_only.ok_or_else(|| bad("no read_only line".into()))?,
        })
    }
}

/// Reads the record of `id`; `Ok(None)` when it does not exist.
pub(crate) fn read_meta(layout: &Layout, id: &LayerId) -> Result<Option<Meta>> {
    let path = layout.meta(id);
    match std::fs::read_to_string(&path) {
        Ok(text) => Meta::decode(&text, &path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// The record of `id`, or [`Error::NotFound`].
pub(crate) fn need_meta(layout: &Layout, id: &LayerId) -> Result<Meta> {
    read_meta(layout, id)?.ok_or_else(|| Error::NotFound { id: id.to_string() })
}

/// Every id with a record, sorted. Names in `meta/` that are not valid ids
/// are skipped.
pub(crate) fn list_ids(layout: &Layout) -> Result<Vec<LayerId>> {
    let metas = layout.metas();
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&metas).ctx("read_dir", &metas)? {
        let entry = entry.ctx("read_dir", &metas)?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|s| LayerId::new(s).ok())
        {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// The kinds of `tmp/` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TmpKind {
    Create,
    Creating,
    Meta,
    Removing,
}

impl TmpKind {
    fn as_str(self) -> &'static str {
        match self {
            TmpKind::Create => "create",
            TmpKind::Creating => "creating",
            TmpKind::Meta => "meta",
            TmpKind::Removing => "removing",
        }
    }
    fn parse(s: &str) -> Option<TmpKind> {
        Some(match s {
            "create" => TmpKind::Create,
            "creating" => TmpKind::Creating,
            "meta" => TmpKind::Meta,
            "removing" => TmpKind::Removing,
            _ => return None,
        })
    }
}

/// A parsed `tmp/` entry name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TmpName {
    /// `<token>.lock`
    Lock { token: String },
    /// `<token>-<n>-<kind>-<id>`
    Entry {
        token: String,
        kind: TmpKind,
        id: String,
    },
    /// Anything else (not written by this driver).
    Other,
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TmpName {
    pub fn parse(name: &OsStr) -> TmpName {
        let Some(name) = name.to_str() else {
            return TmpName::Other;
        };
        if let Some(token) = name.strip_suffix(".lock") {
            if is_token(token) {
                return TmpName::Lock {
                    token: token.to_string(),
                };
            }
        }
        let mut parts = name.splitn(4, '-');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(token), Some(n), Some(kind), Some(id))
                if is_token(token) && n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() =>
            {
                match TmpKind::parse(kind) {
                    Some(kind) => TmpName::Entry {
                        token: token.to_string(),
                        kind,
                        id: id.to_string(),
                    },
                    None => TmpName::Other,
                }
            }
            _ => TmpName::Other,
        }
    }
}

/// The lock that marks this driver instance's `tmp/` entries as live.
/// Dropping it removes the lock file and unlocks.
#[derive(Debug)]
pub(crate) struct Owner {
    pub token: String,
    path: PathBuf,
    counter: AtomicU64,
    _lock: Flock<File>,
}

impl Owner {
    /// Makes a fresh token and takes its lock in `tmp`.
    pub fn take(tmp: &Path) -> Result<Owner> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let token = format!(
            "{:x}{:016x}{:x}",
            std::process::id(),
            nanos,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // Made under a hidden name (sweeps leave those alone), locked, and
        // only then renamed to the name sweeps look at: a sweeper never sees
        // a live owner's lock file unlocked, so it never takes it for dead.
        let path = tmp.join(format!("{token}.lock"));
        let hidden = tmp.join(format!(".{token}.lock"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&hidden)
            .ctx("create", &hidden)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::nix("flock", &hidden, e))?;
        std::fs::rename(&hidden, &path).ctx("rename", &hidden)?;
        Ok(Owner {
            token,
            path,
            counter: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// A new, unique name in `tmp/` for `kind` of `id`.
    pub fn name(&self, kind: TmpKind, id: &LayerId) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}-{}-{id}", self.token, kind.as_str())
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Unlinked while still locked: a sweeper that opened it before
        // then takes the lock after us and finds nothing of ours left.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the instance with `token` is alive (holds its lock). `own` is
/// always alive.
fn token_alive(tmp: &Path, token: &str, own: &str) -> Result<bool> {
    if token == own {
        return Ok(true);
    }
    let path = tmp.join(format!("{token}.lock"));
    let file = match OpenOptions::new().read(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(Error::nix("flock", path, e)),
    }
}

/// What [`sweep`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub tmp_entries: usize,
    pub orphan_trees: usize,
}

/// Deletes leftovers: `tmp/` entries of dead instances, `tmp/` entries of
/// this instance (`owner`) for which `in_use(name)` is false (asked at the
/// time each entry is looked at, so operations that start during the sweep
/// are safe as long as they register a name before creating it), and trees in `dir/` that
/// have neither a record nor a live `creating` marker. Entries whose names
/// this driver does not write and hidden names (probes) are left alone.
/// All are tried; the first error is returned.
pub(crate) fn sweep(
    layout: &Layout,
    owner: &Owner,
    in_use: &dyn Fn(&str) -> bool,
) -> Result<Swept> {
    let tmp = layout.tmp();
    let mut swept = Swept::default();
    let mut first_err: Option<Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "vfs sweep");
            if first_err.is_none() {
                first_err = Some(e);
            }
        }
    };
    let mut alive: std::collections::HashMap<String, bool> = Default::default();
    let mut creating: HashSet<String> = HashSet::new();
    let mut dead_locks = Vec::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&tmp).ctx("read_dir", &tmp)? {
        names.push(entry.ctx("read_dir", &tmp)?.file_name());
    }
    for name in names {
        let (token, entry) = match TmpName::parse(&name) {
            TmpName::Lock { token } => (token, None),
            TmpName::Entry { token, kind, id } => (token, Some((kind, id))),
            TmpName::Other => continue,
        };
        let live = match alive.get(&token) {
            Some(&l) => l,
            None => match token_alive(&tmp, &token, &owner.token) {
                Ok(l) => {
                    alive.insert(token.clone(), l);
                    l
                }
                Err(e) => {
                    note(Err(e));
                    continue;
                }
            },
        };
        let path = tmp.join(&name);
        match entry {
            None if !live => dead_locks.push(path),
            None => {}
            Some((kind, id)) => {
                let ours_in_use = token == owner.token && in_use(name.to_str().unwrap_or_default());
                let keep = if token == owner.token {
                    ours_in_use
                } else {
                    live
                };
                if keep {
                    if kind == TmpKind::Creating {
                        creating.insert(id);
                    }
                } else {
                    tracing::debug!(path = %path.display(), "vfs: sweeping leftover");
                    note(fsutil::remove_tree(&path));
                    swept.tmp_entries += 1;
                }
            }
        }
    }
    // Trees without a record: interrupted creates (renamed into place, no
    // record yet) and removes (record gone, tree not yet moved).
    let dirs = layout.dirs();
    let mut trees = Vec::new();
    for entry in std::fs::read_dir(&dirs).ctx("read_dir", &dirs)? {
        trees.push(entry.ctx("read_dir", &dirs)?.file_name());
    }
    for name in trees {
        let Some(id) = name.to_str().and_then(|s| LayerId::new(s).ok()) else {
            continue;
        };
        if creating.contains(id.as_str()) || layout.meta(&id).exists() {
            continue;
        }
        // A create that finished after the listing above writes its record
        // before dropping its marker: look at the markers and the record
        // again.
        if live_creating_marker(layout, owner, &id)? || layout.meta(&id).exists() {
            continue;
        }
        let to = tmp.join(owner.name(TmpKind::Removing, &id));
        match std::fs::rename(layout.dir(&id), &to) {
            Ok(()) => {
                tracing::debug!(id = %id, "vfs: sweeping tree without record");
                note(fsutil::remove_tree(&to));
                swept.orphan_trees += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => note(Err(Error::io("rename", to, e))),
        }
    }
    for lock in dead_locks {
        match std::fs::remove_file(&lock) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                note(Err(Error::io("remove", lock, e)))
            }
            _ => swept.tmp_entries += 1,
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(swept),
    }
}

fn live_creating_marker(layout: &Layout, owner: &Owner, id: &LayerId) -> Result<bool> {
    let tmp = layout.tmp();
    for entry in std::fs::read_dir(&tmp).ctx("read_dir", &tmp)? {
        let name = entry.ctx("read_dir", &tmp)?.file_name();
        if let TmpName::Entry {
            token,
            kind: TmpKind::Creating,
            id: marked,
        } = TmpName::parse(&name)
        {
            if marked == id.as_str() && token_alive(&tmp, &token, &owner.token)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip() {
        let p = Path::new("meta/x");
        for m in [
            Meta {
                parent: None,
                read_only: true,
            },
            Meta {
                parent: Some(LayerId::new("a.b-c").unwrap()),
                read_only: false,
            },
        ] {
            assert_eq!(Meta::decode(&m.encode(), p).unwrap(), m);
        }
        assert!(Meta::decode("parent=\n", p).is_err());
        assert!(Meta::decode("parent=a/b\nread_only=true\n", p).is_err());
        assert!(Meta::decode("read_only=maybe\nparent=\n", p).is_err());
        assert_eq!(
            Meta::decode("parent=\nread_only=false\nfuture=1\n", p).unwrap(),
            Meta {
                parent: None,
                read_only: false
            }
        );
    }

    #[test]
    fn tmp_names_parse() {
        let d = tempfile::tempdir().unwrap();
        let owner = Owner::take(d.path()).unwrap();
        let id = LayerId::new("a-b.c-removing-1").unwrap();
        let name = owner.name(TmpKind::Removing, &id);
        assert_eq!(
            TmpName::parse(OsStr::new(&name)),
            TmpName::Entry {
                token: owner.token.clone(),
                kind: TmpKind::Removing,
                id: id.to_string()
            }
        );
        assert_eq!(
            TmpName::parse(OsStr::new(&format!("{}.lock", owner.token))),
            TmpName::Lock {
                token: owner.token.clone()
            }
        );
        for other in [
            "x",
            "zz-1-create-a",
            "ab-x-create-a",
            "ab-1-eat-a",
            ".hidden",
        ] {
            assert_eq!(TmpName::parse(OsStr::new(other)), TmpName::Other, "{other}");
        }
    }

    #[test]
    fn tokens_alive_while_locked() {
        let d = tempfile::tempdir().unwrap();
        let a = Owner::take(d.path()).unwrap();
        let b = Owner::take(d.path()).unwrap();
        assert_ne!(a.token, b.token);
        assert!(token_alive(d.path(), &a.token, &b.token).unwrap());
        let gone = a.token.clone();
        drop(a);
        assert!(!token_alive(d.path(), &gone, &b.token).unwrap());
    }
}
