//! `healthsense`: the HealthSense admin command.

use std::path::PathBuf;
use std::process::ExitCode;

use alloy::primitives::Address;
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use healthsense_cli::deployment::{self, Deployment, Edition};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{ids, status};
use healthsense_cli::{admin, artifact, demo, deploy, keys::KeyArgs, tools};
use serde_json::json;

/// Exit codes a script can rely on.
mod exit {
    /// Something failed that is not one of the below (I/O, RPC, node).
    pub const FAILURE: u8 = 1;
    // 2 is clap's usage error.
    /// Configuration or key missing or invalid.
    pub const CONFIG: u8 = 3;
    /// The contract refused the call (wrong role, unknown id, wrong status...).
    pub const REFUSED: u8 = 4;
    /// An archive does not match the chain (tampered).
    pub const TAMPERED: u8 = 5;
    /// `simulate`: a published reading was not confirmed stored by the hub.
    pub const NOT_STORED: u8 = 6;
}

#[derive(Parser)]
#[command(
    name = "healthsense",
    version,
    about = "Administer a HealthSense deployment: contract, devices, patients, billing",
    long_about = "Administer a HealthSense deployment.\n\n\
        Exit codes: 0 success, 1 failure (I/O, RPC, node, unreadable archive), 2 usage error, 3 configuration or key \
        missing/invalid, 4 the contract refused the call (the message says why and what to do), 5 an archive does not \
        match the chain (tampered)."
)]
struct Cli {
    /// Print machine-readable JSON instead of human text.
    #[arg(long, global = true)]
    json: bool,
    /// Deployment file to read or write [default: .healthsense/deployment.json, or $HEALTHSENSE_DEPLOYMENT].
    #[arg(long, global = true)]
    deployment: Option<PathBuf>,
    /// Kubo RPC endpoint for archives and billing rules [default: the deployment file's, else http://127.0.0.1:5001].
    #[arg(long, global = true, env = "HEALTHSENSE_IPFS_API")]
    ipfs_api: Option<String>,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy the contract and write the deployment file.
    ///
    /// The EVM edition is deployed directly to any JSON-RPC endpoint (anvil, a testnet,
    /// a consortium chain). For the Stylus edition this prints the cargo-stylus steps.
    Deploy {
        /// JSON-RPC endpoint of the chain.
        #[arg(long, env = "HEALTHSENSE_RPC_URL")]
        rpc_url: url::Url,
        /// First admin [default: the deploying account].
        #[arg(long)]
        admin: Option<Address>,
        /// Contract edition.
        #[arg(long, value_enum, default_value = "evm")]
        edition: Edition,
    },
    /// Play a whole ward story on throw-away local services and print a summary.
    ///
    /// Starts anvil (project-local install, scripts/setup), an embedded IPFS node and a ward
    /// hub with its embedded MQTT broker; simulated bedside devices sign vitals for admitted
    /// patients, doctors charge, insurers set policies, devices signal discharge, the contract
    /// bills, the hub archives each stay to IPFS with its CID on chain, and every archive is
    /// verified against the chain. Exits non-zero if any step fails.
    Demo,
    /// Run a local network: anvil, the MQTT broker and the IPFS node, with the contract deployed.
    #[command(subcommand)]
    Devnet(DevnetCmd),
    /// Configure an external MQTT broker (Mosquitto) with device passwords and topic ACLs.
    #[command(subcommand)]
    Broker(BrokerCmd),
    /// Run a ward-hub oracle: MQTT ingest of signed vitals, durable store, anchoring.
    ///
    /// Reads a TOML config (docs/ORACLE.md); chain.rpc_url and chain.contract default to the
    /// deployment file's. The hub key comes from chain.keystore in the config or from
    /// HEALTHSENSE_HUB_PRIVATE_KEY. Runs until Ctrl-C or SIGTERM, then drains and stops.
    Oracle {
        /// Oracle configuration file.
        #[arg(long, short, default_value = "oracle.toml", env = "HEALTHSENSE_ORACLE_CONFIG")]
        config: PathBuf,
    },
    /// Simulate a ward: bedside devices with their own keys and believable patients.
    ///
    /// Provisions BEDS new devices for WARD (admin key), says hello to the hub on the
    /// broker, then sends EIP-712-signed SenML vitals at RATE per bed per second for
    /// SECONDS: physiology with drift and a daily rhythm, a deterioration episode in every
    /// third patient (SPEED simulated seconds per second), battery and sleep cycles.
    /// Ends with each bed's highest NEWS2.
    Simulate {
        /// Hub name (its `hub` config key).
        #[arg(long, default_value = "ward-3")]
        hub: String,
        /// Ward the devices are provisioned for.
        #[arg(long, default_value = "ward-3")]
        ward: String,
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Number of beds.
        #[arg(long, default_value_t = 8)]
        beds: usize,
        /// Readings per bed per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// How long to run, seconds.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Simulated seconds per second (episodes unfold over the run).
        #[arg(long, default_value_t = 720.0)]
        speed: f64,
        /// Random seed (patients, episodes).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Admit a patient (stay label `sim-SERIAL`) on each bed after hello; the key must also hold DOCTOR.
        #[arg(long)]
        admit: bool,
        /// At the end, each device sends a signed discharge signal (the hub bills and archives).
        #[arg(long)]
        discharge: bool,
        /// After the run, how long to wait for the hub to confirm every reading stored (seconds).
        #[arg(long, default_value_t = 30.0)]
        wait: f64,
    },
    /// Grant, revoke or check roles (admin, hub, doctor, insurer).
    #[command(subcommand)]
    Roles(RolesCmd),
    /// Provision, activate, revoke or show a bedside device.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Admit, show or discharge a patient stay.
    #[command(subcommand)]
    Patient(PatientCmd),
    /// Add or list a stay's charges (doctor).
    #[command(subcommand)]
    Charge(ChargeCmd),
    /// Set or show a ward's bed rate per day, in minor currency units (admin).
    #[command(subcommand)]
    Tariff(TariffCmd),
    /// Set or show a stay's insurance policy (insurer).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Show the bill computed at discharge.
    Bill {
        /// Patient id: 0x + 64 hex digits, or an opaque stay label (hashed).
        patient: String,
    },
    /// Publish or show the billing rules document (pinned to IPFS, CID on chain).
    #[command(subcommand)]
    Billing(BillingCmd),
    /// Fetch, verify, or manage the key of a discharged patient's encrypted IPFS archive.
    ///
    /// The hub archives each stay after discharge (docs/ARCHIVE.md). A patient or doctor
    /// holds a patient key file (`archive key` on the hub makes one); on the hub machine
    /// --oracle-config derives it from the master key instead.
    #[command(subcommand)]
    Archive(ArchiveCmd),
    /// Check one stored reading and its Merkle proof against the anchored batch root on chain.
    #[command(subcommand)]
    Reading(ReadingCmd),
    /// Emergency stop of every state change except role management (admin).
    Pause,
    /// Lift the emergency stop (admin).
    Unpause,
}

