//! Unit tests of the store's SQLite logic against `DirDriver`, a test
//! double that keeps layers as plain directories (no mounts, no tar: its
//! "diff" is a simple line format). It exists only here and is never a
//! backend.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use strata_driver_api::{
    Capabilities, Change, ChangeKind, CreateOpts, Driver, Error as DError, IoContext, LayerId,
    MountOpts, MountSpec, Result as DResult, Status, TarSink, TarSource, View,
};
use strata_store::{Error, FindingKind, State, Store};

/// Layers as directories: `<root>/dir/<id>/` (the tree), `<id>.parent`,
/// `<id>.mounted` (a marker standing in for the mount table).
struct DirDriver {
    root: PathBuf,
    name: &'static str,
    mounts: AtomicUsize,
    unmounts: AtomicUsize,
    fail_create: AtomicBool,
    /// `remove` fails with a NotFound about another layer (as a driver
    /// does when a concurrent process removed a layer it was reading).
    remove_names_other: AtomicBool,
}

impl DirDriver {
    fn new(store_root: &Path, name: &'static str) -> Arc<Self> {
        let root = store_root.join("dir");
        std::fs::create_dir_all(&root).unwrap();
        Arc::new(DirDriver {
            root,
            name,
            mounts: AtomicUsize::new(0),
            unmounts: AtomicUsize::new(0),
            fail_create: AtomicBool::new(false),
            remove_names_other: AtomicBool::new(false),
        })
    }
    fn tree(&self, id: &LayerId) -> PathBuf {
        self.root.join(id.as_str())
    }
    fn marker(&self, id: &LayerId, what: &str) -> PathBuf {
        self.root.join(format!("{id}.{what}"))
    }
    fn files(dir: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                out.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                );
            }
        }
        out
    }
    fn mounted(&self, id: &LayerId) -> bool {
        self.marker(id, "mounted").exists()
    }
}

fn nf(id: &LayerId) -> DError {
    DError::NotFound { id: id.to_string() }
}

