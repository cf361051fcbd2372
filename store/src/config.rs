//! Per-host configuration: a TOML file, environment variables and flags.
//!
//! ```plain
//! file:  --config FILE, else $STRATA_CONFIG, else /etc/strata/strata.toml
//!        (only this last one may be missing: then built-in defaults)
//! root:  --root, else $STRATA_ROOT, else `root` in the file, else /var/lib/strata
//! driver: --driver, else $STRATA_DRIVER, else `driver` in the file, else auto
//! ```
//!
//! Keys: `root`, `driver` (`auto` or a driver name), `driver_priority` (the
//! order `auto` tries drivers in) and one table per driver (`[vfs]`,
//! `[overlay]`, `[aufs]`, `[btrfs]`, `[devmapper]`). Tables of drivers whose
//! options exist in [`DriverOptions`] are read into it; the tables of drivers
//! not built yet are accepted but must be empty. Unknown keys and bad values
//! are errors naming the key, the value and the file.

use crate::error::{Error, Result};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use strata_drivers::registry::{self, DriverOptions};

/// The root used when nothing configures one.
pub const DEFAULT_ROOT: &str = "/var/lib/strata";
/// The configuration file read when neither `--config` nor `$STRATA_CONFIG`
/// names one; its absence is not an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/strata/strata.toml";
/// The environment variable naming a configuration file.
pub const ENV_CONFIG: &str = "STRATA_CONFIG";
/// The environment variable overriding `root`.
pub const ENV_ROOT: &str = "STRATA_ROOT";
/// The environment variable overriding `driver`.
pub const ENV_DRIVER: &str = "STRATA_DRIVER";
/// The value of `driver` that picks a driver by probing.
pub const AUTO: &str = "auto";

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "${v}"),
            Origin::Flag(v) => write!(f, "{v}"),
        }
    }
}

/// The host's configuration, after file, environment and flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The directory the store and the driver keep everything under.
    pub root: PathBuf,
    /// Where `root` came from.
    pub root_origin: Origin,
    /// `auto` or a driver name (checked against the known names).
    pub driver: String,
    /// Where `driver` came from.
    pub driver_origin: Origin,
    /// The order `auto` tries drivers in.
    pub driver_priority: Vec<String>,
    /// Options of the drivers this build has.
    pub drivers: DriverOptions,
    /// The file read, if any.
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            root_origin: Origin::Default,
            driver: AUTO.to_string(),
            driver_origin: Origin::Default,
            driver_priority: registry::DEFAULT_PRIORITY
                .iter()
                .map(|s| s.to_string())
                .collect(),
            drivers: DriverOptions::default(),
            file: None,
        }
    }
}

/// What the command line says (each `None` when the flag is absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--root DIR`.
    pub root: Option<PathBuf>,
    /// `--driver NAME`.
    pub driver: Option<String>,
}

/// The file's shape. The driver tables are read in a second step (see
/// [`Config::from_toml_str`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    driver: Option<String>,
    driver_priority: Option<Vec<String>>,
    vfs: Option<toml::Table>,
    overlay: Option<toml::Table>,
    aufs: Option<toml::Table>,
    btrfs: Option<toml::Table>,
    devmapper: Option<toml::Table>,
}

impl FileConfig {
    fn tables(&mut self) -> Vec<(&'static str, Option<toml::Table>)> {
        vec![
            ("vfs", self.vfs.take()),
            ("overlay", self.overlay.take()),
            ("aufs", self.aufs.take()),
            ("btrfs", self.btrfs.take()),
            ("devmapper", self.devmapper.take()),
        ]
    }
}

/// The table of a driver that has no options in this build (not written
/// yet): accepted, but any key in it is unknown.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

impl Config {
    /// Loads the configuration as the command line and the process
    /// environment say (see the module documentation for the order).
    ///
    /// # Errors
    /// [`Error::Config`] naming the file or variable, the key and the value:
    /// an unreadable or missing file (other than the default one), bad TOML,
    /// an unknown key, a bad value, an unknown driver name.
    pub fn load(overrides: &Overrides) -> Result<Config> {
        Self::load_with_env(overrides, |k| std::env::var_os(k))
    }

