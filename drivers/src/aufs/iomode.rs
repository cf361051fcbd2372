//! The I/O mode of each open file of the FUSE union: kernel passthrough to
//! one backing file, or data through the server (fd I/O).
//!
//! The kernel (6.9+) allows one mode per FUSE inode while any of its files
//! is open: every open of an inode in passthrough mode must name the same
//! backing file, and a non-passthrough open of it fails (and vice versa).
//! Only when the last file of the inode is released may the next open
//! choose again. A union meets the conflict at copy-up: readers of a lower
//! file pass through to the lower file, then a writer's open copies the
//! file up and needs the upper file as its backing. That open (and every
//! later open of the inode, so readers cannot starve it) waits until the
//! readers have closed; the server thread is not held meanwhile (the reply
//! is parked here), and a wait that lasts too long is answered `EBUSY` by
//! the caller.
//!
//! This module is the bookkeeping only, generic over the backing handle `B`
//! and the parked open `P`, so it is tested without a kernel.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Identity of a backing file: (device, inode).
pub(crate) type Key = (u64, u64);

/// What an open of an inode should do.
#[derive(Debug)]
pub(crate) enum Admit<B> {
    /// None of the inode's files is open: the caller chooses the mode
    /// (tries to register a backing file) and calls [`IoModes::establish`].
    First,
    /// Join the inode's mode (already counted): `Some` passes through to
    /// that backing file, `None` is fd I/O.
    Join(Option<Arc<B>>),
    /// The inode passes through to another backing file (or opens are
    /// already waiting): park the open with [`IoModes::park`].
    Wait,
}

#[derive(Debug)]
struct Inode<B, P> {
    open: usize,
    key: Key,
    backing: Option<Arc<B>>,
    waiting: VecDeque<(u64, P)>,
}

/// Per-inode I/O modes and parked opens.
#[derive(Debug)]
pub(crate) struct IoModes<B, P> {
    inodes: HashMap<u64, Inode<B, P>>,
    next_wait: u64,
}

impl<B, P> Default for IoModes<B, P> {
    fn default() -> Self {
        IoModes {
            inodes: HashMap::new(),
            next_wait: 1,
        }
    }
}

impl<B, P> IoModes<B, P> {
    /// Decides an open of inode `ino` whose backing file is `key`; a
    /// [`Admit::Join`] counts the open.
    pub(crate) fn admit(&mut self, ino: u64, key: Key) -> Admit<B> {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return Admit::First;
        };
        if i.open == 0 {
            // Only parked opens: they go first.
            return Admit::Wait;
        }
        if !i.waiting.is_empty() {
            return Admit::Wait;
        }
        match &i.backing {
            None => {
                i.open += 1;
                Admit::Join(None)
            }
            Some(b) if i.key == key => {
                i.open += 1;
                Admit::Join(Some(b.clone()))
            }
            Some(_) => Admit::Wait,
        }
    }

    /// Records the first open of `ino` (after [`Admit::First`]) with its
    /// mode: passthrough to `backing`, or fd I/O when `None`. Returns the
    /// shared backing.
    pub(crate) fn establish(&mut self, ino: u64, key: Key, backing: Option<B>) -> Option<Arc<B>> {
        let backing = backing.map(Arc::new);
        let i = self.inodes.entry(ino).or_insert_with(|| Inode {
            open: 0,
            key,
            backing: None,
            waiting: VecDeque::new(),
        });
        i.open = 1;
        i.key = key;
        i.backing = backing.clone();
        backing
    }

    /// A new id for a parked open (its timer names it).
    pub(crate) fn wait_id(&mut self) -> u64 {
        let id = self.next_wait;
        self.next_wait += 1;
        id
    }

    /// Parks open `p` of `ino` (after [`Admit::Wait`]) under `id`.
    pub(crate) fn park(&mut self, ino: u64, id: u64, p: P) {
        self.inodes
            .entry(ino)
            .or_insert_with(|| Inode {
                open: 0,
                key: (0, 0),
                backing: None,
                waiting: VecDeque::new(),
            })
            .waiting
            .push_back((id, p));
    }

    /// Records the release of one open file of `ino`. When it was the last,
    /// the inode's mode ends (its backing is dropped) and its parked opens
    /// are returned, oldest first, for the caller to admit again.
    pub(crate) fn release(&mut self, ino: u64) -> Vec<(u64, P)> {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return Vec::new();
        };
        i.open = i.open.saturating_sub(1);
        if i.open > 0 {
            return Vec::new();
        }
        let i = self.inodes.remove(&ino).expect("present");
        i.waiting.into_iter().collect()
    }

    /// Takes parked open `id` of `ino` out (its wait expired), if still
    /// parked.
    pub(crate) fn expire(&mut self, ino: u64, id: u64) -> Option<P> {
        let i = self.inodes.get_mut(&ino)?;
        let pos = i.waiting.iter().position(|(w, _)| *w == id)?;
        let p = i.waiting.remove(pos).map(|(_, p)| p);
        if i.open == 0 && i.waiting.is_empty() {
            self.inodes.remove(&ino);
        }
        p
    }

    /// Inodes with open files or parked opens.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type M = IoModes<&'static str, &'static str>;

    #[test]
    fn same_backing_is_shared() {
        let mut m = M::default();
        assert!(matches!(m.admit(5, (1, 10)), Admit::First));
        let b = m.establish(5, (1, 10), Some("lower"));
        assert_eq!(b.as_deref(), Some(&"lower"));
        assert!(matches!(m.admit(5, (1, 10)), Admit::Join(Some(b)) if *b == "lower"));
        assert!(m.release(5).is_empty());
        assert!(m.release(5).is_empty());
        assert_eq!(m.len(), 0);
        // Next open chooses again.
        assert!(matches!(m.admit(5, (2, 20)), Admit::First));
    }

    #[test]
    fn fd_io_mode_takes_any_file() {
        let mut m = M::default();
        assert!(m.establish(5, (1, 10), None).is_none());
        assert!(matches!(m.admit(5, (2, 20)), Admit::Join(None)));
    }

    #[test]
    fn copy_up_waits_for_readers_of_the_lower_file() {
        let mut m = M::default();
        m.establish(5, (1, 10), Some("lower"));
        assert!(matches!(m.admit(5, (1, 10)), Admit::Join(Some(_))));
        // A writer after copy-up: another backing file.
        assert!(matches!(m.admit(5, (2, 20)), Admit::Wait));
        let w = m.wait_id();
        m.park(5, w, "writer");
        // A reader arriving now queues behind the writer.
        assert!(matches!(m.admit(5, (1, 10)), Admit::Wait));
        let r = m.wait_id();
        m.park(5, r, "reader");
        assert!(m.release(5).is_empty());
        let woken = m.release(5);
        assert_eq!(woken, vec![(w, "writer"), (r, "reader")]);
        assert_eq!(m.len(), 0);
        // The caller admits them again in order.
        assert!(matches!(m.admit(5, (2, 20)), Admit::First));
        m.establish(5, (2, 20), Some("upper"));
        assert!(matches!(m.admit(5, (2, 20)), Admit::Join(Some(b)) if *b == "upper"));
    }

    #[test]
    fn expired_waits_leave() {
        let mut m = M::default();
        m.establish(5, (1, 10), Some("lower"));
        let w = m.wait_id();
        m.park(5, w, "writer");
        assert_eq!(m.expire(5, w), Some("writer"));
        assert_eq!(m.expire(5, w), None);
        assert!(m.release(5).is_empty());
        assert_eq!(m.len(), 0);
    }
}
