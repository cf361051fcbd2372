//! The naive differ: compares a layer's tree with its parent's.
//!
//! STUB: the interface below is fixed; the implementation is being written.

use crate::{Change, Result};
use std::path::Path;

/// The changes of the tree at `layer` against the tree at `parent` (`None`:
/// the empty tree), sorted by path.
pub fn changes(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>> {
    let _ = (layer, parent);
    Ok(Vec::new())
}

/// Bytes of added or modified non-directories among `changes` (read under
/// `root`), hard links counted once.
pub fn changes_size(root: &Path, changes: &[Change]) -> Result<u64> {
    let _ = (root, changes);
    Ok(0)
}
