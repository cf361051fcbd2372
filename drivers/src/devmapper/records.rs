//! The driver's own records: which thin id each layer has, its parent, and
//! the pool's transaction id as of the last completed operation.
//!
//! One small text file, `<root>/devicemapper/records`, replaced atomically
//! (write a staging file, fsync, rename, fsync the directory):
//!
//! ```plain
//! transaction <n>
//! next <thin id to try first>
//! base <thin id> <state>
//! layer <id> <thin id> <parent id|-> <ro|rw> <state>
//! ```
//!
//! `state` is `ready`, `creating` (the record was written before the pool
//! was asked for the thin device: it may or may not exist there), or
//! `removing` (the layer is gone for callers; its thin device is still to
//! be deactivated and deleted, perhaps deferred because it was busy).

use std::collections::BTreeMap;
use strata_driver_api::{Error, LayerId, Result};

use super::NAME;

/// The largest thin device id the kernel accepts (24 bits).
pub const MAX_THIN_ID: u32 = (1 << 24) - 1;

/// Where a record stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Complete.
    Ready,
    /// Being created: the thin id may or may not exist in the pool.
    Creating,
    /// Being removed (possibly deferred): gone for callers.
    Removing,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Creating => "creating",
            State::Removing => "removing",
        }
    }
    fn parse(s: &str) -> Option<State> {
        Some(match s {
            "ready" => State::Ready,
            "creating" => State::Creating,
            "removing" => State::Removing,
            _ => return None,
        })
    }
}

/// One layer's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Its thin device id in the pool.
    pub thin: u32,
    /// The layer it was snapshotted from.
    pub parent: Option<LayerId>,
    /// Mounted read-only.
    pub read_only: bool,
    /// Where it stands.
    pub state: State,
}

/// Everything in the records file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// The pool's transaction id after the last completed operation.
    pub transaction: u64,
    /// The thin id to try first for the next device.
    pub next: u32,
    /// The base device (an empty filesystem with `rootfs/`).
    pub base: Option<(u32, State)>,
    /// The layers by id.
    pub layers: BTreeMap<LayerId, Layer>,
}

fn bad(line: &str, why: &str) -> Error {
    Error::Driver {
        driver: NAME.into(),
        msg: format!("records file: line {line:?}: {why}"),
    }
}

impl Records {
    /// The file's text.
    pub fn encode(&self) -> String {
        let mut s = format!("transaction {}\nnext {}\n", self.transaction, self.next);
        if let Some((thin, st)) = self.base {
            s += &format!("base {thin} {}\n", st.as_str());
        }
        for (id, l) in &self.layers {
            s += &format!(
                "layer {id} {} {} {} {}\n",
                l.thin,
                l.parent.as_ref().map(LayerId::as_str).unwrap_or("-"),
                if l.read_only { "ro" } else { "rw" },
                l.state.as_str()
            );
        }
        s
    }

    /// Parses the file's text.
    ///
    /// # Errors
    /// [`Error::Driver`] naming the first bad line.
    pub fn decode(text: &str) -> Result<Records> {
        let mut r = Records::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad(line, "bad number"));
            let thin = |s: &str| match s.parse::<u32>() {
                Ok(t) if t <= MAX_THIN_ID => Ok(t),
                _ => Err(bad(line, "bad thin id")),
            };
            let state = |s: &str| State::parse(s).ok_or_else(|| bad(line, "bad state"));
            match f.as_slice() {
                ["transaction", n] => r.transaction = num(n)?,
                ["next", n] => r.next = thin(n)?,
                ["base", t, st] => r.base = Some((thin(t)?, state(st)?)),
                ["layer", id, t, parent, mode, st] => {
                    let id = LayerId::new(*id)?;
                    let parent = match *parent {
                        "-" => None,
                        p => Some(LayerId::new(p)?),
                    };
                    let read_only = match *mode {
                        "ro" => true,
                        "rw" => false,
                        _ => return Err(bad(line, "mode is neither ro nor rw")),
                    };
                    r.layers.insert(
                        id,
                        Layer {
                            thin: thin(t)?,
                            parent,
                            read_only,
                            state: state(st)?,
                        },
                    );
                }
                [""] => {}
                _ => return Err(bad(line, "unknown line")),
            }
        }
        Ok(r)
    }

    /// A thin id no record uses, starting at `next` (which moves past it).
    ///
    /// # Errors
    /// [`Error::Driver`] when all 2^24 ids are taken.
    pub fn allocate(&mut self) -> Result<u32> {
        let used: std::collections::HashSet<u32> = self
            .layers
            .values()
            .map(|l| l.thin)
            .chain(self.base.map(|b| b.0))
            .collect();
        let mut t = self.next % (MAX_THIN_ID + 1);
        for _ in 0..=MAX_THIN_ID {
            if !used.contains(&t) {
                self.next = (t + 1) % (MAX_THIN_ID + 1);
                return Ok(t);
            }
            t = (t + 1) % (MAX_THIN_ID + 1);
        }
        Err(Error::Driver {
            driver: NAME.into(),
            msg: "all 2^24 thin device ids are in use".into(),
        })
    }

    /// The ready layers whose parent is `id`.
    pub fn children(&self, id: &LayerId) -> Vec<LayerId> {
        self.layers
            .iter()
            .filter(|(_, l)| l.state != State::Removing && l.parent.as_ref() == Some(id))
            .map(|(c, _)| c.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_allocate() {
        let mut r = Records {
            transaction: 7,
            next: 3,
            base: Some((0, State::Ready)),
            ..Default::default()
        };
        r.layers.insert(
            LayerId::new("a").unwrap(),
            Layer {
                thin: 3,
                parent: None,
                read_only: true,
                state: State::Ready,
            },
        );
        r.layers.insert(
            LayerId::new("b").unwrap(),
            Layer {
                thin: 4,
                parent: Some(LayerId::new("a").unwrap()),
                read_only: false,
                state: State::Creating,
            },
        );
        assert_eq!(Records::decode(&r.encode()).unwrap(), r);
        assert_eq!(r.allocate().unwrap(), 5);
        assert_eq!(r.next, 6);
        assert!(Records::decode("layer a 99999999 - rw ready\n").is_err());
        assert!(Records::decode("junk\n").is_err());
    }
}