    /// [`Config::load`] with the environment given as a function (for tests).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_env(
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let mut cfg = if let Some(file) = &overrides.config {
            Self::from_file(file)?
        } else if let Some(file) = env(ENV_CONFIG) {
            Self::from_file(Path::new(&file))?
        } else {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            match std::fs::metadata(default) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
                _ => Self::from_file(default)?,
            }
        };
        if let Some(root) = &overrides.root {
            cfg.set_root(root.clone(), Origin::Flag("--root".into()))?;
        } else if let Some(root) = env(ENV_ROOT) {
            cfg.set_root(PathBuf::from(root), Origin::Env(ENV_ROOT.into()))?;
        }
        if let Some(driver) = &overrides.driver {
            cfg.set_driver(driver.clone(), Origin::Flag("--driver".into()))?;
        } else if let Some(driver) = env(ENV_DRIVER) {
            let driver = driver.into_string().map_err(|v| Error::Config {
                source_name: format!("${ENV_DRIVER}"),
                msg: format!("value {v:?}: not UTF-8"),
            })?;
            cfg.set_driver(driver, Origin::Env(ENV_DRIVER.into()))?;
        }
        Ok(cfg)
    }

    fn set_root(&mut self, root: PathBuf, origin: Origin) -> Result<()> {
        let root = if root.is_absolute() {
            root
        } else {
            // A relative --root or $STRATA_ROOT is taken from the current
            // directory, as any path argument is.
            std::env::current_dir()
                .map_err(|e| Error::Config {
                    source_name: origin.to_string(),
                    msg: format!(
                        "value {}: cannot resolve a relative path: {e}",
                        root.display()
                    ),
                })?
                .join(root)
        };
        self.root = root;
        self.root_origin = origin;
        Ok(())
    }

    fn set_driver(&mut self, driver: String, origin: Origin) -> Result<()> {
        check_driver_name(&driver, true).map_err(|why| Error::Config {
            source_name: origin.to_string(),
            msg: format!("value {driver:?}: {why}"),
        })?;
        self.driver = driver;
        self.driver_origin = origin;
        Ok(())
    }

    /// Reads a configuration file.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file: unreadable, or as
    /// [`Config::from_toml_str`].
    pub fn from_file(path: &Path) -> Result<Config> {
        let src = std::fs::read_to_string(path).map_err(|e| Error::Config {
            source_name: path.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        Self::from_toml_str(&src, path)
    }

    /// Parses configuration text; `file` names it in errors and in
    /// [`Config::file`].
    ///
    /// # Errors
    /// [`Error::Config`] naming `file`, the line, the key and the value.
    pub fn from_toml_str(src: &str, file: &Path) -> Result<Config> {
        let cfg_err = |msg: String| Error::Config {
            source_name: file.display().to_string(),
            msg,
        };
        let mut raw: FileConfig =
            toml::from_str(src).map_err(|e| cfg_err(describe_toml_error(src, &e)))?;
        let origin = Origin::File(file.to_path_buf());
        let mut cfg = Config {
            file: Some(file.to_path_buf()),
            ..Config::default()
        };
        if let Some(root) = raw.root.take() {
            if !root.is_absolute() {
                return Err(cfg_err(format!(
                    "{}key `root`: value {:?}: must be an absolute path",
                    line_prefix(src, None, "root"),
                    root.display().to_string()
                )));
            }
            cfg.root = root;
            cfg.root_origin = origin.clone();
        }
        if let Some(driver) = raw.driver.take() {
            check_driver_name(&driver, true).map_err(|why| {
                cfg_err(format!(
                    "{}key `driver`: value {driver:?}: {why}",
                    line_prefix(src, None, "driver")
                ))
            })?;
            cfg.driver = driver;
            cfg.driver_origin = origin.clone();
        }
        if let Some(priority) = raw.driver_priority.take() {
            let prefix = line_prefix(src, None, "driver_priority");
            if priority.is_empty() {
                return Err(cfg_err(format!(
                    "{prefix}key `driver_priority`: value []: must name at least one driver"
                )));
            }
            for (i, name) in priority.iter().enumerate() {
                check_driver_name(name, false).map_err(|why| {
                    cfg_err(format!(
                        "{prefix}key `driver_priority`: value {name:?}: {why}"
                    ))
                })?;
                if priority[..i].contains(name) {
                    return Err(cfg_err(format!(
                        "{prefix}key `driver_priority`: value {name:?}: listed twice"
                    )));
                }
            }
            cfg.driver_priority = priority;
        }
        // Driver tables: those DriverOptions has a field for go into it, the
        // others must be empty.
        let known = driver_option_tables();
        let mut built = toml::Table::new();
        for (name, table) in raw.tables() {
            let Some(table) = table else { continue };
            if known.contains(&name) {
                built.insert(name.to_string(), toml::Value::Table(table));
            } else if let Err(e) = NoOptions::deserialize(toml::Value::Table(table.clone())) {
                let key = table.keys().next().cloned().unwrap_or_default();
                return Err(cfg_err(format!(
                    "{}key `{name}.{key}`: value {}: unknown key: the {name} driver is not built yet and takes no options ({})",
                    line_prefix(src, Some(name), &key),
                    table.get(&key).map(|v| v.to_string()).unwrap_or_default(),
                    e.message().replace('\n', " ")
                )));
            }
        }
        cfg.drivers =
            DriverOptions::deserialize(toml::Value::Table(built.clone())).map_err(|e| {
                let (key, value) = offending_key(&built, e.message());
                let table = key.split('.').next().unwrap_or_default().to_string();
                let leaf = key.split('.').nth(1).unwrap_or_default().to_string();
                cfg_err(format!(
                    "{}key `{key}`: value {value}: {}",
                    line_prefix(src, Some(&table), &leaf),
                    e.message().replace('\n', " ")
                ))
            })?;
        Ok(cfg)
    }
}

/// Checks a driver name (`auto` allowed when `allow_auto`). Returns why not.
fn check_driver_name(name: &str, allow_auto: bool) -> std::result::Result<(), String> {
    if (allow_auto && name == AUTO) || registry::is_known(name) {
        Ok(())
    } else {
        Err(format!(
            "unknown driver; expected {}{}",
            if allow_auto {
                "auto or one of "
            } else {
                "one of "
            },
            registry::NAMES.join(", ")
        ))
    }
}

/// The names of the tables [`DriverOptions`] has a field for in this build.
pub fn driver_option_tables() -> Vec<&'static str> {
    let mut catcher = FieldCatcher(None);
    let _ = DriverOptions::deserialize(&mut catcher);
    catcher.0.map(|f| f.to_vec()).unwrap_or_default()
}

