//! `healthsense oracle`: run a ward hub.

use std::path::PathBuf;

use anyhow::Result;
use healthsense_cli::deployment::Deployment;

use super::output::ConfigError;
use super::Global;

/// `healthsense oracle --config FILE`
#[derive(clap::Args)]
pub struct OracleArgs {
    /// Oracle configuration file.
    #[arg(long, short, default_value = "oracle.toml", env = "HEALTHSENSE_ORACLE_CONFIG")]
    config: PathBuf,
}

/// Runs the hub until Ctrl-C or SIGTERM; chain settings missing from the
/// config come from the deployment file.
pub async fn run(args: OracleArgs, g: &Global) -> Result<()> {
    let mut cfg = healthsense_oracle::Config::load(&args.config).map_err(ConfigError)?;
    if cfg.chain.contract.is_none() || cfg.chain.rpc_url.is_none() {
        let d = Deployment::load(&g.deployment_path()).map_err(ConfigError)?;
        cfg.chain.contract.get_or_insert(d.address);
        cfg.chain.rpc_url.get_or_insert(d.rpc_url);
        cfg.chain.chain_id.get_or_insert(d.chain_id);
    }
    healthsense_oracle::run(cfg).await
}
