//! Shared by the binary's integration tests.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

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

/// A free port on 127.0.0.1 that this test module has not handed out
/// before: binding port 0 again right after the last listener closed can
/// return the same port, and a devnet once got its IPFS and MQTT 5 listeners
/// on one port.
#[allow(dead_code)] // not every test module starts servers
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").expect("binding a free port").local_addr().expect("a bound address").port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}
