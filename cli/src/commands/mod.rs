//! The `healthsense` command line, one module per command family, as cargo
//! and ripgrep lay theirs out: each module holds its clap definitions, makes
//! its calls and renders its output (human text or `--json`, through
//! [`output`]). This file holds the global flags, the list of commands and
//! the dispatch.

use std::path::PathBuf;

use alloy::providers::DynProvider;
use anyhow::Result;
use clap::{Parser, Subcommand};
use healthsense_cli::admin::{self, Client};
use healthsense_cli::deployment::{self, Deployment};
use healthsense_cli::keys::KeyArgs;

pub mod archive;
pub mod billing;
pub mod broker;
pub mod contract;
pub mod demo;
pub mod devices;
pub mod devnet;
pub mod oracle;
pub mod output;
pub mod patients;
pub mod roles;
pub mod simulate;

use output::ConfigError;

/// The whole command line.
#[derive(Parser)]
#[command(
    name = "healthsense",
    version,
    about = "Administer a HealthSense deployment: contract, devices, patients, billing",
    long_about = "Administer a HealthSense deployment.\n\n\
        Exit codes: 0 success, 1 failure (I/O, RPC, node, unreadable archive), 2 usage error, 3 configuration or key \
        missing/invalid, 4 the call was refused, by the contract or by healthsense's own check of the chain first (the \
        message says which, why and what to do), 5 an archive does not match the chain (tampered), 6 `simulate`: a \
        reading was not confirmed stored by the hub."
)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes: output format, deployment, IPFS, signing key.
#[derive(clap::Args)]
pub struct Global {
    /// Print machine-readable JSON instead of human text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deployment file to read or write [default: $HEALTHSENSE_DEPLOYMENT, else .healthsense/deployment.json, else
    /// .healthsense/devnet/deployment.json].
    #[arg(long, global = true)]
    pub deployment: Option<PathBuf>,
    /// Kubo RPC endpoint for archives and billing rules [default: the deployment file's, else http://127.0.0.1:5001].
    #[arg(long, global = true, env = "HEALTHSENSE_IPFS_API")]
    pub ipfs_api: Option<String>,
    /// The signing key.
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// Every command.
#[derive(Subcommand)]
pub enum Command {
    /// Deploy the contract and write the deployment file.
    ///
    /// The EVM edition is deployed directly to any JSON-RPC endpoint (anvil, a testnet,
    /// a consortium chain). For the Stylus edition this prints the cargo-stylus steps.
    Deploy(contract::DeployArgs),
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
    Devnet(devnet::DevnetCmd),
    /// Configure an external MQTT broker (Mosquitto) with device passwords and topic ACLs.
    #[command(subcommand)]
    Broker(broker::BrokerCmd),
    /// Run a ward-hub oracle: MQTT ingest of signed vitals, durable store, anchoring.
    ///
    /// Reads a TOML config (docs/ORACLE.md); chain.rpc_url and chain.contract default to the
    /// deployment file's. The hub key comes from chain.keystore in the config or from
    /// HEALTHSENSE_HUB_PRIVATE_KEY. Runs until Ctrl-C or SIGTERM, then drains and stops.
    Oracle(oracle::OracleArgs),
    /// Simulate a ward: bedside devices with their own keys and believable patients.
    ///
    /// Provisions BEDS new devices for WARD (admin key), says hello to the hub on the
    /// broker, then sends EIP-712-signed SenML vitals at RATE per bed per second for
    /// SECONDS: physiology with drift and a daily rhythm, a deterioration episode in every
    /// third patient (SPEED simulated seconds per second), battery and sleep cycles.
    /// Ends with each bed's highest NEWS2.
    Simulate(simulate::SimulateArgs),
    /// Grant, revoke or check roles (admin, hub, doctor, insurer).
    #[command(subcommand)]
    Roles(roles::RolesCmd),
    /// Provision, activate, revoke or show a bedside device.
    #[command(subcommand)]
    Device(devices::DeviceCmd),
    /// Admit, show or discharge a patient stay.
    #[command(subcommand)]
    Patient(patients::PatientCmd),
    /// Add or list a stay's charges (doctor).
    #[command(subcommand)]
    Charge(billing::ChargeCmd),
    /// Set or show a ward's bed rate per day, in minor currency units (admin).
    #[command(subcommand)]
    Tariff(billing::TariffCmd),
    /// Set or show a stay's insurance policy (insurer).
    #[command(subcommand)]
    Policy(billing::PolicyCmd),
    /// Show the bill computed at discharge.
    Bill(billing::BillArgs),
    /// Publish or show the billing rules document (pinned to IPFS, CID on chain).
    #[command(subcommand)]
    Billing(billing::BillingCmd),
    /// Fetch, verify, or manage the key of a discharged patient's encrypted IPFS archive.
    ///
    /// The hub archives each stay after discharge (docs/ARCHIVE.md). A patient or doctor
    /// holds a patient key file (`archive key` on the hub makes one); on the hub machine
    /// --oracle-config derives it from the master key instead.
    #[command(subcommand)]
    Archive(archive::ArchiveCmd),
    /// Check one stored reading and its Merkle proof against the anchored batch root on chain.
    #[command(subcommand)]
    Reading(archive::ReadingCmd),
    /// Emergency stop of every state change except role management (admin).
    Pause,
    /// Lift the emergency stop (admin).
    Unpause,
}

impl Command {
    /// Whether the command runs as a service (it logs what it does) rather
    /// than once (it logs only its warnings).
    pub fn is_service(&self) -> bool {
        matches!(self, Command::Oracle(_) | Command::Devnet(devnet::DevnetCmd::Serve { .. }))
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Deploy(args) => contract::deploy(args, g).await,
        Command::Demo => demo::run(g).await,
        Command::Devnet(cmd) => devnet::run(cmd, g).await,
        Command::Broker(cmd) => broker::run(cmd, g),
        Command::Oracle(args) => oracle::run(args, g).await,
        Command::Simulate(args) => simulate::run(args, g).await,
        Command::Roles(cmd) => roles::run(cmd, g).await,
        Command::Device(cmd) => devices::run(cmd, g).await,
        Command::Patient(cmd) => patients::run(cmd, g).await,
        Command::Charge(cmd) => billing::charge(cmd, g).await,
        Command::Tariff(cmd) => billing::tariff(cmd, g).await,
        Command::Policy(cmd) => billing::policy(cmd, g).await,
        Command::Bill(args) => billing::bill(args, g).await,
        Command::Billing(cmd) => billing::billing(cmd, g).await,
        Command::Archive(cmd) => archive::run(cmd, g).await,
        Command::Reading(cmd) => archive::reading(cmd, g).await,
        Command::Pause => contract::pause(true, g).await,
        Command::Unpause => contract::pause(false, g).await,
    }
}

/// Whether a contract command reads only or also signs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Views only: no key needed.
    Read,
    /// Sends transactions: the signing key is loaded.
    Write,
}

impl Global {
    /// The deployment file's path (flag, `HEALTHSENSE_DEPLOYMENT`, default).
    pub fn deployment_path(&self) -> PathBuf {
        deployment::resolve_path(self.deployment.clone())
    }

    /// The deployment (exit 3 when missing).
    pub fn load_deployment(&self) -> Result<Deployment> {
        Ok(Deployment::load(&self.deployment_path()).map_err(ConfigError)?)
    }

    /// A client of the deployment's contract, with the signing key for `Write`.
    pub fn client(&self, access: Access) -> Result<Client<DynProvider>> {
        let d = self.load_deployment()?;
        let signer = match access {
            Access::Write => Some(self.keys.signer().map_err(ConfigError)?),
            Access::Read => None,
        };
        Ok(admin::connect(d, signer).map_err(ConfigError)?)
    }

    /// The Kubo RPC endpoint: the flag, else the deployment file's, else the default.
    pub fn ipfs_api(&self, d: &Deployment) -> String {
        self.ipfs_api
            .clone()
            .or_else(|| d.ipfs_api.clone())
            .unwrap_or_else(|| healthsense_cli::archive::DEFAULT_IPFS_API.to_string())
    }
}