#[derive(Subcommand)]
enum BrokerCmd {
    /// Write mosquitto.conf, the password file (with each hub's password), the ACL file and a
    /// persistence directory the broker's user owns.
    MosquittoConfig(healthsense_cli::broker::MosquittoArgs),
    /// Give a device a Mosquitto password (printed once; send the broker SIGHUP to load it).
    MosquittoDevice {
        /// The folder `mosquitto-config` wrote.
        #[arg(long)]
        dir: PathBuf,
        serial: String,
    },
}

#[derive(Subcommand)]
enum DevnetCmd {
    /// Start the devnet in the background (deploys and grants roles on first start).
    ///
    /// Writes the deployment file, keystores of the four role accounts (password in
    /// <dir>/password), <dir>/oracle.generated.toml and, when absent, <dir>/oracle.toml for
    /// `healthsense oracle --config` (an edited one is kept). anvil's state is saved every
    /// --state-interval seconds and on exit.
    Up {
        /// Folder for the devnet's state, keys and logs.
        #[arg(long, default_value = healthsense_cli::devnet::DEFAULT_DIR)]
        dir: PathBuf,
        #[command(flatten)]
        ports: healthsense_cli::devnet::Ports,
        #[command(flatten)]
        options: healthsense_cli::devnet::Options,
    },
    /// Stop the devnet (anvil keeps its state for the next `up`).
    Down {
        #[arg(long, default_value = healthsense_cli::devnet::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Say what runs where; exits 1 when the devnet is not running.
    Status {
        #[arg(long, default_value = healthsense_cli::devnet::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// The background process `up` starts.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        ports: healthsense_cli::devnet::Ports,
        #[command(flatten)]
        options: healthsense_cli::devnet::Options,
    },
}

#[derive(Subcommand)]
enum ReadingCmd {
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

#[derive(Subcommand)]
enum BillingCmd {
    /// Pin FILE (the billing rules document) to IPFS and store its CID on chain (admin).
    Publish { file: PathBuf },
    /// Show the billing rules CID and version in force.
    Show,
}

#[derive(Subcommand)]
enum ArchiveCmd {
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
        key: healthsense_cli::archive::KeyArgs,
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
        key: healthsense_cli::archive::KeyArgs,
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

#[derive(Subcommand)]
enum RolesCmd {
    /// Grant ROLE (admin|hub|doctor|insurer) to ADDRESS.
    Grant { role: String, address: Address },
    /// Revoke ROLE from ADDRESS.
    Revoke { role: String, address: Address },
    /// Which roles ADDRESS holds.
    Check { address: Address },
    /// Every current role holder (replayed from the contract's role events).
    List,
}

#[derive(Subcommand)]
enum DeviceCmd {
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

#[derive(Subcommand)]
enum PatientCmd {
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

#[derive(Subcommand)]
enum ChargeCmd {
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

#[derive(Subcommand)]
enum TariffCmd {
    /// Set WARD's bed rate per day (minor units).
    Set { ward: String, rate: u64 },
    /// Show WARD's bed rate per day.
    Show { ward: String },
}

#[derive(Subcommand)]
enum PolicyCmd {
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A service logs what it does; a one-shot command only its warnings.
    let default = if matches!(cli.command, Command::Oracle { .. } | Command::Devnet(DevnetCmd::Serve { .. })) { "info,rumqttd=off" } else { "warn,rumqttd=off" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HEALTHSENSE_LOG").unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = if err.downcast_ref::<healthsense_cli::archive::Tampered>().is_some() {
                exit::TAMPERED
            } else if err.downcast_ref::<healthsense_cli::simulate::NotStored>().is_some() {
                exit::NOT_STORED
            } else if err.downcast_ref::<ConfigError>().is_some() || err.downcast_ref::<healthsense_cli::archive::KeyError>().is_some() {
                exit::CONFIG
            } else if err.downcast_ref::<admin::Refused>().is_some() {
                exit::REFUSED
            } else {
                exit::FAILURE
            };
            ExitCode::from(code)
        }
    }
}

/// Marks an error as a configuration problem (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct ConfigError(anyhow::Error);

async fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Deploy { .. } | Command::Demo | Command::Oracle { .. } | Command::Devnet(_) | Command::Broker(_)) {
        return contract_command(cli).await;
    }
    match cli.command {
        Command::Broker(cmd) => broker_command(cmd, cli.json),
        Command::Devnet(cmd) => devnet_command(cmd, deployment::resolve_path(cli.deployment.clone()), cli.json).await,
        Command::Oracle { config } => {
            let mut cfg = healthsense_oracle::Config::load(&config).map_err(ConfigError)?;
            if cfg.chain.contract.is_none() || cfg.chain.rpc_url.is_none() {
                let path = deployment::resolve_path(cli.deployment.clone());
                let d = Deployment::load(&path).map_err(ConfigError)?;
                cfg.chain.contract.get_or_insert(d.address);
                cfg.chain.rpc_url.get_or_insert(d.rpc_url);
                cfg.chain.chain_id.get_or_insert(d.chain_id);
            }
            healthsense_oracle::run(cfg).await
        }
        Command::Demo => {
            let s = demo::run(cli.json).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!("\nHealthSense demo summary");
            println!("  contract            {}", s.contract);
            println!("  readings anchored   {} in {} Merkle batch(es); {} proven again from the archives", s.readings_anchored, s.batches, s.proofs_verified);
            println!("  transactions        {} ({} gas)", s.transactions, s.gas_used);
            let urgent = if s.deteriorated.is_empty() { "none".to_string() } else { s.deteriorated.join(", ") };
            println!("  NEWS2 >= 5          {urgent}");
            println!("  bills               {:<9} {:>4} {:>10} {:>10} {:>10}  {:<8} archive", "bed", "days", "total", "covered", "due", "verified");
            for b in &s.bills {
                println!("                      {:<9} {:>4} {:>10} {:>10} {:>10}  {:<8} {}", b.bed, b.bed_days, demo::money(b.total), demo::money(b.covered), demo::money(b.due),
                    if b.verified { format!("{} rd", b.readings) } else { "NO".into() }, b.cid);
            }
            println!("  hub store, IPFS     {}", s.workdir);
            println!("  took                {:.1} s", s.seconds);
            println!("\nNext: docs/ARCHIVE.md (what an archive holds and how keys work), docs/ORACLE.md (running a ward hub),");
            println!("      `healthsense --help`, and scripts/test for the whole suite.");
            Ok(())
        }
        Command::Deploy { rpc_url, admin, edition } => {
            let signer = cli.keys.signer().map_err(ConfigError)?;
            let from = signer.address();
            let admin = admin.unwrap_or(from);
            if edition == Edition::Stylus {
                println!("{}", deploy::stylus_steps(rpc_url.as_str(), admin));
                return Ok(());
            }
            let root = tools::project_root().map_err(ConfigError)?;
            let provider = ProviderBuilder::new().wallet(signer).connect_http(rpc_url.clone());
            // Reach the node before building anything, so a wrong URL fails fast.
            provider.get_chain_id().await.with_context(|| format!("cannot reach a node at {rpc_url}"))?;
            let code = artifact::load_or_build(&root)?;
            let d = deploy::deploy_evm(&provider, rpc_url.as_str(), from, admin, code)
                .await
                .with_context(|| format!("deploying to {rpc_url}"))?;
            let path = deployment::resolve_path(cli.deployment);
            d.save(&path)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("deployed HealthSense (EVM edition) at {}", d.address);
                println!("  chain id     {}", d.chain_id);
                println!("  block        {}", d.deploy_block);
                println!("  admin        {}", d.admin);
                println!("  deployment   {}", path.display());
            }
            Ok(())
        }
        _ => unreachable!("contract commands are handled by contract_command"),
    }
}

/// Prints `value` as JSON with --json, else `text`.
fn show(json_out: bool, value: serde_json::Value, text: String) {
    if json_out {
        println!("{value:#}");
    } else {
        println!("{text}");
    }
}

fn done(json_out: bool, what: &str, tx: alloy::primitives::B256) {
    show(json_out, json!({ "ok": true, "tx": tx }), format!("{what} (tx {tx})"));
}

fn device_status(code: u8) -> &'static str {
    status::DeviceStatus::from_code(code).map_or("unknown", |s| s.name())
}

