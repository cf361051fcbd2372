//! The on-disk layout of the overlay driver, in the overlay2 shape.
//!
//! ```plain
//! <root>/overlay/                 home
//!   l/<26 chars>  -> ../<id>/diff  short links, so lower lists stay short
//!   <id>/diff                      the layer's own files (overlay upper dir)
//!   <id>/work                      overlay work dir, mode 0700 (child layers)
//!   <id>/merged                    where the layer is mounted
//!   <id>/link                      the layer's short name (in l/)
//!   <id>/lower                     l/A:l/B:...  ancestors, nearest first
//!   <id>/meta                      parent=, read_only=, project=
//!   ~staging-<rand>/               a layer being created (renamed to <id>)
//!   <id>~removing                  a layer being removed
//!   ~views/<rand>                  mount points of private views
//!   ~probe-<rand>/                 scratch of the start-up probes
//!   ~busy.lock                     held shared by work in progress; the
//!                                  sweep of crashed processes' leftovers
//!                                  runs only with it exclusive
//! ```
//!
//! Every name this driver keeps beside the layers holds a `~`, which a
//! [`LayerId`] cannot, so no layer id collides with them; the one exception
//! is `l`, the link directory, which is refused as a layer id.

use rand::Rng;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use strata_driver_api::{Error, IoContext, LayerId, Result};

/// Length of the short link names, as overlay2 has them.
pub const LINK_LEN: usize = 26;
/// The link directory's name.
pub const LINK_DIR: &str = "l";
/// Directory of view mount points.
pub const VIEWS_DIR: &str = "~views";
/// Prefix of staging directories.
pub const STAGING_PREFIX: &str = "~staging-";
/// Prefix of probe scratch directories.
pub const PROBE_PREFIX: &str = "~probe-";
/// Suffix of layers being removed.
pub const REMOVING_SUFFIX: &str = "~removing";

/// What the `meta` file records about a layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The parent layer.
    pub parent: Option<LayerId>,
    /// A read-only (image) layer.
    pub read_only: bool,
    /// The XFS project id holding the layer's quota, 0 for none.
    pub project: u32,
}

impl Meta {
    fn render(&self) -> String {
        format!(
            "parent={}\nread_only={}\nproject={}\n",
            self.parent.as_ref().map(LayerId::as_str).unwrap_or(""),
            self.read_only,
            self.project
        )
    }

    fn parse(text: &str, file: &Path) -> Result<Meta> {
        let bad = |why: String| Error::Driver {
            driver: "overlay".into(),
            msg: format!("{}: {why}", file.display()),
        };
        let mut meta = Meta::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {line:?} is not key=value")))?;
            match k {
                "parent" if v.is_empty() => meta.parent = None,
                "parent" => meta.parent = Some(LayerId::new(v)?),
                "read_only" => meta.read_only = v == "true",
                "project" => {
                    meta.project = v
                        .parse()
                        .map_err(|_| bad(format!("project {v:?} is not a number")))?
                }
                _ => {}
            }
        }
        Ok(meta)
    }
}

/// Paths of the layout under one home directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `<root>/overlay`.
    pub home: PathBuf,
}

impl Layout {
    /// The layout under `home`.
    pub fn new(home: PathBuf) -> Self {
        Layout { home }
    }
    /// `<home>/<id>`.
    pub fn dir(&self, id: &LayerId) -> PathBuf {
        self.home.join(id.as_str())
    }
    /// `<home>/<id>/diff`.
    pub fn diff(&self, id: &LayerId) -> PathBuf {
        self.dir(id).join("diff")
    }
    /// `<home>/<id>/work`.
    pub fn work(&self, id: &LayerId) -> PathBuf {
        self.dir(id).join("work")
    }
    /// `<home>/<id>/merged`.
    pub fn merged(&self, id: &LayerId) -> PathBuf {
        self.dir(id).join("merged")
    }
    /// `<home>/l`.
    pub fn links(&self) -> PathBuf {
        self.home.join(LINK_DIR)
    }
    /// `<home>/~busy.lock` (see `fsutil::busy_lock`).
    pub fn busy_lock(&self) -> PathBuf {
        self.home.join("~busy.lock")
    }
    /// `<home>/~views`.
    pub fn views(&self) -> PathBuf {
        self.home.join(VIEWS_DIR)
    }

