//! `healthsense simulate`: a simulated ward publishing signed vitals to a hub.

use anyhow::{Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use healthsense_cli::admin;
use healthsense_cli::simulate::{self, Bed, Patient, Settings};
use rand::{Rng, SeedableRng};

use super::output::{config_error, ConfigError};
use super::{Access, Global};

/// `healthsense simulate ...`
#[derive(clap::Args)]
pub struct SimulateArgs {
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
}

/// Provisions the beds, runs the ward and reports what the hub stored
/// (exit 6 when a published reading was not confirmed stored).
pub async fn run(args: SimulateArgs, g: &Global) -> Result<()> {
    let c = g.client(Access::Write)?;
    let j = g.json;
    let SimulateArgs { hub, ward, broker, beds, rate, seconds, speed, seed, admit, discharge, wait } = args;
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker {broker:?} is not HOST:PORT"))
        .map_err(ConfigError)?;
    if !(rate > 0.0 && seconds > 0.0 && speed > 0.0 && wait >= 0.0) {
        return Err(config_error("--rate, --seconds and --speed must be positive, --wait not negative"));
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
    Ok(())
}
