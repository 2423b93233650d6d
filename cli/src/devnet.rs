//! `healthsense devnet up|down|status`: a local network on this machine.
//!
//! `up` starts a background `healthsense devnet serve` that runs anvil (from
//! the project-local install, its state saved every `--state-interval`
//! seconds and on exit, so it survives a hard kill, even one in the middle
//! of a save: see [`snapshot`]), the embedded MQTT
//! broker (or uses the operator's, `--broker`) and the embedded IPFS node;
//! on first start it deploys the EVM edition, gives four dev accounts the
//! four roles, writes their encrypted keystores, the deployment file and a
//! ready-to-run oracle config (`oracle.toml` only when absent: an edited one
//! is kept; the current values are always in `oracle.generated.toml`).
//! `down` stops it (anvil dumps its state); `status` says what runs where.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use serde::{Deserialize, Serialize};

mod snapshot;

use snapshot::{Recovered, Snapshots};

use crate::admin::Client;
use crate::deployment::Deployment;
use crate::{artifact, deploy, tools};

/// Default folder of the devnet's state.
pub const DEFAULT_DIR: &str = ".healthsense/devnet";

/// Ports the devnet listens on (all on 127.0.0.1).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Ports {
    /// anvil's JSON-RPC port.
    #[arg(long, default_value_t = 8545)]
    pub rpc_port: u16,
    /// The MQTT broker's port (MQTT 3.1.1).
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// The MQTT broker's port for MQTT 5 devices (rumqttd takes one version
    /// per port; unused with --broker).
    #[arg(long, default_value_t = 1884)]
    pub mqtt5_port: u16,
    /// The IPFS node's Kubo RPC port.
    #[arg(long, default_value_t = 5001)]
    pub ipfs_port: u16,
}

/// How the devnet runs, beyond its ports.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Seconds between snapshots of anvil's state (what a hard kill can lose).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub state_interval: u64,
    /// Use this MQTT broker (HOST:PORT) instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: Option<String>,
}

/// What a running devnet publishes in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The `devnet serve` process.
    pub pid: u32,
    /// anvil's process.
    #[serde(default)]
    pub anvil_pid: u32,
    /// anvil's JSON-RPC URL.
    pub rpc_url: String,
    /// MQTT broker address (`host:port`).
    pub mqtt: String,
    /// The embedded broker's MQTT 5 address (`host:port`); none with
    /// `--broker`, whose own port serves whatever versions it speaks.
    #[serde(default)]
    pub mqtt5: Option<String>,
    /// Kubo RPC URL of the IPFS node.
    pub ipfs_api: String,
    /// The contract.
    #[serde(with = "healthsense_oracle::protocol::eip55")]
    pub contract: Address,
    /// Chain id.
    pub chain_id: u64,
    /// Role -> dev account.
    #[serde(serialize_with = "checksummed_accounts")]
    pub accounts: Vec<(String, Address)>,
    /// The deployment file.
    pub deployment: PathBuf,
    /// The oracle config for this devnet's hub.
    pub oracle_config: PathBuf,
    /// Keystores (password in `password`).
    pub keystores: PathBuf,
}