#[async_trait]
impl Driver for DirDriver {
    fn name(&self) -> &'static str {
        self.name
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_diff: false,
            quota: false,
            reflink: false,
            max_depth: 100,
            mount_spec: false,
            read_only_mounts: false,
            copy_up_keeps_links: true,
        }
    }
    async fn status(&self) -> DResult<Status> {
        Ok(vec![("kind".into(), "test double".into())])
    }
    async fn create(&self, id: &LayerId, parent: Option<&LayerId>, _: &CreateOpts) -> DResult<()> {
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(DError::io(
                "create",
                self.tree(id),
                std::io::Error::other("injected"),
            ));
        }
        if self.tree(id).exists() {
            return Err(DError::AlreadyExists { id: id.to_string() });
        }
        let files = match parent {
            Some(p) if !self.tree(p).exists() => return Err(nf(p)),
            Some(p) => Self::files(&self.tree(p)),
            None => BTreeMap::new(),
        };
        std::fs::create_dir(self.tree(id)).ctx("mkdir", self.tree(id))?;
        for (k, v) in files {
            std::fs::write(self.tree(id).join(k), v).ctx("write", self.tree(id))?;
        }
        if let Some(p) = parent {
            std::fs::write(self.marker(id, "parent"), p.as_str()).ctx("write", &self.root)?;
        }
        Ok(())
    }
    async fn remove(&self, id: &LayerId) -> DResult<()> {
        if !self.tree(id).exists() {
            return Err(nf(id));
        }
        if self.remove_names_other.load(Ordering::SeqCst) {
            return Err(nf(&LayerId::new("vanished").unwrap()));
        }
        if self.mounted(id) {
            return Err(DError::Busy {
                id: id.to_string(),
                why: "mounted".into(),
            });
        }
        std::fs::remove_dir_all(self.tree(id)).ctx("rm", self.tree(id))?;
        let _ = std::fs::remove_file(self.marker(id, "parent"));
        Ok(())
    }
    async fn exists(&self, id: &LayerId) -> DResult<bool> {
        Ok(self.tree(id).is_dir())
    }
    async fn list(&self) -> DResult<Vec<LayerId>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root)
            .ctx("readdir", &self.root)?
            .flatten()
        {
            if e.path().is_dir() {
                out.push(LayerId::new(e.file_name().to_string_lossy().into_owned())?);
            }
        }
        out.sort();
        Ok(out)
    }
    async fn parent(&self, id: &LayerId) -> DResult<Option<LayerId>> {
        if !self.tree(id).exists() {
            return Err(nf(id));
        }
        match std::fs::read_to_string(self.marker(id, "parent")) {
            Ok(p) => Ok(Some(LayerId::new(p)?)),
            Err(_) => Ok(None),
        }
    }
    async fn mount(&self, id: &LayerId, _: &MountOpts) -> DResult<PathBuf> {
        if !self.tree(id).exists() {
            return Err(nf(id));
        }
        if !self.mounted(id) {
            self.mounts.fetch_add(1, Ordering::SeqCst);
            std::fs::write(self.marker(id, "mounted"), "").ctx("mark", &self.root)?;
        }
        Ok(self.tree(id))
    }
    async fn unmount(&self, id: &LayerId) -> DResult<()> {
        if self.mounted(id) {
            self.unmounts.fetch_add(1, Ordering::SeqCst);
            std::fs::remove_file(self.marker(id, "mounted")).ctx("unmark", &self.root)?;
        }
        Ok(())
    }
    async fn is_mounted(&self, id: &LayerId) -> DResult<bool> {
        Ok(self.mounted(id))
    }
    async fn mount_spec(&self, _: &LayerId, _: &MountOpts) -> DResult<Vec<MountSpec>> {
        Err(DError::Unsupported {
            driver: "dir".into(),
            why: "test double".into(),
        })
    }
    async fn view(&self, id: &LayerId, _: bool) -> DResult<View> {
        if !self.tree(id).exists() {
            return Err(nf(id));
        }
        Ok(View::dir(self.tree(id)))
    }
    /// "Diff": `name=contents` lines of the files that differ from parent.
    async fn diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        mut out: TarSink,
    ) -> DResult<TarSink> {
        for c in self.changes(id, parent).await? {
            let name = c.path.to_string_lossy().trim_start_matches('/').to_string();
            let v = std::fs::read_to_string(self.tree(id).join(&name)).unwrap_or_default();
            writeln!(out, "{name}={v}").ctx("write", &name)?;
        }
        out.flush().ctx("flush", "out")?;
        Ok(out)
    }
    async fn changes(&self, id: &LayerId, parent: Option<&LayerId>) -> DResult<Vec<Change>> {
        let mine = Self::files(&self.tree(id));
        let base = parent
            .map(|p| Self::files(&self.tree(p)))
            .unwrap_or_default();
        Ok(mine
            .iter()
            .filter(|(k, v)| base.get(*k) != Some(v))
            .map(|(k, _)| Change {
                path: PathBuf::from(format!("/{k}")),
                kind: if base.contains_key(k) {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                },
            })
            .collect())
    }
    async fn diff_size(&self, id: &LayerId, parent: Option<&LayerId>) -> DResult<u64> {
        let mut n = 0;
        for c in self.changes(id, parent).await? {
            n += std::fs::metadata(self.tree(id).join(c.path.strip_prefix("/").unwrap()))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(n)
    }
    /// "Apply": `name=contents` lines; a line `BAD` is rejected.
    async fn apply_diff(&self, id: &LayerId, _: Option<&LayerId>, tar: TarSource) -> DResult<u64> {
        let mut n = 0;
        for line in std::io::BufReader::new(tar).lines() {
            let line = line.ctx("read", "tar")?;
            let Some((k, v)) = line.split_once('=') else {
                return Err(DError::archive(line.as_bytes(), "not name=contents"));
            };
            std::fs::write(self.tree(id).join(k), v).ctx("write", k)?;
            n += v.len() as u64;
        }
        Ok(n)
    }
    async fn cleanup(&self) -> DResult<()> {
        Ok(())
    }
}

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

