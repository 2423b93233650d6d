//! The EVM edition's compiled artifact, produced by `forge build` (never
//! copied by hand).

use std::path::{Path, PathBuf};
use std::process::Command;

use alloy::primitives::Bytes;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::tools;

/// Where forge writes the artifact (see `foundry.toml`).
pub fn artifact_path(root: &Path) -> PathBuf {
    root.join("target/forge/out/HealthSense.sol/HealthSense.json")
}

#[derive(Deserialize)]
struct Artifact {
    bytecode: Code,
}

#[derive(Deserialize)]
struct Code {
    object: String,
}

/// Creation bytecode from a forge artifact file.
pub fn load(path: &Path) -> Result<Bytes> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the EVM artifact {}", path.display()))?;
    let art: Artifact = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a forge artifact", path.display()))?;
    let code: Bytes = art
        .bytecode
        .object
        .parse()
        .with_context(|| format!("bad bytecode hex in {}", path.display()))?;
    if code.is_empty() {
        bail!("{} has no creation bytecode", path.display());
    }
    Ok(code)
}

/// The creation bytecode, running `forge build` first when the artifact is
/// missing or older than the Solidity source.
pub fn load_or_build(root: &Path) -> Result<Bytes> {
    let path = artifact_path(root);
    let source = root.join("contracts/evm/HealthSense.sol");
    let stale = match (path.metadata(), source.metadata()) {
        (Ok(a), Ok(s)) => match (a.modified(), s.modified()) {
            (Ok(a), Ok(s)) => a < s,
            _ => false,
        },
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    };
    if stale {
        let forge = tools::foundry_tool(root, "forge")?;
        tracing::info!("building the EVM edition with forge");
        let bin = root.join(".tools/node_modules/.bin");
        let path_var = std::env::join_paths(
            std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )?;
        let out = Command::new(&forge)
            .arg("build")
            // foundry.toml's paths (the solc shim among them) are relative to the root.
            .current_dir(root)
            .env("PATH", path_var)
            .output()
            .with_context(|| format!("running {}", forge.display()))?;
        if !out.status.success() {
            bail!(
                "forge build failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    load(&path)
}
