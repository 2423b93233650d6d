//! `healthsense broker`: the configuration of an external Mosquitto broker
//! with authentication and topic ACLs (docs/ORACLE.md, "External brokers").
//!
//! Mosquitto cannot check a device's signed login (that needs a plugin), so
//! on Mosquitto each device has a random password of its own, kept hashed
//! in the broker's password file and handed out once when the device is
//! added (`device provision --mqtt-dir`, or `broker mosquitto-device`). The
//! ACL file confines every device to its own topics by `pattern` lines on
//! its username, which is its serial (and, with `use_username_as_clientid`,
//! its client id: no client can take another's session).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use healthsense_oracle::broker::{hub_username, BROKER_MAX_PAYLOAD};
use healthsense_oracle::protocol::{Topics, CONTRACT_TOPIC};

/// What `broker mosquitto-config` writes.
#[derive(Debug, Clone, clap::Args)]
pub struct MosquittoArgs {
    /// Folder for mosquitto.conf, the password and ACL files and the persistence directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Hub name(s) the broker serves (each hub's `hub` config key); repeat for several.
    #[arg(long = "hub", required = true)]
    pub hubs: Vec<String>,
    /// Listener port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Listener address.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// The account Mosquitto drops to when started as root (it must own the persistence directory).
    #[arg(long, default_value = "mosquitto")]
    pub user: String,
}

/// The files of a generated configuration.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Generated {
    /// `mosquitto -c` this.
    pub config: PathBuf,
    /// Hashed passwords (`mosquitto_passwd` format).
    pub password_file: PathBuf,
    /// Topic ACLs.
    pub acl_file: PathBuf,
    /// Where Mosquitto keeps its sessions and queued messages.
    pub persistence: PathBuf,
    /// Per hub: its MQTT username and the file holding its password (the
    /// hub's `mqtt.username` and `mqtt.password_file`).
    pub hubs: Vec<(String, PathBuf)>,
}

fn random_password() -> String {
    alloy::hex::encode(rand::random::<[u8; 24]>())
}

/// `mosquitto_passwd -b FILE USER PASSWORD` (`create` starts a new file).
fn set_password(file: &Path, user: &str, password: &str, create: bool) -> Result<()> {
    let mut cmd = Command::new("mosquitto_passwd");
    if create {
        cmd.arg("-c");
    }
    let status = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .context("running mosquitto_passwd (Debian package mosquitto; scripts/setup installs it)")?;
    if !status.success() {
        bail!("mosquitto_passwd could not write {}", file.display());
    }
    Ok(())
}

/// The ACL file: each hub reads and writes its tree; each device writes its
/// own hello/vitals/state/discharge and reads its own status, the hub's
/// presence and the contract announcement. Nothing else is allowed.
pub fn acl_text(hubs: &[String]) -> String {
    let mut text = String::from("# Written by `healthsense broker mosquitto-config`: docs/PROTOCOL.md, \"Broker security\".\n");
    for hub in hubs {
        text += &format!("\nuser {}\ntopic readwrite hs/v1/{hub}/#\ntopic readwrite {CONTRACT_TOPIC}\n", hub_username(hub));
    }
    text += "\n# Every device (username = client id = serial): its own topics only.\n";
    for hub in hubs {
        for kind in ["hello", "vitals", "state", "discharge"] {
            text += &format!("pattern write hs/v1/{hub}/dev/%u/{kind}\n");
        }
        text += &format!("pattern read hs/v1/{hub}/dev/%u/status\npattern read hs/v1/{hub}/online\n");
    }
    text += &format!("pattern read {CONTRACT_TOPIC}\n");
    text
}

/// Gives `path` to `user` when this runs as root (Mosquitto started as root
/// drops to that user before it writes persistence; a directory it cannot
/// write silently turns persistence off).
fn give_to(path: &Path, user: &str) -> Result<()> {
    // The effective uid, from /proc (no libc dependency for one number).
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    if !root {
        return Ok(());
    }
    let status = Command::new("chown").arg(format!("{user}:")).arg(path).status().context("running chown")?;
    if !status.success() {
        bail!("cannot give {} to user {user:?} (--user): does the account exist?", path.display());
    }
    Ok(())
}