fn patient_status(code: u8) -> &'static str {
    status::PatientStatus::from_code(code).map_or("unknown", |s| s.name())
}

async fn contract_command(cli: Cli) -> Result<()> {
    let path = deployment::resolve_path(cli.deployment.clone());
    let d = deployment::Deployment::load(&path).map_err(ConfigError)?;
    let writes = !matches!(
        cli.command,
        Command::Roles(RolesCmd::Check { .. } | RolesCmd::List)
            | Command::Device(DeviceCmd::Show { .. })
            | Command::Patient(PatientCmd::Show { .. })
            | Command::Charge(ChargeCmd::List { .. })
            | Command::Tariff(TariffCmd::Show { .. })
            | Command::Policy(PolicyCmd::Show { .. })
            | Command::Bill { .. }
            | Command::Billing(BillingCmd::Show)
            | Command::Archive(_)
            | Command::Reading(_)
    );
    let signer = if writes { Some(cli.keys.signer().map_err(ConfigError)?) } else { None };
    let ipfs_api = cli
        .ipfs_api
        .clone()
        .or_else(|| d.ipfs_api.clone())
        .unwrap_or_else(|| healthsense_cli::archive::DEFAULT_IPFS_API.to_string());
    let c = admin::connect(d, signer).map_err(ConfigError)?;
    let j = cli.json;
    match cli.command {
        Command::Simulate { hub, ward, broker, beds, rate, seconds, speed, seed, admit, discharge, wait } => {
            use healthsense_cli::simulate::{self, Bed, Patient, Settings};
            use rand::{Rng, SeedableRng};
            let (host, port) = broker
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .with_context(|| format!("--broker {broker:?} is not HOST:PORT"))
                .map_err(ConfigError)?;
            if !(rate > 0.0 && seconds > 0.0 && speed > 0.0 && wait >= 0.0) {
                return Err(ConfigError(anyhow::anyhow!("--rate, --seconds and --speed must be positive, --wait not negative")).into());
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let tag = format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff);
            let mut ward_beds: Vec<Bed> = (0..beds)
                .map(|i| {
                    let patient = Patient::new(&mut rng, i % 3 == 0, seconds * speed);
                    Bed::new(format!("SIM-{tag}-{i:03}"), patient, &mut rng)
                })
                .collect();
            let ward_id = ids::ward_id(&ward);
            for b in &ward_beds {
                c.send(H::provisionDeviceCall { deviceId: b.device_id(), signer: b.key.address(), ward: ward_id }).await?;
            }
            let domain = healthsense_abi::rules::eip712::domain_separator(c.deployment.chain_id, c.deployment.address);
            let settings = Settings { hub, broker: (host, port), rate, speed, seconds, seed, domain, passwords: Default::default() };
            let mut conn = simulate::connect(&settings, &ward_beds).await?;
            if admit {
                for b in &ward_beds {
                    let p = admin::patient_id(&format!("sim-{}", b.serial)).map_err(ConfigError)?;
                    c.send(H::admitPatientCall { patientId: p, deviceId: b.device_id() }).await?;
                }
            }
            let mut report = simulate::run(&settings, &mut ward_beds, &conn, |r| {
                if !j {
                    eprint!("\r{} readings sent", r.readings);
                }
            })
            .await?;
            let mut published = report.readings + report.states;
            if discharge {
                let topics = healthsense_oracle::protocol::Topics::new(&settings.hub).map_err(anyhow::Error::msg)?;
                for b in &ward_beds {
                    let payload = healthsense_oracle::protocol::sign_discharge(&b.key, domain, &b.serial, 1, healthsense_oracle::ingest::now_ms())?;
                    let topic = topics.device(&b.serial, healthsense_oracle::protocol::DeviceTopic::Discharge);
                    conn.client(&b.serial)?.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await?;
                    published += 1;
                }
            }
            if !conn.flushed(published).await {
                anyhow::bail!("the broker did not acknowledge every reading within 30 s");
            }
            let wait = std::time::Duration::from_secs_f64(wait.min(3_600.0));
            simulate::confirm(&settings, &mut conn, &ward_beds, &mut report, wait).await?;
            if j {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!();
                println!("{} readings published, {} stored by the hub, {} rejected; {} state reports from {} beds",
                    report.readings, report.stored, report.rejected, report.states, beds);
                for (serial, score) in &report.max_news2 {
                    let flag = if *score >= 7 { "emergency" } else if *score >= 5 { "urgent" } else { "" };
                    println!("  {serial}  highest NEWS2 {score:>2}  {flag}");
                }
            }
            report.all_stored()?;
        }
        Command::Roles(RolesCmd::Grant { role, address }) => {
            let r = admin::role(&role).map_err(ConfigError)?;
            done(j, &format!("granted {role} to {address}"), c.send(H::grantRoleCall { role: r, account: address }).await?);
        }
        Command::Roles(RolesCmd::Revoke { role, address }) => {
            let r = admin::role(&role).map_err(ConfigError)?;
            done(j, &format!("revoked {role} from {address}"), c.send(H::revokeRoleCall { role: r, account: address }).await?);
        }
        Command::Roles(RolesCmd::Check { address }) => {
            let mut held = Vec::new();
            for (name, r) in ids::ROLES {
                if c.view(H::hasRoleCall { role: r, account: address }).await? {
                    held.push(name);
                }
            }
            let text = if held.is_empty() { format!("{address}: no roles") } else { format!("{address}: {}", held.join(", ")) };
            show(j, json!({ "address": address.to_string(), "roles": held }), text);
        }
        Command::Roles(RolesCmd::List) => {
            let holders = c.role_holders().await?;
            let text = holders
                .iter()
                .map(|(r, a)| format!("{:<8} {a}", admin::role_name(*r)))
                .collect::<Vec<_>>()
                .join("\n");
            let rows: Vec<_> = holders.iter().map(|(r, a)| json!({ "role": admin::role_name(*r), "account": a.to_string() })).collect();
            show(j, json!(rows), text);
        }
        Command::Device(DeviceCmd::Provision { serial, signer, ward, mqtt_dir }) => {
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
        Command::Device(DeviceCmd::Activate { serial }) => {
            done(j, &format!("activated device {serial}"), c.send(H::activateDeviceCall { deviceId: ids::device_id(&serial) }).await?);
        }
        Command::Device(DeviceCmd::Revoke { serial }) => {
            done(j, &format!("revoked device {serial}"), c.send(H::revokeDeviceCall { deviceId: ids::device_id(&serial) }).await?);
        }
        Command::Device(DeviceCmd::Show { serial }) => {
            let id = ids::device_id(&serial);
            let dv = c.view(H::getDeviceCall { deviceId: id }).await?;
            if dv.status == 0 {
                return Err(admin::Refused { call: "getDevice", reason: format!("no device {serial} ({id}): provision it first") }.into());
            }
            show(
                j,
                json!({ "serial": serial, "id": id, "signer": dv.signer.to_string(), "ward": dv.ward, "status": device_status(dv.status),
                        "patient": dv.patientId, "lastSeq": dv.lastSeq }),
                format!("device {serial}\n  id       {id}\n  signer   {}\n  ward     {}\n  status   {}\n  patient  {}",
                    dv.signer, dv.ward, device_status(dv.status), dv.patientId),
            );
        }
        Command::Patient(PatientCmd::Admit { patient, device, wallet, stay }) => {
            let p = match (wallet, patient) {
                (Some(w), _) => ids::patient_id(w, stay),
                (None, Some(label)) => admin::patient_id(&label).map_err(ConfigError)?,
                (None, None) => return Err(ConfigError(anyhow::anyhow!("give PATIENT or --wallet")).into()),
            };
            let tx = c.send(H::admitPatientCall { patientId: p, deviceId: ids::device_id(&device) }).await?;
            let signin = wallet.map(|w| format!("; the patient signs in with {w} and stay {stay}")).unwrap_or_default();
            show(j, json!({ "ok": true, "tx": tx, "patient": p }), format!("admitted {p} on device {device}{signin} (tx {tx})"));
        }
        Command::Patient(PatientCmd::Show { patient }) => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let r = c.view(H::getPatientCall { patientId: p }).await?;
            if r.status == 0 {
                return Err(admin::Refused { call: "getPatient", reason: format!("no patient {p}: check the id") }.into());
            }
            show(
                j,
                json!({ "id": p, "device": r.deviceId, "ward": r.ward, "status": patient_status(r.status),
                        "admittedAt": r.admittedAt, "dischargedAt": r.dischargedAt, "charges": r.chargeCount }),
                format!("patient {p}\n  status      {}\n  device      {}\n  admitted    {}\n  discharged  {}\n  charges     {}",
                    patient_status(r.status), r.deviceId, r.admittedAt, r.dischargedAt, r.chargeCount),
            );
        }
        Command::Patient(PatientCmd::Discharge { patient }) => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let tx = c.send(H::dischargeCall { patientId: p }).await?;
            let b = c.view(H::getBillCall { patientId: p }).await?;
            show(
                j,
                json!({ "ok": true, "tx": tx, "bedDays": b.bedDays, "total": b.total.to_string(), "covered": b.covered.to_string(), "due": b.due.to_string() }),
                format!("discharged {p} (tx {tx})\n  bed days {}  total {}  covered {}  due {}",
                    b.bedDays, demo::money(b.total), demo::money(b.covered), demo::money(b.due)),
            );
        }
        Command::Charge(ChargeCmd::Add { patient, code, category, quantity, unit_price }) => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let code_id = ids::charge_code(&code).with_context(|| format!("charge code {code:?} must be 1 to 32 bytes")).map_err(ConfigError)?;
            let cat = status::Category::from_name(&category)
                .with_context(|| format!("unknown category {category:?}"))
                .map_err(ConfigError)?;
            let tx = c
                .send(H::addChargeCall { patientId: p, code: code_id, category: cat as u8, quantity, unitPrice: unit_price })
                .await?;
            done(j, &format!("charged {quantity} x {code} ({}) at {} to {p}", cat.name(), demo::money(alloy::primitives::U256::from(unit_price))), tx);
        }
        Command::Charge(ChargeCmd::List { patient }) => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let n = c.view(H::getPatientCall { patientId: p }).await?.chargeCount;
            let mut rows = Vec::new();
            let mut text = format!("{:<4} {:<12} {:<13} {:>8} {:>12}  doctor", "#", "code", "category", "qty", "unit price");
            for i in 0..n {
                let ch = c.view(H::getChargeCall { patientId: p, index: i }).await?;
                let code = ids::charge_code_text(&ch.code).unwrap_or("?").to_string();
                let cat = status::Category::from_code(ch.category).map_or("?", |x| x.name());
                text += &format!("\n{:<4} {:<12} {:<13} {:>8} {:>12}  {}", i, code, cat, ch.quantity,
                    demo::money(alloy::primitives::U256::from(ch.unitPrice)), ch.doctor);
                rows.push(json!({ "index": i, "code": code, "category": cat, "quantity": ch.quantity, "unitPrice": ch.unitPrice, "doctor": ch.doctor.to_string() }));
            }
            show(j, json!(rows), text);
        }
        Command::Tariff(TariffCmd::Set { ward, rate }) => {
            done(j, &format!("{ward}: bed rate {} a day", demo::money(alloy::primitives::U256::from(rate))),
                c.send(H::setTariffCall { ward: ids::ward_id(&ward), dailyRate: rate }).await?);
        }
        Command::Tariff(TariffCmd::Show { ward }) => {
            let r = c.view(H::tariffCall { ward: ids::ward_id(&ward) }).await?;
            show(j, json!({ "ward": ward, "dailyRate": r }), format!("{ward}: {} a day", demo::money(alloy::primitives::U256::from(r))));
        }
        Command::Policy(PolicyCmd::Set { patient, coverage_bps, deductible, cap, categories }) => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let mask = admin::category_mask(&categories).map_err(ConfigError)?;
            let tx = c
                .send(H::setPolicyCall { patientId: p, coverageBps: coverage_bps, deductible, cap, coveredCategories: mask })
                .await?;
            done(j, &format!("policy for {p}: {coverage_bps} bps of {categories}"), tx);
        }
        Command::Policy(PolicyCmd::Show { patient }) => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let q = c.view(H::getPolicyCall { patientId: p }).await?;
            show(
                j,
                json!({ "insurer": q.insurer.to_string(), "coverageBps": q.coverageBps, "deductible": q.deductible, "cap": q.cap, "coveredCategories": q.coveredCategories }),
                format!("policy of {p}\n  insurer     {}\n  coverage    {} bps\n  deductible  {}\n  cap         {}\n  categories  {:#010b}",
                    q.insurer, q.coverageBps, q.deductible, q.cap, q.coveredCategories),
            );
        }
        Command::Bill { patient } => {
            let p = admin::patient_id(&patient).map_err(ConfigError)?;
            let pat = c.view(H::getPatientCall { patientId: p }).await?;
            if pat.status < 2 {
                return Err(admin::Refused { call: "getBill", reason: format!("patient {p} is {}: the bill exists after discharge", patient_status(pat.status)) }.into());
            }
            let b = c.view(H::getBillCall { patientId: p }).await?;
            show(
                j,
                json!({ "patient": p, "bedDays": b.bedDays, "total": b.total.to_string(), "covered": b.covered.to_string(), "due": b.due.to_string(), "rulesVersion": b.rulesVersion }),
                format!("bill of {p}\n  bed days  {}\n  total     {}\n  covered   {}\n  due       {}",
                    b.bedDays, demo::money(b.total), demo::money(b.covered), demo::money(b.due)),
            );
        }
        Command::Billing(BillingCmd::Publish { file }) => {
            let cid = healthsense_cli::archive::publish_rules(&ipfs_api, &file).await?;
            let tx = c.send(H::setBillingRulesCall { cid: cid.clone() }).await?;
            let v = c.view(H::billingRulesCall {}).await?;
            show(j, json!({ "ok": true, "cid": cid, "version": v.version, "tx": tx }),
                format!("published billing rules {} as {cid}, version {} (tx {tx})", file.display(), v.version));
        }
        Command::Billing(BillingCmd::Show) => {
            let v = c.view(H::billingRulesCall {}).await?;
            let text = if v.cid.is_empty() { "no billing rules published yet: `healthsense billing publish FILE`".to_string() }
                else { format!("billing rules version {}: {}", v.version, v.cid) };
            show(j, json!({ "cid": v.cid, "version": v.version }), text);
        }
        Command::Archive(cmd) => archive_command(&c, &ipfs_api, j, cmd).await?,
        Command::Reading(ReadingCmd::Verify { serial, seq, oracle_config, file }) => {
            let proven = match (file, serial, seq, oracle_config) {
                (Some(f), None, None, None) => {
                    let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display())).map_err(ConfigError)?;
                    serde_json::from_str::<healthsense_cli::archive::ProvenReading>(&text)
                        .with_context(|| format!("{} is not {{\"reading\", \"batchId\", \"proof\"}}", f.display()))
                        .map_err(ConfigError)?
                }
                (None, Some(serial), Some(seq), Some(cfg)) => healthsense_cli::archive::stored_reading(&cfg, c.deployment.chain_id, c.deployment.address, &serial, seq)?,
                _ => return Err(ConfigError(anyhow::anyhow!("give SERIAL SEQ --oracle-config FILE, or --file FILE")).into()),
            };
            let leaf = healthsense_abi::rules::reading::reading_leaf(&proven.reading);
            let ok = c.view(H::verifyReadingCall { batchId: proven.batch_id, leaf, proof: proven.proof.clone() }).await?;
            let r = &proven.reading;
            show(j, json!({ "verified": ok, "leaf": leaf, "reading": proven }),
                format!("reading {} of device {}: {} batch {}", r.seq, r.deviceId,
                    if ok { "proven by the root anchored in" } else { "NOT proven by" }, proven.batch_id));
            if !ok {
                return Err(healthsense_cli::archive::Tampered { patient: r.deviceId, count: 1 }.into());
            }
        }
        Command::Pause => done(j, "paused", c.send(H::pauseCall {}).await?),
        Command::Unpause => done(j, "unpaused", c.send(H::unpauseCall {}).await?),
        Command::Deploy { .. } | Command::Demo | Command::Oracle { .. } | Command::Devnet(_) | Command::Broker(_) => {
            unreachable!("handled in run")
        }
    }
    Ok(())
}

