//! `healthsense`: the HealthSense admin command. The command line lives in
//! [`commands`], one module per command family.

use std::process::ExitCode;

use clap::Parser;

mod commands;

fn main() -> ExitCode {
    // Before the runtime's threads exist (the oracle's memory target).
    healthsense_oracle::tune_malloc();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = commands::Cli::parse();
    // A service logs what it does; a one-shot command only its warnings.
    let default = if cli.command.is_service() { "info,rumqttd=off" } else { "warn,rumqttd=off" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HEALTHSENSE_LOG").unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(commands::output::exit_code(&err))
        }
    }
}