/// Writes the configuration for `args` (refusing to overwrite one, which
/// would invalidate every device's password).
pub fn mosquitto_config(args: &MosquittoArgs) -> Result<Generated> {
    for hub in &args.hubs {
        Topics::new(hub).map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::path::absolute(&args.dir)?;
    let config = dir.join("mosquitto.conf");
    if config.exists() {
        bail!("{} exists: remove the folder to start over (every device password with it), or add devices with `healthsense broker mosquitto-device`", config.display());
    }
    let (password_file, acl_file, persistence) = (dir.join("passwd"), dir.join("acl"), dir.join("data"));
    let mut hubs = Vec::new();
    for (i, hub) in args.hubs.iter().enumerate() {
        let password = random_password();
        set_password(&password_file, &hub_username(hub), &password, i == 0)?;
        let file = dir.join(format!("hub-{hub}.password"));
        crate::archive::write_private(&file, format!("{password}\n").as_bytes())?;
        hubs.push((hub_username(hub), file));
    }
    std::fs::write(&acl_file, acl_text(&args.hubs))?;
    std::fs::create_dir_all(&persistence)?;
    let text = format!(
        "# Written by `healthsense broker mosquitto-config` (docs/ORACLE.md, \"External brokers\").\n\
         listener {port} {bind}\n\
         allow_anonymous false\n\
         password_file {passwd}\n\
         acl_file {acl}\n\
         # The client id is the username: a device cannot take another's (or the hub's) session.\n\
         use_username_as_clientid true\n\
         # Larger messages are dropped here; the hub's client takes anything up to 1 MiB, and\n\
         # answers 413 to anything above its ingest.max_payload.\n\
         message_size_limit {limit}\n\
         # The hub's persistent session queues while it restarts; it acknowledges after each commit.\n\
         max_queued_messages 0\n\
         max_inflight_messages {window}\n\
         # Small QoS 1 packets go out at once (Nagle off; docs/BENCHMARKS.md, \"NEWS2 alerts\").\n\
         set_tcp_nodelay true\n\
         persistence true\n\
         persistence_location {data}/\n\
         autosave_interval 10\n\
         log_dest stderr\n\
         # For TLS add cafile, certfile and keyfile to the listener (mosquitto.conf(5)).\n",
        window = healthsense_oracle::broker::HUB_WINDOW,
        port = args.port,
        bind = args.bind,
        passwd = password_file.display(),
        acl = acl_file.display(),
        limit = BROKER_MAX_PAYLOAD,
        data = persistence.display(),
    );
    std::fs::write(&config, text)?;
    for path in [&dir, &persistence, &password_file, &acl_file] {
        give_to(path, &args.user)?;
    }
    Ok(Generated { config, password_file, acl_file, persistence, hubs })
}

/// Adds device `serial` to the password file in `dir` with a new random
/// password and returns the password (shown once: only its hash is kept).
/// A running Mosquitto reads it on SIGHUP.
pub fn add_device(dir: &Path, serial: &str) -> Result<String> {
    Topics::new(serial).map_err(|_| anyhow::anyhow!("serial {serial:?} must be 1-64 of [A-Za-z0-9._-]"))?;
    let file = dir.join("passwd");
    if !file.exists() {
        bail!("no password file {}: run `healthsense broker mosquitto-config --dir {}` first", file.display(), dir.display());
    }
    let password = random_password();
    set_password(&file, serial, &password, false)?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_confines_devices_to_their_own_topics() {
        let acl = acl_text(&["ward-3".into()]);
        assert!(acl.contains("user hub@ward-3\ntopic readwrite hs/v1/ward-3/#\ntopic readwrite hs/v1/contract\n"), "{acl}");
        assert!(acl.contains("pattern write hs/v1/ward-3/dev/%u/vitals\n"));
        assert!(acl.contains("pattern read hs/v1/ward-3/dev/%u/status\n"));
        assert!(!acl.contains("pattern write hs/v1/ward-3/dev/%u/status"), "only the hub writes status");
        assert!(!acl.contains("pattern write hs/v1/contract"));
    }
}