    /// Makes `home`, `l/` and `~views/` if missing. Idempotent.
    pub fn ensure(&self) -> Result<()> {
        for d in [self.home.clone(), self.links(), self.views()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .ctx("mkdir", &d)?;
        }
        Ok(())
    }

    /// Refuses ids the layout reserves (`l`).
    pub fn check_id(&self, id: &LayerId) -> Result<()> {
        if id.as_str() == LINK_DIR {
            return Err(Error::InvalidId {
                id: id.to_string(),
                why: "'l' is the overlay driver's link directory",
            });
        }
        Ok(())
    }

    /// Whether the layer exists (its directory with its `meta` file).
    pub fn exists(&self, id: &LayerId) -> Result<bool> {
        if id.as_str() == LINK_DIR {
            return Ok(false);
        }
        let m = self.dir(id).join("meta");
        match fs::symlink_metadata(&m) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat", m, e)),
        }
    }

    /// Fails with [`Error::NotFound`] unless the layer exists.
    pub fn require(&self, id: &LayerId) -> Result<()> {
        if self.exists(id)? {
            Ok(())
        } else {
            Err(Error::NotFound { id: id.to_string() })
        }
    }

    /// The layer's meta file.
    pub fn meta(&self, id: &LayerId) -> Result<Meta> {
        let p = self.dir(id).join("meta");
        match fs::read_to_string(&p) {
            Ok(t) => Meta::parse(&t, &p),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(Error::NotFound { id: id.to_string() })
            }
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    /// The layer's short link name.
    pub fn link(&self, id: &LayerId) -> Result<String> {
        let p = self.dir(id).join("link");
        Ok(fs::read_to_string(&p).ctx("read", &p)?.trim().to_string())
    }

    /// The layer's `lower` entries (`l/XXX`), nearest first; empty for a
    /// base layer.
    pub fn lower_entries(&self, id: &LayerId) -> Result<Vec<String>> {
        let p = self.dir(id).join("lower");
        match fs::read_to_string(&p) {
            Ok(t) => Ok(t
                .trim()
                .split(':')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    /// The layer's lower directories as absolute link paths, nearest first.
    pub fn lowers(&self, id: &LayerId) -> Result<Vec<PathBuf>> {
        Ok(self
            .lower_entries(id)?
            .into_iter()
            .map(|e| self.home.join(e))
            .collect())
    }

    /// Every layer that exists, sorted by id.
    pub fn list(&self) -> Result<Vec<LayerId>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.home).ctx("readdir", &self.home)? {
            let e = e.ctx("readdir", &self.home)?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(id) = LayerId::new(name) else {
                continue;
            };
            if self.exists(&id)? {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The layers whose parent is `id`.
    pub fn children(&self, id: &LayerId) -> Result<Vec<LayerId>> {
        let mut out = Vec::new();
        for l in self.list()? {
            match self.meta(&l) {
                Ok(m) if m.parent.as_ref() == Some(id) => out.push(l),
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn random_name(len: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut rng = rand::thread_rng();
        (0..len)
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
            .collect()
    }

    /// A fresh random name of `len` characters for a scratch path.
    pub fn scratch_name(prefix: &str) -> String {
        format!("{prefix}{}", Self::random_name(12))
    }

    /// Stages a new layer: a staging directory holding `diff` (with the
    /// given root attributes), `work` and `lower` (when `lower` is not
    /// empty), `merged`, `link` (a fresh short name) and `meta`. Returns the
    /// staging path and the short name. Nothing is visible as a layer until
    /// [`Layout::commit`].
    pub fn stage(
        &self,
        lower: &[String],
        root_attrs: (u32, u32, u32),
        meta: &Meta,
    ) -> Result<(PathBuf, String)> {
        let staging = self.home.join(Self::scratch_name(STAGING_PREFIX));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .ctx("mkdir", &staging)?;
        let r = (|| {
            let diff = staging.join("diff");
            fs::create_dir(&diff).ctx("mkdir", &diff)?;
            let (mode, uid, gid) = root_attrs;
            nix::unistd::chown(&diff, Some(uid.into()), Some(gid.into())).ctx("chown", &diff)?;
            fs::set_permissions(&diff, fs::Permissions::from_mode(mode & 0o7777))
                .ctx("chmod", &diff)?;
            let merged = staging.join("merged");
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&merged)
                .ctx("mkdir", &merged)?;
            if !lower.is_empty() {
                let work = staging.join("work");
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&work)
                    .ctx("mkdir", &work)?;
                let lf = staging.join("lower");
                fs::write(&lf, lower.join(":")).ctx("write", &lf)?;
            }
            let link = loop {
                let name = Self::random_name(LINK_LEN);
                if fs::symlink_metadata(self.links().join(&name)).is_err() {
                    break name;
                }
            };
            let lk = staging.join("link");
            fs::write(&lk, &link).ctx("write", &lk)?;
            let mf = staging.join("meta");
            fs::write(&mf, meta.render()).ctx("write", &mf)?;
            Ok(link)
        })();
        match r {
            Ok(link) => Ok((staging, link)),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// Makes a staged layer visible as `id` and adds its short link.
    /// On failure the staging directory is removed.
    pub fn commit(&self, staging: &Path, id: &LayerId, link: &str) -> Result<()> {
        let dir = self.dir(id);
        if let Err(e) = fs::rename(staging, &dir) {
            let _ = fs::remove_dir_all(staging);
            return Err(match e.raw_os_error() {
                Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => {
                    Error::AlreadyExists { id: id.to_string() }
                }
                _ => Error::io("rename", dir, e),
            });
        }
        let l = self.links().join(link);
        if let Err(e) = std::os::unix::fs::symlink(format!("../{id}/diff"), &l) {
            // Roll back: the layer must not exist without its link.
            let gone = self.home.join(format!("{id}{REMOVING_SUFFIX}"));
            if fs::rename(&dir, &gone).is_ok() {
                let _ = fs::remove_dir_all(&gone);
            }
            return Err(Error::io("symlink", l, e));
        }
        Ok(())
    }

    /// Removes a layer's files: rename to `<id>~removing` (the layer stops
    /// existing), drop its short link, delete the tree.
    pub fn remove(&self, id: &LayerId) -> Result<()> {
        let link = self.link(id).ok();
        let gone = self.home.join(format!("{id}{REMOVING_SUFFIX}"));
        if fs::symlink_metadata(&gone).is_ok() {
            fs::remove_dir_all(&gone).ctx("remove", &gone)?;
        }
        let dir = self.dir(id);
        fs::rename(&dir, &gone).ctx("rename", &dir)?;
        if let Some(link) = link.filter(|l| !l.is_empty() && !l.contains('/')) {
            let l = self.links().join(link);
            match fs::remove_file(&l) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("unlink", l, e)),
            }
        }
        fs::remove_dir_all(&gone).ctx("remove", &gone)
    }

    /// Finishes what an interrupted process left: staging and removing
    /// directories are deleted, dangling short links removed, missing short
    /// links of existing layers recreated. Mounts under probe or view
    /// directories must have been detached before.
    pub fn sweep(&self) -> Result<()> {
        for e in fs::read_dir(&self.home).ctx("readdir", &self.home)? {
            let e = e.ctx("readdir", &self.home)?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(STAGING_PREFIX)
                || name.starts_with(PROBE_PREFIX)
                || name.ends_with(REMOVING_SUFFIX)
            {
                let p = e.path();
                fs::remove_dir_all(&p).ctx("remove", &p)?;
            }
        }
        let views = self.views();
        if let Ok(rd) = fs::read_dir(&views) {
            for e in rd.flatten() {
                // rmdir only: never delete through a mount left in place.
                let _ = fs::remove_dir(e.path());
            }
        }
        let links = self.links();
        for e in fs::read_dir(&links).ctx("readdir", &links)? {
            let e = e.ctx("readdir", &links)?;
            let p = e.path();
            if fs::metadata(&p).is_err() {
                fs::remove_file(&p).ctx("unlink", &p)?;
            }
        }
        for id in self.list()? {
            if let Ok(link) = self.link(&id) {
                let l = links.join(&link);
                if !link.is_empty() && !link.contains('/') && fs::symlink_metadata(&l).is_err() {
                    std::os::unix::fs::symlink(format!("../{id}/diff"), &l).ctx("symlink", &l)?;
                }
            }
        }
        Ok(())
    }
}
