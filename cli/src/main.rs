//! `healthsense`: the HealthSense admin command.

use std::path::PathBuf;
use std::process::ExitCode;

use alloy::primitives::Address;
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use healthsense_cli::deployment::{self, Edition};
use healthsense_cli::{artifact, demo, deploy, keys::KeyArgs, tools};

/// Exit codes a script can rely on.
mod exit {
    /// Something failed that is not one of the below (I/O, RPC, node).
    pub const FAILURE: u8 = 1;
    // 2 is clap's usage error.
    /// Configuration or key missing or invalid.
    pub const CONFIG: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "healthsense",
    version,
    about = "Administer a HealthSense deployment: contract, devices, patients, billing",
    long_about = "Administer a HealthSense deployment.\n\n\
        Exit codes: 0 success, 1 failure (I/O, RPC, node), 2 usage error, 3 configuration or key missing/invalid."
)]
struct Cli {
    /// Print machine-readable JSON instead of human text.
    #[arg(long, global = true)]
    json: bool,
    /// Deployment file to read or write [default: .healthsense/deployment.json, or $HEALTHSENSE_DEPLOYMENT].
    #[arg(long, global = true)]
    deployment: Option<PathBuf>,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy the contract and write the deployment file.
    ///
    /// The EVM edition is deployed directly to any JSON-RPC endpoint (anvil, a testnet,
    /// a consortium chain). For the Stylus edition this prints the cargo-stylus steps.
    Deploy {
        /// JSON-RPC endpoint of the chain.
        #[arg(long, env = "HEALTHSENSE_RPC_URL")]
        rpc_url: url::Url,
        /// First admin [default: the deploying account].
        #[arg(long)]
        admin: Option<Address>,
        /// Contract edition.
        #[arg(long, value_enum, default_value = "evm")]
        edition: Edition,
    },
    /// Play a ward story on a throw-away local chain and print a summary.
    ///
    /// Starts anvil from the project-local install (scripts/setup), deploys the EVM edition,
    /// and runs roles, devices, admissions, signed readings anchored and proven on chain,
    /// charges, insurance, discharges and bills. Exits non-zero if any step fails.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HEALTHSENSE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(err.downcast_ref::<ConfigError>().map_or(exit::FAILURE, |_| exit::CONFIG))
        }
    }
}

/// Marks an error as a configuration problem (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct ConfigError(anyhow::Error);

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo => {
            let s = demo::run(cli.json).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!("\nHealthSense demo summary");
            println!("  contract            {}", s.contract);
            println!("  readings anchored   {} in {} batch(es), {} proofs verified on chain", s.readings_anchored, s.batches, s.proofs_verified);
            println!("  transactions        {} ({} gas)", s.transactions, s.gas_used);
            println!("  bills               {:<12} {:>8} {:>12} {:>12} {:>12}", "patient", "bed days", "total", "covered", "due");
            for b in &s.bills {
                let id = b.patient.to_string();
                println!("                      {:<12} {:>8} {:>12} {:>12} {:>12}", &id[..12], b.bed_days, demo::money(b.total), demo::money(b.covered), demo::money(b.due));
            }
            println!("  took                {:.1} s", s.seconds);
            println!("\nNext: docs/CONTRACT.md for the rules, scripts/test for the suite, `healthsense deploy --help` to deploy for real.");
            Ok(())
        }
        Command::Deploy { rpc_url, admin, edition } => {
            let signer = cli.keys.signer().map_err(ConfigError)?;
            let from = signer.address();
            let admin = admin.unwrap_or(from);
            if edition == Edition::Stylus {
                println!("{}", deploy::stylus_steps(rpc_url.as_str(), admin));
                return Ok(());
            }
            let root = tools::project_root().map_err(ConfigError)?;
            let provider = ProviderBuilder::new().wallet(signer).connect_http(rpc_url.clone());
            // Reach the node before building anything, so a wrong URL fails fast.
            provider.get_chain_id().await.with_context(|| format!("cannot reach a node at {rpc_url}"))?;
            let code = artifact::load_or_build(&root)?;
            let d = deploy::deploy_evm(&provider, rpc_url.as_str(), from, admin, code)
                .await
                .with_context(|| format!("deploying to {rpc_url}"))?;
            let path = deployment::resolve_path(cli.deployment);
            d.save(&path)?;
            if cli.json {
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
    }
}
