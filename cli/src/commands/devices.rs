//! `healthsense device`: provision, activate, revoke and show bedside devices.

use std::path::PathBuf;

use alloy::primitives::Address;
use anyhow::Result;
use clap::Subcommand;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use healthsense_cli::admin;
use serde_json::json;

use super::output::{device_status, done, show};
use super::{Access, Global};

/// `healthsense device ...`
#[derive(Subcommand)]
pub enum DeviceCmd {
    /// Register a device by serial with its signing address and ward (admin).
    Provision {
        serial: String,
        #[arg(long)]
        signer: Address,
        #[arg(long)]
        ward: String,
        /// Also give the device a password on the Mosquitto configured in this folder
        /// (`healthsense broker mosquitto-config`); printed once, for the device.
        #[arg(long)]
        mqtt_dir: Option<PathBuf>,
    },
    /// Accept a provisioned device (hub; the oracle does this on the device's hello).
    Activate { serial: String },
    /// Withdraw a device at once (admin).
    Revoke { serial: String },
    /// Show a device.
    Show { serial: String },
}

/// Runs a `device` command.
pub async fn run(cmd: DeviceCmd, g: &Global) -> Result<()> {
    let access = if matches!(cmd, DeviceCmd::Show { .. }) { Access::Read } else { Access::Write };
    let c = g.client(access)?;
    let j = g.json;
    match cmd {
        DeviceCmd::Provision { serial, signer, ward, mqtt_dir } => {
            let id = ids::device_id(&serial);
            let tx = c.send(H::provisionDeviceCall { deviceId: id, signer, ward: ids::ward_id(&ward) }).await?;
            match mqtt_dir {
                Some(dir) => {
                    let password = healthsense_cli::broker::add_device(&dir, &serial)?;
                    let text = format!("provisioned device {serial} ({id}) in {ward}: tx {tx}\nMQTT username {serial}, password {password} (shown once)");
                    show(j, json!({ "tx": tx, "mqttUsername": serial, "mqttPassword": password }), text);
                }
                None => done(j, &format!("provisioned device {serial} ({id}) in {ward}"), tx),
            }
        }
        DeviceCmd::Activate { serial } => {
            done(j, &format!("activated device {serial}"), c.send(H::activateDeviceCall { deviceId: ids::device_id(&serial) }).await?);
        }
        DeviceCmd::Revoke { serial } => {
            done(j, &format!("revoked device {serial}"), c.send(H::revokeDeviceCall { deviceId: ids::device_id(&serial) }).await?);
        }
        DeviceCmd::Show { serial } => {
            let id = ids::device_id(&serial);
            let dv = c.view(H::getDeviceCall { deviceId: id }).await?;
            if dv.status == 0 {
                return Err(admin::Declined {
                    command: "device show".into(),
                    reason: format!("no device {serial} ({id}) on chain: provision it first (`healthsense device provision`)"),
                }
                .into());
            }
            show(
                j,
                json!({ "serial": serial, "id": id, "signer": dv.signer.to_string(), "ward": dv.ward, "status": device_status(dv.status),
                        "patient": dv.patientId, "lastSeq": dv.lastSeq }),
                format!("device {serial}\n  id       {id}\n  signer   {}\n  ward     {}\n  status   {}\n  patient  {}",
                    dv.signer, dv.ward, device_status(dv.status), dv.patientId),
            );
        }
    }
    Ok(())
}
