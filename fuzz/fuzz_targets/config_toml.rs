//! `herald.toml` as anyone may write it: parsed, validated, its broker shown. No panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match herald::Config::from_toml(text) {
        Ok(config) => {
            if let Err(e) = config.validate() {
                let _ = e.to_string();
            }
            let _ = config.broker_redacted();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
