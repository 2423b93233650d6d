//! Oracle configuration: a TOML file, with secrets and a few deployment
//! values from the environment. `docs/ORACLE.md` lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::store::Mode;

/// Environment variable holding the hub's raw private key (never a file
/// key or a flag, where it would leak into listings).
pub const HUB_KEY_VAR: &str = "HEALTHSENSE_HUB_PRIVATE_KEY";
/// Environment variable holding the hub keystore's password.
pub const HUB_PASSWORD_VAR: &str = "HEALTHSENSE_HUB_PASSWORD";
/// Environment variable holding the MQTT password.
pub const MQTT_PASSWORD_VAR: &str = "HEALTHSENSE_MQTT_PASSWORD";
/// Environment variable overriding `chain.rpc_url`.
pub const RPC_URL_VAR: &str = "HEALTHSENSE_RPC_URL";
/// Environment variable holding the hospital archive master key (64 hex digits).
pub const ARCHIVE_KEY_VAR: &str = "HEALTHSENSE_ARCHIVE_KEY";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Hub name: the `{hub}` topic segment.
    pub hub: String,
    /// Ward name; the hub activates only devices provisioned for `keccak256(ward)`.
    pub ward: String,
    /// SQLite file of the hub store.
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// Chain settings.
    #[serde(default)]
    pub chain: ChainConfig,
    /// MQTT settings.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Anchoring settings.
    #[serde(default)]
    pub anchor: AnchorConfig,
    /// Ingest limits.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Discharge and the IPFS archive.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// REST API and dashboard.
    #[serde(default)]
    pub api: ApiConfig,
    /// Readiness thresholds (`/readyz`).
    #[serde(default)]
    pub health: HealthConfig,
    /// NEWS2 alert policy (when an alert steps down).
    #[serde(default)]
    pub alerts: crate::alerts::Policy,
    /// The hub's CPU priority (real time while it uses little of the machine).
    #[serde(default)]
    pub priority: crate::priority::PriorityConfig,
}

fn default_store() -> PathBuf {
    PathBuf::from("hub.sqlite")
}

/// Where the contract is and how the hub signs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC endpoint (overridden by `HEALTHSENSE_RPC_URL`; `healthsense
    /// oracle` fills it from the deployment file when absent).
    pub rpc_url: Option<String>,
    /// Contract address (likewise from the deployment file when absent).
    pub contract: Option<Address>,
    /// Expected chain id; start fails if the node says otherwise.
    pub chain_id: Option<u64>,
    /// Encrypted JSON keystore of the hub key (password from
    /// `password_file` or `HEALTHSENSE_HUB_PASSWORD`); without it the key
    /// comes from `HEALTHSENSE_HUB_PRIVATE_KEY`.
    pub keystore: Option<PathBuf>,
    /// File whose first line is the keystore password.
    pub password_file: Option<PathBuf>,
    /// A further URL the operator publishes the ABI at, announced as `abi`
    /// on `hs/v1/contract` beside the hub's own `abiCid` and `abiUrl`.
    pub abi: Option<String>,
    /// How often device events are polled, ms (default 1000).
    pub poll_ms: Option<u64>,
}

impl ChainConfig {
    /// The endpoint, or what to set.
    pub fn rpc_url(&self) -> Result<&str> {
        self.rpc_url.as_deref().context("no chain.rpc_url in the config (or HEALTHSENSE_RPC_URL)")
    }

    /// The contract, or what to set.
    pub fn contract(&self) -> Result<Address> {
        self.contract.context("no chain.contract in the config")
    }
}

