//! Overlay driver: kernel overlayfs in the overlay2 layout.
//!
//! Each layer keeps only its own files in `<id>/diff`; a mount stacks the
//! ancestors' `diff` dirs (through short links in `l/`) under it. See
//! [`layout`] for the files.
//!
//! ```plain
//! base layer             bind mount of <id>/diff (read-only if the layer is)
//! read-write child       overlay lowerdir=<lowers> upperdir=<id>/diff workdir=<id>/work
//! read-only child        overlay lowerdir=<id>/diff:<lowers>, mounted ro
//! ```
//!
//! Mounts go through the new mount API (`fsopen`, one `fsconfig lowerdir+`
//! per lower, `fsmount`, `move_mount`) where the kernel has `lowerdir+`
//! (6.8+): chains reach the kernel's 500-layer limit. Elsewhere `mount(2)`
//! with one option string of at most a page; chains are capped at 128.
//!
//! Diffs are native (read from `<id>/diff`, see [`native`]) when a probe at
//! open finds the kernel and options safe for it; otherwise the naive
//! differ compares views. Apply always writes into `<id>/diff` in overlay's
//! whiteout format.

pub mod layout;
pub mod native;
mod probe;
mod quota;
pub mod sys;

use crate::{fstype, fsutil, mountinfo, mounts};
use async_trait::async_trait;
use layout::{Layout, Meta};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use strata_driver_api::archive::{self, WhiteoutFormat};
use strata_driver_api::{
    join_error, Capabilities, Change, CreateOpts, Driver, Error, IoContext, LayerId, MountOpts,
    MountSpec, Result, Status, TarSink, TarSource, View,
};
use sys::{Api, OverlayMount};

/// The deepest chain with the new mount API: the kernel's overlay stack
/// limit (`OVL_MAX_STACK`).
pub const MAX_DEPTH_NEW_API: usize = 500;
/// The deepest chain with classic `mount(2)`, as overlay2 has it: 128 short
/// links fit one page of options.
pub const MAX_DEPTH_CLASSIC: usize = 128;

/// Which mount interface to use (`[overlay] mount_api`).
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MountApiChoice {
    /// The new API where the kernel has `lowerdir+`, else classic.
    #[default]
    Auto,
    /// The new API; opening fails where the kernel lacks `lowerdir+`.
    New,
    /// Classic `mount(2)`, even where the new API would work.
    Classic,
}

/// Overlay mount options only the driver sets: extra options may not.
const RESERVED_OPTIONS: &[&str] = &["lowerdir", "upperdir", "workdir", "datadir"];

/// Options of the `[overlay]` configuration table.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayOptions {
    /// Extra overlay mount options, appended to every overlay mount
    /// (`"metacopy=off"`, `"redirect_dir=off"`, ...). `index=off` is added
    /// unless one of these sets `index=`.
    pub mount_options: Vec<String>,
    /// Adds `volatile` to read-write mounts (no syncs; a crash loses the
    /// layer's unsynced writes).
    pub volatile: bool,
    /// Which mount interface to use.
    pub mount_api: MountApiChoice,
}

/// The XFS project-quota device of a root.
#[derive(Clone, Debug)]
struct QuotaDev {
    device: PathBuf,
}

struct Inner {
    root: PathBuf,
    layout: Layout,
    opts: OverlayOptions,
    api: Api,
    native: probe::NativeDiff,
    backing: String,
    quota: Option<QuotaDev>,
    quota_why: String,
    lock: Mutex<()>,
}

/// The overlay driver. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Overlay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("root", &self.inner.root)
            .field("api", &self.inner.api)
            .field("native", &self.inner.native.native)
            .finish()
    }
}

fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
) -> impl std::future::Future<Output = Result<T>> {
    let inner = inner.clone();
    async move {
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(join_error)?
    }
}

