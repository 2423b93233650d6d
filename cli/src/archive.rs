//! `healthsense archive` and `healthsense billing`: fetch, decrypt and
//! verify a discharged patient's archive; hand out or erase a patient key;
//! publish the billing rules. The record format, encryption and checks are
//! the oracle's ([`healthsense_oracle::archive`]): one definition.

use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use anyhow::{bail, Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_ipfs::Ipfs;
use healthsense_oracle::archive::seal::{self, ArchiveScope, Secret};
use healthsense_oracle::archive::{fhir, verify};
use healthsense_oracle::store::Store;

/// Default Kubo RPC endpoint (the embedded node of `healthsense devnet`).
pub const DEFAULT_IPFS_API: &str = "http://127.0.0.1:5001";

/// Where the patient key comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// File with the patient's archive key (64 hex digits), as handed out by `healthsense archive key`.
    #[arg(long, conflicts_with = "oracle_config")]
    pub key_file: Option<PathBuf>,
    /// The hub's oracle config: the master key and the hub store give the patient key (hub machine).
    #[arg(long = "oracle-config", value_name = "FILE")]
    pub oracle_config: Option<PathBuf>,
}

/// A problem with the key (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// The archive does not match the chain (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("archive of {patient} is TAMPERED: {count} item(s) do not match the chain")]
pub struct Tampered {
    /// Patient.
    pub patient: B256,
    /// Number of findings.
    pub count: usize,
}

/// The patient key from `args`.
pub fn patient_key(args: &KeyArgs, scope: &ArchiveScope) -> Result<Secret> {
    if let Some(file) = &args.key_file {
        let text = std::fs::read_to_string(file).map_err(|e| KeyError(format!("reading --key-file {}: {e}", file.display())))?;
        return Ok(Secret::from_hex(&text, &format!("--key-file {}", file.display())).map_err(|e| KeyError(e.to_string()))?);
    }
    let Some(cfg_path) = &args.oracle_config else {
        return Err(KeyError(
            "no key: pass --key-file FILE (a patient key from `healthsense archive key`) or --oracle-config FILE on the hub".into(),
        )
        .into());
    };
    let (store, master) = hub_store(cfg_path, scope.chain_id, scope.contract)?;
    let salt = store
        .existing_archive_salt(scope.patient)?
        .ok_or_else(|| KeyError(format!("the hub store has no archive key for {} (never archived here, or erased)", scope.patient)))?;
    Ok(seal::patient_key(&master, &salt, scope))
}

/// The hub store and master key named by an oracle config.
pub fn hub_store(cfg_path: &Path, chain_id: u64, contract: Address) -> Result<(Store, Secret)> {
    let cfg = healthsense_oracle::Config::load(cfg_path).map_err(|e| KeyError(format!("{e:#}")))?;
    let master = cfg
        .archive
        .master_key()
        .map_err(|e| KeyError(format!("{e:#}")))?
        .ok_or_else(|| KeyError(format!("{} names no archive.key_file and {} is not set", cfg_path.display(), healthsense_oracle::config::ARCHIVE_KEY_VAR)))?;
    let store = Store::open_existing(&cfg.store, chain_id, contract)
        .map_err(|e| KeyError(format!("hub store {}: {e}", cfg.store.display())))?;
    store.init_archive()?;
    Ok((store, master))
}

/// The on-chain archive of `patient`: its CID and record hash, or what is missing.
pub async fn on_chain_archive<P: Provider>(provider: &P, contract: Address, patient: B256) -> Result<(String, B256)> {
    let h = H::HealthSenseInstance::new(contract, provider);
    let p = h.getPatient(patient).call().await.context("reading the patient")?;
    let declined = |reason| crate::admin::Declined { command: "archive".into(), reason };
    if p.admittedAt == 0 {
        bail!(declined(format!("no patient {patient} on chain: check the id")));
    }
    let a = h.getArchive(patient).call().await.context("reading the archive")?;
    if a.cid.is_empty() {
        let status = crate::admin::patient_status(p.status);
        bail!(declined(format!("patient {patient} is {status} and has no archive on chain yet; the hub writes it after discharge")));
    }
    Ok((a.cid, a.recordHash))
}

