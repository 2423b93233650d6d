//! Shared by the binary's integration tests.

use std::path::Path;
use std::process::{Command, Output};

use alloy::node_bindings::AnvilInstance;

/// Runs `healthsense ARGS --deployment FILE` as anvil dev account `who`.
pub fn healthsense(anvil: &AnvilInstance, who: usize, deployment: &Path, root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_healthsense"))
        .args(args)
        .arg("--deployment")
        .arg(deployment)
        .env("HEALTHSENSE_PRIVATE_KEY", alloy::hex::encode(anvil.keys()[who].to_bytes()))
        .env("HEALTHSENSE_HOME", root)
        .output()
        .expect("running the healthsense binary")
}
