//! The suite checked on a minimal driver written here against the contract
//! (each layer a `copy_tree` of its parent, mounts are plain directories,
//! the trait's naive diff and apply). It tells suite bugs from driver bugs:
//! every scenario must pass on it or say why not.
//!
//! Run: `cargo test -p strata-conformance --test selftest -- --nocapture`.

use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use strata_conformance::{run_suite, Factory, Fixture};
use strata_driver_api::{
    copy, join_error, Capabilities, CreateOpts, Driver, Error, IoContext, LayerId, MountOpts,
    MountSpec, Result, Status, View,
};

#[derive(Default)]
struct State {
    parents: BTreeMap<LayerId, Option<LayerId>>,
    mounted: BTreeSet<LayerId>,
}

struct CopyDriver {
    root: PathBuf,
    state: Mutex<State>,
}

impl CopyDriver {
    fn dir(&self, id: &LayerId) -> PathBuf {
        self.root.join(id.as_str())
    }
    fn check(&self, id: &LayerId) -> Result<()> {
        if self.state.lock().unwrap().parents.contains_key(id) {
            Ok(())
        } else {
            Err(Error::NotFound { id: id.to_string() })
        }
    }
}

#[async_trait]
impl Driver for CopyDriver {
    fn name(&self) -> &'static str {
        "selftest"
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_diff: false,
            quota: false,
            reflink: false,
            max_depth: 128,
            mount_spec: false,
            read_only_mounts: false,
            copy_up_keeps_links: true,
        }
    }
    async fn status(&self) -> Result<Status> {
        Ok(vec![])
    }
    async fn create(&self, id: &LayerId, parent: Option<&LayerId>, _: &CreateOpts) -> Result<()> {
        {
            let st = self.state.lock().unwrap();
            if st.parents.contains_key(id) {
                return Err(Error::AlreadyExists { id: id.to_string() });
            }
            if let Some(p) = parent {
                if !st.parents.contains_key(p) {
                    return Err(Error::NotFound { id: p.to_string() });
                }
            }
        }
        let dst = self.dir(id);
        let src = parent.map(|p| self.dir(p));
        tokio::task::spawn_blocking(move || -> Result<()> {
            match src {
                Some(src) => copy::copy_tree(&src, &dst).map(drop),
                None => {
                    std::fs::create_dir(&dst).ctx("mkdir", &dst)?;
                    std::os::unix::fs::chown(&dst, Some(0), Some(0)).ctx("chown", &dst)?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
                        .ctx("chmod", &dst)
                }
            }
        })
        .await
        .map_err(join_error)??;
        self.state
            .lock()
            .unwrap()
            .parents
            .insert(id.clone(), parent.cloned());
        Ok(())
    }
    async fn remove(&self, id: &LayerId) -> Result<()> {
        {
            let st = self.state.lock().unwrap();
            if !st.parents.contains_key(id) {
                return Err(Error::NotFound { id: id.to_string() });
            }
            let children: Vec<String> = st
                .parents
                .iter()
                .filter(|(_, p)| p.as_ref() == Some(id))
                .map(|(c, _)| c.to_string())
                .collect();
            if !children.is_empty() {
                return Err(Error::HasChildren {
                    id: id.to_string(),
                    children: children.join(","),
                });
            }
            if st.mounted.contains(id) {
                return Err(Error::Busy {
                    id: id.to_string(),
                    why: "mounted".into(),
                });
            }
        }
        let d = self.dir(id);
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d).ctx("remove", &d))
            .await
            .map_err(join_error)??;
        self.state.lock().unwrap().parents.remove(id);
        Ok(())
    }
    async fn exists(&self, id: &LayerId) -> Result<bool> {
        Ok(self.state.lock().unwrap().parents.contains_key(id))
    }
    async fn list(&self) -> Result<Vec<LayerId>> {
        Ok(self.state.lock().unwrap().parents.keys().cloned().collect())
    }
    async fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        self.state
            .lock()
            .unwrap()
            .parents
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound { id: id.to_string() })
    }
    async fn mount(&self, id: &LayerId, _: &MountOpts) -> Result<PathBuf> {
        self.check(id)?;
        self.state.lock().unwrap().mounted.insert(id.clone());
        Ok(self.dir(id))
    }
    async fn unmount(&self, id: &LayerId) -> Result<()> {
        self.check(id)?;
        self.state.lock().unwrap().mounted.remove(id);
        Ok(())
    }
    async fn is_mounted(&self, id: &LayerId) -> Result<bool> {
        self.check(id)?;
        Ok(self.state.lock().unwrap().mounted.contains(id))
    }
    async fn mount_spec(&self, id: &LayerId, _: &MountOpts) -> Result<Vec<MountSpec>> {
        Err(Error::Unsupported {
            driver: "selftest".into(),
            why: format!("no mount spec for {id}"),
        })
    }
    async fn view(&self, id: &LayerId, _: bool) -> Result<View> {
        self.check(id)?;
        Ok(View::dir(self.dir(id)))
    }
    async fn cleanup(&self) -> Result<()> {
        self.state.lock().unwrap().mounted.clear();
        Ok(())
    }
}

struct CopyFactory;

#[async_trait]
impl Factory for CopyFactory {
    fn name(&self) -> String {
        "selftest".into()
    }
    async fn make(&self) -> anyhow::Result<Fixture> {
        let tmp = tempfile::Builder::new().prefix("strata-self-").tempdir()?;
        let root = tmp.path().join("root");
        std::fs::create_dir(&root)?;
        let driver = Arc::new(CopyDriver {
            root: root.clone(),
            state: Mutex::default(),
        });
        Ok(Fixture::new(driver, root, tmp))
    }
}

#[test]
fn suite_passes_on_a_minimal_copy_driver() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = match std::env::var("STRATA_SCENARIO").ok() {
        Some(f) => rt.block_on(run_suite(&CopyFactory, Some(&f))),
        None => {
            // The two 100,000-file scenarios only measure the copy driver's
            // speed here (minutes in a debug build); the suite's own logic
            // for them runs against vfs in tests/vfs.rs.
            println!("selftest: many-files-* left to tests/vfs.rs (run them here with STRATA_SCENARIO=many-files)");
            let mut report = strata_conformance::Report::default();
            for s in strata_conformance::scenarios() {
                if !s.name.starts_with("many-files") {
                    report.extend(rt.block_on(strata_conformance::run_named(&CopyFactory, s.name)));
                }
            }
            report
        }
    };
    report.print();
    report.assert_ok();
}
