//! Import of a Docker AUFS store (`/var/lib/docker/aufs`) into a strata
//! store, whatever its driver.
//!
//! Docker's layout, read directly (no aufs mount is needed):
//!
//! ```plain
//! <dir>/layers/<id>   the layer exists: its ancestors' ids, nearest first,
//!                     one per line (empty for a base layer)
//! <dir>/diff/<id>     the layer's own branch: its added and changed files,
//!                     `.wh.<name>` for a deleted name, `.wh..wh..opq` in an
//!                     opaque directory; aufs's own `.wh..wh.plnk` (pseudo
//!                     links), `.wh..wh.orph` (orphans) and `.wh..wh.aufs`
//!                     are not layer content and are skipped
//! <dir>/mnt/<id>      mount points (ignored)
//! <dir>/*/<id>-removing   a removal Docker did not finish (ignored)
//! ```
//!
//! The directory name is the id kept (Docker's "cache id" or mount id, 64
//! hex digits, or `<id>-init` for a container's init layer); the image
//! metadata that maps Docker's chain ids to these names is not read.
//!
//! Each branch is written as a canonical layer tar (its `.wh.` files are
//! exactly the tar's whiteouts) and streamed through a pipe into
//! [`Store::import`], parents first. Every layer becomes a read-only layer
//! with its digest recorded. A layer the store already has with the same
//! parent is skipped, so an interrupted import continues when run again.

use super::{pipe, Progress};
use crate::error::{Error, Result};
use crate::{crash, Store};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use strata_driver_api::archive::{self, Item, OPAQUE, WH_PREFIX};
use strata_driver_api::{Error as DError, IoContext, LayerId};

/// The prefix of aufs's own metadata names (`.wh..wh.plnk`, ...).
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// One layer of a Docker AUFS store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerLayer {
    /// The id (the name of its `layers/` file and `diff/` directory).
    pub id: LayerId,
    /// Its ancestors, nearest first (`layers/<id>`).
    pub ancestors: Vec<LayerId>,
    /// Its branch directory, `diff/<id>`.
    pub diff: PathBuf,
}

impl DockerLayer {
    /// The nearest ancestor.
    pub fn parent(&self) -> Option<&LayerId> {
        self.ancestors.first()
    }
}

/// What [`import`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// The Docker AUFS directory read.
    pub from: PathBuf,
    /// The driver the layers went into.
    pub driver: String,
    /// Layers found.
    pub layers: usize,
    /// Layers imported by this run.
    pub imported: usize,
    /// Layers the store already had (an earlier run).
    pub skipped: usize,
    /// Bytes of content imported.
    pub bytes: u64,
    /// Each imported layer's recorded digest, by id.
    pub digests: BTreeMap<String, String>,
}

fn bad(path: &Path, why: impl Into<String>) -> Error {
    DError::InvalidArgument {
        what: format!("Docker AUFS store {}", path.display()),
        why: why.into(),
    }
    .into()
}

/// Reads the layers of the Docker AUFS store at `dir`, parents first.
///
/// # Errors
/// `InvalidArgument` naming the file for a missing `layers/` directory, a
/// bad id, a missing `diff/<id>`, an ancestor without its own layer, or
/// ancestor lists that disagree; `Io` for unreadable files.
pub fn read_layout(dir: &Path) -> Result<Vec<DockerLayer>> {
    let layers_dir = dir.join("layers");
    if !layers_dir.is_dir() {
        return Err(bad(
            dir,
            "has no layers/ directory (expected Docker's aufs layout: diff/, layers/, mnt/)",
        ));
    }
    let mut out: HashMap<String, DockerLayer> = HashMap::new();
    for entry in std::fs::read_dir(&layers_dir).ctx("read", &layers_dir)? {
        let entry = entry.ctx("read", &layers_dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = entry.path();
        if name.ends_with("-removing") || !entry.file_type().ctx("stat", &file)?.is_file() {
            continue;
        }
        let id = LayerId::new(name.clone()).map_err(|e| bad(&file, e.to_string()))?;
        let text = std::fs::read_to_string(&file).ctx("read", &file)?;
        let ancestors = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| LayerId::new(l).map_err(|e| bad(&file, e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        let diff = dir.join("diff").join(&name);
        // lstat: a `diff/<id>` that is a symlink (to `/`, say) would
        // import whatever it points to as the layer.
        match std::fs::symlink_metadata(&diff) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(
                    &diff,
                    format!("layer {id}: its diff directory is a symlink, which is not followed"),
                ))
            }
            _ => {
                return Err(bad(
                    &diff,
                    format!("layer {id}: its diff directory is missing"),
                ))
            }
        }
        out.insert(
            name,
            DockerLayer {
                id,
                ancestors,
                diff,
            },
        );
    }
    for l in out.values() {
        if let Some(p) = l.parent() {
            let Some(pl) = out.get(p.as_str()) else {
                return Err(bad(
                    &layers_dir.join(l.id.as_str()),
                    format!("layer {}: parent {p} has no layers/{p} file", l.id),
                ));
            };
            if pl.ancestors[..] != l.ancestors[1..] {
                return Err(bad(
                    &layers_dir.join(l.id.as_str()),
                    format!(
                        "layer {}: its ancestors after {p} differ from what layers/{p} lists",
                        l.id
                    ),
                ));
            }
        }
    }
    let mut v: Vec<DockerLayer> = out.into_values().collect();
    v.sort_by(|a, b| (a.ancestors.len(), a.id.as_str()).cmp(&(b.ancestors.len(), b.id.as_str())));
    Ok(v)
}

