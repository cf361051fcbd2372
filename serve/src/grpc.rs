//! The gRPC face: containerd-snapshots' `Snapshotter` trait over
//! [`Snapshots`].

use crate::error::Error;
use crate::snapshots::{Kind, Snapshot, Snapshots, Update};
use containerd_snapshots::{api, Info, Kind as CKind, Usage};
use std::collections::HashMap;
use std::sync::Arc;
use strata_driver_api::MountSpec;

/// The service: shares the snapshots with the server.
pub(crate) struct Service(pub(crate) Arc<Snapshots>);

fn info(s: Snapshot) -> Info {
    Info {
        kind: match s.kind {
            Kind::Active => CKind::Active,
            Kind::View => CKind::View,
            Kind::Committed => CKind::Committed,
        },
        name: s.key,
        parent: s.parent.unwrap_or_default(),
        labels: s.labels.into_iter().collect(),
        created_at: s.created,
        updated_at: s.updated,
    }
}

fn mounts(m: Vec<MountSpec>) -> Vec<api::types::Mount> {
    m.into_iter()
        .map(|m| api::types::Mount {
            r#type: m.fs_type,
            source: m.source.to_string_lossy().into_owned(),
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn logged<T>(op: &str, key: &str, r: Result<T, Error>) -> Result<T, Error> {
    match &r {
        Ok(_) => tracing::debug!(op, key, "ok"),
        Err(e) => tracing::debug!(op, key, "failed: {e}"),
    }
    r
}

#[containerd_snapshots::tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info, Error> {
        logged("stat", &key, self.0.stat(&key)).map(info)
    }

    async fn update(&self, i: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Error> {
        let key = i.name.clone();
        let r = self
            .0
            .update(Update {
                key: i.name,
                labels: i.labels.into_iter().collect(),
                fieldpaths: fieldpaths.unwrap_or_default(),
            })
            .await;
        logged("update", &key, r).map(info)
    }

    async fn usage(&self, key: String) -> Result<Usage, Error> {
        let u = logged("usage", &key, self.0.usage(&key).await)?;
        Ok(Usage {
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<api::types::Mount>, Error> {
        logged("mounts", &key, self.0.mounts(&key).await).map(mounts)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::types::Mount>, Error> {
        let r = self
            .0
            .prepare(&key, &parent, labels.into_iter().collect())
            .await;
        logged("prepare", &key, r).map(mounts)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::types::Mount>, Error> {
        let r = self
            .0
            .view(&key, &parent, labels.into_iter().collect())
            .await;
        logged("view", &key, r).map(mounts)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let r = self
            .0
            .commit(&name, &key, labels.into_iter().collect())
            .await;
        logged("commit", &key, r)
    }

    async fn remove(&self, key: String) -> Result<(), Error> {
        logged("remove", &key, self.0.remove(&key).await)
    }

    async fn clear(&self) -> Result<(), Error> {
        logged("cleanup", "", self.0.cleanup().await.map(|_| ()))
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Error>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Error> {
        let all = logged("walk", "", self.0.walk(&filters))?;
        let items: Vec<Result<Info, Error>> = all.into_iter().map(|s| Ok(info(s))).collect();
        Ok(tokio_stream::iter(items))
    }
}
