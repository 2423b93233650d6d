//! `healthsense-bench`: measures the oracle against the DESIGN.md targets,
//! each as a ratio to a baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p healthsense-cli --bin healthsense-bench -- oracle
//! cargo run --release -p healthsense-cli --bin healthsense-bench -- alerts
//! cargo run --release -p healthsense-cli --bin healthsense-bench -- archive
//! cargo run --release -p healthsense-cli --bin healthsense-bench -- store
//! ```
//!
//! `archive` is in `archive.rs`: a 7-day stay from discharge to CID on chain.
//!
//! `store` is in `store.rs`: ingest commit times on the hub store alone,
//! without and with the anchorer's batch cut every second.
//!
//! `alerts` measures publish -> NEWS2 alert received on `hs/v1/{hub}/alerts`
//! (target p99 <= 100 ms): devices alternate normal and septic readings, so
//! every reading changes its device's alert level and raises an alert, at
//! `--alert-rate` readings per second on top of the same rate of steady
//! readings from other devices.
//!
//! Phases (one anvil, one deployment):
//! 1. raw k256: verify pre-signed reading digests on the rayon pool (the
//!    same threads the oracle verifies on) - the baseline;
//! 2. ingest: the same number of pre-signed readings published over the
//!    embedded broker to an in-process hub, timed until the last commit;
//! 3. latency: readings paced at `--rate` per second, publish -> commit;
//! 4. gas: anchorBatch at 2,000 readings per batch against one postReadings
//!    transaction per reading;
//! 5. memory: a `healthsense oracle` process serving `--beds` devices at one
//!    reading per bed per second, RSS against the same process idle.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::network::TransactionBuilder;
use alloy::node_bindings::Anvil;
use alloy::primitives::{Address, Bytes, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::{SolCall, SolEvent};
use anyhow::{bail, Context, Result};
use clap::Parser;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{eip712, ids};
use healthsense_abi::Reading;
use healthsense_cli::{artifact, deploy, tools};
use healthsense_oracle::protocol::{self, DeviceTopic, Topics};
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use rayon::prelude::*;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;

mod archive;
mod store;

#[derive(Parser)]
#[command(about = "Benchmarks the HealthSense oracle against its targets (docs/BENCHMARKS.md)")]
struct Args {
    /// What to measure.
    #[arg(value_parser = ["oracle", "archive", "alerts", "store"])]
    what: String,
    /// Readings of the archived stay (archive: 604,800 = 7 days at 1 Hz).
    #[arg(long, default_value_t = 604_800)]
    stay_readings: u64,
    /// Readings in the throughput phases.
    #[arg(long, default_value_t = 40_000)]
    readings: usize,
    /// Devices the throughput readings come from.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Paced rate of the latency phase, readings/s.
    #[arg(long, default_value_t = 2_000)]
    rate: usize,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
    /// Beds of the memory phase (one reading per bed per second).
    #[arg(long, default_value_t = 2_000)]
    beds: usize,
    /// Length of the memory phase, seconds (long enough by default for the
    /// embedded broker's log to reach its bound at 2,000 beds).
    #[arg(long, default_value_t = 60)]
    memory_seconds: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    /// Run the throughput and latency phases through a Mosquitto the bench
    /// starts instead of the embedded rumqttd.
    #[arg(long)]
    mosquitto: bool,
    /// Mosquitto's QoS 1 window per client (`max_inflight_messages`); 1000
    /// is the embedded rumqttd's (fixed; 100 in the unpatched release,
    /// vendor/rumqttd/PATCHES.md), for comparing the brokers like for like.
    #[arg(long, default_value_t = 1000, requires = "mosquitto")]
    mosquitto_inflight: u32,
    /// Run the throughput and latency phases with the broker's authentication
    /// and ACLs off (they are on by default), for the ratio between the two.
    #[arg(long)]
    no_auth: bool,
    /// Alert-raising readings per second in the alerts phase.
    #[arg(long, default_value_t = 200)]
    alert_rate: usize,
    /// Length of the alerts phase, seconds.
    #[arg(long, default_value_t = 15)]
    alert_seconds: u64,
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Bed {
    serial: String,
    key: PrivateKeySigner,
}

fn reading(serial: &str, seq: u64, i: u64) -> Reading {
    healthsense_cli::simulate::steady_reading(serial, seq, i)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The benchmarks' chain. `--prune-history` keeps anvil's past states in
/// memory: by default it writes them to disk as new files, and the ext4
/// journal commits that follow stalled every fsync on the machine, the hub
/// store's included, for 80-160 ms every 5 s (seen by an fsync probe on an
/// unrelated file): anvil's disk, not the hub's, set the ingest p99.
fn start_anvil(root: &std::path::Path) -> Result<alloy::node_bindings::AnvilInstance> {
    Anvil::new().path(tools::foundry_tool(root, "anvil")?).arg("--prune-history").try_spawn().context("starting anvil")
}

/// Milliseconds from each `sent` time to its `arrived` time, sorted, with
/// p50, p99 and max.
fn latencies<K: std::hash::Hash + Eq>(sent: &HashMap<K, Instant>, arrived: &HashMap<K, Instant>) -> (Vec<f64>, f64, f64, f64) {
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(k, s)| arrived.get(k).map(|a| a.saturating_duration_since(*s).as_secs_f64() * 1e3))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (percentile(&lat, 0.50), percentile(&lat, 0.99), lat.last().copied().unwrap_or(f64::NAN));
    (lat, p50, p99, max)
}

fn rss_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>()))
        .context("no such field")?
        .context("bad number")
}