/// Fetches the sealed archive from IPFS by its CID.
pub async fn fetch_sealed(ipfs_api: &str, cid: &str) -> Result<Vec<u8>> {
    let ipfs = Ipfs::new(ipfs_api)?;
    ipfs.cat(cid).await.with_context(|| format!("fetching {cid} from IPFS at {ipfs_api}"))
}

/// Decrypts and decompresses a sealed archive to the bundle JSON.
pub fn open_sealed(key: &Secret, scope: &ArchiveScope, sealed: &[u8]) -> Result<Vec<u8>> {
    let compressed = seal::open(key, scope, sealed)?;
    Ok(seal::decompress(&compressed)?)
}

/// Verifies a bundle against the chain.
pub async fn verify_bundle<P: Provider>(provider: &P, contract: Address, patient: B256, bundle: &[u8]) -> Result<verify::Report> {
    let parsed = fhir::parse_bundle(bundle)?;
    Ok(verify::verify(provider, contract, patient, bundle, &parsed).await?)
}

/// Pins a billing rules document; returns its CID.
pub async fn publish_rules(ipfs_api: &str, file: &Path) -> Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if bytes.is_empty() {
        bail!(KeyError(format!("{} is empty: publish the billing rules document itself", file.display())));
    }
    let ipfs = Ipfs::new(ipfs_api)?;
    ipfs.add(bytes).await.with_context(|| format!("adding {} to IPFS at {ipfs_api}", file.display()))
}

/// Writes `bytes` to a new file readable only by the owner (a key).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// A reading with its place on chain, as `reading verify --file` reads it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvenReading {
    /// The reading.
    #[serde(with = "reading_json")]
    pub reading: healthsense_abi::Reading,
    /// `batchIdOf(hub, seq)` of its batch.
    pub batch_id: B256,
    /// Merkle proof of its leaf.
    pub proof: Vec<B256>,
}

/// The reading as JSON, field names as in the ABI.
mod reading_json {
    use alloy::primitives::B256;
    use healthsense_abi::Reading;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct R {
        device_id: B256,
        seq: u64,
        timestamp: u64,
        heart_rate: u16,
        resp_rate: u16,
        spo2: u16,
        systolic: u16,
        diastolic: u16,
        temperature: u16,
        consciousness: u8,
    }

    pub fn serialize<S: Serializer>(r: &Reading, s: S) -> Result<S::Ok, S::Error> {
        R {
            device_id: r.deviceId,
            seq: r.seq,
            timestamp: r.timestamp,
            heart_rate: r.heartRate,
            resp_rate: r.respRate,
            spo2: r.spo2,
            systolic: r.systolic,
            diastolic: r.diastolic,
            temperature: r.temperature,
            consciousness: r.consciousness,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reading, D::Error> {
        let r = R::deserialize(d)?;
        Ok(Reading {
            deviceId: r.device_id,
            seq: r.seq,
            timestamp: r.timestamp,
            heartRate: r.heart_rate,
            respRate: r.resp_rate,
            spo2: r.spo2,
            systolic: r.systolic,
            diastolic: r.diastolic,
            temperature: r.temperature,
            consciousness: r.consciousness,
        })
    }
}

/// A stored reading and its proof, from the hub store an oracle config names.
pub fn stored_reading(cfg_path: &Path, chain_id: u64, contract: Address, serial: &str, seq: u64) -> Result<ProvenReading> {
    let cfg = healthsense_oracle::Config::load(cfg_path).map_err(|e| KeyError(format!("{e:#}")))?;
    let store = Store::open_existing(&cfg.store, chain_id, contract)
        .map_err(|e| KeyError(format!("hub store {}: {e}", cfg.store.display())))?;
    let hub = store.hub()?.context("the hub store names no hub")?;
    let device = healthsense_abi::rules::ids::device_id(serial);
    let r = store.reading(device, seq)?.with_context(|| format!("the hub store has no reading {seq} of {serial}"))?;
    let batch = r.batch_seq.with_context(|| format!("reading {seq} of {serial} is not in a batch yet; try again after the next anchor"))?;
    Ok(ProvenReading { reading: r.reading, batch_id: healthsense_abi::rules::ids::batch_id(hub, batch), proof: r.proof })
}
