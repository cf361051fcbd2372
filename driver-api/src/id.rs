//! [`LayerId`]: the only kind of name a layer can have.

use crate::error::{Error, Result};
use std::fmt;

/// A validated layer id: 1 to 128 characters of `[A-Za-z0-9_.-]`, and not
/// `.` or `..`. Such an id is safe to use as one path component, in mount
/// options and in device names. Checked when made; cannot be changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct LayerId(String);

impl LayerId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates `s` as a layer id.
    ///
    /// # Errors
    /// [`Error::InvalidId`] naming the rule broken: empty, longer than 128,
    /// a character outside `[A-Za-z0-9_.-]`, or `.`/`..`.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let why = if s.is_empty() {
            Some("empty")
        } else if s.len() > Self::MAX_LEN {
            Some("longer than 128 characters")
        } else if s == "." || s == ".." {
            Some("'.' and '..' are not ids")
        } else if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            Some("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed")
        } else {
            None
        };
        match why {
            Some(why) => Err(Error::InvalidId { id: s, why }),
            None => Ok(LayerId(s)),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LayerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for LayerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        LayerId::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for LayerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LayerId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_safe_ids() {
        for ok in [
            "a",
            "A-b_c.d",
            "0123456789abcdef",
            &"x".repeat(128),
            "..a",
            "a..",
        ] {
            assert!(LayerId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_unsafe_ids() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "a b",
            "a\0",
            "é",
            &"x".repeat(129),
            "a:b",
            "a,b",
        ] {
            let e = LayerId::new(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidId { .. }), "{bad:?}: {e}");
        }
    }
}