/// The broker: embedded rumqttd (default) or an external one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Start an embedded rumqttd listening on `listen`.
    pub embedded: bool,
    /// Embedded broker listen address (MQTT 3.1.1).
    pub listen: SocketAddr,
    /// Embedded broker address for MQTT 5 devices (rumqttd takes one version
    /// per port); none by default, so no second port opens unasked.
    pub listen_v5: Option<SocketAddr>,
    /// External broker host (when not embedded).
    pub host: String,
    /// External broker port.
    pub port: u16,
    /// Use TLS to the external broker.
    pub tls: bool,
    /// CA certificate (PEM) for TLS; required with `tls`.
    pub ca_file: Option<PathBuf>,
    /// Authentication and topic ACLs (default on). The embedded broker then
    /// admits only devices logging in with their key and the hub; with an
    /// external broker, the hub must have `username`. Off only when set to
    /// false, with a warning at every start.
    pub auth: bool,
    /// Username at an external broker; the password comes from
    /// `password_file` or `HEALTHSENSE_MQTT_PASSWORD`.
    pub username: Option<String>,
    /// File whose first line is the external broker password.
    pub password_file: Option<PathBuf>,
    /// MQTT client id (default `hs-oracle-{hub}`); the persistent session is keyed by it.
    pub client_id: Option<String>,
    /// Keep-alive, seconds.
    pub keep_alive_s: u64,
    /// The embedded broker's message log, MiB: a hub session that falls
    /// behind or reconnects catches up on at most this much, and the
    /// process holds it in memory (docs/ORACLE.md, "The embedded broker").
    pub log_mib: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listen_v5: None,
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false,
            ca_file: None,
            auth: true,
            username: None,
            password_file: None,
            client_id: None,
            keep_alive_s: 15,
            log_mib: crate::broker::DEFAULT_LOG_MIB,
        }
    }
}

/// Batching and anchoring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnchorConfig {
    /// `hash` (Merkle roots, default) or `readings` (post the readings).
    pub mode: String,
    /// Readings per batch (hash mode).
    pub batch_size: usize,
    /// Longest a reading waits for its batch, ms.
    pub interval_ms: u64,
    /// Readings per transaction (readings mode).
    pub readings_per_tx: usize,
    /// Longest pause between retries of a failed transaction, ms.
    pub max_backoff_ms: u64,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self { mode: "hash".into(), batch_size: 2_000, interval_ms: 5_000, readings_per_tx: 50, max_backoff_ms: 30_000 }
    }
}

impl AnchorConfig {
    /// The mode.
    pub fn mode(&self) -> Result<Mode> {
        match self.mode.as_str() {
            "hash" => Ok(Mode::Hash),
            "readings" => Ok(Mode::Readings),
            other => bail!("anchor.mode {other:?}: use \"hash\" or \"readings\""),
        }
    }

    /// Readings per batch for the mode.
    pub fn per_batch(&self) -> Result<usize> {
        let n = match self.mode()? {
            Mode::Hash => self.batch_size,
            Mode::Readings => self.readings_per_tx,
        };
        if n == 0 || n > u32::MAX as usize {
            bail!("anchor batch size must be between 1 and 2^32-1");
        }
        Ok(n)
    }

    /// The batching interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(10))
    }
}

