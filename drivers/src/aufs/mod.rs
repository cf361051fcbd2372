//! AUFS driver: Docker's aufs layout, mounted by the kernel's aufs module
//! where the host has it, else by strata's own FUSE union filesystem.
//!
//! ```plain
//! <root>/aufs/
//!   diff/<id>     the layer's own files; whiteouts .wh.<name>, opaque dirs
//!                 marked by .wh..wh..opq (the layer tar's own format)
//!   layers/<id>   the ids of its ancestors, nearest first, one per line;
//!                 its presence is what "the layer exists" means
//!   mnt/<id>      mount point
//!   meta/<id>     "read_only=<bool>" (strata's addition to the layout)
//!   run/<id>.pid  the pid of the FUSE server of a mounted layer
//!   run/<id>.log  that server's stderr
//!   views/        private mounts of views (the naive differ's trees)
//!   tmp/          staging of records and of removals
//! ```
//!
//! Diff and apply are native: diff walks `diff/<id>` (see [`native`]),
//! apply writes the tar into it in [`WhiteoutFormat::Aufs`]. Mounts stack
//! `diff/<id>` (writable unless the layer or the mount is read-only) over
//! the ancestors' `diff` dirs:
//! - kernel mode ([`kernel`]): `mount -t aufs` with `br:` and `append:`
//!   batches, at most 127 branches;
//! - FUSE mode ([`union`], [`server`]): a server process (the `strata`
//!   binary's hidden `aufs-fuse-server` subcommand) serves the mount and
//!   outlives the process that mounted; unmount detaches the mount and
//!   waits for the server to end. Views are served by threads of the
//!   calling process instead.

mod iomode;
pub mod kernel;
pub mod native;
pub mod server;
pub mod union;

use async_trait::async_trait;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use strata_driver_api::archive::{self, WhiteoutFormat};
use strata_driver_api::{
    join_error, Capabilities, Change, CreateOpts, Driver, Error, IoContext, LayerId, MountOpts,
    MountSpec, Result, Status, TarSink, TarSource, View,
};

/// How deep a chain FUSE mode mounts (the conformance suite tests 500).
pub const MAX_DEPTH_FUSE: usize = 1024;
/// How long unmount waits for a FUSE server to end before killing it.
pub const SERVER_STOP_WAIT: Duration = Duration::from_secs(10);

/// Which mount mechanism to use (`[aufs] mode`).
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AufsMode {
    /// The kernel's aufs where `/proc/filesystems` lists it, else FUSE.
    #[default]
    Auto,
    /// The kernel's aufs module; opening fails without it.
    Kernel,
    /// strata's FUSE union filesystem; opening fails without `/dev/fuse`.
    Fuse,
}

/// Options of the `[aufs]` configuration table.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AufsOptions {
    /// The mount mechanism.
    pub mode: AufsMode,
    /// The `strata` executable that runs FUSE servers (else `$STRATA_EXE`,
    /// this program if it is `strata`, a `strata` beside it or one
    /// directory up, or `strata` in `PATH`).
    pub server_exe: Option<PathBuf>,
    /// Threads of each FUSE server.
    pub threads: usize,
    /// Extra kernel aufs mount options (`dirperm1`, ...), kernel mode only.
    pub mount_options: Vec<String>,
}