/// The tar items of an AUFS branch: entries, `.wh.` whiteouts, opaque
/// markers; aufs metadata (`.wh..wh.*` other than the opaque marker) and
/// everything under it skipped. Directories are not followed through
/// symlinks. Also returns the bytes of regular files.
///
/// # Errors
/// `Io` reading the directory.
pub fn branch_items(diff: &Path) -> Result<(Vec<Item>, u64)> {
    let mut items = Vec::new();
    let mut bytes = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = diff.join(&rel);
        for entry in std::fs::read_dir(&abs).ctx("read", &abs)? {
            let entry = entry.ctx("read", &abs)?;
            let name = entry.file_name();
            let n = name.as_bytes();
            let path = rel.join(&name);
            if n == OPAQUE {
                if rel.as_os_str().is_empty() {
                    tracing::warn!(branch = %diff.display(), "an opaque marker at a branch root is meaningless; skipped");
                } else {
                    items.push(Item::Opaque(rel.clone()));
                }
                continue;
            }
            if n.starts_with(AUFS_META_PREFIX) {
                continue;
            }
            if let Some(hidden) = n.strip_prefix(WH_PREFIX) {
                items.push(Item::Whiteout(
                    rel.join(std::ffi::OsStr::from_bytes(hidden)),
                ));
                continue;
            }
            let ft = entry.file_type().ctx("stat", diff.join(&path))?;
            if ft.is_dir() {
                stack.push(path.clone());
            } else if ft.is_file() {
                bytes += entry.metadata().ctx("stat", diff.join(&path))?.len();
            }
            items.push(Item::Entry(path));
        }
    }
    Ok((items, bytes))
}

/// A pipe's read end that fails, instead of ending, when the writer
/// recorded an error before closing its end.
struct CheckedReader {
    inner: std::fs::File,
    failed: Arc<Mutex<Option<String>>>,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(e) = self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Err(std::io::Error::other(e));
            }
        }
        Ok(n)
    }
}