impl Overlay {
    /// Whether overlay can work on `root` here: overlayfs in the kernel and
    /// a backing filesystem that can hold upper dirs (not overlay, aufs,
    /// ecryptfs or ramfs). Read-only; creates nothing. The xattr, whiteout
    /// and `d_type` checks need a scratch dir and run at [`Overlay::open`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] saying why not.
    pub fn probe(root: &Path) -> Result<()> {
        probe::probe_static(root)
    }

    /// Opens the driver with its layers under `<root>/overlay` (created if
    /// missing): checks the backing filesystem, detaches and deletes what an
    /// interrupted process left (views, probes, staged or half-removed
    /// layers), and probes the mount API, native diff safety and quotas once.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the filesystem or kernel feature that
    /// is missing; [`Error::Io`].
    pub async fn open(root: &Path, opts: OverlayOptions) -> Result<Self> {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&root, opts))
            .await
            .map_err(join_error)?
    }

    fn open_blocking(root: &Path, opts: OverlayOptions) -> Result<Self> {
        mounts::check_extra_options("overlay", &opts.mount_options, RESERVED_OPTIONS)?;
        probe::kernel_has_overlay()?;
        let layout = Layout::new(root.join("overlay"));
        layout.ensure()?;
        let home = fs::canonicalize(&layout.home).ctx("realpath", &layout.home)?;
        let layout = Layout::new(home);
        // Leftovers of crashed processes go only when no other process has
        // work in progress (fsutil::busy_lock); the probes below then run
        // holding the lock shared, so no other open sweeps them away.
        if let Some(_sweeping) = fsutil::busy_lock(&layout.busy_lock(), true)? {
            detach_scratch_mounts(&layout)?;
            layout.sweep()?;
        }
        let _busy = fsutil::busy_lock(&layout.busy_lock(), false)?;
        probe::probe_backing(&layout.home)?;
        let scratch = layout.home.join(Layout::scratch_name(layout::PROBE_PREFIX));
        let has_new = sys::probe_lowerdir_plus(&scratch);
        let _ = fs::remove_dir_all(&scratch);
        let api = match opts.mount_api {
            MountApiChoice::Auto if has_new => Api::New,
            MountApiChoice::Auto | MountApiChoice::Classic => Api::Classic,
            MountApiChoice::New if has_new => Api::New,
            MountApiChoice::New => {
                return Err(Error::Unsupported {
                    driver: "overlay".into(),
                    why: "mount_api = \"new\" but this kernel's overlay has no lowerdir+ \
                          (Linux 6.8+)"
                        .into(),
                })
            }
        };
        let magic = fstype::magic(&layout.home)?;
        let backing = fstype::name(&layout.home)?;
        let mut inner = Inner {
            root: root.to_path_buf(),
            layout,
            opts,
            api,
            native: probe::NativeDiff {
                native: false,
                why: String::new(),
            },
            backing,
            quota: None,
            quota_why: String::new(),
            lock: Mutex::new(()),
        };
        let probe_opts = inner.options(true, &[]);
        inner.native = probe::probe_native_diff(&inner.layout.home, api, &probe_opts);
        let (quota, why) = quota_device(&inner.layout.home, magic)?;
        inner.quota = quota;
        inner.quota_why = why;
        Ok(Overlay {
            inner: Arc::new(inner),
        })
    }

    /// The directory holding the layers (`<root>/overlay`, canonical).
    pub fn home(&self) -> &Path {
        &self.inner.layout.home
    }

    /// Whether mounts use the new mount API (`lowerdir+`).
    pub fn uses_new_mount_api(&self) -> bool {
        self.inner.api == Api::New
    }

    /// Whether diffs are read natively from the upper dirs, and why.
    pub fn native_diff(&self) -> (bool, &str) {
        (self.inner.native.native, &self.inner.native.why)
    }
}

