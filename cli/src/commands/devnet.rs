//! `healthsense devnet`: a local network (anvil, MQTT broker, IPFS node)
//! in the background, with the contract deployed and the roles granted.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use healthsense_cli::{deployment, devnet};
use serde_json::json;

use super::output::{show, ConfigError, NotRunning};
use super::Global;

/// `healthsense devnet ...`
#[derive(Subcommand)]
pub enum DevnetCmd {
    /// Start the devnet in the background (deploys and grants roles on first start).
    ///
    /// Writes the deployment file (<dir>/deployment.json unless --deployment names one),
    /// keystores of the four role accounts (password in <dir>/password),
    /// <dir>/oracle.generated.toml and, when absent, <dir>/oracle.toml for
    /// `healthsense oracle --config` (an edited one is kept). anvil's state is saved every
    /// --state-interval seconds and on exit. `healthsense devnet env` points the other
    /// commands at it.
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
    /// Print the `export` lines that point the other commands at a running devnet.
    ///
    /// Deployment file, RPC, IPFS and MQTT endpoints, the keystore of --role and its password
    /// file, the doctor's keystore for `simulate --admit`, the hub config and the devnet's
    /// ward: `eval "$(healthsense devnet env --dir D)"`. Exits 1 when the devnet is not running.
    Env {
        #[arg(long, default_value = devnet::DEFAULT_DIR)]
        dir: PathBuf,
        /// Whose keystore HEALTHSENSE_KEYSTORE names: admin, hub, doctor or insurer.
        #[arg(long, default_value = "admin")]
        role: String,
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
    // A devnet keeps its deployment file in its own folder, so two devnets
    // never share one; only an explicit --deployment overrides that (not
    // $HEALTHSENSE_DEPLOYMENT, which may point at another devnet).
    let deployment = |dir: &std::path::Path| g.deployment.clone().unwrap_or_else(|| deployment::devnet_path(dir));
    let print = |s: &devnet::State, dir: &std::path::Path| {
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
        text += &format!("\n  shell     eval \"$(healthsense devnet env --dir {})\"", dir.display());
        let rows: Vec<_> = services.iter().map(|(n, a, u)| json!({ "service": n, "address": a, "up": u })).collect();
        show(j, json!({ "running": true, "state": s, "services": rows }), text);
    };
    match cmd {
        DevnetCmd::Up { dir, ports, options } => {
            let s = devnet::up(&dir, &deployment(&dir), ports, &options)?;
            print(&s, &dir);
        }
        DevnetCmd::Down { dir } => {
            let stopped = devnet::down(&dir)?;
            show(j, json!({ "stopped": stopped }), if stopped { "devnet stopped".into() } else { "no devnet running".into() });
        }
        DevnetCmd::Status { dir } => match devnet::running(&dir) {
            Some(s) => print(&s, &dir),
            None => {
                show(j, json!({ "running": false }), format!("no devnet running (state in {}); start one with `healthsense devnet up`", dir.display()));
                return Err(NotRunning.into());
            }
        },
        DevnetCmd::Env { dir, role } => {
            let Some(s) = devnet::running(&dir) else {
                eprintln!("no devnet running (state in {}); start one with `healthsense devnet up --dir {}`", dir.display(), dir.display());
                return Err(NotRunning.into());
            };
            let vars = devnet::env_vars(&dir, &s, &role).map_err(ConfigError)?;
            let map: serde_json::Map<String, serde_json::Value> = vars.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            show(j, json!(map), devnet::export_lines(&vars));
        }
        DevnetCmd::Serve { dir, ports, options } => devnet::serve(&dir, &deployment(&dir), ports, &options).await?,
    }
    Ok(())
}
