//! The example configuration in the repository parses.

use std::path::Path;
use strata_store::Config;

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.example.toml");
    let cfg = Config::from_file(&path).unwrap();
    assert_eq!(cfg.root, Path::new("/var/lib/strata"));
    assert_eq!(cfg.driver, "auto");
    assert_eq!(
        cfg.driver_priority,
        strata_drivers::registry::DEFAULT_PRIORITY.to_vec()
    );
}
