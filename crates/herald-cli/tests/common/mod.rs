//! Running the `herald` binary as a user does, for the CLI's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

/// Run `herald args...` in `dir`, with no broker or exchange from the environment.
pub fn herald(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .current_dir(dir)
        .env_remove("HERALD_BROKER")
        .env_remove("HERALD_EXCHANGE")
        .output()
        .expect("run the herald binary")
}

/// The `key=value` fields of the RESULT line on stdout of a run that succeeded.
pub fn result(out: &Output) -> HashMap<String, String> {
    assert!(
        out.status.success(),
        "herald failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    result_fields(out)
}

/// The `key=value` fields of the RESULT line on stdout, whether or not the run succeeded (a
/// command that judges a run prints its RESULT before it fails).
pub fn result_fields(out: &Output) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