/// Broker acknowledgements received by the publishers.
static PUBACKS: AtomicUsize = AtomicUsize::new(0);

/// A publishing client; `key` renews a device's signed login before each
/// reconnection.
async fn publisher(opts: MqttOptions, capacity: usize, key: Option<PrivateKeySigner>) -> AsyncClient {
    let mut opts = opts;
    opts.set_keep_alive(Duration::from_secs(30)).set_inflight(u16::MAX).set_max_packet_size(1 << 20, 1 << 20);
    let id = opts.client_id();
    let (client, eventloop) = AsyncClient::new(opts, capacity);
    healthsense_cli::simulate::drive(eventloop, id, key, |ev| {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev {
            PUBACKS.fetch_add(1, Ordering::Relaxed);
        }
    });
    client
}

/// One MQTT client per device, each logged in as itself: with a signed
/// login (the embedded broker), a password (`passwords`, Mosquitto's file),
/// or none (authentication off).
async fn device_clients(port: u16, devs: &[Bed], auth: Login<'_>, capacity: usize) -> Result<Vec<AsyncClient>> {
    let mut clients = Vec::with_capacity(devs.len());
    for b in devs {
        let opts = match auth {
            Login::Signed => healthsense_cli::simulate::device_options("127.0.0.1", port, &b.serial, &b.key, None)?,
            Login::Passwords(p) => {
                let password = p.get(&b.serial).context("no password")?;
                healthsense_cli::simulate::device_options("127.0.0.1", port, &b.serial, &b.key, Some(password))?
            }
            Login::Open => MqttOptions::new(b.serial.clone(), "127.0.0.1", port),
        };
        let key = matches!(auth, Login::Signed).then(|| b.key.clone());
        clients.push(publisher(opts, capacity, key).await);
    }
    Ok(clients)
}