/// Ingest limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest accepted payload, bytes.
    pub max_payload: usize,
    /// Most messages verified and committed together.
    pub max_batch: usize,
    /// How far ahead of the hub clock a reading may be, ms.
    pub max_future_ms: u64,
    /// How old a reading may be, ms.
    pub max_age_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { max_payload: 2_048, max_batch: 1_024, max_future_ms: 5 * 60_000, max_age_ms: 24 * 3_600_000 }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/healthz`.
    pub enabled: bool,
    /// Their listen address (port 0 picks a free port).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 9464)) }
    }
}

/// Discharge handling and the encrypted IPFS archive (docs/ARCHIVE.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Run the archiver (discharge signals are refused with 503 without it).
    pub enabled: bool,
    /// Kubo RPC endpoint: the embedded node, a Kubo daemon or IPFS Cluster's proxy.
    pub ipfs_api: String,
    /// File holding the hospital master key (64 hex digits, mode 0600);
    /// `HEALTHSENSE_ARCHIVE_KEY` takes precedence.
    pub key_file: Option<PathBuf>,
    /// Where sealed archives wait for IPFS (default: `<store>.archives/`).
    pub dir: Option<PathBuf>,
    /// How long after discharge buffered readings may still arrive, ms.
    pub settle_ms: u64,
    /// Longest pause between retries, ms.
    pub max_backoff_ms: u64,
    /// ISO 4217 code of the contract's minor units (display in the FHIR bundle).
    pub currency: String,
    /// The hospital's name: the provider of the archive's Claim and
    /// ExplanationOfBenefit.
    pub hospital: String,
    /// The archive charts vital signs at this interval (and at every NEWS2
    /// alert level change), s; 0 charts every reading. The full series is
    /// archived regardless.
    pub chart_interval_s: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ipfs_api: "http://127.0.0.1:5001".into(),
            key_file: None,
            dir: None,
            settle_ms: 10_000,
            max_backoff_ms: 30_000,
            currency: "EUR".into(),
            hospital: "HealthSense hospital".into(),
            chart_interval_s: crate::archive::fhir::DEFAULT_CHART_MS / 1_000,
        }
    }
}

/// The read-only REST API and the dashboard (`docs/API.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API and the dashboard. Off by default: it serves clinical
    /// records, so an operator turns it on knowingly (and behind TLS).
    pub enabled: bool,
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// How long a session token lives, seconds.
    pub session_ttl_s: u64,
    /// How long a sign-in challenge (nonce) may wait for its signature, seconds.
    pub nonce_ttl_s: u64,
    /// The SIWE `domain` sign-in messages must name (the host and port users
    /// reach the dashboard at); default: the bound listen address.
    pub domain: Option<String>,
    /// The SIWE `URI` sign-in messages must name; default `http://{domain}`.
    pub uri: Option<String>,
    /// First block to read `PatientAdmitted` events from (the deployment
    /// block); default 0.
    pub from_block: u64,
    /// Mark the session cookie `Secure` (set when served over HTTPS).
    pub secure_cookie: bool,
    /// Sign-in requests (`/auth/*`) a second one client address may make, sustained.
    pub auth_rate_per_s: f64,
    /// Sign-in requests one client address may make at once.
    pub auth_burst: u32,
    /// A bed whose last reading is older than this (hub time, ms) is shown
    /// stale on the ward.
    pub stale_after_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            session_ttl_s: 900,
            nonce_ttl_s: 300,
            domain: None,
            uri: None,
            from_block: 0,
            secure_cookie: false,
            auth_rate_per_s: 10.0,
            auth_burst: 60,
            stale_after_ms: 120_000,
        }
    }
}

/// When the hub stops being ready (`GET /readyz`, docs/ORACLE.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The sliding window in which MQTT session drops are counted, seconds.
    pub flap_window_s: u64,
    /// Session drops within the window that make the session "flapping".
    pub flap_drops: u32,
    /// Longest a received vitals message may wait without any commit, seconds.
    pub ingest_stall_s: u64,
    /// Longest the chain may stay unreachable, seconds.
    pub chain_grace_s: u64,
    /// How much older than `anchor.interval_ms` the oldest unanchored reading may be, ms.
    pub anchor_margin_ms: u64,
    /// Longest an archive job may wait to reach the chain, seconds.
    pub archive_max_wait_s: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            flap_window_s: 60,
            flap_drops: 5,
            ingest_stall_s: 30,
            chain_grace_s: 60,
            anchor_margin_ms: 60_000,
            archive_max_wait_s: 900,
        }
    }
}

impl ArchiveConfig {
    /// The master key, if configured. The error never contains key material.
    pub fn master_key(&self) -> Result<Option<crate::archive::seal::Secret>> {
        use crate::archive::seal::Secret;
        if let Ok(hex) = std::env::var(ARCHIVE_KEY_VAR) {
            return Ok(Some(Secret::from_hex(&hex, ARCHIVE_KEY_VAR)?));
        }
        match &self.key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading archive.key_file {}", path.display()))?;
                Ok(Some(Secret::from_hex(&text, &format!("archive.key_file {}", path.display()))?))
            }
            None => Ok(None),
        }
    }

    /// The directory of sealed archives for a store at `store`.
    pub fn dir_for(&self, store: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            let mut name = store.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            name.push(".archives");
            store.with_file_name(name)
        })
    }
}

