//! `healthsense-ipfs`: runs the embedded IPFS node until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use healthsense_ipfs_node::NodeConfig;
use tracing_subscriber::EnvFilter;

/// HealthSense's embedded IPFS node: an offline rust-ipfs node with a
/// persistent repository, serving the Kubo RPC subset the oracle archives
/// through (add, cat, pin/add, pin/rm, pin/ls, version, id) at http://LISTEN/api/v0.
///
/// It never connects to other peers. Point the oracle at a real Kubo or an
/// IPFS Cluster proxy instead to replicate archives; CIDs are the same.
#[derive(Debug, Parser)]
#[command(name = "healthsense-ipfs", version)]
struct Args {
    /// Repository directory; created if missing. Blocks, pins and the node's
    /// identity live here and survive restarts. One node per repository.
    #[arg(long, env = "HEALTHSENSE_IPFS_REPO", value_name = "DIR")]
    repo: PathBuf,

    /// Address of the RPC API. The API has no authentication: keep it on
    /// loopback or a private network. Port 0 picks a free port.
    #[arg(
        long,
        env = "HEALTHSENSE_IPFS_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:5001"
    )]
    listen: SocketAddr,

    /// Largest file one add accepts, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = NodeConfig::DEFAULT_MAX_ADD_BYTES)]
    max_add_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the RPC API has no authentication and is reachable beyond this machine");
    }
    let node = healthsense_ipfs_node::start(NodeConfig {
        repo: args.repo,
        listen: args.listen,
        max_add_bytes: args.max_add_bytes,
    })
    .await?;
    tracing::info!(api_url = %node.api_url(), "serving the Kubo RPC API; stop with Ctrl-C or SIGTERM");
    stop_signal().await?;
    tracing::info!("stopping");
    node.shutdown().await;
    Ok(())
}

async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
