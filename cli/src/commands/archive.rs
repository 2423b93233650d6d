//! Records on IPFS and chain: `healthsense archive` (a discharged stay's
//! encrypted archive) and `healthsense reading verify` (one reading's proof).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_cli::admin;
use healthsense_cli::archive as a;
use healthsense_oracle::archive::seal::ArchiveScope;
use serde_json::json;

use super::output::{config_error, show, ConfigError};
use super::{Access, Global};

/// `healthsense archive ...`
#[derive(Subcommand)]
pub enum ArchiveCmd {
    /// Show a patient's archive CID and record hash on chain.
    Status { patient: String },
    /// Fetch the archive by its on-chain CID, decrypt it and write the FHIR bundle.
    Fetch {
        patient: String,
        /// Write the bundle here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Write the encrypted archive as fetched (no key needed).
        #[arg(long)]
        sealed: bool,
        #[command(flatten)]
        key: a::KeyArgs,
    },
    /// Check every reading, charge, the policy and the bill of an archive against the chain.
    ///
    /// Exits 5 and lists each item that does not match when the archive was tampered with.
    Verify {
        patient: String,
        /// Check this sealed copy instead of fetching the on-chain CID from IPFS.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        key: a::KeyArgs,
    },
    /// Write a patient's archive key to a new file (0600) to hand to the patient or doctor (hub).
    Key {
        patient: String,
        /// The hub's oracle config (master key and hub store).
        #[arg(long = "oracle-config", value_name = "FILE")]
        oracle_config: PathBuf,
        /// New file for the key.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Erase a patient's archive key for an erasure request: the archive can never be decrypted again (hub).
    Erase {
        patient: String,
        /// The hub's oracle config (master key and hub store).
        #[arg(long = "oracle-config", value_name = "FILE")]
        oracle_config: PathBuf,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// `healthsense reading ...`
#[derive(Subcommand)]
pub enum ReadingCmd {
    /// Verify a reading: from the hub store (SERIAL SEQ --oracle-config) or from a JSON file (--file).
    ///
    /// The file holds `{"reading": {...}, "batchId": "0x…", "proof": ["0x…", …]}`, as
    /// `reading verify --json` prints it under "reading". Exits 5 when the chain does not prove it.
    Verify {
        /// Device serial (with SEQ and --oracle-config).
        serial: Option<String>,
        /// Device sequence number.
        seq: Option<u64>,
        /// The hub's oracle config (its store holds the reading and proof).
        #[arg(long = "oracle-config", value_name = "FILE", conflicts_with = "file")]
        oracle_config: Option<PathBuf>,
        /// A reading with its proof, as JSON.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Runs an `archive` command.
pub async fn run(cmd: ArchiveCmd, g: &Global) -> Result<()> {
    let c = g.client(Access::Read)?;
    let ipfs_api = g.ipfs_api(&c.deployment);
    let j = g.json;
    let (chain_id, contract) = (c.deployment.chain_id, c.deployment.address);
    let scope = |patient| ArchiveScope { chain_id, contract, patient };
    match cmd {
        ArchiveCmd::Status { patient } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let (cid, hash) = a::on_chain_archive(c.provider(), contract, p).await?;
            show(j, json!({ "patient": p, "cid": cid, "recordHash": hash }), format!("archive of {p}\n  cid          {cid}\n  record hash  {hash}"));
        }
        ArchiveCmd::Fetch { patient, out, sealed, key } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let (cid, _) = a::on_chain_archive(c.provider(), contract, p).await?;
            let key = if sealed { None } else { Some(a::patient_key(&key, &scope(p))?) };
            let bytes = a::fetch_sealed(&ipfs_api, &cid).await?;
            let body = match key {
                None => bytes,
                Some(key) => a::open_sealed(&key, &scope(p), &bytes)?,
            };
            match &out {
                Some(path) => std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?,
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&body)?;
                }
            }
            if let Some(path) = out {
                let what = if sealed { "sealed archive" } else { "FHIR bundle" };
                show(j, json!({ "patient": p, "cid": cid, "bytes": body.len(), "out": path }), format!("wrote the {what} of {p} ({} bytes, {cid}) to {}", body.len(), path.display()));
            }
        }
        ArchiveCmd::Verify { patient, file, key } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let (cid, _) = a::on_chain_archive(c.provider(), contract, p).await?;
            let key = a::patient_key(&key, &scope(p))?;
            let sealed = match &file {
                Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
                None => a::fetch_sealed(&ipfs_api, &cid).await?,
            };
            let bundle = a::open_sealed(&key, &scope(p), &sealed)?;
            let report = a::verify_bundle(c.provider(), contract, p, &bundle).await?;
            let mut text = format!(
                "archive of {p} ({})\n  readings     {}/{} proven against {} anchored batch(es) and signed by the device\n  charges      {}\n  bill         {}\n  record hash  {}",
                file.as_ref().map_or(cid.clone(), |f| f.display().to_string()),
                report.readings_verified, report.readings, report.batches, report.charges,
                if report.bill_verified { "matches the chain" } else { "DOES NOT match the chain" },
                if report.record_hash_verified { "matches the chain" } else { "DOES NOT match the chain" },
            );
            for t in &report.tampered {
                text += &format!("\n  TAMPERED     {}: {}", t.item, t.why);
            }
            text += if report.verified() { "\nverified" } else { "" };
            show(j, serde_json::to_value(&report)?, text);
            if !report.verified() {
                return Err(a::Tampered { patient: p, count: report.tampered.len() }.into());
            }
        }
        ArchiveCmd::Key { patient, oracle_config, out } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let k = a::patient_key(&a::KeyArgs { key_file: None, oracle_config: Some(oracle_config) }, &scope(p))?;
            a::write_private(&out, format!("{}\n", k.to_hex()).as_bytes())?;
            show(j, json!({ "patient": p, "out": out }), format!("wrote the archive key of {p} to {} (mode 0600); hand it over in person", out.display()));
        }
        ArchiveCmd::Erase { patient, oracle_config, yes } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            if !yes {
                return Err(config_error(format!("erasing the archive key of {p} cannot be undone: add --yes")));
            }
            let (store, _) = a::hub_store(&oracle_config, chain_id, contract)?;
            let erased = store.erase_archive_key(p, healthsense_oracle::ingest::now_ms())?;
            let text = if erased { format!("erased the archive key of {p}: its archive can no longer be decrypted (copies of handed-out key files must be destroyed too)") }
                else { format!("no archive key of {p} in this hub store (already erased, or archived elsewhere)") };
            show(j, json!({ "patient": p, "erased": erased }), text);
        }
    }
    Ok(())
}