impl Config {
    /// Reads a TOML file and applies the environment overrides. Relative
    /// paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg = Self::parse(&text).with_context(|| format!("in config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            Some(&mut cfg.store),
            cfg.chain.keystore.as_mut(),
            cfg.chain.password_file.as_mut(),
            cfg.mqtt.ca_file.as_mut(),
            cfg.mqtt.password_file.as_mut(),
            cfg.archive.key_file.as_mut(),
            cfg.archive.dir.as_mut(),
        ]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses TOML text and applies the environment overrides.
    pub fn parse(text: &str) -> Result<Self> {
        let mut cfg: Config = toml::from_str(text)?;
        if let Ok(url) = std::env::var(RPC_URL_VAR) {
            cfg.chain.rpc_url = Some(url);
        }
        crate::protocol::Topics::new(&cfg.hub).map_err(anyhow::Error::msg)?;
        cfg.anchor.per_batch()?;
        cfg.priority.validate()?;
        Ok(cfg)
    }

    /// The hub's signing key, or what to provide.
    pub fn hub_key(&self) -> Result<PrivateKeySigner> {
        if let Some(path) = &self.chain.keystore {
            let password = match &self.chain.password_file {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading password file {}", file.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => std::env::var(HUB_PASSWORD_VAR)
                    .with_context(|| format!("keystore {} needs chain.password_file or {HUB_PASSWORD_VAR}", path.display()))?,
            };
            return PrivateKeySigner::decrypt_keystore(path, password)
                .map_err(|e| anyhow::anyhow!("cannot open hub keystore {}: {e} (wrong password?)", path.display()));
        }
        match std::env::var(HUB_KEY_VAR) {
            // The parse error would echo the key; say only what is wrong.
            Ok(raw) => raw.trim().parse().map_err(|_| anyhow::anyhow!("{HUB_KEY_VAR} is not a 32-byte hex private key")),
            Err(_) => bail!("no hub key: set chain.keystore in the config, or {HUB_KEY_VAR}"),
        }
    }

    /// The hub's credentials at an external broker: `mqtt.username` with the
    /// password from `HEALTHSENSE_MQTT_PASSWORD` or `mqtt.password_file`.
    pub fn mqtt_credentials(&self) -> Result<Option<(String, String)>> {
        let Some(user) = &self.mqtt.username else {
            if self.mqtt.auth && !self.mqtt.embedded {
                bail!(
                    "mqtt.auth is on but the external broker has no mqtt.username for the hub: set mqtt.username and \
                     mqtt.password_file (see `healthsense broker mosquitto-config`), or mqtt.auth = false for an open broker"
                );
            }
            return Ok(None);
        };
        let password = match (std::env::var(MQTT_PASSWORD_VAR), &self.mqtt.password_file) {
            (Ok(p), _) => p,
            (Err(_), Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("reading mqtt.password_file {}", file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (Err(_), None) => String::new(),
        };
        Ok(Some((user.clone(), password)))
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| format!("hs-oracle-{}", self.hub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults_and_typos_are_refused() {
        let cfg = Config::parse(
            "hub = \"ward-3\"\nward = \"ward-3\"\n[chain]\nrpc_url = \"http://127.0.0.1:8545\"\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n",
        )
        .unwrap();
        assert!(cfg.mqtt.embedded);
        assert!(cfg.mqtt.auth, "broker authentication is on unless turned off");
        assert!(!cfg.api.enabled, "the API is opt-in");
        assert_eq!(cfg.api.session_ttl_s, 900);
        assert_eq!(cfg.anchor.per_batch().unwrap(), 2_000);
        assert_eq!(cfg.client_id(), "hs-oracle-ward-3");
        let err = Config::parse("hub = \"w\"\nward = \"w\"\nbatch = 3\n[chain]\nrpc_url = \"x\"\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `batch`"), "{err:#}");
        let err = Config::parse("hub = \"a/b\"\nward = \"w\"\n[chain]\nrpc_url = \"x\"\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("hub name"), "{err:#}");
    }
}