/// Detaches mounts left on view and probe scratch dirs by an interrupted
/// process, so the sweep can delete those dirs without reaching into them.
fn detach_scratch_mounts(layout: &Layout) -> Result<()> {
    let views = layout.views();
    let mut points: Vec<PathBuf> = mountinfo::read()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| {
            p.starts_with(&views)
                || (p.starts_with(&layout.home)
                    && p.strip_prefix(&layout.home).ok().is_some_and(|r| {
                        r.to_str()
                            .is_some_and(|s| s.starts_with(layout::PROBE_PREFIX))
                    }))
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        mounts::unmount(&p)?;
    }
    Ok(())
}

/// A plain bind mount, read-only when asked.
fn bind_options(read_only: bool) -> mounts::BindOptions {
    mounts::BindOptions {
        read_only,
        ..Default::default()
    }
}

fn quota_device(home: &Path, magic: u64) -> Result<(Option<QuotaDev>, String)> {
    if magic != libc::XFS_SUPER_MAGIC as u64 {
        return Ok((
            None,
            format!(
                "no: the backing filesystem is {}; size limits need XFS with prjquota",
                fstype::name(home)?
            ),
        ));
    }
    let Some(m) = mountinfo::mount_of(home)? else {
        return Ok((
            None,
            "no: the XFS mount of the root is not in the mount table".into(),
        ));
    };
    let has_pquota = m
        .super_options
        .iter()
        .any(|o| o == "prjquota" || o == "pquota");
    if !has_pquota {
        return Ok((
            None,
            format!(
                "no: XFS on {} is not mounted with prjquota",
                m.mount_point.display()
            ),
        ));
    }
    Ok((
        Some(QuotaDev {
            device: PathBuf::from(&m.source),
        }),
        format!("yes: XFS project quotas on {}", m.source.to_string_lossy()),
    ))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn max_depth(&self) -> usize {
        match self.api {
            Api::New => MAX_DEPTH_NEW_API,
            Api::Classic => MAX_DEPTH_CLASSIC,
        }
    }

    /// Whether mounts get `index=on` (configured, or implied by
    /// `nfs_export=on`; the default is off), which
    /// keeps a lower file's hard links together across copy-up.
    fn index_on(&self) -> bool {
        self.options(false, &[])
            .iter()
            .any(|o| o == "index=on" || o == "nfs_export=on")
    }

    /// Options of an overlay mount: configured, then the caller's, with
    /// `index=off` unless set, and `volatile` for read-write mounts where
    /// configured.
    fn options(&self, rw: bool, extra: &[String]) -> Vec<String> {
        let mut o: Vec<String> = self
            .opts
            .mount_options
            .iter()
            .chain(extra)
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        if !o.iter().any(|s| s.starts_with("index=")) {
            o.insert(0, "index=off".into());
        }
        if rw && self.opts.volatile && !o.iter().any(|s| s == "volatile") {
            o.push("volatile".into());
        }
        if !rw {
            o.retain(|s| s != "volatile");
        }
        o
    }

    /// The overlay mount of a child layer, or `None` for a base layer.
    fn overlay_of(
        &self,
        id: &LayerId,
        read_only: bool,
        extra: &[String],
    ) -> Result<Option<OverlayMount>> {
        mounts::check_extra_options("overlay", extra, RESERVED_OPTIONS)?;
        let lowers = self.layout.lowers(id)?;
        if lowers.is_empty() {
            return Ok(None);
        }
        let mut m = OverlayMount {
            lowers,
            upper: None,
            options: self.options(!read_only, extra),
            read_only,
            relative_to: Some(self.layout.home.clone()),
        };
        if read_only {
            m.lowers.insert(0, self.layout.diff(id));
        } else {
            m.upper = Some((self.layout.diff(id), self.layout.work(id)));
        }
        if m.lowers.len() > self.max_depth() {
            return Err(self.too_deep(id, m.lowers.len() + 1));
        }
        Ok(Some(m))
    }

    fn too_deep(&self, id: &LayerId, depth: usize) -> Error {
        Error::InvalidArgument {
            what: format!("layer {id} (a chain of {depth} layers)"),
            why: format!(
                "deeper than this driver's maximum of {} layers ({})",
                self.max_depth(),
                match self.api {
                    Api::New => "the kernel's overlay stack limit",
                    Api::Classic =>
                        "classic mount(2) options must fit one page; Linux 6.8+ lifts this",
                }
            ),
        }
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        let _g = self.lock();
        let _busy = fsutil::busy_lock(&self.layout.busy_lock(), false)?;
        self.layout.check_id(id)?;
        if self.layout.exists(id)? || fs::symlink_metadata(self.layout.dir(id)).is_ok() {
            return Err(Error::AlreadyExists { id: id.to_string() });
        }
        if opts.size.is_some() && self.quota.is_none() {
            return Err(Error::Unsupported {
                driver: "overlay".into(),
                why: format!("a size limit for layer {id}: quota {}", self.quota_why),
            });
        }
        if opts.size == Some(0) {
            return Err(Error::InvalidArgument {
                what: format!("size of layer {id}"),
                why: "0 bytes; give no size for no limit".into(),
            });
        }
        let (lower, root_attrs) = match parent {
            None => (Vec::new(), (0o755, 0, 0)),
            Some(p) => {
                self.layout.require(p)?;
                let mut lower = vec![format!("{}/{}", layout::LINK_DIR, self.layout.link(p)?)];
                lower.extend(self.layout.lower_entries(p)?);
                let depth = lower.len() + 1;
                if depth > self.max_depth() {
                    return Err(self.too_deep(id, depth));
                }
                let pd = self.layout.diff(p);
                let st = nix::sys::stat::stat(&pd).ctx("stat", &pd)?;
                (lower, (st.st_mode, st.st_uid, st.st_gid))
            }
        };
        let mut meta = Meta {
            parent: parent.cloned(),
            read_only: opts.read_only,
            project: 0,
        };
        if opts.size.is_some() {
            meta.project = self.next_project()?;
        }
        let (staging, link) = self.layout.stage(&lower, root_attrs, &meta)?;
        if let (Some(size), Some(q)) = (opts.size, &self.quota) {
            // The work dir too: overlay creates and copies up files there
            // and renames them into diff/, which XFS refuses (EXDEV) between
            // directories of different projects. A layer without a parent
            // has none (it mounts as a bind of diff/).
            let work = staging.join("work");
            let r = quota::set_project(&staging.join("diff"), meta.project)
                .and_then(|()| {
                    if work.exists() {
                        quota::set_project(&work, meta.project)
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| quota::set_limit(&q.device, meta.project, size));
            if let Err(e) = r {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        let r = self.layout.commit(&staging, id, &link);
        if r.is_err() && meta.project != 0 {
            if let Some(q) = &self.quota {
                let _ = quota::set_limit(&q.device, meta.project, 0);
            }
        }
        r
    }

    fn next_project(&self) -> Result<u32> {
        let mut max = quota::project(&self.layout.home).unwrap_or(0);
        for l in self.layout.list()? {
            max = max.max(self.layout.meta(&l)?.project);
        }
        Ok(max + 1)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _g = self.lock();
        let _busy = fsutil::busy_lock(&self.layout.busy_lock(), false)?;
        self.layout.require(id)?;
        let children = self.layout.children(id)?;
        if !children.is_empty() {
            return Err(Error::HasChildren {
                id: id.to_string(),
                children: children
                    .iter()
                    .map(LayerId::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let merged = self.layout.merged(id);
        if mountinfo::is_mount_point(&merged)? {
            return Err(Error::Busy {
                id: id.to_string(),
                why: format!("mounted on {}", merged.display()),
            });
        }
        let meta = self.layout.meta(id)?;
        self.layout.remove(id)?;
        if meta.project != 0 {
            if let Some(q) = &self.quota {
                quota::set_limit(&q.device, meta.project, 0)?;
            }
        }
        Ok(())
    }

    fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let _g = self.lock();
        self.layout.require(id)?;
        let merged = self.layout.merged(id);
        if mountinfo::is_mount_point(&merged)? {
            return Ok(merged);
        }
        let meta = self.layout.meta(id)?;
        let ro = meta.read_only || opts.read_only;
        match self.overlay_of(id, ro, &opts.options)? {
            None => mounts::bind(&self.layout.diff(id), &merged, &bind_options(ro))?,
            Some(m) => m.mount(self.api, &merged)?,
        }
        Ok(merged)
    }

    fn unmount(&self, id: &LayerId) -> Result<()> {
        let _g = self.lock();
        self.layout.require(id)?;
        let merged = self.layout.merged(id);
        if !mountinfo::is_mount_point(&merged)? {
            return Ok(());
        }
        mounts::unmount(&merged)?;
        // Removing the mount point makes newer kernels drop copies of the
        // mount held in other mount namespaces; the dir is part of the
        // layout, so it is made again.
        match fs::remove_dir(&merged) {
            Ok(()) => {
                fs::create_dir(&merged).ctx("mkdir", &merged)?;
                fs::set_permissions(&merged, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .ctx("chmod", &merged)?;
            }
            Err(e) => tracing::debug!("rmdir {}: {e}", merged.display()),
        }
        Ok(())
    }

    fn mount_spec(&self, id: &LayerId, opts: &MountOpts) -> Result<Vec<MountSpec>> {
        self.layout.require(id)?;
        let meta = self.layout.meta(id)?;
        let ro = meta.read_only || opts.read_only;
        Ok(vec![match self.overlay_of(id, ro, &opts.options)? {
            None => MountSpec {
                fs_type: "bind".into(),
                source: self.layout.diff(id),
                options: vec!["bind".into(), if ro { "ro" } else { "rw" }.into()],
            },
            Some(m) => {
                let mut options = Vec::new();
                if ro {
                    options.push("ro".to_string());
                }
                options.push(format!(
                    "lowerdir={}",
                    m.lowers
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ));
                if let Some((u, w)) = &m.upper {
                    options.push(format!("upperdir={}", u.display()));
                    options.push(format!("workdir={}", w.display()));
                }
                options.extend(m.options);
                MountSpec {
                    fs_type: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }
            }
        }])
    }

    fn view(&self, id: &LayerId, writable: bool) -> Result<View> {
        self.layout.require(id)?;
        let busy = fsutil::busy_lock(&self.layout.busy_lock(), false)?;
        let name = Layout::scratch_name("v");
        let mp = self.layout.views().join(&name);
        let work = self.layout.views().join(format!("{name}~work"));
        fs::create_dir(&mp).ctx("mkdir", &mp)?;
        let r = (|| {
            let lowers = self.layout.lowers(id)?;
            let diff = self.layout.diff(id);
            if lowers.is_empty() {
                return mounts::bind(&diff, &mp, &bind_options(!writable));
            }
            let mut m = OverlayMount {
                lowers,
                upper: None,
                options: self.options(false, &[]),
                read_only: !writable,
                relative_to: Some(self.layout.home.clone()),
            };
            if writable {
                fs::create_dir(&work).ctx("mkdir", &work)?;
                m.upper = Some((diff, work.clone()));
            } else {
                m.lowers.insert(0, diff);
            }
            m.mount(self.api, &mp)
        })();
        let release = {
            let (mp, work) = (mp.clone(), work.clone());
            move || {
                if let Err(e) = mounts::unmount(&mp) {
                    tracing::warn!("overlay view {}: {e}", mp.display());
                }
                let _ = fs::remove_dir(&mp);
                if fs::symlink_metadata(&work).is_ok() {
                    let _ = fs::remove_dir_all(&work);
                }
                drop(busy);
            }
        };
        match r {
            Ok(()) => Ok(View::with_release(mp, release)),
            Err(e) => {
                release();
                Err(e)
            }
        }
    }

    fn cleanup(&self) -> Result<()> {
        let _g = self.lock();
        let home = &self.layout.home;
        let mut points: Vec<PathBuf> = mountinfo::read()?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(home) && p != home)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        points.dedup();
        let mut first = None;
        for p in points {
            if let Err(e) = mounts::unmount(&p) {
                first.get_or_insert(e);
            }
        }
        match fsutil::busy_lock(&self.layout.busy_lock(), true) {
            Ok(Some(_sweeping)) => {
                if let Err(e) = self.layout.sweep() {
                    first.get_or_insert(e);
                }
            }
            Ok(None) => tracing::debug!("overlay: other work in progress; sweep left for later"),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn status(&self) -> Result<Status> {
        let line = |k: &str, v: String| (k.to_string(), v);
        Ok(vec![
            line("root", self.layout.home.display().to_string()),
            line("backing filesystem", self.backing.clone()),
            line(
                "mount api",
                match self.api {
                    Api::New => "new (fsopen/fsconfig lowerdir+)".into(),
                    Api::Classic => "classic mount(2), options within one page".into(),
                },
            ),
            line("max depth", self.max_depth().to_string()),
            line(
                "native diff",
                format!(
                    "{}: {}",
                    if self.native.native {
                        "yes"
                    } else {
                        "no (naive)"
                    },
                    self.native.why
                ),
            ),
            line("quota", self.quota_why.clone()),
            line("mount options", self.options(true, &[]).join(",")),
            line("layers", self.layout.list()?.len().to_string()),
        ])
    }

    /// Whether a diff against `parent` can be read natively.
    fn native_for(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<Option<Meta>> {
        self.layout.require(id)?;
        if !self.native.native {
            return Ok(None);
        }
        let meta = self.layout.meta(id)?;
        Ok((meta.parent.as_ref() == parent).then_some(meta))
    }
}

#[async_trait]
impl Driver for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn root(&self) -> &Path {
        &self.inner.root
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_diff: self.inner.native.native,
            quota: self.inner.quota.is_some(),
            reflink: false,
            max_depth: self.inner.max_depth(),
            mount_spec: true,
            read_only_mounts: true,
            copy_up_keeps_links: self.inner.index_on(),
        }
    }

    async fn status(&self) -> Result<Status> {
        blocking(&self.inner, |i| i.status()).await
    }

    async fn create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        opts: &CreateOpts,
    ) -> Result<()> {
        let (id, parent, opts) = (id.clone(), parent.cloned(), opts.clone());
        blocking(&self.inner, move |i| i.create(&id, parent.as_ref(), &opts)).await
    }

    async fn remove(&self, id: &LayerId) -> Result<()> {
        let id = id.clone();
        blocking(&self.inner, move |i| i.remove(&id)).await
    }

    async fn exists(&self, id: &LayerId) -> Result<bool> {
        let id = id.clone();
        blocking(&self.inner, move |i| i.layout.exists(&id)).await
    }

    async fn list(&self) -> Result<Vec<LayerId>> {
        blocking(&self.inner, |i| i.layout.list()).await
    }

    async fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        let id = id.clone();
        blocking(&self.inner, move |i| Ok(i.layout.meta(&id)?.parent)).await
    }

    async fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let (id, opts) = (id.clone(), opts.clone());
        blocking(&self.inner, move |i| i.mount(&id, &opts)).await
    }

    async fn unmount(&self, id: &LayerId) -> Result<()> {
        let id = id.clone();
        blocking(&self.inner, move |i| i.unmount(&id)).await
    }

    async fn is_mounted(&self, id: &LayerId) -> Result<bool> {
        let id = id.clone();
        blocking(&self.inner, move |i| {
            i.layout.require(&id)?;
            mountinfo::is_mount_point(&i.layout.merged(&id))
        })
        .await
    }

    async fn mount_spec(&self, id: &LayerId, opts: &MountOpts) -> Result<Vec<MountSpec>> {
        let (id, opts) = (id.clone(), opts.clone());
        blocking(&self.inner, move |i| i.mount_spec(&id, &opts)).await
    }

    async fn view(&self, id: &LayerId, writable: bool) -> Result<View> {
        let id = id.clone();
        blocking(&self.inner, move |i| i.view(&id, writable)).await
    }

    async fn diff(&self, id: &LayerId, parent: Option<&LayerId>, out: TarSink) -> Result<TarSink> {
        let (idc, pc) = (id.clone(), parent.cloned());
        if let Some(meta) = blocking(&self.inner, move |i| i.native_for(&idc, pc.as_ref())).await? {
            let diff = self.inner.layout.diff(id);
            let d2 = diff.clone();
            let items = tokio::task::spawn_blocking(move || native::upper_items(&d2))
                .await
                .map_err(join_error)??;
            // The canonical tar (what the naive differ and the other drivers
            // write) names each hidden lower entry: an opaque directory
            // becomes whiteouts of what the parent's tree has in it.
            let has_opaque = items.iter().any(|i| matches!(i, archive::Item::Opaque(_)));
            let base = match &meta.parent {
                Some(p) if has_opaque => Some(self.view(p, false).await?),
                _ => None,
            };
            return tokio::task::spawn_blocking(move || {
                let lower = base.as_ref().map(View::path);
                let items = crate::fsutil::opaque_as_whiteouts(&diff, lower, items)?;
                archive::write_items(&diff, items, out)
            })
            .await
            .map_err(join_error)?;
        }
        strata_driver_api::naive_diff(self, id, parent, out).await
    }

    async fn changes(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<Vec<Change>> {
        let (idc, pc) = (id.clone(), parent.cloned());
        if let Some(meta) = blocking(&self.inner, move |i| i.native_for(&idc, pc.as_ref())).await? {
            let base = match &meta.parent {
                Some(p) => Some(self.view(p, false).await?),
                None => None,
            };
            let diff = self.inner.layout.diff(id);
            return tokio::task::spawn_blocking(move || {
                native::upper_changes(&diff, base.as_ref().map(View::path))
            })
            .await
            .map_err(join_error)?;
        }
        strata_driver_api::naive_changes(self, id, parent).await
    }

    async fn diff_size(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<u64> {
        let (idc, pc) = (id.clone(), parent.cloned());
        if blocking(&self.inner, move |i| i.native_for(&idc, pc.as_ref()))
            .await?
            .is_some()
        {
            let diff = self.inner.layout.diff(id);
            return tokio::task::spawn_blocking(move || native::upper_size(&diff))
                .await
                .map_err(join_error)?;
        }
        strata_driver_api::naive_diff_size(self, id, parent).await
    }

    async fn apply_diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: TarSource,
    ) -> Result<u64> {
        let _ = parent;
        let idc = id.clone();
        blocking(&self.inner, move |i| i.layout.require(&idc)).await?;
        let diff = self.inner.layout.diff(id);
        tokio::task::spawn_blocking(move || {
            archive::apply(tar, &diff, WhiteoutFormat::Overlay).map(|s| s.bytes)
        })
        .await
        .map_err(join_error)?
    }

    async fn cleanup(&self) -> Result<()> {
        blocking(&self.inner, |i| i.cleanup()).await
    }
}

/// Opens the overlay driver on `root` as an `Arc<dyn Driver>` (what the
/// registry hands out).
///
/// # Errors
/// As [`Overlay::open`].
pub async fn open_driver(root: &Path, opts: OverlayOptions) -> Result<Arc<dyn Driver>> {
    Ok(Arc::new(Overlay::open(root, opts).await?))
}
