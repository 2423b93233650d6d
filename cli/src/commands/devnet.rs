//! `healthsense devnet`: a local network (anvil, MQTT broker, IPFS node)
//! in the background, with the contract deployed and the roles granted.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use healthsense_cli::devnet;
use serde_json::json;

use super::output::{show, NotRunning};
use super::Global;

/// `healthsense devnet ...`
#[derive(Subcommand)]
pub enum DevnetCmd {
    /// Start the devnet in the background (deploys and grants roles on first start).
    ///
    /// Writes the deployment file, keystores of the four role accounts (password in
    /// <dir>/password), <dir>/oracle.generated.toml and, when absent, <dir>/oracle.toml for
    /// `healthsense oracle --config` (an edited one is kept). anvil's state is saved every
    /// --state-interval seconds and on exit.
    Up {
        /// Folder for the devnet's state, keys and logs.
        #[arg(long, default_value = devnet::DEFAULT_DIR)]
        dir: PathBuf,
        #[command(flatten)]
        ports: devnet::Ports,
        #[command(flatten)]
        options: devnet::Options,
    },
    /// Stop the devnet (anvil keeps its state for the next `up`).
    Down {
        #[arg(long, default_value = devnet::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Say what runs where; exits 1 when the devnet is not running.
    Status {
        #[arg(long, default_value = devnet::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// The background process `up` starts.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        ports: devnet::Ports,
        #[command(flatten)]
        options: devnet::Options,
    },
}

/// Runs a `devnet` command.
pub async fn run(cmd: DevnetCmd, g: &Global) -> Result<()> {
    let j = g.json;
    let deployment = g.deployment_path();
    let print = |s: &devnet::State| {
        let services = devnet::services(s);
        let mut text = format!("devnet running (pid {})", s.pid);
        for (name, addr, up) in &services {
            text += &format!("\n  {name:<9} {addr:<28} {}", if *up { "up" } else { "NOT ANSWERING" });
        }
        text += &format!("\n  contract  {} (chain {})\n  deployment {}", s.contract, s.chain_id, s.deployment.display());
        for (role, addr) in &s.accounts {
            text += &format!("\n  {role:<9} {addr}  keystore {}/{role}.json", s.keystores.display());
        }
        text += &format!("\n  hub config {}  (healthsense oracle --config {})", s.oracle_config.display(), s.oracle_config.display());
        let rows: Vec<_> = services.iter().map(|(n, a, u)| json!({ "service": n, "address": a, "up": u })).collect();
        show(j, json!({ "running": true, "state": s, "services": rows }), text);
    };
    match cmd {
        DevnetCmd::Up { dir, ports, options } => {
            let s = devnet::up(&dir, &deployment, ports, &options)?;
            print(&s);
        }
        DevnetCmd::Down { dir } => {
            let stopped = devnet::down(&dir)?;
            show(j, json!({ "stopped": stopped }), if stopped { "devnet stopped".into() } else { "no devnet running".into() });
        }
        DevnetCmd::Status { dir } => match devnet::running(&dir) {
            Some(s) => print(&s),
            None => {
                show(j, json!({ "running": false }), format!("no devnet running (state in {}); start one with `healthsense devnet up`", dir.display()));
                return Err(NotRunning.into());
            }
        },
        DevnetCmd::Serve { dir, ports, options } => devnet::serve(&dir, &deployment, ports, &options).await?,
    }
    Ok(())
}
