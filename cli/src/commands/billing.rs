//! Billing: `healthsense charge`, `tariff`, `policy`, `bill` and `billing`
//! (the rules document on IPFS).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::status::PatientStatus;
use healthsense_abi::rules::{ids, status};
use healthsense_cli::admin;
use serde_json::json;

use super::output::{done, money, patient_status, show, ConfigError};
use super::{Access, Global};

/// `healthsense charge ...`
#[derive(Subcommand)]
pub enum ChargeCmd {
    /// Add a line item to an admitted stay (doctor).
    Add {
        patient: String,
        /// Tariff code, at most 32 bytes (e.g. 99213).
        #[arg(long)]
        code: String,
        /// bed, consultation, procedure, medication, laboratory, imaging, consumables or other.
        #[arg(long)]
        category: String,
        #[arg(long, default_value_t = 1)]
        quantity: u32,
        /// Unit price in minor currency units (cents).
        #[arg(long)]
        unit_price: u64,
    },
    /// List a stay's charges.
    List { patient: String },
}

/// `healthsense tariff ...`
#[derive(Subcommand)]
pub enum TariffCmd {
    /// Set WARD's bed rate per day (minor units).
    Set { ward: String, rate: u64 },
    /// Show WARD's bed rate per day.
    Show { ward: String },
}

/// `healthsense policy ...`
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Set the calling insurer's policy for an admitted stay.
    Set {
        patient: String,
        /// Share of the eligible amount covered, in basis points (0-10000).
        #[arg(long)]
        coverage_bps: u16,
        #[arg(long, default_value_t = 0)]
        deductible: u64,
        /// Most the insurer pays [default: no cap].
        #[arg(long, default_value_t = u64::MAX)]
        cap: u64,
        /// Covered categories, comma-separated, or all.
        #[arg(long, default_value = "all")]
        categories: String,
    },
    /// Show a stay's policy.
    Show { patient: String },
}

/// `healthsense bill PATIENT`
#[derive(clap::Args)]
pub struct BillArgs {
    /// Patient id: 0x + 64 hex digits, or an opaque stay label (hashed).
    patient: String,
}

/// `healthsense billing ...`
#[derive(Subcommand)]
pub enum BillingCmd {
    /// Pin FILE (the billing rules document) to IPFS and store its CID on chain (admin).
    Publish { file: PathBuf },
    /// Show the billing rules CID and version in force.
    Show,
}

/// Runs a `charge` command.
pub async fn charge(cmd: ChargeCmd, g: &Global) -> Result<()> {
    let access = if matches!(cmd, ChargeCmd::List { .. }) { Access::Read } else { Access::Write };
    let c = g.client(access)?;
    let j = g.json;
    match cmd {
        ChargeCmd::Add { patient, code, category, quantity, unit_price } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let code_id = ids::charge_code(&code).with_context(|| format!("charge code {code:?} must be 1 to 32 bytes")).map_err(ConfigError)?;
            let cat = status::Category::from_name(&category)
                .with_context(|| format!("unknown category {category:?}"))
                .map_err(ConfigError)?;
            let tx = c
                .send(H::addChargeCall { patientId: p, code: code_id, category: cat as u8, quantity, unitPrice: unit_price })
                .await?;
            done(j, &format!("charged {quantity} x {code} ({}) at {} to {p}", cat.name(), money(unit_price)), tx);
        }
        ChargeCmd::List { patient } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let n = c.view(H::getPatientCall { patientId: p }).await?.chargeCount;
            let mut rows = Vec::new();
            let mut text = format!("{:<4} {:<12} {:<13} {:>8} {:>12}  doctor", "#", "code", "category", "qty", "unit price");
            for i in 0..n {
                let ch = c.view(H::getChargeCall { patientId: p, index: i }).await?;
                let code = ids::charge_code_text(&ch.code).unwrap_or("?").to_string();
                let cat = status::Category::from_code(ch.category).map_or("?", |x| x.name());
                text += &format!("\n{:<4} {:<12} {:<13} {:>8} {:>12}  {}", i, code, cat, ch.quantity, money(ch.unitPrice), ch.doctor);
                rows.push(json!({ "index": i, "code": code, "category": cat, "quantity": ch.quantity, "unitPrice": ch.unitPrice, "doctor": ch.doctor.to_string() }));
            }
            show(j, json!(rows), text);
        }
    }
    Ok(())
}

