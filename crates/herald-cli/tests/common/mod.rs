//! Running the `herald` binary as a user does, for the CLI's integration tests.

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
