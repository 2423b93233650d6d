//! `healthsense simulate`: a simulated ward publishing signed vitals to a hub.

use std::path::PathBuf;

use anyhow::{Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use healthsense_cli::{admin, keys};
use healthsense_cli::simulate::{self, Bed, Patient, Settings};
use rand::{Rng, SeedableRng};

use super::output::{config_error, ConfigError};
use super::{Access, Global};

/// `healthsense simulate ...`
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Hub name (its `hub` config key).
    #[arg(long, default_value = "ward-3", env = "HEALTHSENSE_HUB")]
    hub: String,
    /// Ward the devices are provisioned for.
    #[arg(long, default_value = "ward-3", env = "HEALTHSENSE_WARD")]
    ward: String,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883", env = "HEALTHSENSE_BROKER")]
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
    /// Admit a patient (stay label `sim-SERIAL`) on each bed after hello, as the doctor of
    /// --doctor-keystore (else the signing key, which must then also hold DOCTOR).
    #[arg(long)]
    admit: bool,
    /// Keystore of the doctor who admits with --admit (the devnet's keys/doctor.json)
    /// [default: the signing key].
    #[arg(long, value_name = "FILE", env = "HEALTHSENSE_DOCTOR_KEYSTORE")]
    doctor_keystore: Option<PathBuf>,
    /// File whose first line is the doctor keystore's password [default: --password-file's, or
    /// $HEALTHSENSE_PASSWORD].
    #[arg(long, value_name = "FILE", env = "HEALTHSENSE_DOCTOR_PASSWORD_FILE")]
    doctor_password_file: Option<PathBuf>,
    /// With --admit, the bed rate (minor units a day) set for --ward if it has none yet:
    /// the contract admits no one to a ward without a tariff. An existing rate is kept.
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1..))]
    bed_rate: u64,
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
    let SimulateArgs { hub, ward, broker, beds, rate, seconds, speed, seed, admit, doctor_keystore, doctor_password_file, bed_rate, discharge, wait } =
        args;
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker {broker:?} is not HOST:PORT"))
        .map_err(ConfigError)?;
    if !(rate > 0.0 && seconds > 0.0 && speed > 0.0 && wait >= 0.0) {
        return Err(config_error("--rate, --seconds and --speed must be positive, --wait not negative"));
    }
    // The admitting doctor, checked before any device is provisioned so a
    // wrong key costs nothing.
    let own_doctor;
    let doctor = match (admit, doctor_keystore) {
        (false, _) => None,
        (true, None) => Some(&c),
        (true, Some(path)) => {
            let password_file = doctor_password_file.as_deref().or(g.keys.password_file.as_deref());
            let key = keys::open_keystore(&path, password_file).map_err(ConfigError)?;
            own_doctor = admin::connect(c.deployment.clone(), Some(key)).map_err(ConfigError)?;
            Some(&own_doctor)
        }
    };
    if let Some(d) = doctor {
        if !d.view(H::hasRoleCall { role: ids::DOCTOR_ROLE, account: d.from }).await? {
            return Err(admin::Declined {
                command: "simulate --admit".into(),
                reason: format!(
                    "{} lacks the doctor role, so it cannot admit: pass --doctor-keystore FILE of a doctor (a devnet's keys/doctor.json), \
                     or grant it with `healthsense roles grant doctor {}`",
                    d.from, d.from
                ),
            }
            .into());
        }
    }
    let ward_id = ids::ward_id(&ward);
    // The provisioning key (an admin) prices the ward first when it has no
    // bed rate, since the contract refuses admission to an unpriced ward.
    if doctor.is_some() && c.view(H::tariffCall { ward: ward_id }).await? == 0 {
        c.send(H::setTariffCall { ward: ward_id, dailyRate: bed_rate }).await?;
        if !j {
            eprintln!("{ward} had no bed rate: set it to {} a day (--bed-rate)", super::output::money(bed_rate));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tag = format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff);
    let mut ward_beds: Vec<Bed> = (0..beds)
        .map(|i| {
            let patient = Patient::new(&mut rng, i % 3 == 0, seconds * speed);
            Bed::new(format!("SIM-{tag}-{i:03}"), patient, &mut rng)
        })
        .collect();
    for b in &ward_beds {
        c.send(H::provisionDeviceCall { deviceId: b.device_id(), signer: b.key.address(), ward: ward_id }).await?;
    }
    let domain = healthsense_abi::rules::eip712::domain_separator(c.deployment.chain_id, c.deployment.address);
    let settings = Settings { hub, broker: (host, port), rate, speed, seconds, seed, domain, passwords: Default::default() };
    let mut conn = simulate::connect(&settings, &ward_beds).await?;
    if let Some(d) = doctor {
        for b in &ward_beds {
            let p = admin::patient_id(&format!("sim-{}", b.serial)).map_err(ConfigError)?;
            d.send(H::admitPatientCall { patientId: p, deviceId: b.device_id() }).await?;
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