impl Default for AufsOptions {
    fn default() -> Self {
        AufsOptions {
            mode: AufsMode::Auto,
            server_exe: None,
            threads: server::DEFAULT_THREADS,
            mount_options: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Kernel,
    Fuse,
}

struct Inner {
    root: PathBuf,
    home: PathBuf,
    opts: AufsOptions,
    mode: Mode,
    exe: OnceLock<std::result::Result<PathBuf, String>>,
    lock: Mutex<()>,
    seq: AtomicU64,
}

/// The aufs driver. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Aufs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Aufs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aufs")
            .field("home", &self.inner.home)
            .field("mode", &self.inner.mode)
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

fn unsupported(why: impl Into<String>) -> Error {
    Error::Unsupported {
        driver: "aufs".into(),
        why: why.into(),
    }
}

fn have_fuse() -> bool {
    Path::new("/dev/fuse").exists()
}

impl Aufs {
    /// Whether aufs can work here: the kernel's aufs module, or `/dev/fuse`
    /// for FUSE mode. Read-only.
    ///
    /// # Errors
    /// [`Error::Unsupported`] saying why not.
    pub fn probe(_root: &Path) -> Result<()> {
        if kernel::kernel_has_aufs() || have_fuse() {
            Ok(())
        } else {
            Err(unsupported(
                "neither the aufs kernel module (/proc/filesystems) nor /dev/fuse is available",
            ))
        }
    }

    /// Opens the driver with its layers under `<root>/aufs` (created if
    /// missing), picks the mount mode, detaches stale mounts of dead
    /// processes and finishes interrupted removals.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the chosen mode cannot work here;
    /// [`Error::Io`].
    pub async fn open(root: &Path, opts: AufsOptions) -> Result<Self> {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&root, opts))
            .await
            .map_err(join_error)?
    }

    fn open_blocking(root: &Path, opts: AufsOptions) -> Result<Self> {
        let mode = match opts.mode {
            AufsMode::Auto if kernel::kernel_has_aufs() => Mode::Kernel,
            AufsMode::Auto | AufsMode::Fuse if have_fuse() => Mode::Fuse,
            AufsMode::Kernel if kernel::kernel_has_aufs() => Mode::Kernel,
            AufsMode::Kernel => {
                return Err(unsupported(
                    "mode = \"kernel\" but /proc/filesystems does not list aufs",
                ))
            }
            _ => return Err(unsupported("FUSE mode needs /dev/fuse")),
        };
        let home = root.join("aufs");
        for d in ["diff", "layers", "mnt", "meta", "run", "views", "tmp"] {
            let p = home.join(d);
            fs::create_dir_all(&p).ctx("mkdir", &p)?;
        }
        let home = fs::canonicalize(&home).ctx("realpath", &home)?;
        let inner = Inner {
            root: root.to_path_buf(),
            home,
            opts,
            mode,
            exe: OnceLock::new(),
            lock: Mutex::new(()),
            seq: AtomicU64::new(0),
        };
        inner.sweep()?;
        Ok(Aufs {
            inner: Arc::new(inner),
        })
    }

    /// The directory holding the layers (`<root>/aufs`, canonical).
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// Whether mounts use FUSE (else the kernel's aufs).
    pub fn uses_fuse(&self) -> bool {
        self.inner.mode == Mode::Fuse
    }
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn diff(&self, id: &LayerId) -> PathBuf {
        self.home.join("diff").join(id.as_str())
    }
    fn layers_file(&self, id: &LayerId) -> PathBuf {
        self.home.join("layers").join(id.as_str())
    }
    fn mnt(&self, id: &LayerId) -> PathBuf {
        self.home.join("mnt").join(id.as_str())
    }
    fn meta(&self, id: &LayerId) -> PathBuf {
        self.home.join("meta").join(id.as_str())
    }
    fn pidfile(&self, id: &LayerId) -> PathBuf {
        self.home.join("run").join(format!("{id}.pid"))
    }
    fn logfile(&self, id: &LayerId) -> PathBuf {
        self.home.join("run").join(format!("{id}.log"))
    }
    fn tmp_name(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.home
            .join("tmp")
            .join(format!("{}-{n}-{what}", std::process::id()))
    }

    fn max_depth(&self) -> usize {
        match self.mode {
            Mode::Kernel => kernel::MAX_BRANCHES,
            Mode::Fuse => MAX_DEPTH_FUSE,
        }
    }