#[derive(Clone, Copy)]
enum Login<'a> {
    Signed,
    Passwords(&'a HashMap<String, String>),
    Open,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEALTHSENSE_LOG").unwrap_or_else(|_| "warn,rumqttd=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.what == "archive" {
        return archive::run(args.stay_readings, args.json).await;
    }
    if args.what == "store" {
        let settings =
            store::Settings { readings: args.readings, beds: args.beds, rate: args.rate, seconds: args.latency_seconds };
        return tokio::task::spawn_blocking(move || store::run(&settings, args.json)).await?;
    }
    let threads = rayon::current_num_threads();
    if args.what == "alerts" {
        return alerts(&args).await;
    }
    let root = tools::project_root()?;
    let anvil = start_anvil(&root)?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let (admin, hub, hub2) = (anvil.addresses()[0], anvil.addresses()[1], anvil.addresses()[2]);
    let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, artifact::load_or_build(&root)?).await?;
    let contract = d.address;
    let domain = eip712::domain_separator(d.chain_id, contract);
    // A fresh provider per call: the hub account also sends from the oracle,
    // so a cached nonce would go stale.
    let url = anvil.endpoint_url();
    let send = |from: Address, input: Vec<u8>| {
        let tx = TransactionRequest::default().with_from(from).with_to(contract).with_input(input);
        let p = ProviderBuilder::new().connect_http(url.clone());
        async move { anyhow::Ok(p.send_transaction(tx).await?.get_receipt().await?) }
    };
    for h in [hub, hub2] {
        send(admin, H::grantRoleCall { role: ids::HUB_ROLE, account: h }.abi_encode()).await?;
    }
    let n_beds = args.devices.max(args.beds);
    eprintln!("provisioning and activating {n_beds} devices ...");
    let ward = ids::ward_id("bench");
    let beds: Vec<Bed> = (0..n_beds).map(|i| Bed { serial: format!("BENCH-{i:05}"), key: PrivateKeySigner::random() }).collect();
    let mut pending = Vec::new();
    let batch_provider = ProviderBuilder::new().connect_http(url.clone());
    for b in &beds {
        let id = ids::device_id(&b.serial);
        let calls = [
            (admin, H::provisionDeviceCall { deviceId: id, signer: b.key.address(), ward }.abi_encode()),
            (hub, H::activateDeviceCall { deviceId: id }.abi_encode()),
        ];
        for (from, input) in calls {
            let tx = TransactionRequest::default().with_from(from).with_to(contract).with_input(input);
            pending.push(batch_provider.send_transaction(tx).await?);
        }
    }
    for p in pending {
        p.get_receipt().await?;
    }

    // 1. Raw k256 verification: the baseline.
    let devs = &beds[..args.devices];
    let signed: Vec<(Reading, Vec<u8>, usize)> = (0..args.readings)
        .into_par_iter()
        .map(|i| {
            let k = i % devs.len();
            let r = reading(&devs[k].serial, 2 + (i / devs.len()) as u64, i as u64);
            let payload = protocol::sign_vitals(&devs[k].key, domain, &devs[k].serial, &r).unwrap_or_default();
            (r, payload, k)
        })
        .collect();
    let prepared: Vec<(k256::ecdsa::VerifyingKey, B256, k256::ecdsa::Signature)> = signed
        .par_iter()
        .map(|(r, _, k)| {
            let digest = eip712::reading_digest(domain, r);
            let sig = devs[*k].key.sign_hash_sync(&digest).expect("signing");
            (*devs[*k].key.credential().verifying_key(), digest, sig.to_k256().expect("k256 signature"))
        })
        .collect();
    let t = Instant::now();
    let ok = prepared.par_iter().filter(|(vk, digest, sig)| vk.verify_prehash(digest.as_slice(), sig).is_ok()).count();
    let raw_secs = t.elapsed().as_secs_f64();
    if ok != prepared.len() {
        bail!("baseline verification failed for {} readings", prepared.len() - ok);
    }
    let raw_rate = args.readings as f64 / raw_secs;

    // 2. Ingest over MQTT into an in-process hub.
    let dir = tempfile::tempdir()?;
    let committed = Arc::new(AtomicUsize::new(0));
    let commit_times: Arc<Mutex<Option<HashMap<(B256, u64), Instant>>>> = Arc::new(Mutex::new(None));
    let hook = {
        let (committed, times) = (committed.clone(), commit_times.clone());
        Arc::new(move |rs: &[healthsense_oracle::store::NewReading], at: Instant| {
            committed.fetch_add(rs.len(), Ordering::SeqCst);
            if let Ok(mut guard) = times.lock() {
                if let Some(map) = guard.as_mut() {
                    for r in rs {
                        map.insert((r.reading.deviceId, r.reading.seq), at);
                    }
                }
            }
        })
    };
    // The broker is the bench's own (as a ward's broker would be), so the hub
    // can be stopped while readings queue for its persistent session. With
    // authentication (the default) the hub logs in with its password and
    // every device as itself; `--no-auth` runs the same brokers open.
    let auth = !args.no_auth;
    let mut _mosquitto = None;
    let hub_password = dir.path().join("hub.password");
    let mut passwords = HashMap::new();
    let port = if args.mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf_dir = dir.path().join("mosquitto");
        let g = healthsense_cli::broker::mosquitto_config(&healthsense_cli::broker::MosquittoArgs {
            dir: conf_dir.clone(),
            hubs: vec!["bench".into()],
            port,
            bind: "127.0.0.1".into(),
            user: "mosquitto".into(),
        })?;
        std::fs::copy(&g.hubs[0].1, &hub_password)?;
        let mut text = std::fs::read_to_string(&g.config)?
            .replace("max_inflight_messages 1000", &format!("max_inflight_messages {}", args.mosquitto_inflight))
            .replace("persistence true", "persistence false");
        if auth {
            for b in &beds[..args.devices] {
                passwords.insert(b.serial.clone(), healthsense_cli::broker::add_device(&conf_dir, &b.serial)?);
            }
        } else {
            // Open: anonymous clients, no password or ACL file, and no
            // username as client id (Mosquitto refuses a client without a
            // username when that is on).
            text = text
                .replace("allow_anonymous false", "allow_anonymous true")
                .replace("use_username_as_clientid true", "")
                .replace(&format!("password_file {}", g.password_file.display()), "")
                .replace(&format!("acl_file {}", g.acl_file.display()), "");
        }
        std::fs::write(&g.config, text)?;
        let child = std::process::Command::new("mosquitto").arg("-c").arg(&g.config).stderr(std::process::Stdio::null()).spawn()?;
        _mosquitto = Some(KillOnDrop(child));
        tokio::time::sleep(Duration::from_millis(300)).await;
        port
    } else {
        let broker_auth = if auth {
            let secret = alloy::hex::encode(rand::random::<[u8; 24]>());
            std::fs::write(&hub_password, &secret)?;
            let chain = healthsense_oracle::chain::Chain::connect(anvil.endpoint().as_str(), contract, PrivateKeySigner::random(), None).await?;
            let logins = healthsense_oracle::broker::DeviceLogins::new(chain, None, tokio::runtime::Handle::current());
            Some(healthsense_oracle::broker::BrokerAuth::new(vec![("bench".into(), secret)], logins)?)
        } else {
            None
        };
        healthsense_oracle::broker::start_embedded(healthsense_oracle::broker::Listeners::v311("127.0.0.1:0".parse()?), broker_auth)?.v311.port()
    };
    let mqtt_login = match auth {
        true => format!("username = \"{}\"\npassword_file = \"{}\"\n", healthsense_oracle::broker::hub_username("bench"), hub_password.display()),
        false => "auth = false\n".into(),
    };
    let cfg = healthsense_oracle::Config::parse(&format!(
        "hub = \"bench\"\nward = \"bench\"\nstore = \"{}\"\n[chain]\nrpc_url = \"{}\"\ncontract = \"{contract}\"\n\
         [mqtt]\nembedded = false\nport = {port}\n{mqtt_login}[anchor]\nbatch_size = 2000\ninterval_ms = 2000\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("hub.sqlite").display(),
        anvil.endpoint()
    ))?;
    let hub_key = PrivateKeySigner::from_signing_key(anvil.keys()[1].clone().into());
    let options = healthsense_oracle::Options { on_commit: Some(hook) };
    let running = healthsense_oracle::start(cfg.clone(), hub_key.clone(), options.clone()).await?;
    let topics = Topics::new("bench").map_err(anyhow::Error::msg)?;
    let login = match (auth, args.mosquitto) {
        (false, _) => Login::Open,
        (true, true) => Login::Passwords(&passwords),
        (true, false) => Login::Signed,
    };
    let clients = device_clients(port, devs, login, 2 * args.readings / devs.len() + 2 * args.rate * args.latency_seconds as usize / devs.len() + 1_000).await?;
    // Warm-up: one reading per device loads the device cache.
    for (k, b) in devs.iter().enumerate() {
        let r = reading(&b.serial, 1, k as u64);
        let payload = protocol::sign_vitals(&b.key, domain, &b.serial, &r)?;
        clients[k].publish(topics.device(&b.serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await?;
    }
    wait_for(&committed, devs.len(), "warm-up").await?;

    // 2a. Live: the devices publish while the hub ingests (their signing and
    // MQTT client run on the same two cores, which a ward's devices do not).
    let half = args.readings / 2;
    let t = Instant::now();
    for (_, payload, k) in &signed[..half] {
        clients[*k].publish(topics.device(&devs[*k].serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload.clone()).await?;
    }
    wait_for(&committed, devs.len() + half, "live ingest").await?;
    let live_rate = half as f64 / t.elapsed().as_secs_f64();

    // 2b. Queued: the same number of readings wait in the broker for the
    // hub's session while it is down (a restart, or a burst); the clock runs
    // from the hub's start to its last commit: the hub's own capacity.
    running.shutdown().await;
    let acked = PUBACKS.load(Ordering::SeqCst);
    for (_, payload, k) in &signed[half..] {
        clients[*k].publish(topics.device(&devs[*k].serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload.clone()).await?;
    }
    wait_for(&PUBACKS, acked + (args.readings - half), "broker acknowledgements").await?;
    let t = Instant::now();
    let running = healthsense_oracle::start(cfg, hub_key, options).await?;
    wait_for(&committed, devs.len() + args.readings, "queued ingest").await?;
    let ingest_rate = (args.readings - half) as f64 / t.elapsed().as_secs_f64();

    // The backlog of the throughput phases is anchored first, so the latency
    // phase measures the steady state (with its own batches cut as it goes).
    let binding = healthsense_oracle::store::Binding { chain_id: d.chain_id, contract, hub };
    let store = healthsense_oracle::store::Store::open(&dir.path().join("hub.sqlite"), binding)?;
    wait_anchored(&store, committed.load(Ordering::SeqCst)).await?;

    // 3. Latency at a paced rate.
    *commit_times.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(HashMap::new());
    let total = args.rate * args.latency_seconds as usize;
    let base = committed.load(Ordering::SeqCst);
    let mut published: HashMap<(B256, u64), Instant> = HashMap::with_capacity(total);
    let tick = Duration::from_millis(10);
    let per_tick = (args.rate / 100).max(1);
    let start_seq = 10 + (args.readings / devs.len()) as u64;
    let mut interval = tokio::time::interval(tick);
    let mut sent = 0usize;
    while sent < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let k = sent % devs.len();
            let r = reading(&devs[k].serial, start_seq + (sent / devs.len()) as u64, sent as u64);
            let payload = protocol::sign_vitals(&devs[k].key, domain, &devs[k].serial, &r)?;
            let key = (r.deviceId, r.seq);
            clients[k].publish(topics.device(&devs[k].serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await?;
            published.insert(key, Instant::now());
            sent += 1;
        }
    }
    wait_for(&committed, base + total, "latency phase").await?;
    let times = commit_times.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take().unwrap_or_default();
    let (lat, p50, p99, max) = latencies(&published, &times);

    // 4. Gas: full batches against one transaction per reading.
    wait_anchored(&store, committed.load(Ordering::SeqCst)).await?;
    running.shutdown().await;
    let logs = provider
        .get_logs(&Filter::new().address(contract).from_block(0).event_signature(H::BatchAnchored::SIGNATURE_HASH))
        .await?;
    let mut full = Vec::new();
    for log in logs {
        let e = H::BatchAnchored::decode_log_data(log.data())?;
        if e.leafCount == 2_000 {
            let tx = log.transaction_hash.context("log without tx")?;
            full.push(provider.get_transaction_receipt(tx).await?.context("receipt")?.gas_used);
        }
    }
    if full.is_empty() {
        bail!("no full 2,000-reading batch was anchored; raise --readings");
    }
    let batch_gas = full.iter().sum::<u64>() as f64 / full.len() as f64;
    let mut single = Vec::new();
    for (k, b) in devs.iter().take(20).enumerate() {
        let r = reading(&b.serial, 1_000_000_000, k as u64);
        let sig = b.key.sign_hash_sync(&eip712::reading_digest(domain, &r))?;
        let call = H::postReadingsCall { readings: vec![r.into()], signatures: vec![Bytes::copy_from_slice(&sig.as_bytes())] };
        single.push(send(hub, call.abi_encode()).await?.gas_used);
    }
    let single_gas = single.iter().sum::<u64>() as f64 / single.len() as f64;
    let per_reading = batch_gas / 2_000.0;

    // 5. Memory: a separate oracle process at `beds` readings per second.
    let (idle_kib, peak_kib) = memory(&args, &root, &anvil, contract, domain, &beds, dir.path().into()).await?;

    let report = json!({
        "threads": threads,
        "raw_k256_verify_per_s": raw_rate.round(),
        "ingest_per_s": ingest_rate.round(),
        "ingest_live_per_s": live_rate.round(),
        "ingest_vs_raw": ingest_rate / raw_rate,
        "latency_rate_per_s": args.rate,
        "latency_ms": { "p50": p50, "p99": p99, "max": max, "samples": lat.len() },
        "gas": { "anchor_batch": batch_gas, "per_reading_at_2000": per_reading, "one_tx_per_reading": single_gas,
                 "ratio": per_reading / single_gas },
        "memory": { "beds": args.beds, "idle_mib": idle_kib as f64 / 1024.0, "peak_mib": peak_kib as f64 / 1024.0 },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("HealthSense oracle benchmark ({threads} verification threads)");
    println!("  raw k256 verification   {raw_rate:>10.0} readings/s  (baseline)");
    let broker = if args.mosquitto { "Mosquitto" } else { "rumqttd" };
    println!(
        "  ingest, queued ({broker:>9}) {ingest_rate:>7.0} readings/s  = {:.0}% of raw   (target >= 60% and >= 10,000/s)",
        100.0 * ingest_rate / raw_rate
    );
    println!(
        "  ingest, live   ({broker:>9}) {live_rate:>7.0} readings/s  = {:.0}% of raw   (devices publishing on the same cores)",
        100.0 * live_rate / raw_rate
    );
    println!("  publish -> durable      p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms at {} readings/s  (target p99 <= 50 ms)", args.rate);
    println!(
        "  gas per reading         {per_reading:.1} at 2,000/batch vs {single_gas:.0} one tx per reading = {:.5}x  (target <= 50)",
        per_reading / single_gas
    );
    println!(
        "  oracle RSS              {:.1} MiB at {} beds vs {:.1} MiB idle  (target <= 150 MB)",
        peak_kib as f64 / 1024.0,
        args.beds,
        idle_kib as f64 / 1024.0
    );
    Ok(())
}

async fn wait_anchored(store: &healthsense_oracle::store::Store, expected: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let anchored = store.counts()?.anchored_readings as usize;
        if anchored >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {anchored} of {expected} readings anchored");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for(counter: &AtomicUsize, n: usize, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while counter.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            bail!("{what}: only {} of {n} readings committed", counter.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Idle and peak RSS (KiB) of a `healthsense oracle` process serving `beds`.
async fn memory(
    args: &Args,
    root: &std::path::Path,
    anvil: &alloy::node_bindings::AnvilInstance,
    contract: Address,
    domain: B256,
    beds: &[Bed],
    dir: PathBuf,
) -> Result<(u64, u64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("memory.toml");
    std::fs::write(
        &config,
        format!(
            "hub = \"beds\"\nward = \"bench\"\nstore = \"{}\"\n[chain]\nrpc_url = \"{}\"\ncontract = \"{contract}\"\n\
             [mqtt]\nauth = false\nlisten = \"127.0.0.1:{port}\"\n[anchor]\nbatch_size = 2000\ninterval_ms = 5000\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("memory.sqlite").display(),
            anvil.endpoint()
        ),
    )?;
    let exe = std::env::current_exe()?.with_file_name("healthsense");
    let mut child = std::process::Command::new(&exe)
        .args(["oracle", "--config"])
        .arg(&config)
        .env("HEALTHSENSE_HUB_PRIVATE_KEY", alloy::hex::encode(anvil.keys()[2].to_bytes()))
        .env("HEALTHSENSE_HOME", root)
        .env("HEALTHSENSE_LOG", "warn,rumqttd=off")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (build the healthsense binary first)", exe.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the oracle process did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid, "VmRSS:")?;
    let topics = Topics::new("beds").map_err(anyhow::Error::msg)?;
    // One publisher for every bed, on an open broker: the figure is the
    // oracle's memory, not 2,000 device connections'.
    let client = publisher(MqttOptions::new("memory-beds", "127.0.0.1", port), 1_000_000, None).await;
    let beds = &beds[..args.beds];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (beds.len() / 100).max(1);
    let mut peak = idle;
    for second in 0..args.memory_seconds {
        for chunk in beds.chunks(per_tick) {
            tick.tick().await;
            for (i, b) in chunk.iter().enumerate() {
                let r = reading(&b.serial, second + 1, second * 7 + i as u64);
                let payload = protocol::sign_vitals(&b.key, domain, &b.serial, &r)?;
                client.publish(topics.device(&b.serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await?;
            }
        }
        peak = peak.max(rss_kib(pid, "VmRSS:")?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hwm = rss_kib(pid, "VmHWM:")?;
    let _ = child.kill();
    let _ = child.wait();
    Ok((idle, peak.max(hwm)))
}

/// Publish -> alert latency: see the module documentation.
async fn alerts(args: &Args) -> Result<()> {
    let root = tools::project_root()?;
    let anvil = start_anvil(&root)?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let (admin, hub) = (anvil.addresses()[0], anvil.addresses()[1]);
    let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, artifact::load_or_build(&root)?).await?;
    let (contract, domain) = (d.address, eip712::domain_separator(d.chain_id, d.address));
    let send = |from: Address, input: Vec<u8>| {
        let tx = TransactionRequest::default().with_from(from).with_to(contract).with_input(input);
        let p = ProviderBuilder::new().connect_http(anvil.endpoint_url());
        async move { anyhow::Ok(p.send_transaction(tx).await?.get_receipt().await?) }
    };
    send(admin, H::grantRoleCall { role: ids::HUB_ROLE, account: hub }.abi_encode()).await?;
    // Half the devices raise alerts, half send steady readings (background load).
    let n = 100usize;
    let ward = ids::ward_id("bench");
    let beds: Vec<Bed> = (0..n).map(|i| Bed { serial: format!("ALERT-{i:03}"), key: PrivateKeySigner::random() }).collect();
    for b in &beds {
        let id = ids::device_id(&b.serial);
        send(admin, H::provisionDeviceCall { deviceId: id, signer: b.key.address(), ward }.abi_encode()).await?;
        send(hub, H::activateDeviceCall { deviceId: id }.abi_encode()).await?;
    }
    let dir = tempfile::tempdir()?;
    let cfg = healthsense_oracle::Config::parse(&format!(
        "hub = \"bench\"\nward = \"bench\"\nstore = \"{}\"\n[chain]\nrpc_url = \"{}\"\ncontract = \"{contract}\"\n\
         [mqtt]\nauth = false\nlisten = \"127.0.0.1:0\"\n[anchor]\nbatch_size = 2000\ninterval_ms = 2000\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("hub.sqlite").display(),
        anvil.endpoint()
    ))?;
    let hub_key = PrivateKeySigner::from_signing_key(anvil.keys()[1].clone().into());
    let running = healthsense_oracle::start(cfg, hub_key, Default::default()).await?;
    let topics = Topics::new("bench").map_err(anyhow::Error::msg)?;
    let port = running.mqtt.1;
    // The listener: a separate MQTT client on the alert topic, as a nurse station would be.
    let received: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    {
        let mut opts = MqttOptions::new("alert-listener", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(1 << 20, 1 << 20);
        let (listener, mut ev) = AsyncClient::new(opts, 10_000);
        listener.subscribe(topics.alerts(), QoS::AtLeastOnce).await?;
        let got = received.clone();
        tokio::spawn(async move {
            let _keep = listener;
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let at = Instant::now();
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                            if let (Some(s), Some(q)) = (v["serial"].as_str(), v["seq"].as_u64()) {
                                if let Ok(mut m) = got.lock() {
                                    m.insert((s.to_string(), q), at);
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = publisher(MqttOptions::new("alert-beds", "127.0.0.1", port), 1_000_000, None).await;
    let (alerting, steady) = beds.split_at(n / 2);
    let septic = |r: &mut Reading| {
        (r.respRate, r.spo2, r.systolic, r.diastolic, r.heartRate, r.temperature) = (26, 90, 95, 60, 125, 3_870);
    };
    let total = args.alert_rate * args.alert_seconds as usize;
    let per_tick = (args.alert_rate / 100).max(1);
    let mut published: HashMap<(String, u64), Instant> = HashMap::with_capacity(total);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0usize;
    while sent < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let (k, seq) = (sent % alerting.len(), 1 + (sent / alerting.len()) as u64);
            // Odd readings septic, even normal: each one changes the level.
            let b = &alerting[k];
            let mut r = reading(&b.serial, seq, sent as u64);
            (r.heartRate, r.spo2, r.systolic) = (75, 97, 125);
            if seq % 2 == 1 {
                septic(&mut r);
            }
            let payload = protocol::sign_vitals(&b.key, domain, &b.serial, &r)?;
            client.publish(topics.device(&b.serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await?;
            published.insert((b.serial.clone(), seq), Instant::now());
            let s = &steady[k % steady.len()];
            let r = reading(&s.serial, seq, sent as u64);
            let payload = protocol::sign_vitals(&s.key, domain, &s.serial, &r)?;
            client.publish(topics.device(&s.serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await?;
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().map(|m| m.len()).unwrap_or(0) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let (lat, p50, p99, max) = latencies(&published, &got);
    running.shutdown().await;
    if lat.len() < total {
        bail!("only {} of {total} alerts arrived", lat.len());
    }
    let report = json!({
        "alert_rate_per_s": args.alert_rate, "steady_rate_per_s": args.alert_rate, "alerts": lat.len(),
        "latency_ms": { "p50": p50, "p99": p99, "max": max },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("HealthSense NEWS2 alert benchmark");
    println!(
        "  publish -> alert received  p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; {} alerts at {}/s alerting + {}/s steady readings  (target p99 <= 100 ms)",
        lat.len(),
        args.alert_rate,
        args.alert_rate
    );
    Ok(())
}