/// A deserializer that only records the field names a struct asks for.
struct FieldCatcher(Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for &mut FieldCatcher {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(de::Error::custom("fields caught"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Finds the key an error message from deserializing `table` is about:
/// `unknown field `x`` names it; otherwise the first key of the first
/// table whose name appears in the message, else the first key at all.
fn offending_key(table: &toml::Table, msg: &str) -> (String, String) {
    let mut first = None;
    for (name, value) in table {
        if let toml::Value::Table(inner) = value {
            for (k, v) in inner {
                let full = format!("{name}.{k}");
                if msg.contains(&format!("`{k}`")) || msg.contains(&full) {
                    return (full, v.to_string());
                }
                first.get_or_insert((full, v.to_string()));
            }
        }
    }
    first.unwrap_or_else(|| (String::from("?"), String::from("?")))
}

/// "line N: " for `key` in `[table]` (top level when `None`), or nothing
/// when the key is not found by a plain scan.
fn line_prefix(src: &str, table: Option<&str>, key: &str) -> String {
    let mut current: Option<String> = None;
    for (i, line) in src.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            continue;
        }
        let Some((k, _)) = t.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        let matches = match (table, current.as_deref()) {
            (None, None) => k == key,
            (Some(tbl), Some(cur)) => cur == tbl && k == key,
            (Some(tbl), None) => k == format!("{tbl}.{key}"),
            (None, Some(_)) => false,
        };
        if matches {
            return format!("line {}: ", i + 1);
        }
    }
    String::new()
}

/// One line from a toml error: the line and column, the key and the value
/// from its span, and toml's message.
fn describe_toml_error(src: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return msg;
    };
    let start = span.start.min(src.len());
    let end = span.end.clamp(start, src.len());
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let line_no = src[..start].matches('\n').count() + 1;
    let line = &src[line_start..line_end];
    let spanned = src[start..end].trim();
    // The table the line is in, to qualify the key.
    let table = src[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let qualify = |k: &str| match &table {
        Some(t) => format!("{t}.{k}"),
        None => k.to_string(),
    };
    match line.split_once('=') {
        Some((k, v)) => {
            let eq = line_start + k.len();
            let key = k.trim().trim_matches('"');
            if start > eq {
                format!(
                    "line {line_no}: key `{}`: value {}: {msg}",
                    qualify(key),
                    if spanned.is_empty() {
                        v.trim()
                    } else {
                        spanned
                    }
                )
            } else {
                format!(
                    "line {line_no}: key `{}`: value {}: {msg}",
                    qualify(key),
                    v.trim()
                )
            }
        }
        None if line.trim_start().starts_with('[') => {
            format!("line {line_no}: table {}: {msg}", line.trim())
        }
        None => format!("line {line_no}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config> {
        Config::from_toml_str(src, Path::new("/etc/test/strata.toml"))
    }

    fn err(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    #[test]
    fn tables_match_the_registry_names() {
        let mut f = FileConfig {
            root: None,
            driver: None,
            driver_priority: None,
            vfs: None,
            overlay: None,
            aufs: None,
            btrfs: None,
            devmapper: None,
        };
        let mut names: Vec<_> = f.tables().into_iter().map(|(n, _)| n).collect();
        names.sort();
        let mut known = registry::NAMES.to_vec();
        known.sort();
        assert_eq!(names, known);
        for t in driver_option_tables() {
            assert!(registry::is_known(t), "{t}");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.driver, "auto");
        assert_eq!(c.driver_priority, registry::DEFAULT_PRIORITY.to_vec());
    }

    #[test]
    fn full_file() {
        let c = parse(
            "root = \"/srv/strata\"\ndriver = \"vfs\"\ndriver_priority = [\"overlay\", \"vfs\"]\n[vfs]\n[overlay]\n[aufs]\n[btrfs]\n[devmapper]\n",
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/strata"));
        assert_eq!(c.driver, "vfs");
        assert_eq!(
            c.driver_origin,
            Origin::File("/etc/test/strata.toml".into())
        );
        assert_eq!(c.driver_priority, vec!["overlay", "vfs"]);
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err("root = \"/x\"\nroots = \"/y\"\n");
        assert!(e.contains("/etc/test/strata.toml"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("`roots`"), "{e}");
        assert!(e.contains("\"/y\""), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_value_type() {
        let e = err("root = 5\n");
        assert!(e.contains("key `root`"), "{e}");
        assert!(e.contains("value 5"), "{e}");
        assert!(e.contains("/etc/test/strata.toml"), "{e}");
    }

    #[test]
    fn relative_root() {
        let e = err("root = \"var/x\"\n");
        assert!(
            e.contains("key `root`") && e.contains("var/x") && e.contains("absolute"),
            "{e}"
        );
    }

    #[test]
    fn bad_driver_name() {
        let e = err("\ndriver = \"zfs\"\n");
        assert!(e.contains("key `driver`"), "{e}");
        assert!(e.contains("\"zfs\""), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("/etc/test/strata.toml"), "{e}");
    }

    #[test]
    fn bad_priority() {
        let e = err("driver_priority = [\"vfs\", \"auto\"]\n");
        assert!(
            e.contains("driver_priority") && e.contains("\"auto\""),
            "{e}"
        );
        let e = err("driver_priority = [\"vfs\", \"vfs\"]\n");
        assert!(e.contains("twice"), "{e}");
        let e = err("driver_priority = []\n");
        assert!(e.contains("at least one"), "{e}");
    }

    #[test]
    fn unknown_key_in_driver_tables() {
        for table in registry::NAMES {
            let e = err(&format!("root = \"/x\"\n[{table}]\nbogus = 7\n"));
            assert!(e.contains(&format!("`{table}.bogus`")), "{e}");
            assert!(e.contains("value 7"), "{e}");
            assert!(e.contains("line 3"), "{e}");
            assert!(e.contains("/etc/test/strata.toml"), "{e}");
        }
    }

    #[test]
    fn unknown_table() {
        let e = err("[zfs]\nx = 1\n");
        assert!(e.contains("zfs"), "{e}");
    }

    #[test]
    fn precedence_flag_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "root = \"/from/file\"\ndriver = \"overlay\"\n").unwrap();
        let env_file = file.clone();
        let env = move |k: &str| match k {
            ENV_CONFIG => Some(env_file.clone().into_os_string()),
            ENV_ROOT => Some(OsString::from("/from/env")),
            _ => None,
        };
        let c = Config::load_with_env(&Overrides::default(), &env).unwrap();
        assert_eq!(c.file.as_deref(), Some(file.as_path()));
        assert_eq!(c.root, PathBuf::from("/from/env"));
        assert_eq!(c.driver, "overlay");
        let c = Config::load_with_env(
            &Overrides {
                root: Some("/from/flag".into()),
                driver: Some("vfs".into()),
                config: None,
            },
            &env,
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/from/flag"));
        assert_eq!(c.driver, "vfs");
        assert_eq!(c.driver_origin, Origin::Flag("--driver".into()));
        // --config beats $STRATA_CONFIG.
        let other = dir.path().join("o.toml");
        std::fs::write(&other, "root = \"/from/other\"\n").unwrap();
        let c = Config::load_with_env(
            &Overrides {
                config: Some(other.clone()),
                ..Default::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/from/env"));
        assert_eq!(c.file.as_deref(), Some(other.as_path()));
        let c = Config::load_with_env(
            &Overrides {
                config: Some(other),
                ..Default::default()
            },
            |_| None,
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/from/other"));
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let e = Config::load_with_env(
            &Overrides {
                config: Some("/nonexistent/strata.toml".into()),
                ..Default::default()
            },
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/strata.toml"), "{e}");
    }

    #[test]
    fn bad_env_driver() {
        let e = Config::load_with_env(&Overrides::default(), |k| {
            (k == ENV_DRIVER).then(|| OsString::from("zfs"))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("$STRATA_DRIVER") && e.contains("zfs"), "{e}");
    }
}
