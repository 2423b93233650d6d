//! `healthsense deploy`, `pause` and `unpause`: the contract itself.

use alloy::primitives::Address;
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::{Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_cli::deployment::Edition;
use healthsense_cli::{artifact, deploy as dep, tools};

use super::output::{done, ConfigError};
use super::{Access, Global};

/// `healthsense deploy ...`
#[derive(clap::Args)]
pub struct DeployArgs {
    /// JSON-RPC endpoint of the chain.
    #[arg(long, env = "HEALTHSENSE_RPC_URL")]
    rpc_url: url::Url,
    /// First admin [default: the deploying account].
    #[arg(long)]
    admin: Option<Address>,
    /// Contract edition.
    #[arg(long, value_enum, default_value = "evm")]
    edition: Edition,
}

/// Deploys the EVM edition and writes the deployment file, or prints the
/// cargo-stylus steps for the Stylus edition.
pub async fn deploy(args: DeployArgs, g: &Global) -> Result<()> {
    let DeployArgs { rpc_url, admin, edition } = args;
    let signer = g.keys.signer().map_err(ConfigError)?;
    let from = signer.address();
    let admin = admin.unwrap_or(from);
    if edition == Edition::Stylus {
        println!("{}", dep::stylus_steps(rpc_url.as_str(), admin));
        return Ok(());
    }
    let root = tools::project_root().map_err(ConfigError)?;
    let provider = ProviderBuilder::new().wallet(signer).connect_http(rpc_url.clone());
    // Reach the node before building anything, so a wrong URL fails fast.
    provider.get_chain_id().await.with_context(|| format!("cannot reach a node at {rpc_url}"))?;
    let code = artifact::load_or_build(&root)?;
    let d = dep::deploy_evm(&provider, rpc_url.as_str(), from, admin, code)
        .await
        .with_context(|| format!("deploying to {rpc_url}"))?;
    let path = g.deployment_path();
    d.save(&path)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!("deployed HealthSense (EVM edition) at {}", d.address);
        println!("  chain id     {}", d.chain_id);
        println!("  block        {}", d.deploy_block);
        println!("  admin        {}", d.admin);
        println!("  deployment   {}", path.display());
    }
    Ok(())
}

/// `pause` (`stop` true) or `unpause`.
pub async fn pause(stop: bool, g: &Global) -> Result<()> {
    let c = g.client(Access::Write)?;
    if stop {
        done(g.json, "paused", c.send(H::pauseCall {}).await?);
    } else {
        done(g.json, "unpaused", c.send(H::unpauseCall {}).await?);
    }
    Ok(())
}
