//! The deployment file `healthsense deploy` writes and every later command
//! reads: which chain, which contract, which edition, where to reach them.

use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Default location, relative to the working directory.
pub const DEFAULT_PATH: &str = ".healthsense/deployment.json";

/// Which edition of the contract is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    /// Solidity, for anvil and any EVM chain.
    Evm,
    /// Rust/WASM, for Arbitrum chains (deployed with cargo-stylus).
    Stylus,
}

/// A deployed HealthSense contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Contract edition.
    pub edition: Edition,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Contract address.
    #[serde(with = "healthsense_oracle::protocol::eip55")]
    pub address: Address,
    /// Block of the deployment transaction: log scans start here.
    pub deploy_block: u64,
    /// Deployment transaction hash.
    pub deploy_tx: B256,
    /// Initial admin.
    #[serde(with = "healthsense_oracle::protocol::eip55")]
    pub admin: Address,
    /// JSON-RPC endpoint used to deploy.
    pub rpc_url: String,
    /// Where the ABI is published, relative to the checkout.
    pub abi: String,
    /// Kubo RPC endpoint for archives and billing rules (`healthsense devnet up`
    /// writes the embedded node's); `--ipfs-api` and `HEALTHSENSE_IPFS_API` override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipfs_api: Option<String>,
}

impl Deployment {
    /// Reads a deployment file, saying how to make one if it is missing.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "no deployment at {}: run `healthsense deploy --rpc-url URL` (or `healthsense devnet up`), or pass --deployment",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a HealthSense deployment file", path.display()))
    }

    /// Writes the file (and its folder), pretty-printed.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// Environment variable naming the deployment file (`healthsense devnet env` sets it).
pub const DEPLOYMENT_VAR: &str = "HEALTHSENSE_DEPLOYMENT";

/// The deployment file inside a devnet's folder (`devnet up --dir D`).
pub fn devnet_path(dir: &Path) -> PathBuf {
    dir.join("deployment.json")
}

/// The deployment path from a flag, else `HEALTHSENSE_DEPLOYMENT`, else the
/// default; when the default does not exist, the default devnet's
/// (`.healthsense/devnet/deployment.json`), so `devnet up` followed by other
/// commands in the same folder keeps working.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    if let Some(p) = flag.or_else(|| std::env::var_os(DEPLOYMENT_VAR).map(PathBuf::from)) {
        return p;
    }
    let default = PathBuf::from(DEFAULT_PATH);
    let devnet = devnet_path(Path::new(crate::devnet::DEFAULT_DIR));
    if !default.exists() && devnet.exists() {
        return devnet;
    }
    default
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_explains_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/deployment.json");
        let d = Deployment {
            edition: Edition::Evm,
            chain_id: 31_337,
            address: Address::repeat_byte(1),
            deploy_block: 3,
            deploy_tx: B256::repeat_byte(2),
            admin: Address::repeat_byte(3),
            rpc_url: "http://127.0.0.1:8545".into(),
            abi: "abi/HealthSense.json".into(),
            ipfs_api: None,
        };
        d.save(&path).unwrap();
        assert_eq!(Deployment::load(&path).unwrap(), d);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"chainId\": 31337") && text.contains("\"edition\": \"evm\""));
        let err = Deployment::load(&dir.path().join("none.json")).unwrap_err();
        assert!(format!("{err:#}").contains("healthsense deploy"));
        std::fs::write(&path, "{not json").unwrap();
        assert!(format!("{:#}", Deployment::load(&path).unwrap_err()).contains("not a HealthSense deployment"));
    }
}