/// Writes the accounts with EIP-55 checksummed addresses.
fn checksummed_accounts<S: serde::Serializer>(accounts: &[(String, Address)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(accounts.iter().map(|(role, address)| (role, address.to_string())))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The running devnet's state, if one runs.
pub fn running(dir: &Path) -> Option<State> {
    let state: State = serde_json::from_slice(&std::fs::read(state_path(dir)).ok()?).ok()?;
    alive(state.pid).then_some(state)
}

/// Starts the devnet in the background (nothing if it already runs).
pub fn up(dir: &Path, deployment: &Path, ports: Ports, options: &Options) -> Result<State> {
    if let Some(s) = running(dir) {
        return Ok(s);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(state_path(dir));
    let log = std::fs::File::create(dir.join("devnet.log"))?;
    let exe = std::env::current_exe().context("locating the healthsense binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["devnet", "serve", "--dir"])
        .arg(dir)
        .arg("--deployment")
        .arg(deployment)
        .args(["--rpc-port", &ports.rpc_port.to_string(), "--mqtt-port", &ports.mqtt_port.to_string()])
        .args(["--mqtt5-port", &ports.mqtt5_port.to_string()])
        .args(["--ipfs-port", &ports.ipfs_port.to_string()])
        .args(["--state-interval", &options.state_interval.to_string()])
        .args(options.broker.iter().flat_map(|b| ["--broker", b.as_str()]))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: a Ctrl-C in this shell must not stop the devnet.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting `healthsense devnet serve`")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = running(dir) {
            return Ok(s);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("devnet.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("the devnet exited ({status}) while starting:\n{}", tail.join("\n"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the devnet did not start within 2 minutes; see {}", dir.join("devnet.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a running devnet; returns whether one ran.
pub fn down(dir: &Path) -> Result<bool> {
    let Some(state) = running(dir) else {
        let _ = std::fs::remove_file(state_path(dir));
        return Ok(false);
    };
    let status = Command::new("kill").args(["-TERM", &state.pid.to_string()]).status().context("running kill")?;
    if !status.success() {
        bail!("could not signal the devnet (pid {})", state.pid);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(state.pid) {
        if Instant::now() > deadline {
            bail!("the devnet (pid {}) did not stop within 30 s", state.pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(true)
}

fn listening(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
}

/// Per service: name, address, whether it answers.
pub fn services(s: &State) -> Vec<(&'static str, String, bool)> {
    let host_port = |url: &str| url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut services = vec![
        ("anvil", s.rpc_url.clone(), listening(&host_port(&s.rpc_url))),
        ("mqtt", s.mqtt.clone(), listening(&s.mqtt)),
    ];
    if let Some(v5) = &s.mqtt5 {
        services.push(("mqtt5", v5.clone(), listening(v5)));
    }
    services.push(("ipfs", s.ipfs_api.clone(), listening(&host_port(&s.ipfs_api))));
    services
}

/// The environment that points the other commands at a running devnet:
/// its deployment file, RPC, IPFS and MQTT endpoints, the keystore of
/// `role` (admin, hub, doctor or insurer) and its password file, the
/// doctor's keystore (`simulate --admit`), the hub config and its ward.
pub fn env_vars(dir: &Path, s: &State, role: &str) -> Result<Vec<(&'static str, String)>> {
    let Some((role, _)) = s.accounts.iter().find(|(r, _)| r.eq_ignore_ascii_case(role)) else {
        let roles: Vec<_> = s.accounts.iter().map(|(r, _)| r.as_str()).collect();
        bail!("the devnet has no {role:?} account: use {}", roles.join(", "));
    };
    let dir = std::path::absolute(dir)?;
    let path = |p: &Path| p.display().to_string();
    Ok(vec![
        (crate::deployment::DEPLOYMENT_VAR, path(&s.deployment)),
        ("HEALTHSENSE_RPC_URL", s.rpc_url.clone()),
        ("HEALTHSENSE_IPFS_API", s.ipfs_api.clone()),
        ("HEALTHSENSE_BROKER", s.mqtt.clone()),
        ("HEALTHSENSE_KEYSTORE", path(&s.keystores.join(format!("{role}.json")))),
        ("HEALTHSENSE_PASSWORD_FILE", path(&dir.join("password"))),
        ("HEALTHSENSE_DOCTOR_KEYSTORE", path(&s.keystores.join("doctor.json"))),
        ("HEALTHSENSE_ORACLE_CONFIG", path(&s.oracle_config)),
        ("HEALTHSENSE_HUB", DEVNET_HUB.to_string()),
        ("HEALTHSENSE_WARD", DEVNET_HUB.to_string()),
    ])
}

/// `export NAME='value'` lines for a POSIX shell (`eval "$(healthsense devnet env)"`).
pub fn export_lines(vars: &[(&str, String)]) -> String {
    vars.iter()
        .map(|(name, value)| format!("export {name}='{}'", value.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The hub (and ward) the devnet's broker and oracle config are for.
pub const DEVNET_HUB: &str = "ward-1";

const ROLES: [(&str, usize); 4] = [("admin", 0), ("hub", 1), ("doctor", 2), ("insurer", 3)];

/// The background process: runs everything until SIGTERM or Ctrl-C.
pub async fn serve(dir: &Path, deployment_path: &Path, ports: Ports, options: &Options) -> Result<()> {
    let dir = std::path::absolute(dir)?;
    let deployment_path = std::path::absolute(deployment_path)?;
    let root = tools::project_root()?;
    let mut snapshots = Snapshots::new(&dir);
    match snapshots.recover()? {
        Recovered::TornDump(aside) if snapshots.kept.exists() => tracing::warn!(
            torn = %aside.display(),
            "anvil was stopped in the middle of a snapshot; the chain resumes from the one before (up to --state-interval older)"
        ),
        Recovered::TornDump(aside) => tracing::warn!(
            torn = %aside.display(),
            "anvil was stopped in the middle of its first snapshot and none was kept before it: a new chain"
        ),
        Recovered::Nothing => tracing::info!("no anvil snapshot yet: a new chain"),
        Recovered::Kept | Recovered::Dump => {}
    }
    let mut anvil = alloy::node_bindings::Anvil::new().path(tools::foundry_tool(&root, "anvil")?).port(ports.rpc_port);
    if snapshots.kept.exists() {
        anvil = anvil.arg("--load-state").arg(snapshots.kept.display().to_string());
    }
    let anvil = anvil
        .arg("--dump-state")
        .arg(snapshots.dump.display().to_string())
        // anvil dumps only on a clean exit otherwise; the snapshots keep the
        // chain through a kill -9 or a power cut (less the last interval).
        .arg("--state-interval")
        .arg(options.state_interval.to_string())
        .try_spawn()
        .with_context(|| format!("starting anvil on port {} (--rpc-port; is it taken?)", ports.rpc_port))?;
    let (stop_keeper, keeper) = keep_snapshots(snapshots);
    let rpc_url = format!("http://127.0.0.1:{}", ports.rpc_port);
    let provider = ProviderBuilder::new().connect_http(rpc_url.parse()?);
    let chain_id = provider.get_chain_id().await.context("asking anvil for its chain id")?;
    let ipfs = healthsense_ipfs_node::start(healthsense_ipfs_node::NodeConfig::new(dir.join("ipfs"), ([127, 0, 0, 1], ports.ipfs_port).into()))
    .await
    .with_context(|| format!("starting the IPFS node on port {} (--ipfs-port)", ports.ipfs_port))?;

    // anvil's dev accounts take the four roles.
    let keys: Vec<PrivateKeySigner> = anvil.keys()[..4].iter().cloned().map(PrivateKeySigner::from).collect();
    let accounts: Vec<(String, Address)> = ROLES.iter().map(|(r, i)| (r.to_string(), keys[*i].address())).collect();
    let existing = Deployment::load(&deployment_path).ok().filter(|d| d.chain_id == chain_id && d.rpc_url == rpc_url);
    let has_code = match &existing {
        Some(d) => !provider.get_code_at(d.address).await?.is_empty(),
        None => false,
    };
    let d = match existing {
        Some(d) if has_code => d,
        _ => {
            let admin = keys[0].address();
            let mut d = deploy::deploy_evm(&provider, &rpc_url, admin, admin, artifact::load_or_build(&root)?).await?;
            d.ipfs_api = Some(ipfs.api_url());
            let c = Client::new(provider.clone(), d.clone(), admin);
            for (role, who) in [(ids::HUB_ROLE, 1), (ids::DOCTOR_ROLE, 2), (ids::INSURER_ROLE, 3)] {
                c.send_from(admin, H::grantRoleCall { role, account: keys[who].address() }).await?;
            }
            d.save(&deployment_path)?;
            d
        }
    };
    // The broker admits the ward-1 hub (its password in a file the oracle
    // config names) and devices provisioned on this chain, logging in with
    // their keys (docs/PROTOCOL.md, "Broker security").
    let mqtt_password = dir.join("mqtt-hub.password");
    if !mqtt_password.exists() {
        crate::archive::write_private(&mqtt_password, format!("{}\n", alloy::hex::encode(rand::random::<[u8; 24]>())).as_bytes())?;
    }
    let hub_secret = std::fs::read_to_string(&mqtt_password)?.lines().next().unwrap_or_default().to_string();
    let (mqtt, mqtt5) = match &options.broker {
        // The operator's broker must admit `hub@ward-1` with the password in
        // mqtt-hub.password (`healthsense broker mosquitto-config` writes both).
        Some(external) => {
            if !listening(external) {
                tracing::warn!(broker = %external, "nothing answers at --broker yet; hubs will retry");
            }
            (external.clone(), None)
        }
        None => {
            let chain = healthsense_oracle::chain::Chain::connect(&rpc_url, d.address, keys[1].clone(), Some(chain_id)).await?;
            let logins = healthsense_oracle::broker::DeviceLogins::new(chain, None, tokio::runtime::Handle::current());
            let auth = healthsense_oracle::broker::BrokerAuth::new(vec![(DEVNET_HUB.to_string(), hub_secret)], logins)?;
            let listen = healthsense_oracle::broker::Listeners {
                v311: ([127, 0, 0, 1], ports.mqtt_port).into(),
                v5: Some(([127, 0, 0, 1], ports.mqtt5_port).into()),
            };
            let bound = healthsense_oracle::broker::start_embedded(listen, Some(auth), healthsense_oracle::broker::DEFAULT_LOG_MIB).with_context(|| {
                format!("starting the MQTT broker on ports {} and {} (--mqtt-port, --mqtt5-port)", ports.mqtt_port, ports.mqtt5_port)
            })?;
            (bound.v311.to_string(), bound.v5.map(|a| a.to_string()))
        }
    };
    let (mqtt_host, mqtt_port) = mqtt.rsplit_once(':').context("--broker must be HOST:PORT")?;
    let keystores = dir.join("keys");
    let password = dir.join("password");
    if !password.exists() {
        crate::archive::write_private(&password, format!("{}\n", alloy::hex::encode(rand::random::<[u8; 16]>())).as_bytes())?;
    }
    let pass = std::fs::read_to_string(&password)?.lines().next().unwrap_or_default().to_string();
    std::fs::create_dir_all(&keystores)?;
    for (role, i) in ROLES {
        if !keystores.join(format!("{role}.json")).exists() {
            PrivateKeySigner::encrypt_keystore(&keystores, &mut rand08(), keys[i].to_bytes(), &pass, Some(&format!("{role}.json")))?;
        }
    }
    let archive_key = dir.join("archive.key");
    if !archive_key.exists() {
        crate::archive::write_private(&archive_key, healthsense_oracle::archive::seal::Secret::random().to_hex().as_bytes())?;
    }
    // Devices need the MQTT 5 port; the hub itself speaks MQTT 3.1.1.
    let devices_line = match &mqtt5 {
        Some(v5) => format!("# Devices: MQTT 3.1.1 at {mqtt}, MQTT 5 at {v5}.\n"),
        None => format!("# Devices: the broker at {mqtt}.\n"),
    };
    let generated = format!(
        "# Written by `healthsense devnet up`: the hub of ward-1 on this devnet.\n{devices_line}\
         hub = \"ward-1\"\nward = \"ward-1\"\nstore = \"hub.sqlite\"\n\n[chain]\nrpc_url = \"{rpc_url}\"\ncontract = \"{}\"\n\
         keystore = \"keys/hub.json\"\npassword_file = \"password\"\n\n[mqtt]\nembedded = false\nhost = \"{mqtt_host}\"\nport = {mqtt_port}\n\
         username = \"{}\"\npassword_file = \"mqtt-hub.password\"\n\n\
         [archive]\nipfs_api = \"{}\"\nkey_file = \"archive.key\"\n",
        d.address,
        healthsense_oracle::broker::hub_username(DEVNET_HUB),
        ipfs.api_url()
    );
    let oracle_config = write_config(&dir, &generated)?;
    let state = State {
        pid: std::process::id(),
        anvil_pid: anvil.child().id(),
        rpc_url: rpc_url.clone(),
        mqtt: mqtt.clone(),
        mqtt5: mqtt5.clone(),
        ipfs_api: ipfs.api_url(),
        contract: d.address,
        chain_id,
        accounts,
        deployment: deployment_path,
        oracle_config,
        keystores,
    };
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
    std::fs::rename(&tmp, state_path(&dir))?;
    tracing::info!(rpc = %rpc_url, %mqtt, mqtt5 = mqtt5.as_deref().unwrap_or("-"), ipfs = %ipfs.api_url(), contract = %d.address, "devnet up");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = std::fs::remove_file(state_path(&dir));
    ipfs.shutdown().await;
    // SIGTERM (not the SIGKILL of dropping the instance) lets anvil write
    // its state for the next `up`.
    let pid = anvil.child().id();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(anvil);
    drop(stop_keeper);
    match keeper.join() {
        // anvil's dump on exit, kept now rather than at the next `up`.
        Ok(mut snapshots) => {
            if let Err(e) = snapshots.keep() {
                tracing::warn!(error = %format!("{e:#}"), "keeping anvil's last snapshot; the next `devnet up` retries");
            }
        }
        Err(_) => tracing::warn!("the snapshot keeper panicked; the next `devnet up` keeps anvil's last dump"),
    }
    tracing::info!("devnet down");
    Ok(())
}

/// Copies each complete dump of anvil's to the kept snapshot, checking every
/// second, until the sender is dropped; then hands the snapshots back.
fn keep_snapshots(mut snapshots: Snapshots) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<Snapshots>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let keeper = std::thread::spawn(move || {
        // A lasting failure (a full disk) is logged once, not every second.
        let mut failing: Option<String> = None;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_secs(1)) {
            match snapshots.keep() {
                Ok(_) if failing.take().is_some() => tracing::info!("anvil's snapshots are kept again"),
                Ok(_) => {}
                Err(e) => {
                    let error = format!("{e:#}");
                    if failing.as_ref() != Some(&error) {
                        tracing::warn!(%error, "keeping anvil's snapshot failed; the last one kept stays, retrying every second");
                    }
                    failing = Some(error);
                }
            }
        }
        snapshots
    });
    (stop, keeper)
}

/// Writes `generated` to `oracle.generated.toml`, and to `oracle.toml` only
/// when there is none: an operator's edits are never overwritten. Returns
/// the config to run.
fn write_config(dir: &Path, generated: &str) -> Result<PathBuf> {
    std::fs::write(dir.join("oracle.generated.toml"), generated)?;
    let config = dir.join("oracle.toml");
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&config) {
        Ok(mut f) => std::io::Write::write_all(&mut f, generated.as_bytes())?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_to_string(&config).is_ok_and(|c| c != generated) {
                tracing::info!(config = %config.display(), "keeping the existing oracle.toml; this devnet's values are in oracle.generated.toml");
            }
        }
        Err(e) => return Err(e).with_context(|| format!("writing {}", config.display())),
    }
    Ok(config)
}

/// alloy's keystore encryption takes a rand 0.8 RNG.
fn rand08() -> impl alloy::signers::k256::elliptic_curve::rand_core::CryptoRngCore {
    alloy::signers::k256::elliptic_curve::rand_core::OsRng
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_quote_for_the_shell() {
        let vars = [("A", "/tmp/dev net".to_string()), ("B", "it's".to_string())];
        assert_eq!(export_lines(&vars), "export A='/tmp/dev net'\nexport B='it'\\''s'");
    }
}
