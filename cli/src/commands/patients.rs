//! `healthsense patient`: admit, show and discharge stays.

use alloy::primitives::Address;
use anyhow::Result;
use clap::Subcommand;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use healthsense_cli::admin;
use serde_json::json;

use super::output::{config_error, money, patient_status, show, ConfigError};
use super::{Access, Global};

/// `healthsense patient ...`
#[derive(Subcommand)]
pub enum PatientCmd {
    /// Admit a stay on an active device (doctor).
    ///
    /// The stay's id is PATIENT (0x + 64 hex digits, or an opaque label that is hashed),
    /// or, with --wallet, derived from the patient's wallet and the stay number so the
    /// patient can sign in to the dashboard with that wallet (docs/API.md).
    Admit {
        #[arg(required_unless_present = "wallet", conflicts_with = "wallet")]
        patient: Option<String>,
        #[arg(long)]
        device: String,
        /// The patient's wallet: the id becomes keccak256(abi.encode(tag, wallet, stay)).
        #[arg(long)]
        wallet: Option<Address>,
        /// The stay number with --wallet (a wallet's first stay is 1).
        #[arg(long, default_value_t = 1, requires = "wallet")]
        stay: u64,
    },
    /// Show a stay.
    Show { patient: String },
    /// Discharge a stay; the contract computes the bill (doctor or hub).
    Discharge { patient: String },
}

/// Runs a `patient` command.
pub async fn run(cmd: PatientCmd, g: &Global) -> Result<()> {
    let access = if matches!(cmd, PatientCmd::Show { .. }) { Access::Read } else { Access::Write };
    let c = g.client(access)?;
    let j = g.json;
    match cmd {
        PatientCmd::Admit { patient, device, wallet, stay } => {
            let p = match (wallet, patient) {
                (Some(w), _) => ids::patient_id(w, stay),
                (None, Some(label)) => admin::patient_id(&label).map_err(ConfigError)?,
                (None, None) => return Err(config_error("give PATIENT or --wallet")),
            };
            let tx = c.send(H::admitPatientCall { patientId: p, deviceId: ids::device_id(&device) }).await?;
            let signin = wallet.map(|w| format!("; the patient signs in with {w} and stay {stay}")).unwrap_or_default();
            show(j, json!({ "ok": true, "tx": tx, "patient": p }), format!("admitted {p} on device {device}{signin} (tx {tx})"));
        }
        PatientCmd::Show { patient } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let r = c.view(H::getPatientCall { patientId: p }).await?;
            if r.status == 0 {
                return Err(admin::Declined { command: "patient show".into(), reason: format!("no patient {p} on chain: check the id") }.into());
            }
            show(
                j,
                json!({ "id": p, "device": r.deviceId, "ward": r.ward, "status": patient_status(r.status),
                        "admittedAt": r.admittedAt, "dischargedAt": r.dischargedAt, "charges": r.chargeCount }),
                format!("patient {p}\n  status      {}\n  device      {}\n  admitted    {}\n  discharged  {}\n  charges     {}",
                    patient_status(r.status), r.deviceId, r.admittedAt, r.dischargedAt, r.chargeCount),
            );
        }
        PatientCmd::Discharge { patient } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let tx = c.send(H::dischargeCall { patientId: p }).await?;
            let b = c.view(H::getBillCall { patientId: p }).await?;
            show(
                j,
                json!({ "ok": true, "tx": tx, "bedDays": b.bedDays, "total": b.total.to_string(), "covered": b.covered.to_string(), "due": b.due.to_string() }),
                format!("discharged {p} (tx {tx})\n  bed days {}  total {}  covered {}  due {}",
                    b.bedDays, money(b.total), money(b.covered), money(b.due)),
            );
        }
    }
    Ok(())
}