/// Runs a `tariff` command.
pub async fn tariff(cmd: TariffCmd, g: &Global) -> Result<()> {
    let access = if matches!(cmd, TariffCmd::Show { .. }) { Access::Read } else { Access::Write };
    let c = g.client(access)?;
    let j = g.json;
    match cmd {
        TariffCmd::Set { ward, rate } => {
            done(j, &format!("{ward}: bed rate {} a day", money(rate)), c.send(H::setTariffCall { ward: ids::ward_id(&ward), dailyRate: rate }).await?);
        }
        TariffCmd::Show { ward } => {
            let r = c.view(H::tariffCall { ward: ids::ward_id(&ward) }).await?;
            let text = if r == 0 {
                format!("{ward}: no bed rate; admissions to it are refused until an admin sets one with `healthsense tariff set {ward} RATE`")
            } else {
                format!("{ward}: {} a day", money(r))
            };
            show(j, json!({ "ward": ward, "dailyRate": r, "priced": r != 0 }), text);
        }
    }
    Ok(())
}

/// Runs a `policy` command.
pub async fn policy(cmd: PolicyCmd, g: &Global) -> Result<()> {
    let access = if matches!(cmd, PolicyCmd::Show { .. }) { Access::Read } else { Access::Write };
    let c = g.client(access)?;
    let j = g.json;
    match cmd {
        PolicyCmd::Set { patient, coverage_bps, deductible, cap, categories } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let mask = admin::category_mask(&categories).map_err(ConfigError)?;
            let tx = c
                .send(H::setPolicyCall { patientId: p, coverageBps: coverage_bps, deductible, cap, coveredCategories: mask })
                .await?;
            done(j, &format!("policy for {p}: {coverage_bps} bps of {categories}"), tx);
        }
        PolicyCmd::Show { patient } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let q = c.view(H::getPolicyCall { patientId: p }).await?;
            show(
                j,
                json!({ "insurer": q.insurer.to_string(), "coverageBps": q.coverageBps, "deductible": q.deductible, "cap": q.cap, "coveredCategories": q.coveredCategories }),
                format!("policy of {p}\n  insurer     {}\n  coverage    {} bps\n  deductible  {}\n  cap         {}\n  categories  {:#010b}",
                    q.insurer, q.coverageBps, q.deductible, q.cap, q.coveredCategories),
            );
        }
    }
    Ok(())
}

/// Runs `bill PATIENT`.
pub async fn bill(args: BillArgs, g: &Global) -> Result<()> {
    let c = g.client(Access::Read)?;
    let p = admin::patient_id(&args.patient).map_err(ConfigError)?;
    let pat = c.view(H::getPatientCall { patientId: p }).await?;
    // The contract returns an empty bill before discharge; an empty bill
    // would read as "nothing due", so say what is missing instead.
    if pat.status < PatientStatus::Discharged as u8 {
        let reason = match pat.status {
            0 => format!("no patient {p} on chain: check the id"),
            s => format!("patient {p} is {}: the bill exists after discharge (`healthsense patient discharge`)", patient_status(s)),
        };
        return Err(admin::Declined { command: "bill".into(), reason }.into());
    }
    let b = c.view(H::getBillCall { patientId: p }).await?;
    show(
        g.json,
        json!({ "patient": p, "bedDays": b.bedDays, "total": b.total.to_string(), "covered": b.covered.to_string(), "due": b.due.to_string(), "rulesVersion": b.rulesVersion }),
        format!("bill of {p}\n  bed days  {}\n  total     {}\n  covered   {}\n  due       {}",
            b.bedDays, money(b.total), money(b.covered), money(b.due)),
    );
    Ok(())
}

/// Runs a `billing` command (the rules document).
pub async fn billing(cmd: BillingCmd, g: &Global) -> Result<()> {
    let access = if matches!(cmd, BillingCmd::Show) { Access::Read } else { Access::Write };
    let c = g.client(access)?;
    let j = g.json;
    match cmd {
        BillingCmd::Publish { file } => {
            let cid = healthsense_cli::archive::publish_rules(&g.ipfs_api(&c.deployment), &file).await?;
            let tx = c.send(H::setBillingRulesCall { cid: cid.clone() }).await?;
            let v = c.view(H::billingRulesCall {}).await?;
            show(j, json!({ "ok": true, "cid": cid, "version": v.version, "tx": tx }),
                format!("published billing rules {} as {cid}, version {} (tx {tx})", file.display(), v.version));
        }
        BillingCmd::Show => {
            let v = c.view(H::billingRulesCall {}).await?;
            let text = if v.cid.is_empty() { "no billing rules published yet: `healthsense billing publish FILE`".to_string() }
                else { format!("billing rules version {}: {}", v.version, v.cid) };
            show(j, json!({ "cid": v.cid, "version": v.version }), text);
        }
    }
    Ok(())
}
