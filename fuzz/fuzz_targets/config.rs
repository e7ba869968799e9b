//! Any text as a config file: validation must never panic, and every problem it reports must
//! name the file.
#![no_main]

use std::path::Path;

use lastcall::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_str(text, Path::new("fuzz.toml")) {
        Ok(_) => {}
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(p.to_string().contains("fuzz.toml"));
            }
        }
        Err(ConfigError::Read { .. }) => unreachable!(),
    }
});
