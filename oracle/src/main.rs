//! `healthsense-oracle`: the ward-hub service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Ward-hub oracle: takes device-signed vitals from MQTT, stores them durably
/// and anchors them on chain in Merkle batches.
///
/// The hub key comes from `chain.keystore` in the config (password from
/// `chain.password_file` or HEALTHSENSE_HUB_PASSWORD) or from
/// HEALTHSENSE_HUB_PRIVATE_KEY. Logs: RUST_LOG (default info).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML; see docs/ORACLE.md).
    #[arg(long, short, default_value = "oracle.toml", env = "HEALTHSENSE_ORACLE_CONFIG")]
    config: PathBuf,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
}

fn main() -> ExitCode {
    healthsense_oracle::tune_malloc();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if args.json_logs {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let result = healthsense_oracle::Config::load(&args.config).and_then(|cfg| {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(healthsense_oracle::run(cfg))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthsense-oracle: {e:#}");
            ExitCode::from(1)
        }
    }
}
