//! The config, policy and corpus-manifest readers: any text gives a value or located problems,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = verbatim::proxy::config::Config::parse(Path::new("fuzz.toml"), text.to_string());
    let _ = verbatim::policy::Policy::parse(Path::new("fuzz.toml"), text.to_string());
    let _ = verbatim::corpus::parse_manifest(Path::new("corpora/fuzz.toml"), text.to_string());
});