    fn exe(&self) -> Result<PathBuf> {
        self.exe
            .get_or_init(|| {
                server::find_exe(self.opts.server_exe.as_deref()).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(unsupported)
    }

    fn exists(&self, id: &LayerId) -> Result<bool> {
        match fs::symlink_metadata(self.layers_file(id)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("lstat", self.layers_file(id), e)),
        }
    }

    fn require(&self, id: &LayerId) -> Result<()> {
        if self.exists(id)? {
            Ok(())
        } else {
            Err(Error::NotFound { id: id.to_string() })
        }
    }

    /// The ancestors of `id`, nearest first.
    fn ancestors(&self, id: &LayerId) -> Result<Vec<LayerId>> {
        let p = self.layers_file(id);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound { id: id.to_string() })
            }
            Err(e) => return Err(Error::io("read", p, e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                LayerId::new(l.trim()).map_err(|e| {
                    Error::io(
                        "parse layer chain",
                        &p,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                    )
                })
            })
            .collect()
    }

    fn read_only(&self, id: &LayerId) -> Result<bool> {
        let p = self.meta(id);
        match fs::read_to_string(&p) {
            Ok(t) => Ok(t.lines().any(|l| l.trim() == "read_only=true")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    /// Branch directories of a layer's mount, top first.
    fn branches(&self, id: &LayerId) -> Result<Vec<PathBuf>> {
        let mut v = vec![self.diff(id)];
        v.extend(self.ancestors(id)?.iter().map(|a| self.diff(a)));
        Ok(v)
    }

    fn list(&self) -> Result<Vec<LayerId>> {
        let dir = self.home.join("layers");
        let mut ids = Vec::new();
        for e in fs::read_dir(&dir).ctx("readdir", &dir)? {
            let e = e.ctx("readdir", &dir)?;
            if let Some(id) = e.file_name().to_str().and_then(|s| LayerId::new(s).ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn children(&self, id: &LayerId) -> Result<Vec<LayerId>> {
        let mut out = Vec::new();
        for l in self.list()? {
            // A layer another process removes between the listing and the
            // read is no child; its NotFound must not become this call's.
            match self.ancestors(&l) {
                Ok(a) if a.first() == Some(id) => out.push(l),
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Finishes removals and detaches view mounts that dead processes left.
    fn sweep(&self) -> Result<()> {
        let views = self.home.join("views");
        for e in fs::read_dir(&views).ctx("readdir", &views)? {
            let e = e.ctx("readdir", &views)?;
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|s| s.split('-').next())
                .and_then(|s| s.parse::<i32>().ok());
            if pid.is_some_and(pid_alive) {
                continue;
            }
            let p = e.path();
            let _ = crate::mounts::detach(&p);
            let _ = fs::remove_dir(&p);
        }
        let tmp = self.home.join("tmp");
        for e in fs::read_dir(&tmp).ctx("readdir", &tmp)? {
            let e = e.ctx("readdir", &tmp)?;
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|s| s.split('-').next())
                .and_then(|s| s.parse::<i32>().ok());
            if pid.is_some_and(|p| p != std::process::id() as i32 && pid_alive(p)) {
                continue;
            }
            if pid.is_some_and(|p| p == std::process::id() as i32) {
                continue;
            }
            crate::fsutil::remove_tree(&e.path())?;
        }
        Ok(())
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        let _g = self.lock();
        if self.exists(id)? {
            return Err(Error::AlreadyExists { id: id.to_string() });
        }
        if opts.size.is_some() {
            return Err(unsupported(format!(
                "a size limit for layer {id}: aufs has no quotas"
            )));
        }
        let mut chain = Vec::new();
        let (mode, uid, gid) = match parent {
            None => (0o755, 0, 0),
            Some(p) => {
                self.require(p)?;
                chain.push(p.clone());
                chain.extend(self.ancestors(p)?);
                if chain.len() + 1 > self.max_depth() {
                    return Err(Error::InvalidArgument {
                        what: format!("layer {id} (a chain of {} layers)", chain.len() + 1),
                        why: format!("deeper than this driver's maximum of {}", self.max_depth()),
                    });
                }
                // The merged root is the nearest layer's root.
                let md = fs::symlink_metadata(self.diff(p)).ctx("lstat", self.diff(p))?;
                (md.mode() & 0o7777, md.uid(), md.gid())
            }
        };
        let diff = self.diff(id);
        // A diff dir without a layers file is an interrupted create.
        crate::fsutil::remove_tree(&diff)?;
        let r = (|| {
            fs::create_dir(&diff).ctx("mkdir", &diff)?;
            nix::unistd::chown(
                &diff,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::nix("chown", &diff, e))?;
            fs::set_permissions(&diff, fs::Permissions::from_mode(mode)).ctx("chmod", &diff)?;
            let mnt = self.mnt(id);
            if fs::symlink_metadata(&mnt).is_err() {
                fs::create_dir(&mnt).ctx("mkdir", &mnt)?;
            }
            crate::fsutil::write_atomic(
                &self.meta(id),
                format!("read_only={}\n", opts.read_only).as_bytes(),
                &self.tmp_name("meta"),
            )?;
            let text: String = chain.iter().map(|c| format!("{c}\n")).collect();
            crate::fsutil::write_atomic(
                &self.layers_file(id),
                text.as_bytes(),
                &self.tmp_name("layers"),
            )
        })();
        if r.is_err() {
            let _ = crate::fsutil::remove_tree(&diff);
            let _ = fs::remove_file(self.meta(id));
        }
        r
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _g = self.lock();
        self.require(id)?;
        let children = self.children(id)?;
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
        let mnt = self.mnt(id);
        if crate::mountinfo::is_mount_point(&mnt)? {
            if self.mode == Mode::Fuse && self.stale(id) {
                server::stop(&mnt, &self.pidfile(id), SERVER_STOP_WAIT)?;
            } else {
                return Err(Error::Busy {
                    id: id.to_string(),
                    why: format!("mounted on {}", mnt.display()),
                });
            }
        }
        let lf = self.layers_file(id);
        fs::remove_file(&lf).ctx("unlink", &lf)?;
        crate::fsutil::fsync_dir(&self.home.join("layers"))?;
        let gone = self.tmp_name(&format!("removing-{id}"));
        let diff = self.diff(id);
        fs::rename(&diff, &gone).ctx("rename", &diff)?;
        crate::fsutil::remove_tree(&gone)?;
        for p in [self.meta(id), self.pidfile(id), self.logfile(id)] {
            let _ = fs::remove_file(p);
        }
        let _ = fs::remove_dir(&mnt);
        Ok(())
    }

    /// Whether the FUSE mount of `id` has lost its server.
    fn stale(&self, id: &LayerId) -> bool {
        server::is_stale(&self.mnt(id)) || server::live_pid(&self.pidfile(id)).is_none()
    }

    fn mount(&self, id: &LayerId, opts: &MountOpts) -> Result<PathBuf> {
        let _g = self.lock();
        self.require(id)?;
        let mnt = self.mnt(id);
        if fs::symlink_metadata(&mnt).is_err() {
            fs::create_dir(&mnt).ctx("mkdir", &mnt)?;
        }
        if crate::mountinfo::is_mount_point(&mnt)? {
            if self.mode == Mode::Kernel || !self.stale(id) {
                return Ok(mnt);
            }
            server::stop(&mnt, &self.pidfile(id), SERVER_STOP_WAIT)?;
        }
        let ro = self.read_only(id)? || opts.read_only;
        let branches = self.branches(id)?;
        match self.mode {
            Mode::Kernel => {
                let mut extra = self.opts.mount_options.clone();
                extra.extend(opts.options.iter().cloned());
                let m = kernel::build(&branches, !ro, &extra, kernel::PAGE)?;
                kernel::mount(&m, &mnt, ro)?;
            }
            Mode::Fuse => {
                let exe = self.exe()?;
                let args = server::ServerArgs {
                    mountpoint: mnt.clone(),
                    read_only: ro,
                    threads: self.opts.threads.max(1),
                    branches,
                };
                server::start(&exe, &args, &self.pidfile(id), &self.logfile(id))?;
            }
        }
        Ok(mnt)
    }

    fn unmount(&self, id: &LayerId) -> Result<()> {
        let _g = self.lock();
        self.require(id)?;
        let mnt = self.mnt(id);
        match self.mode {
            Mode::Kernel => crate::mounts::unmount(&mnt),
            Mode::Fuse => server::stop(&mnt, &self.pidfile(id), SERVER_STOP_WAIT),
        }
    }

    /// Whether `id` is mounted; a FUSE mount whose server died is detached
    /// here (mended) and reported as not mounted.
    fn is_mounted(&self, id: &LayerId) -> Result<bool> {
        self.require(id)?;
        let mnt = self.mnt(id);
        if !crate::mountinfo::is_mount_point(&mnt)? {
            return Ok(false);
        }
        if self.mode == Mode::Fuse && self.stale(id) {
            tracing::warn!(layer = %id, "FUSE server gone; detaching its stale mount");
            server::stop(&mnt, &self.pidfile(id), SERVER_STOP_WAIT)?;
            return Ok(false);
        }
        Ok(true)
    }

    fn mount_spec(&self, id: &LayerId, opts: &MountOpts) -> Result<Vec<MountSpec>> {
        self.require(id)?;
        let ro = self.read_only(id)? || opts.read_only;
        match self.mode {
            Mode::Fuse => Ok(vec![MountSpec {
                fs_type: "bind".into(),
                source: self.mnt(id),
                options: vec!["bind".into(), if ro { "ro" } else { "rw" }.into()],
            }]),
            Mode::Kernel => {
                let mut extra = self.opts.mount_options.clone();
                extra.extend(opts.options.iter().cloned());
                let m = kernel::build(&self.branches(id)?, !ro, &extra, kernel::PAGE)?;
                if !m.appends.is_empty() {
                    return Err(unsupported(format!(
                        "layer {id}: its branches need remount,append calls, which a mount spec cannot describe"
                    )));
                }
                let mut options = vec![m.first];
                if ro {
                    options.insert(0, "ro".into());
                }
                Ok(vec![MountSpec {
                    fs_type: "aufs".into(),
                    source: "none".into(),
                    options,
                }])
            }
        }
    }

    fn view(&self, id: &LayerId, writable: bool) -> Result<View> {
        self.require(id)?;
        let branches = self.branches(id)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mp = self
            .home
            .join("views")
            .join(format!("{}-{n}", std::process::id()));
        fs::create_dir(&mp).ctx("mkdir", &mp)?;
        match self.mode {
            Mode::Kernel => {
                let r = kernel::build(&branches, writable, &self.opts.mount_options, kernel::PAGE)
                    .and_then(|m| kernel::mount(&m, &mp, !writable));
                if let Err(e) = r {
                    let _ = fs::remove_dir(&mp);
                    return Err(e);
                }
                let p = mp.clone();
                Ok(View::with_release(mp, move || {
                    let _ = crate::mounts::unmount(&p);
                    let _ = fs::remove_dir(&p);
                }))
            }
            Mode::Fuse => {
                let session = match union::spawn(branches, writable, &mp, 2) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = fs::remove_dir(&mp);
                        return Err(Error::io("mount FUSE view", &mp, e));
                    }
                };
                let p = mp.clone();
                Ok(View::with_release(mp, move || {
                    if let Err(e) = session.umount_and_join() {
                        tracing::warn!("aufs view {}: {e}", p.display());
                        let _ = crate::mounts::detach(&p);
                    }
                    let _ = fs::remove_dir(&p);
                }))
            }
        }
    }

    fn cleanup(&self) -> Result<()> {
        let _g = self.lock();
        let mut first = None;
        for id in self.list()? {
            let mnt = self.mnt(&id);
            let r = match self.mode {
                Mode::Fuse => server::stop(&mnt, &self.pidfile(&id), SERVER_STOP_WAIT),
                Mode::Kernel => crate::mounts::unmount(&mnt),
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.sweep() {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    fn status(&self) -> Result<Status> {
        let line = |k: &str, v: String| (k.to_string(), v);
        let mut s = vec![
            line("root", self.home.display().to_string()),
            line(
                "mode",
                match self.mode {
                    Mode::Kernel => "kernel (aufs module)".into(),
                    Mode::Fuse => "fuse (strata's union filesystem)".into(),
                },
            ),
            line("max depth", self.max_depth().to_string()),
            line(
                "native diff",
                "yes: diff dirs hold the tar's whiteout format".into(),
            ),
        ];
        if self.mode == Mode::Fuse {
            s.push(line(
                "server",
                match self.exe() {
                    Ok(p) => format!("{} {}", p.display(), server::SUBCOMMAND),
                    Err(e) => e.to_string(),
                },
            ));
        }
        s.push(line("layers", self.list()?.len().to_string()));
        Ok(s)
    }

    /// The layer's recorded parent, if `parent` is it (a native diff).
    fn native_for(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<bool> {
        self.require(id)?;
        Ok(self.ancestors(id)?.first() == parent)
    }
}

#[async_trait]
impl Driver for Aufs {
    fn name(&self) -> &'static str {
        "aufs"
    }

    fn root(&self) -> &Path {
        &self.inner.root
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_diff: true,
            quota: false,
            reflink: false,
            max_depth: self.inner.max_depth(),
            mount_spec: true,
            read_only_mounts: true,
            // FUSE copy-up relinks the other names; kernel aufs keeps them
            // through its pseudo-links.
            copy_up_keeps_links: true,
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
        blocking(&self.inner, move |i| i.exists(&id)).await
    }

    async fn list(&self) -> Result<Vec<LayerId>> {
        blocking(&self.inner, |i| i.list()).await
    }

    async fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        let id = id.clone();
        blocking(&self.inner, move |i| {
            Ok(i.ancestors(&id)?.into_iter().next())
        })
        .await
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
        blocking(&self.inner, move |i| i.is_mounted(&id)).await
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
        if blocking(&self.inner, move |i| i.native_for(&idc, pc.as_ref())).await? {
            let diff = self.inner.diff(id);
            let d2 = diff.clone();
            let items = tokio::task::spawn_blocking(move || native::branch_items(&d2))
                .await
                .map_err(join_error)??;
            // The canonical tar (what the naive differ and the other drivers
            // write) names each hidden lower entry: opaque markers become
            // whiteouts of what the parent's tree has in that directory.
            let has_opaque = items.iter().any(|i| matches!(i, archive::Item::Opaque(_)));
            let base = match parent {
                Some(p) if has_opaque => Some(self.view(p, false).await?),
                _ => None,
            };
            return tokio::task::spawn_blocking(move || {
                let items = match &base {
                    Some(v) => crate::fsutil::opaque_as_whiteouts(&diff, Some(v.path()), items)?,
                    None => items,
                };
                archive::write_items(&diff, items, out)
            })
            .await
            .map_err(join_error)?;
        }
        strata_driver_api::naive_diff(self, id, parent, out).await
    }

    async fn changes(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<Vec<Change>> {
        let (idc, pc) = (id.clone(), parent.cloned());
        if blocking(&self.inner, move |i| i.native_for(&idc, pc.as_ref())).await? {
            let base = match parent {
                Some(p) => Some(self.view(p, false).await?),
                None => None,
            };
            let diff = self.inner.diff(id);
            return tokio::task::spawn_blocking(move || {
                native::branch_changes(&diff, base.as_ref().map(View::path))
            })
            .await
            .map_err(join_error)?;
        }
        strata_driver_api::naive_changes(self, id, parent).await
    }

    async fn diff_size(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<u64> {
        let (idc, pc) = (id.clone(), parent.cloned());
        if blocking(&self.inner, move |i| i.native_for(&idc, pc.as_ref())).await? {
            let diff = self.inner.diff(id);
            return tokio::task::spawn_blocking(move || native::branch_size(&diff))
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
        blocking(&self.inner, move |i| i.require(&idc)).await?;
        let diff = self.inner.diff(id);
        tokio::task::spawn_blocking(move || {
            archive::apply(tar, &diff, WhiteoutFormat::Aufs).map(|s| s.bytes)
        })
        .await
        .map_err(join_error)?
    }

    async fn cleanup(&self) -> Result<()> {
        blocking(&self.inner, |i| i.cleanup()).await
    }
}

/// Opens the aufs driver on `root` as an `Arc<dyn Driver>` (what the
/// registry hands out).
///
/// # Errors
/// As [`Aufs::open`].
pub async fn open_driver(root: &Path, opts: AufsOptions) -> Result<Arc<dyn Driver>> {
    Ok(Arc::new(Aufs::open(root, opts).await?))
}
