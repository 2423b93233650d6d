//! What every command shares: human text or `--json`, the exit codes a
//! script can rely on, and the error kinds that choose them.

use serde_json::json;

/// Exit codes a script can rely on.
pub mod exit {
    /// Something failed that is not one of the below (I/O, RPC, node).
    pub const FAILURE: u8 = 1;
    // 2 is clap's usage error.
    /// Configuration or key missing or invalid.
    pub const CONFIG: u8 = 3;
    /// The call was refused: by the contract (wrong role, unknown id, wrong
    /// status...) or by the CLI's own check of the chain state first.
    pub const REFUSED: u8 = 4;
    /// An archive does not match the chain (tampered).
    pub const TAMPERED: u8 = 5;
    /// `simulate`: a published reading was not confirmed stored by the hub.
    pub const NOT_STORED: u8 = 6;
}

/// The exit code for an error: the first kind in the chain that has one.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use healthsense_cli::{admin, archive, simulate};
    if err.downcast_ref::<archive::Tampered>().is_some() {
        exit::TAMPERED
    } else if err.downcast_ref::<simulate::NotStored>().is_some() {
        exit::NOT_STORED
    } else if err.downcast_ref::<ConfigError>().is_some() || err.downcast_ref::<archive::KeyError>().is_some() {
        exit::CONFIG
    } else if err.downcast_ref::<admin::Refused>().is_some() || err.downcast_ref::<admin::Declined>().is_some() {
        exit::REFUSED
    } else {
        exit::FAILURE
    }
}

/// Marks an error as a configuration problem (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ConfigError(pub anyhow::Error);

/// A configuration error from a message.
pub fn config_error(msg: impl std::fmt::Display) -> anyhow::Error {
    ConfigError(anyhow::anyhow!("{msg}")).into()
}

/// `devnet status` when nothing runs (exit 1, nothing more to say).
#[derive(Debug, thiserror::Error)]
#[error("the devnet is not running")]
pub struct NotRunning;

/// Prints `value` as JSON with --json, else `text`.
pub fn show(json_out: bool, value: serde_json::Value, text: String) {
    if json_out {
        println!("{value:#}");
    } else {
        println!("{text}");
    }
}

/// Reports a sent transaction: `what` and its hash.
pub fn done(json_out: bool, what: &str, tx: alloy::primitives::B256) {
    show(json_out, json!({ "ok": true, "tx": tx }), format!("{what} (tx {tx})"));
}

pub use healthsense_cli::admin::{device_status, patient_status};

/// Minor units as money (`45000` -> `450.00`).
pub fn money(minor: impl TryInto<alloy::primitives::U256>) -> String {
    // Every unsigned integer fits in a U256; `TryInto` is what alloy implements.
    healthsense_cli::demo::money(minor.try_into().unwrap_or_default())
}
