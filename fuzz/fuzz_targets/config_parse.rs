//! Fuzzes the store's TOML configuration parser: any text must give a
//! `Config` or an `Error::Config` naming the file, never a panic; an
//! accepted file's `root` is absolute and its driver names are known.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use strata_store::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/fuzz/strata.toml");
    match Config::from_toml_str(src, file) {
        Ok(cfg) => {
            assert!(
                cfg.root.is_absolute(),
                "accepted a relative root: {:?}",
                cfg.root
            );
            assert!(
                !cfg.driver_priority.is_empty(),
                "accepted an empty priority"
            );
            assert_eq!(cfg.file.as_deref(), Some(file));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("/fuzz/strata.toml"),
                "error does not name the file: {msg}"
            );
        }
    }
});
