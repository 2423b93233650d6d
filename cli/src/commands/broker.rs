//! `healthsense broker`: configure an external Mosquitto for devices and hubs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use healthsense_cli::broker;
use serde_json::json;

use super::output::{show, ConfigError};
use super::Global;

/// `healthsense broker ...`
#[derive(Subcommand)]
pub enum BrokerCmd {
    /// Write mosquitto.conf, the password file (with each hub's password), the ACL file and a
    /// persistence directory the broker's user owns.
    MosquittoConfig(broker::MosquittoArgs),
    /// Give a device a Mosquitto password (printed once; send the broker SIGHUP to load it).
    MosquittoDevice {
        /// The folder `mosquitto-config` wrote.
        #[arg(long)]
        dir: PathBuf,
        serial: String,
    },
}

/// Runs a `broker` command.
pub fn run(cmd: BrokerCmd, g: &Global) -> Result<()> {
    let j = g.json;
    match cmd {
        BrokerCmd::MosquittoConfig(args) => {
            let gen = broker::mosquitto_config(&args).map_err(ConfigError)?;
            let mut text = format!("wrote {}\n  start: mosquitto -c {}", gen.config.display(), gen.config.display());
            for (user, file) in &gen.hubs {
                text += &format!("\n  hub config: [mqtt] embedded = false, port = {}, username = \"{user}\", password_file = \"{}\"", args.port, file.display());
            }
            text += "\n  devices: healthsense device provision SERIAL ... --mqtt-dir DIR (or broker mosquitto-device)";
            show(j, json!(gen), text);
        }
        BrokerCmd::MosquittoDevice { dir, serial } => {
            let password = broker::add_device(&dir, &serial).map_err(ConfigError)?;
            show(j, json!({ "mqttUsername": serial, "mqttPassword": password }), format!("MQTT username {serial}, password {password} (shown once; send mosquitto SIGHUP to load it)"));
        }
    }
    Ok(())
}