/// Imports every layer of the Docker AUFS store at `dir` into `store`,
/// parents first (see the module documentation). Resumable: layers the
/// store already has with the same parent are skipped.
///
/// # Errors
/// As [`read_layout`]; `AlreadyExists` (as `InvalidArgument`) when the
/// store has a layer of that id with another parent; errors of
/// [`Store::import`] naming the layer (a failed layer leaves nothing).
pub async fn import(store: &Store, dir: &Path, progress: &dyn Progress) -> Result<ImportReport> {
    let layers = read_layout(dir)?;
    let mut report = ImportReport {
        from: dir.to_path_buf(),
        driver: store.driver().name().to_string(),
        layers: layers.len(),
        imported: 0,
        skipped: 0,
        bytes: 0,
        digests: BTreeMap::new(),
    };
    let mut done = Vec::new();
    for l in &layers {
        if let Ok(have) = store.get_ready(&l.id) {
            if have.parent.as_ref() != l.parent() {
                return Err(DError::InvalidArgument {
                    what: format!("import layer {}", l.id),
                    why: format!(
                        "the store already has this id with parent {}, Docker's has {}",
                        have.parent.as_ref().map_or("none", LayerId::as_str),
                        l.parent().map_or("none", LayerId::as_str)
                    ),
                }
                .into());
            }
            done.push(l.id.clone());
        }
    }
    progress.start(layers.len(), done.len());
    for l in &layers {
        if done.contains(&l.id) {
            report.skipped += 1;
            continue;
        }
        let diff = l.diff.clone();
        let (items, _) = tokio::task::spawn_blocking(move || branch_items(&diff))
            .await
            .map_err(strata_driver_api::join_error)??;
        let (r, w) = pipe(l.id.as_str())?;
        let failed = Arc::new(Mutex::new(None));
        let failed_w = failed.clone();
        let diff = l.diff.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = w;
            let res = archive::write_items(
                &diff,
                items,
                std::io::BufWriter::with_capacity(1 << 16, &mut w),
            )
            .and_then(|mut b| b.flush().ctx("write the tar pipe", &diff));
            if let Err(e) = &res {
                *failed_w.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
            drop(w);
            res.map(drop)
        });
        let reader = CheckedReader { inner: r, failed };
        let imported = store
            .import(&l.id, l.parent(), &BTreeMap::new(), Box::new(reader))
            .await;
        let written = writer.await.map_err(strata_driver_api::join_error)?;
        let layer = match (imported, written) {
            (Ok(layer), Ok(())) => layer,
            (Err(e), _) => return Err(e),
            (Ok(_), Err(e)) => {
                // Cannot happen (the reader fails with the writer), but a
                // layer from a cut tar must not stay.
                let _ = store.remove(&l.id, true).await;
                return Err(e.into());
            }
        };
        crash::point("aufs-import:after-layer");
        report.imported += 1;
        report.bytes += layer.size;
        if let Some(d) = &layer.digest {
            report.digests.insert(l.id.to_string(), d.clone());
        }
        progress.layer_done(&l.id, layer.size);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn layout_is_read_parents_first_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let (a, b, c) = (id('a'), id('b'), format!("{}-init", id('c')));
        for x in [&a, &b, &c] {
            std::fs::create_dir_all(d.join("diff").join(x)).unwrap();
        }
        write(&d.join("layers").join(&c), &format!("{b}\n{a}\n"));
        write(&d.join("layers").join(&a), "");
        write(&d.join("layers").join(&b), &format!("{a}\n"));
        write(&d.join("layers/x-removing"), "");
        let l = read_layout(d).unwrap();
        let ids: Vec<&str> = l.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, [a.as_str(), b.as_str(), c.as_str()]);
        assert_eq!(l[2].parent().unwrap().as_str(), b);
        // Ancestor lists that disagree are refused, naming the layer.
        write(&d.join("layers").join(&c), &format!("{b}\n{c}\n"));
        let e = read_layout(d).unwrap_err().to_string();
        assert!(e.contains(&c), "{e}");
        // A missing diff directory too.
        write(&d.join("layers").join(&c), &format!("{b}\n{a}\n"));
        std::fs::remove_dir(d.join("diff").join(&b)).unwrap();
        let e = read_layout(d).unwrap_err().to_string();
        assert!(e.contains("diff directory"), "{e}");
        // A diff directory that is a symlink (here to the host's root) is
        // refused, not followed.
        std::os::unix::fs::symlink("/", d.join("diff").join(&b)).unwrap();
        let e = read_layout(d).unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
        std::fs::remove_file(d.join("diff").join(&b)).unwrap();
        // Not an aufs store at all.
        let e = read_layout(&d.join("diff")).unwrap_err().to_string();
        assert!(e.contains("layers/"), "{e}");
    }

    #[test]
    fn branch_items_map_whiteouts_and_skip_aufs_metadata() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(&d.join("etc/passwd"), "x");
        write(&d.join("etc/.wh.group"), "");
        write(&d.join("usr/.wh..wh..opq"), "");
        write(&d.join(".wh..wh.plnk/1.2"), "link");
        write(&d.join(".wh..wh.aufs"), "");
        std::fs::create_dir_all(d.join(".wh..wh.orph")).unwrap();
        let (mut items, bytes) = branch_items(d).unwrap();
        items.sort();
        assert_eq!(bytes, 1);
        assert_eq!(
            items,
            [
                Item::Entry("etc".into()),
                Item::Entry("etc/passwd".into()),
                Item::Entry("usr".into()),
                Item::Whiteout("etc/group".into()),
                Item::Opaque("usr".into()),
            ]
        );
    }
}