fn tar(s: &str) -> TarSource {
    Box::new(std::io::Cursor::new(s.as_bytes().to_vec()))
}

async fn open(dir: &Path) -> (Store, Arc<DirDriver>) {
    let d = DirDriver::new(dir, "dir");
    let s = Store::with_driver(dir, d.clone()).await.unwrap();
    (s, d)
}

fn sha(s: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_chain_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _d) = open(dir.path()).await;
    let a = s.create(&id("a"), None, &CreateOpts::ro()).await.unwrap();
    assert_eq!(a.state, State::Ready);
    assert!(a.read_only);
    assert_eq!(a.owner, None);
    let mut labels = BTreeMap::new();
    labels.insert("k".to_string(), "v".to_string());
    let b = s
        .create(
            &id("b"),
            Some(&id("a")),
            &CreateOpts {
                read_only: false,
                size: None,
                labels: labels.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(b.parent, Some(id("a")));
    assert_eq!(b.labels, labels);
    let ids: Vec<_> = s
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let e = s
        .create(&id("a"), None, &CreateOpts::ro())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Layer(DError::AlreadyExists { .. })),
        "{e}"
    );
    let e = s
        .create(&id("c"), Some(&id("nope")), &CreateOpts::ro())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(s.get(&id("c")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_create_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = open(dir.path()).await;
    d.fail_create.store(true, Ordering::SeqCst);
    s.create(&id("a"), None, &CreateOpts::ro())
        .await
        .unwrap_err();
    assert!(s.list().unwrap().is_empty());
    d.fail_create.store(false, Ordering::SeqCst);
    // Driver data without a record: create refuses and does not delete it.
    std::fs::create_dir(dir.path().join("dir/x")).unwrap();
    let e = s
        .create(&id("x"), None, &CreateOpts::ro())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Layer(DError::AlreadyExists { .. })),
        "{e}"
    );
    assert!(dir.path().join("dir/x").exists());
    assert!(s.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_records_digest_and_bad_tar_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = open(dir.path()).await;
    let l = s
        .import(&id("a"), None, &BTreeMap::new(), tar("f=hello\ng=x\n"))
        .await
        .unwrap();
    assert_eq!(l.state, State::Ready);
    assert!(l.read_only);
    assert_eq!(l.size, 6);
    assert_eq!(l.digest.as_deref(), Some(sha("f=hello\ng=x\n").as_str()));
    let e = s
        .import(
            &id("b"),
            Some(&id("a")),
            &BTreeMap::new(),
            tar("h=1\nBAD\n"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("BAD"), "{e}");
    assert!(s.get(&id("b")).is_err());
    assert!(!d.exists(&id("b")).await.unwrap());
    // Diff against own parent gives the recorded digest; into a buffer.
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    struct W(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = s
        .diff(&id("a"), None, Box::new(W(buf.clone())))
        .await
        .unwrap();
    assert_eq!(Some(out.digest.clone()), l.digest);
    assert_eq!(out.bytes, buf.lock().unwrap().len() as u64);
    assert!(s.fsck(false, true).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_mounted_and_updates_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _d) = open(dir.path()).await;
    s.create(&id("a"), None, &CreateOpts::rw()).await.unwrap();
    s.mount(&id("a"), &MountOpts::default()).await.unwrap();
    let e = s.apply(&id("a"), tar("f=1\n")).await.unwrap_err();
    assert!(matches!(e, Error::Layer(DError::Busy { .. })), "{e}");
    s.unmount(&id("a"), false).await.unwrap();
    assert_eq!(s.apply(&id("a"), tar("f=12\n")).await.unwrap(), 2);
    let l = s.get(&id("a")).unwrap();
    assert_eq!(l.digest.as_deref(), Some(sha("f=12\n").as_str()));
    assert_eq!(l.size, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_refcount() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = open(dir.path()).await;
    s.create(&id("a"), None, &CreateOpts::rw()).await.unwrap();
    let p1 = s.mount(&id("a"), &MountOpts::default()).await.unwrap();
    // A second store on the same root (as another process would open).
    let s2 = Store::with_driver(dir.path(), d.clone()).await.unwrap();
    let p2 = s2.mount(&id("a"), &MountOpts::default()).await.unwrap();
    assert_eq!(p1, p2);
    assert_eq!(d.mounts.load(Ordering::SeqCst), 1);
    assert_eq!(s.get(&id("a")).unwrap().mount_count, 2);
    assert_eq!(s.unmount(&id("a"), false).await.unwrap(), 1);
    assert_eq!(d.unmounts.load(Ordering::SeqCst), 0);
    assert_eq!(s2.unmount(&id("a"), false).await.unwrap(), 0);
    assert_eq!(d.unmounts.load(Ordering::SeqCst), 1);
    let e = s.unmount(&id("a"), false).await.unwrap_err();
    assert!(e.to_string().contains("not mounted"), "{e}");
    for _ in 0..3 {
        s.mount(&id("a"), &MountOpts::default()).await.unwrap();
    }
    assert_eq!(s.unmount(&id("a"), true).await.unwrap(), 0);
    assert!(!d.mounted(&id("a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_refusals_and_force() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = open(dir.path()).await;
    s.create(&id("a"), None, &CreateOpts::ro()).await.unwrap();
    s.create(&id("b"), Some(&id("a")), &CreateOpts::rw())
        .await
        .unwrap();
    let e = s.remove(&id("a"), true).await.unwrap_err();
    assert!(matches!(e, Error::Layer(DError::HasChildren { .. })), "{e}");
    assert!(e.to_string().contains('b'), "{e}");
    s.mount(&id("b"), &MountOpts::default()).await.unwrap();
    let e = s.remove(&id("b"), false).await.unwrap_err();
    assert!(matches!(e, Error::Layer(DError::Busy { .. })), "{e}");
    s.remove(&id("b"), true).await.unwrap();
    assert!(!d.mounted(&id("b")));
    s.remove(&id("a"), false).await.unwrap();
    assert!(s.list().unwrap().is_empty());
    assert!(d.list().await.unwrap().is_empty());
    let e = s.remove(&id("a"), false).await.unwrap_err();
    assert!(matches!(e, Error::Layer(DError::NotFound { .. })), "{e}");
}

/// A NotFound from the driver's remove means "already gone" only when it
/// names the layer being removed: one about another layer is an error, and
/// the record (whose data the driver still has) stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_keeps_record_on_not_found_of_another_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = open(dir.path()).await;
    s.create(&id("a"), None, &CreateOpts::ro()).await.unwrap();
    d.remove_names_other.store(true, Ordering::SeqCst);
    let e = s.remove(&id("a"), false).await.unwrap_err();
    assert!(e.to_string().contains("vanished"), "{e}");
    assert_eq!(s.get(&id("a")).unwrap().state, State::Ready);
    assert!(d.exists(&id("a")).await.unwrap());
    d.remove_names_other.store(false, Ordering::SeqCst);
    s.remove(&id("a"), false).await.unwrap();
    assert!(s.list().unwrap().is_empty());
    assert!(d.list().await.unwrap().is_empty());
}

fn raw_insert(dir: &Path, id: &str, state: &str, owner: &str) {
    let c = rusqlite::Connection::open(dir.join("strata.db")).unwrap();
    c.execute(
        "INSERT INTO layers (id, parent, driver, state, read_only, created, owner) VALUES (?1, NULL, 'dir', ?2, 1, 0, ?3)",
        rusqlite::params![id, state, owner],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_recovers_dead_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _d) = open(dir.path()).await;
        s.create(&id("keep"), None, &CreateOpts::ro())
            .await
            .unwrap();
    }
    std::fs::create_dir(dir.path().join("dir/half")).unwrap();
    raw_insert(dir.path(), "half", "creating", "dead-boot:1:1");
    std::fs::create_dir(dir.path().join("dir/going")).unwrap();
    raw_insert(dir.path(), "going", "removing", "dead-boot:1:1");
    raw_insert(dir.path(), "gone", "removing", "dead-boot:1:1");
    raw_insert(dir.path(), "live", "creating", &strata_store::owner::me());
    let (s, d) = open(dir.path()).await;
    assert_eq!(s.recovered().len(), 3, "{:?}", s.recovered());
    let ids: Vec<_> = s
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(ids, ["keep", "live"]);
    assert_eq!(d.list().await.unwrap(), vec![id("keep")]);
    let r = s.fsck(false, false).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.in_progress, ["live"]);
    let e = s.remove(&id("live"), false).await.unwrap_err();
    assert!(matches!(e, Error::State { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_finds_and_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = open(dir.path()).await;
    for n in ["nodata", "stale", "adopt", "fine"] {
        s.create(&id(n), None, &CreateOpts::ro()).await.unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("dir/nodata")).unwrap();
    std::fs::create_dir(dir.path().join("dir/orphan")).unwrap();
    s.mount(&id("stale"), &MountOpts::default()).await.unwrap();
    std::fs::remove_file(dir.path().join("dir/stale.mounted")).unwrap();
    d.mount(&id("adopt"), &MountOpts::default()).await.unwrap();
    let r = s.fsck(false, false).await.unwrap();
    let mut kinds: Vec<_> = r.findings.iter().map(|f| (f.kind, f.id.clone())).collect();
    kinds.sort_by_key(|k| k.1.clone());
    assert_eq!(
        kinds,
        vec![
            (FindingKind::UnrecordedMount, "adopt".to_string()),
            (FindingKind::MissingData, "nodata".to_string()),
            (FindingKind::NoRecord, "orphan".to_string()),
            (FindingKind::StaleMountCount, "stale".to_string()),
        ]
    );
    assert!(r.findings.iter().all(|f| !f.repaired));
    let r = s.fsck(true, false).await.unwrap();
    assert!(r.all_repaired(), "{r:?}");
    let r = s.fsck(false, false).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(s.get(&id("adopt")).unwrap().mount_count, 1);
    assert_eq!(s.get(&id("stale")).unwrap().mount_count, 0);
    assert!(!dir.path().join("dir/orphan").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_changed_read_only_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _d) = open(dir.path()).await;
    s.import(&id("a"), None, &BTreeMap::new(), tar("f=1\n"))
        .await
        .unwrap();
    assert!(s.fsck(false, true).await.unwrap().is_clean());
    std::fs::write(dir.path().join("dir/a/f"), "2").unwrap();
    let r = s.fsck(true, true).await.unwrap();
    assert_eq!(r.findings.len(), 1);
    assert_eq!(r.findings[0].kind, FindingKind::DigestMismatch);
    assert!(!r.findings[0].repaired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_belongs_to_one_driver() {
    let dir = tempfile::tempdir().unwrap();
    let _ = open(dir.path()).await;
    let other = DirDriver::new(dir.path(), "other");
    let e = Store::with_driver(dir.path(), other).await.unwrap_err();
    assert!(matches!(e, Error::DriverMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("dir") && msg.contains("other"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mounts_keep_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (s, d) = open(dir.path()).await;
    s.create(&id("a"), None, &CreateOpts::ro()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let root = dir.path().to_path_buf();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let s = Store::with_driver(&root, d).await.unwrap();
            for _ in 0..15 {
                s.mount(&id("a"), &MountOpts::default()).await.unwrap();
                s.unmount(&id("a"), false).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.get(&id("a")).unwrap().mount_count, 0);
    assert!(!d.mounted(&id("a")));
    assert_eq!(
        d.mounts.load(Ordering::SeqCst),
        d.unmounts.load(Ordering::SeqCst)
    );
    assert!(s.fsck(false, false).await.unwrap().is_clean());
}