async fn archive_command<P: Provider>(c: &admin::Client<P>, ipfs_api: &str, j: bool, cmd: ArchiveCmd) -> Result<()> {
    use healthsense_cli::archive as a;
    use healthsense_oracle::archive::seal::ArchiveScope;
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
            let bytes = a::fetch_sealed(ipfs_api, &cid).await?;
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
                None => a::fetch_sealed(ipfs_api, &cid).await?,
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
                return Err(ConfigError(anyhow::anyhow!("erasing the archive key of {p} cannot be undone: add --yes")).into());
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

async fn devnet_command(cmd: DevnetCmd, deployment: PathBuf, j: bool) -> Result<()> {
    use healthsense_cli::devnet;
    let print = |s: &devnet::State| {
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
        let rows: Vec<_> = services.iter().map(|(n, a, u)| json!({ "service": n, "address": a, "up": u })).collect();
        show(j, json!({ "running": true, "state": s, "services": rows }), text);
    };
    match cmd {
        DevnetCmd::Up { dir, ports, options } => {
            let s = devnet::up(&dir, &deployment, ports, &options)?;
            print(&s);
        }
        DevnetCmd::Down { dir } => {
            let stopped = devnet::down(&dir)?;
            show(j, json!({ "stopped": stopped }), if stopped { "devnet stopped".into() } else { "no devnet running".into() });
        }
        DevnetCmd::Status { dir } => match devnet::running(&dir) {
            Some(s) => print(&s),
            None => {
                show(j, json!({ "running": false }), format!("no devnet running (state in {}); start one with `healthsense devnet up`", dir.display()));
                return Err(NotRunning.into());
            }
        },
        DevnetCmd::Serve { dir, ports, options } => devnet::serve(&dir, &deployment, ports, &options).await?,
    }
    Ok(())
}

fn broker_command(cmd: BrokerCmd, j: bool) -> Result<()> {
    match cmd {
        BrokerCmd::MosquittoConfig(args) => {
            let g = healthsense_cli::broker::mosquitto_config(&args).map_err(ConfigError)?;
            let mut text = format!("wrote {}\n  start: mosquitto -c {}", g.config.display(), g.config.display());
            for (user, file) in &g.hubs {
                text += &format!("\n  hub config: [mqtt] embedded = false, port = {}, username = \"{user}\", password_file = \"{}\"", args.port, file.display());
            }
            text += "\n  devices: healthsense device provision SERIAL ... --mqtt-dir DIR (or broker mosquitto-device)";
            show(j, json!(g), text);
        }
        BrokerCmd::MosquittoDevice { dir, serial } => {
            let password = healthsense_cli::broker::add_device(&dir, &serial).map_err(ConfigError)?;
            show(j, json!({ "mqttUsername": serial, "mqttPassword": password }), format!("MQTT username {serial}, password {password} (shown once; send mosquitto SIGHUP to load it)"));
        }
    }
    Ok(())
}

/// `devnet status` when nothing runs (exit 1, nothing more to say).
#[derive(Debug, thiserror::Error)]
#[error("the devnet is not running")]
struct NotRunning;
