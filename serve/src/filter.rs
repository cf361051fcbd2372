//! containerd's filter syntax, as far as snapshot walks use it.
//!
//! ```plain
//! filters   := one filter per string; a snapshot matches if ANY matches
//! filter    := selector ("," selector)*    all selectors must match
//! selector  := fieldpath [op value]        without op: the field is present
//! fieldpath := field ("." field)*          e.g. labels."containerd.io/gc.root"
//! op        := "==" | "!=" | "~="          ~= is a regular expression search
//! field, value: bare ([A-Za-z0-9_./:-]...) or quoted with "..", /../ or |..|
//! ```
//!
//! Fields of a snapshot: `name`, `parent`, `kind` (`active`, `view`,
//! `committed`) and `labels.<key>`.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// How a selector compares.
#[derive(Clone, Debug)]
enum Op {
    /// The field is present and not empty.
    Present,
    Eq(String),
    Ne(String),
    Matches(regex::Regex),
}

/// One `fieldpath op value` term.
#[derive(Clone, Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed list of filters: matches when any of its filters matches (no
/// filters: everything matches).
#[derive(Clone, Debug, Default)]
pub struct Filters {
    any: Vec<Vec<Selector>>,
}

/// What a filter looks at in a snapshot.
pub trait Fields {
    /// The value of `path` (`["name"]`, `["labels", "k"]`...), if present.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A snapshot's fields as plain values, for matching.
pub struct SnapshotFields<'a> {
    /// Its key or name.
    pub name: &'a str,
    /// Its parent's name (`""` for none).
    pub parent: &'a str,
    /// `active`, `view` or `committed`.
    pub kind: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl Fields for SnapshotFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let first = path.first()?.as_str();
        let rest = &path[1..];
        match first {
            "name" if rest.is_empty() => Some(self.name.to_string()),
            "parent" if rest.is_empty() => Some(self.parent.to_string()),
            "kind" if rest.is_empty() => Some(self.kind.to_string()),
            "labels" if !rest.is_empty() => self.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

impl Filters {
    /// Parses filter strings (empty strings are ignored).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the filter and what is wrong.
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let mut any = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            any.push(parse_one(f).map_err(|why| Error::InvalidArgument {
                what: format!("filter {f:?}"),
                why,
            })?);
        }
        Ok(Filters { any })
    }

    /// Whether `x` matches.
    pub fn matches(&self, x: &impl Fields) -> bool {
        self.any.is_empty()
            || self.any.iter().any(|sels| {
                sels.iter().all(|s| {
                    let v = x.field(&s.path);
                    match &s.op {
                        Op::Present => v.is_some_and(|v| !v.is_empty()),
                        Op::Eq(want) => v.as_deref() == Some(want.as_str()),
                        Op::Ne(want) => v.as_deref() != Some(want.as_str()),
                        Op::Matches(re) => v.is_some_and(|v| re.is_match(&v)),
                    }
                })
            })
    }
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, t: &str) -> bool {
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    /// A quoted string (`"..."` with backslash escapes, `/.../`, `|...|`).
    fn quoted(&mut self) -> Result<String, String> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == q {
                return String::from_utf8(out).map_err(|_| "a quoted string is not UTF-8".into());
            }
            if c == b'\\' && q == b'"' {
                let e = self.peek().ok_or("an escape at the end")?;
                self.i += 1;
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    other => other,
                });
            } else {
                out.push(c);
            }
        }
        Err(format!("unterminated quote {:?}", q as char))
    }
    fn bare(&mut self, stop: &[u8]) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if stop.contains(&c) || c.is_ascii_whitespace() {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
}

fn is_quote(c: u8) -> bool {
    matches!(c, b'"' | b'/' | b'|')
}

fn parse_one(f: &str) -> Result<Vec<Selector>, String> {
    let mut sc = Scanner {
        s: f.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        sc.skip_ws();
        // The field path.
        let mut path = Vec::new();
        loop {
            let part = match sc.peek() {
                Some(c) if is_quote(c) => sc.quoted()?,
                Some(_) => sc.bare(b".,=!~\"|"),
                None => String::new(),
            };
            if part.is_empty() {
                return Err(format!("a field name expected at offset {}", sc.i));
            }
            path.push(part);
            if !sc.eat(".") {
                break;
            }
        }
        sc.skip_ws();
        let op = if sc.eat("==") {
            Some(0)
        } else if sc.eat("!=") {
            Some(1)
        } else if sc.eat("~=") {
            Some(2)
        } else {
            None
        };
        let op = match op {
            None => Op::Present,
            Some(k) => {
                sc.skip_ws();
                let v = match sc.peek() {
                    Some(c) if is_quote(c) => sc.quoted()?,
                    _ => sc.bare(b","),
                };
                match k {
                    0 => Op::Eq(v),
                    1 => Op::Ne(v),
                    _ => Op::Matches(
                        regex::Regex::new(&v)
                            .map_err(|e| format!("regular expression {v:?}: {e}"))?,
                    ),
                }
            }
        };
        out.push(Selector { path, op });
        sc.skip_ws();
        match sc.peek() {
            None => return Ok(out),
            Some(b',') => sc.i += 1,
            Some(c) => return Err(format!("unexpected {:?} at offset {}", c as char, sc.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap<'a>(labels: &'a BTreeMap<String, String>, kind: &'a str) -> SnapshotFields<'a> {
        SnapshotFields {
            name: "default/1/sha256:abc",
            parent: "",
            kind,
            labels,
        }
    }

    fn m(filters: &[&str], x: &SnapshotFields<'_>) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(x)
    }

    #[test]
    fn selectors_and_or() {
        let mut labels = BTreeMap::new();
        labels.insert("containerd.io/gc.root".to_string(), "yes".to_string());
        labels.insert("x".to_string(), "1".to_string());
        let c = snap(&labels, "committed");
        assert!(m(&[], &c));
        assert!(m(&["kind==committed"], &c));
        assert!(!m(&["kind==active"], &c));
        assert!(m(&["kind==active", "kind==committed"], &c));
        assert!(m(
            &[r#"labels."containerd.io/gc.root"==yes,kind==committed"#],
            &c
        ));
        assert!(!m(
            &[r#"labels."containerd.io/gc.root"==yes,kind==view"#],
            &c
        ));
        assert!(m(&["labels.x"], &c));
        assert!(!m(&["labels.y"], &c));
        assert!(m(&["labels.x!=2"], &c));
        assert!(m(&[r#"name~="^default/[0-9]+/""#], &c));
        assert!(m(&["name==\"default/1/sha256:abc\""], &c));
        assert!(m(&["parent==\"\""], &c));
        assert!(m(&["name~=/sha256/"], &c));
    }

    #[test]
    fn malformed() {
        for bad in ["==x", "labels.\"unterminated", "name==x y", "name~=\"(\""] {
            let r = Filters::parse(&[bad.to_string()]);
            assert!(
                matches!(r, Err(Error::InvalidArgument { .. })),
                "{bad}: {r:?}"
            );
        }
    }
}