/// Runs a `reading` command.
pub async fn reading(cmd: ReadingCmd, g: &Global) -> Result<()> {
    let c = g.client(Access::Read)?;
    let ReadingCmd::Verify { serial, seq, oracle_config, file } = cmd;
    let proven = match (file, serial, seq, oracle_config) {
        (Some(f), None, None, None) => {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display())).map_err(ConfigError)?;
            serde_json::from_str::<a::ProvenReading>(&text)
                .with_context(|| format!("{} is not {{\"reading\", \"batchId\", \"proof\"}}", f.display()))
                .map_err(ConfigError)?
        }
        (None, Some(serial), Some(seq), Some(cfg)) => a::stored_reading(&cfg, c.deployment.chain_id, c.deployment.address, &serial, seq)?,
        _ => return Err(config_error("give SERIAL SEQ --oracle-config FILE, or --file FILE")),
    };
    let leaf = healthsense_abi::rules::reading::reading_leaf(&proven.reading);
    let ok = c.view(H::verifyReadingCall { batchId: proven.batch_id, leaf, proof: proven.proof.clone() }).await?;
    let r = &proven.reading;
    show(g.json, json!({ "verified": ok, "leaf": leaf, "reading": proven }),
        format!("reading {} of device {}: {} batch {}", r.seq, r.deviceId,
            if ok { "proven by the root anchored in" } else { "NOT proven by" }, proven.batch_id));
    if !ok {
        return Err(a::Tampered { patient: r.deviceId, count: 1 }.into());
    }
    Ok(())
}
